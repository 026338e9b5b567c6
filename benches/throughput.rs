//! Throughput at the Intune ceiling, side by side: a baseline client written
//! the way the Terraform action works, and intune-attest with default
//! settings, against the Graph simulator with Intune's limits on.
//!
//! `cargo bench --bench throughput -- [--devices 2000,20000] [--scale 20] [--skip-baseline-above N]
//! [--only throughput,adaptive,cold-start]`
//!
//! Prints the figures and whether each target is met, and draws
//! `benchmarks/writes-per-window.svg` and `benchmarks/adaptive.svg`.

#[path = "support/chart.rs"]
mod chart;
#[path = "support/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{Client, Figures, Scenario, run, settled_at};
use plotters::prelude::*;

const BIN: &str = env!("CARGO_BIN_EXE_intune-attest");

struct Args {
    devices: Vec<usize>,
    scale: u32,
    skip_baseline_above: usize,
    only: Vec<String>,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

fn args() -> Args {
    let mut a = Args {
        devices: vec![2000, 20_000],
        scale: 20,
        skip_baseline_above: usize::MAX,
        only: vec![],
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--devices" => {
                if let Some(v) = it.next() {
                    a.devices = v.split(',').filter_map(|n| n.trim().parse().ok()).collect();
                }
            }
            "--only" => {
                a.only = it
                    .next()
                    .map(|v| v.split(',').map(str::to_owned).collect())
                    .unwrap_or_default()
            }
            "--scale" => a.scale = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.scale),
            "--skip-baseline-above" => {
                a.skip_baseline_above = it.next().and_then(|v| v.parse().ok()).unwrap_or(usize::MAX)
            }
            _ => {}
        }
    }
    a
}

fn print(name: &str, devices: usize, scale: u32, f: &Figures, budget: f64, ceiling: f64) {
    println!("{name}, {devices} devices ({} Windows)", f.windows);
    println!("  attestations initiated          {}", f.initiated);
    println!(
        "  writes per 20 s window, warm    {:.1}  ({:.1}% of the budget {budget}, {:.1}% of the ceiling {ceiling})",
        f.warm_mean,
        100.0 * f.warm_mean / budget,
        100.0 * f.warm_mean / ceiling
    );
    if f.per_window.len() <= 24 {
        println!("    per window                    {:?}", f.per_window);
    } else {
        println!(
            "    first/last windows            {:?} ... {:?}",
            &f.per_window[..8],
            &f.per_window[f.per_window.len() - 4..]
        );
    }
    println!("  most in any sliding window      {}", f.max_sliding);
    println!(
        "  429 answers                     {} ({:.2}% of {} write items)",
        f.throttled,
        100.0 * f.throttled_writes as f64 / f.writes.max(1) as f64,
        f.writes
    );
    println!(
        "  HTTP requests per device        {:.3} ({} requests)",
        f.requests_per_device(devices),
        f.http_requests
    );
    println!(
        "  wall time                       {:.1} s (x{scale} time scale; {:.0} s at Intune's real pace)",
        f.wall.as_secs_f64(),
        f.wall.as_secs_f64() * f64::from(scale)
    );
    println!(
        "  CPU time                        {:.3} s, {:.1} us per device",
        f.cpu.as_secs_f64(),
        f.cpu.as_secs_f64() * 1e6 / devices.max(1) as f64
    );
    match f.peak_rss {
        Some(b) => println!("  peak memory (own process)       {:.1} MB", b as f64 / 1e6),
        None => println!("  peak memory                     n/a (runs inside the benchmark process)"),
    }
}

/// Process start to the first `next` request at a Lambda Runtime API.
async fn cold_start(bin: &PathBuf) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let mut samples = Vec::new();
    for _ in 0..10 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(bin)
            .env_clear()
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "cold-start")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ATTEST_LOG", "off")
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
            .await
            .ok()?
            .ok()?;
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf).await;
        samples.push(started.elapsed());
        let _ = child.kill().await;
    }
    samples.sort();
    samples.get(samples.len() / 2).copied()
}

#[tokio::main]
async fn main() {
    let a = args();
    let bin = PathBuf::from(BIN);
    std::fs::create_dir_all("benchmarks").ok();
    println!(
        "intune-attest throughput benchmark (time scale x{}: a 20 s window lasts {} ms; latency 80-250 ms with a 2% tail of +800 ms, scaled alike)\n",
        a.scale,
        20_000 / a.scale
    );
    let mut verdicts: Vec<(String, bool)> = Vec::new();
    let mut first_charts: Option<(Vec<usize>, Vec<usize>)> = None;
    let sizes = if a.wants("throughput") {
        a.devices.clone()
    } else {
        Vec::new()
    };
    for &devices in &sizes {
        let ours = run(&Scenario {
            devices,
            scale: a.scale,
            ceiling: 200,
            budget: 190,
            client: Client::IntuneAttest(bin.clone()),
        })
        .await;
        print("intune-attest (defaults)", devices, a.scale, &ours, 190.0, 200.0);
        let base = if devices <= a.skip_baseline_above {
            let b = run(&Scenario {
                devices,
                scale: a.scale,
                ceiling: 200,
                budget: 190,
                client: Client::Baseline,
            })
            .await;
            print(
                "baseline (sequential GET + POST per device)",
                devices,
                a.scale,
                &b,
                190.0,
                200.0,
            );
            println!(
                "  => intune-attest is {:.1}x faster end to end, {:.1}x the writes per window, {:.1}x fewer HTTP requests\n",
                b.wall.as_secs_f64() / ours.wall.as_secs_f64(),
                ours.warm_mean / b.warm_mean.max(0.001),
                b.http_requests as f64 / ours.http_requests.max(1) as f64
            );
            Some(b)
        } else {
            println!("  (baseline skipped at this size)\n");
            None
        };
        if first_charts.is_none() {
            first_charts = Some((
                ours.per_window.clone(),
                base.as_ref().map(|b| b.per_window.clone()).unwrap_or_default(),
            ));
        }
        verdicts.push((
            format!("{devices} devices: >= 95% of the budget when warm"),
            ours.warm_mean >= 0.95 * 190.0,
        ));
        verdicts.push((
            format!("{devices} devices: 429s on <= 1% of write items"),
            ours.throttled_writes as f64 <= 0.01 * ours.writes.max(1) as f64,
        ));
        verdicts.push((
            format!("{devices} devices: <= 0.12 HTTP requests per device"),
            ours.requests_per_device(devices) <= 0.12,
        ));
        verdicts.push((
            format!("{devices} devices: peak memory <= 64 MB"),
            ours.peak_rss.is_some_and(|b| b <= 64_000_000),
        ));
        // At the ceiling a run starts ~10 attestations a second: the CPU share that takes.
        let share = ours.cpu.as_secs_f64() / ours.initiated.max(1) as f64 * 10.0;
        println!(
            "  CPU share at the real ceiling (10 writes/s): {:.2}% of one core\n",
            share * 100.0
        );
        verdicts.push((
            format!("{devices} devices: CPU share at the ceiling < 5% of a core"),
            share < 0.05,
        ));
    }

    // The tenant is shared: the real ceiling is below the configured budget.
    let shared = 120;
    let adaptive = if !a.wants("adaptive") {
        None
    } else {
        Some(
            run(&Scenario {
                devices: 3000,
                scale: a.scale,
                ceiling: shared,
                budget: 190,
                client: Client::IntuneAttest(bin.clone()),
            })
            .await,
        )
    };
    if let Some(adaptive) = &adaptive {
        print(
            "intune-attest, real ceiling 120 under a budget of 190",
            3000,
            a.scale,
            adaptive,
            190.0,
            shared as f64,
        );
        let settled = settled_at(&adaptive.per_window, shared, 0.9);
        let after = settled.map(|k| {
            let full = adaptive.per_window.len() - 1;
            adaptive.per_window[k..full].iter().sum::<usize>() as f64 / (full - k).max(1) as f64
        });
        println!(
            "  settled at >= 90% of the real ceiling (mean of the later windows) from window {} on (mean after: {}); lowest single window {}\n",
            settled.map_or("never".into(), |k| k.to_string()),
            after.map_or("-".into(), |m| format!("{m:.1} = {:.1}%", 100.0 * m / shared as f64)),
            adaptive.per_window[1..adaptive.per_window.len().saturating_sub(1).max(1)]
                .iter()
                .min()
                .copied()
                .unwrap_or(0)
        );
        verdicts.push((
            "shared tenant: settles at >= 90% of the real ceiling within 5 windows".into(),
            settled.is_some_and(|k| k <= 5),
        ));
        verdicts.push((
            "shared tenant: every device initiated, none left throttled".into(),
            adaptive.reported_throttled == 0 && adaptive.initiated >= adaptive.windows * 9 / 10,
        ));
    }

    let release = std::env::var("ATTEST_RELEASE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target/release/intune-attest"));
    match std::fs::metadata(&release).ok().filter(|_| a.wants("cold-start")) {
        Some(m) => {
            println!("release binary {} : {:.1} MB", release.display(), m.len() as f64 / 1e6);
            match cold_start(&release).await {
                Some(d) => {
                    println!(
                        "cold start (process start to the first Runtime API request, median of 10): {:.1} ms",
                        d.as_secs_f64() * 1e3
                    );
                    verdicts.push(("cold start < 50 ms".into(), d < Duration::from_millis(50)));
                }
                None => println!("cold start: could not be measured"),
            }
        }
        None => println!(
            "release binary not measured at {} (not asked for, or not built: cargo build --release)",
            release.display()
        ),
    }

    if let Some((ours, base)) = first_charts {
        chart::chart(
            "benchmarks/writes-per-window.svg",
            &format!(
                "Attestations accepted per 20 s window, {} devices",
                a.devices.first().copied().unwrap_or(0)
            ),
            &[("intune-attest", &ours, BLUE), ("baseline (sequential)", &base, RED)],
            &[
                ("Intune ceiling 200", 200, BLACK),
                ("budget 190", 190, RGBColor(150, 150, 150)),
            ],
        );
    }
    if let Some(adaptive) = &adaptive {
        chart::chart(
            "benchmarks/adaptive.svg",
            "Shared tenant: real ceiling 120, configured budget 190",
            &[("intune-attest", &adaptive.per_window, BLUE)],
            &[
                ("real ceiling 120", shared, BLACK),
                ("90% of it", shared * 9 / 10, RGBColor(150, 150, 150)),
            ],
        );
    }

    println!("\ntargets");
    for (what, ok) in &verdicts {
        println!("  {:<70} {}", what, if *ok { "met" } else { "NOT met" });
    }
}
