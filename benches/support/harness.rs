//! The throughput benchmark's machinery, shared by `benches/throughput.rs`
//! and a tiny-scale test that keeps it from rotting.
//!
//! Everything runs against the Graph simulator with Intune's limits on,
//! time-scaled: the throttling window *and* the latency shrink by the same
//! factor, so both clients see a consistently faster world. Figures come from
//! the simulator's ledger and counters (what "Graph" saw) and from the
//! operating system (CPU time, peak memory), never from a client's word.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use graph_sim::{Faults, FleetSpec, Sim, SimConfig};
use serde_json::Value;

/// Which client runs.
#[derive(Clone, Debug)]
pub enum Client {
    /// The Terraform action's way: list, then per device one validation GET
    /// and one POST, one device at a time; 429s retried after `Retry-After`.
    Baseline,
    /// The intune-attest binary with default settings (window and budget
    /// told to it, as deployment configuration would).
    IntuneAttest(PathBuf),
}

/// One benchmark run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Fleet size.
    pub devices: usize,
    /// Time scale: a 20 s window lasts 20/scale s, latency shrinks alike.
    pub scale: u32,
    /// The simulator's real per-app write ceiling per window (Intune: 200).
    pub ceiling: usize,
    /// The client's configured write budget (intune-attest default: 190).
    pub budget: u32,
    /// The client.
    pub client: Client,
}

/// What a run achieved.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Windows devices in the fleet (the attestable ones, roughly).
    pub windows: usize,
    /// Devices Graph accepted an attestation for (distinct).
    pub initiated: usize,
    /// Accepted writes per window, from the first acceptance.
    pub per_window: Vec<usize>,
    /// Mean of the warm windows (all but the first and the last).
    pub warm_mean: f64,
    /// Most writes seen in any sliding window.
    pub max_sliding: usize,
    /// 429 answers.
    pub throttled: u64,
    /// Write items answered 429.
    pub throttled_writes: u64,
    /// Write items received.
    pub writes: u64,
    /// HTTP requests received (token, lists, batches, direct calls).
    pub http_requests: u64,
    /// Wall time.
    pub wall: Duration,
    /// CPU time of the client.
    pub cpu: Duration,
    /// Peak resident memory of the client, when it ran as its own process.
    pub peak_rss: Option<u64>,
    /// Devices the client reported `throttled`.
    pub reported_throttled: u64,
}

impl Figures {
    /// HTTP requests per device of the fleet.
    pub fn requests_per_device(&self, devices: usize) -> f64 {
        self.http_requests as f64 / devices.max(1) as f64
    }
}

fn sim_config(s: &Scenario) -> SimConfig {
    let scale = u64::from(s.scale.max(1));
    let mut cfg = SimConfig {
        fleet: FleetSpec {
            size: s.devices,
            ..FleetSpec::default()
        },
        window: Duration::from_millis(20_000 / scale),
        faults: Faults {
            latency_ms: (80 / scale, 250 / scale),
            tail: (0.02, 800 / scale),
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    if let Some(l) = cfg.limits.as_mut() {
        l.app_writes = s.ceiling;
    }
    cfg
}

/// Runs one scenario.
pub async fn run(s: &Scenario) -> Figures {
    let sim = Sim::start(sim_config(s)).await.expect("simulator");
    let window = Duration::from_millis(20_000 / u64::from(s.scale.max(1)));
    let started = Instant::now();
    let (cpu, peak_rss, reported_throttled) = match &s.client {
        Client::Baseline => {
            let env = sim.client_env();
            let (cpu, throttled) = tokio::task::spawn_blocking(move || baseline(env))
                .await
                .expect("baseline thread");
            (cpu, None, throttled)
        }
        Client::IntuneAttest(bin) => intune_attest(bin, &sim, window, s.budget).await,
    };
    let wall = started.elapsed();
    let st = sim.stats();
    let per_window = sim.writes_per_window(window);
    let warm: Vec<usize> = if per_window.len() > 2 {
        per_window[1..per_window.len() - 1].to_vec()
    } else {
        per_window.clone()
    };
    Figures {
        windows: sim.fleet().iter().filter(|d| d.is_windows()).count(),
        initiated: sim.ledger_counts().len(),
        warm_mean: warm.iter().sum::<usize>() as f64 / warm.len().max(1) as f64,
        max_sliding: sim.max_writes_in_any_window(window),
        per_window,
        throttled: st.throttled,
        throttled_writes: st.throttled_writes,
        writes: st.writes,
        http_requests: st.http_requests,
        wall,
        cpu,
        peak_rss,
        reported_throttled,
    }
}

fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes into the struct we pass.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The baseline client, on a thread of its own so its CPU time is its own.
fn baseline(env: Vec<(String, String)>) -> (Duration, u64) {
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let before = thread_cpu();
    let throttled = rt.block_on(async {
        let http = reqwest::Client::new();
        let graph = get("GRAPH_ENDPOINT");
        let token_url = format!(
            "{}/{}/oauth2/v2.0/token",
            get("AZURE_AUTHORITY_HOST"),
            get("AZURE_TENANT_ID")
        );
        let form = [
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", get("AZURE_CLIENT_ID")),
            ("client_secret", get("AZURE_CLIENT_SECRET")),
            ("scope", format!("{graph}/.default")),
        ];
        let token: Value = http
            .post(token_url)
            .form(&form)
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token json");
        let token = token["access_token"].as_str().unwrap_or_default().to_owned();
        // The data source: list the Windows devices.
        let mut ids = Vec::new();
        let mut next = Some(format!(
            "{graph}/beta/deviceManagement/managedDevices?$filter=operatingSystem%20eq%20'Windows'&$select=id&$top=999"
        ));
        while let Some(url) = next {
            let page: Value = send(&http, &token, reqwest::Method::GET, &url).await.1;
            ids.extend(
                page["value"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d["id"].as_str().map(str::to_owned)),
            );
            next = page["@odata.nextLink"].as_str().map(str::to_owned);
        }
        // The action: validate, then attest, one device at a time.
        let mut throttled = 0;
        for id in ids {
            let url = format!(
                "{graph}/beta/deviceManagement/managedDevices/{id}?$select=id,operatingSystem,hardwareInformation"
            );
            let (status, device) = send(&http, &token, reqwest::Method::GET, &url).await;
            let tpm = device["hardwareInformation"]["tpmSpecificationVersion"].as_str();
            if status != 200 || tpm == Some("") {
                continue;
            }
            let url = format!("{graph}/beta/deviceManagement/managedDevices/{id}/initiateDeviceAttestation");
            let (status, _) = send(&http, &token, reqwest::Method::POST, &url).await;
            if status == 429 {
                throttled += 1;
            }
        }
        throttled
    });
    (thread_cpu() - before, throttled)
}

/// One call, retried after `Retry-After` on 429 up to three times (as the
/// Graph SDKs' retry handler does).
async fn send(http: &reqwest::Client, token: &str, method: reqwest::Method, url: &str) -> (u16, Value) {
    for _ in 0..4 {
        let resp = http
            .request(method.clone(), url)
            .bearer_auth(token)
            .header("content-length", "0")
            .send()
            .await;
        let Ok(resp) = resp else { continue };
        let status = resp.status().as_u16();
        if status == 429 {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(1.0);
            tokio::time::sleep(Duration::from_secs_f64(wait.min(30.0))).await;
            continue;
        }
        return (status, resp.json().await.unwrap_or(Value::Null));
    }
    (429, Value::Null)
}

/// Runs the binary as its own process; CPU time and peak memory are its own
/// (from `wait4`, which also reaps it).
#[allow(clippy::zombie_processes)]
async fn intune_attest(bin: &PathBuf, sim: &Sim, window: Duration, budget: u32) -> (Duration, Option<u64>, u64) {
    use std::io::{Read, Write};
    let payload = serde_json::json!({
        "device_filter": "operatingSystem eq 'Windows'",
        "validate_device_exists": true,
        "ignore_partial_failures": true,
        "timeouts": {"invoke": "2h"}
    });
    let mut child = std::process::Command::new(bin)
        .args(["invoke", "--event", "-", "--no-progress"])
        .envs(sim.client_env())
        .env("ATTEST_THROTTLE_WINDOW", format!("{}ms", window.as_millis()))
        .env("ATTEST_WRITE_BUDGET", budget.to_string())
        .env("ATTEST_LOG", "error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("intune-attest runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(payload.to_string().as_bytes()).expect("payload");
    drop(stdin);
    let mut stdout = child.stdout.take().expect("stdout");
    let pid = child.id() as libc::pid_t;
    let (out, usage) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        // SAFETY: wait4 reaps our own child and fills the structs we pass.
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        (out, usage)
    })
    .await
    .expect("waiting for intune-attest");
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    let result: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    let throttled = result["summary"]["throttled"].as_u64().unwrap_or(0);
    (
        tv(usage.ru_utime) + tv(usage.ru_stime),
        Some(usage.ru_maxrss as u64 * 1024),
        throttled,
    )
}

/// The first window from which the mean of all later full windows reaches
/// `share` of `ceiling`, if any (single windows wobble by a batch either way,
/// as batches fall into fixed buckets; the mean is what a tenant feels).
pub fn settled_at(per_window: &[usize], ceiling: usize, share: f64) -> Option<usize> {
    let full = per_window.len().saturating_sub(1);
    (1..full).find(|&k| {
        let rest = &per_window[k..full];
        rest.iter().sum::<usize>() as f64 / rest.len() as f64 >= share * ceiling as f64
    })
}
