//! Throughput at the Intune ceiling: runs the release `intune-attest` binary
//! against the Graph simulator with realistic latency and Intune's limits
//! (time-scaled), and prints what it achieved.
//!
//! `cargo bench --bench throughput -- [--devices N] [--scale S]`
//!
//! Figures come from the simulator's own ledger and counters (what "Graph"
//! saw), and from the operating system for the child's CPU time and peak
//! memory; nothing is taken from the client's word.

use std::time::{Duration, Instant};

use graph_sim::{Faults, FleetSpec, Sim, SimConfig};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_intune-attest");

struct Args {
    devices: usize,
    scale: u64,
}

fn args() -> Args {
    let mut a = Args {
        devices: 2000,
        scale: 10,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--devices" => a.devices = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.devices),
            "--scale" => a.scale = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.scale),
            _ => {}
        }
    }
    a
}

fn child_usage() -> (Duration, u64) {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    (tv(usage.ru_utime) + tv(usage.ru_stime), usage.ru_maxrss as u64 * 1024)
}

#[tokio::main]
async fn main() {
    let a = args();
    let window = Duration::from_millis(20_000 / a.scale);
    let cfg = SimConfig {
        fleet: FleetSpec {
            size: a.devices,
            ..FleetSpec::default()
        },
        window,
        faults: Faults {
            latency_ms: (80, 250),
            tail: (0.02, 800),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let sim = Sim::start(cfg).await.expect("simulator");
    let windows_devices = sim.fleet().iter().filter(|d| d.is_windows()).count();
    let payload = serde_json::json!({
        "device_filter": "operatingSystem eq 'Windows'",
        "validate_device_exists": true,
        "ignore_partial_failures": true,
        "timeouts": {"invoke": "2h"}
    });
    let started = Instant::now();
    let mut child = tokio::process::Command::new(BIN)
        .args(["invoke", "--event", "-", "--no-progress"])
        .envs(sim.client_env())
        .env("ATTEST_THROTTLE_WINDOW", format!("{}ms", window.as_millis()))
        .env("ATTEST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("intune-attest runs");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(payload.to_string().as_bytes()).await.expect("payload");
    }
    let out = child.wait_with_output().await.expect("intune-attest finishes");
    let wall = started.elapsed();
    let (cpu, peak_rss) = child_usage();
    let result: Value = serde_json::from_slice(&out.stdout).expect("a result document");

    let s = sim.stats();
    let per_window = sim.writes_per_window(window);
    // Warm windows: leave out the first (ramp-up) and the last (tail).
    let warm: Vec<usize> = if per_window.len() > 2 {
        per_window[1..per_window.len() - 1].to_vec()
    } else {
        per_window.clone()
    };
    let mean = warm.iter().sum::<usize>() as f64 / warm.len().max(1) as f64;
    let budget = 190.0;
    let ceiling = 200.0;
    let initiated = result["summary"]["initiated"].as_u64().unwrap_or(0);
    let write_items = s.writes.max(1);
    println!("intune-attest throughput benchmark");
    println!(
        "  fleet: {} devices ({} Windows), latency 80-250 ms (+2% tail of 800 ms)",
        a.devices, windows_devices
    );
    println!(
        "  Intune limits on, time scale x{} (a 20 s window lasts {} ms)",
        a.scale,
        window.as_millis()
    );
    println!(
        "  status                      {}",
        result["status"].as_str().unwrap_or("?")
    );
    println!("  devices initiated           {initiated}");
    println!("  summary                     {}", result["summary"]);
    println!(
        "  writes per 20 s window      mean {mean:.1} (warm windows: {})",
        warm.len()
    );
    println!("    per window                {per_window:?}");
    println!("    of configured budget 190  {:.1}%", 100.0 * mean / budget);
    println!("    of Intune ceiling 200     {:.1}%", 100.0 * mean / ceiling);
    println!("  max in any sliding window   {}", sim.max_writes_in_any_window(window));
    println!(
        "  429 answers                 {} ({:.2}% of write items)",
        s.throttled,
        100.0 * s.throttled_writes as f64 / write_items as f64
    );
    println!(
        "  HTTP requests               {} ({} token, {} list pages, {} batches)",
        s.http_requests, s.token_requests, s.list_pages, s.batches
    );
    println!(
        "  HTTP requests per device    {:.3}",
        s.http_requests as f64 / a.devices as f64
    );
    println!(
        "  wall time                   {:.1} s (≈ {:.0} s unscaled)",
        wall.as_secs_f64(),
        wall.as_secs_f64() * a.scale as f64
    );
    println!(
        "  CPU time                    {:.3} s ({:.1} µs per device)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / a.devices as f64
    );
    println!("  peak memory (client RSS)    {:.1} MB", peak_rss as f64 / 1e6);
    let ok = |b: bool| if b { "met" } else { "NOT met" };
    println!("targets");
    println!("  >= 95% of budget when warm  {}", ok(mean >= 0.95 * budget));
    println!(
        "  429s <= 1% of write items   {}",
        ok(s.throttled_writes as f64 <= 0.01 * write_items as f64)
    );
    println!(
        "  <= 0.12 requests per device {}",
        ok(s.http_requests as f64 / a.devices as f64 <= 0.12)
    );
    println!("  peak memory <= 64 MB        {}", ok(peak_rss <= 64_000_000));
}
