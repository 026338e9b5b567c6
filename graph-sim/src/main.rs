//! `graph-sim`: run the Graph simulator as a process, for the quick start
//! and for trying the CLI by hand. Prints the environment that points
//! intune-attest at it, then serves until interrupted.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use graph_sim::{Faults, FleetSpec, RetryAfterForm, Sim, SimConfig};

#[derive(Parser, Debug)]
#[command(
    name = "graph-sim",
    about = "A Microsoft Graph beta simulator for Intune device attestation."
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Devices in the seeded fleet.
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// Fleet seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Throttling window in milliseconds (Intune's is 20000; 2000 runs ten times faster).
    #[arg(long, default_value_t = 20_000)]
    window_ms: u64,
    /// How windows are counted: `sliding` (any interval of one window) or
    /// `fixed` (the count resets at each window boundary).
    #[arg(long, default_value = "sliding")]
    windows: String,
    /// Writes allowed per window for one app (Intune: 200).
    #[arg(long, default_value_t = 200)]
    app_writes: usize,
    /// Latency range in ms, `MIN-MAX`.
    #[arg(long, default_value = "80-250")]
    latency: String,
    /// Retry-After form: integer, decimal, http-date, missing, rotate.
    #[arg(long, default_value = "decimal")]
    retry_after: String,
    /// Probability that a batch item answers 5xx.
    #[arg(long, default_value_t = 0.0)]
    item_5xx: f64,
    /// How long an accepted attestation takes to finish, in milliseconds
    /// (Intune says up to 15 minutes).
    #[arg(long, default_value_t = 3000)]
    action_delay_ms: u64,
    /// How `$filter` on the device list is treated: `documented` (a filter
    /// naming a property outside the documented ones is ignored, as users
    /// report Graph does), `strict` (every filter applied) or `ignored`.
    #[arg(long, default_value = "documented")]
    filter: String,
    /// Write `KEY=VALUE` lines for intune-attest to this file.
    #[arg(long)]
    env_file: Option<std::path::PathBuf>,
    /// Let users sign in to the app with the device code flow (`intune-attest
    /// --device-code`); they sign in by posting the code to `/devicelogin`
    /// (`curl -d user_code=CODE URL/devicelogin`).
    #[arg(long)]
    public_client: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (lo, hi) = args.latency.split_once('-').context("--latency takes MIN-MAX")?;
    let latency_ms = (lo.parse()?, hi.parse()?);
    let retry_after = match args.retry_after.as_str() {
        "integer" => RetryAfterForm::Integer,
        "decimal" => RetryAfterForm::Decimal,
        "http-date" => RetryAfterForm::HttpDate,
        "missing" => RetryAfterForm::Missing,
        "rotate" => RetryAfterForm::Rotate,
        other => anyhow::bail!("unknown --retry-after {other:?}"),
    };
    let filter_support = match args.filter.as_str() {
        "documented" => graph_sim::FilterSupport::Documented,
        "strict" => graph_sim::FilterSupport::Strict,
        "ignored" => graph_sim::FilterSupport::Ignored,
        other => anyhow::bail!("unknown --filter {other:?}"),
    };
    let mut cfg = SimConfig {
        filter_support,
        // A realistic mix, so the quick start shows every kind of device
        // that cannot attest.
        fleet: FleetSpec {
            size: args.devices,
            seed: args.seed,
            tpm_1_2: 0.01,
            virtual_machines: 0.03,
            cloud_pcs: 0.02,
            old_builds: 0.03,
            not_mdm: 0.02,
            servers: 0.02,
            unlisted_builds: 0.05,
            ..FleetSpec::default()
        },
        window: Duration::from_millis(args.window_ms),
        windows: match args.windows.as_str() {
            "sliding" => graph_sim::Windows::Sliding,
            "fixed" => graph_sim::Windows::Fixed,
            other => anyhow::bail!("--windows takes sliding or fixed, not {other:?}"),
        },
        action_delay: Duration::from_millis(args.action_delay_ms),
        retry_after,
        faults: Faults {
            latency_ms,
            tail: (0.02, 600),
            item_5xx: args.item_5xx,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    if let Some(l) = cfg.limits.as_mut() {
        l.app_writes = args.app_writes;
    }
    for app in &mut cfg.apps {
        app.public_client = args.public_client;
    }
    let sim = Sim::start_on(cfg, args.port).await?;
    let mut env: Vec<(String, String)> = sim.client_env();
    env.push(("ATTEST_THROTTLE_WINDOW".into(), format!("{}ms", args.window_ms)));
    let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    match &args.env_file {
        Some(path) => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, &text)?;
            std::fs::rename(&tmp, path)?;
        }
        None => print!("{text}"),
    }
    eprintln!("graph-sim: serving {} devices on {}", sim.fleet().len(), sim.url());
    tokio::signal::ctrl_c().await?;
    let s = sim.stats();
    eprintln!(
        "graph-sim: {} HTTP requests, {} batches, {} attestations accepted, {} throttled answers",
        s.http_requests,
        s.batches,
        sim.ledger().len(),
        s.throttled
    );
    Ok(())
}
