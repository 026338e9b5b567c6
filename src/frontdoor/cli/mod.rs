//! The command line: `intune-attest invoke --event FILE` runs one request
//! locally and prints the result document on stdout.
//!
//! Exit codes: 0 the run succeeded (or its failures are ignored), 1 the run
//! failed, 2 bad input or configuration, 130 interrupted (the result is
//! still written, every device in it).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod check;
mod export;
mod follow;
mod progress;
mod report;
mod select;
mod sign_in;
mod status;
mod table;

pub use table::Output;

use crate::config::Settings;
use crate::core::duration::parse_go_duration;
use crate::core::engine::{Engine, RunError};
use crate::core::progress::Progress;
use crate::core::request::AttestationRequest;
use crate::core::text::bounded;
use crate::graph::GraphClient;

/// Largest event file read, in bytes.
const MAX_EVENT_BYTES: u64 = 8 * 1024 * 1024;

/// `--version`: the package version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("INTUNE_ATTEST_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "intune-attest",
    version = VERSION,
    about = "Start TPM device attestation on Intune-managed Windows devices, in bulk."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Only warnings and errors on standard error (over ATTEST_LOG).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More on standard error: -v debug, -vv trace (over ATTEST_LOG).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one request and print the result document on stdout.
    Invoke {
        /// The request payload: a JSON file, or `-` for standard input
        /// (devices picked below are added to it).
        #[arg(long, value_name = "FILE|-")]
        event: Option<String>,
        #[command(flatten)]
        picks: select::Picks,
        #[command(flatten)]
        sign_in: sign_in::SignIn,
        /// Never draw a progress bar (progress is still logged).
        #[arg(long)]
        no_progress: bool,
        /// `json` (the document, for scripts) or `table` (for people).
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
        /// Also write the result document to this file (with `--output
        /// table`, the full list stays at hand).
        #[arg(long, value_name = "FILE")]
        result_file: Option<PathBuf>,
        /// Wait for Intune's verdict, reading every 30 s until every action
        /// is over or this long has passed (a Go duration such as `20m`).
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
        /// Exit 1 if any device's verdict ends in one of these states
        /// (comma-separated: untrusted, failed, not-supported, pending,
        /// unread); 0 when none does.
        #[arg(long, value_enum, value_delimiter = ',')]
        fail_on: Vec<follow::FailOn>,
    },
    /// Read whether attestation happened: each device's attestation action
    /// and Intune's verdict, for the devices a payload selects or a result
    /// document initiated.
    Status {
        /// A request payload whose devices to read (`-` for standard input).
        #[arg(long, value_name = "FILE|-", conflicts_with = "result")]
        event: Option<String>,
        /// A result document whose initiated devices to read.
        #[arg(long, value_name = "FILE")]
        result: Option<PathBuf>,
        /// `json` (the status document, for scripts) or `table` (for people).
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
        /// Also write the status document to this file (for `report`).
        #[arg(long, value_name = "FILE")]
        status_file: Option<PathBuf>,
        /// Read again every 30 s until every action is over or this long
        /// has passed (a Go duration such as `20m`).
        #[arg(long, value_name = "DURATION")]
        watch: Option<String>,
        /// Exit 1 if any device ends in one of these states
        /// (comma-separated: untrusted, failed, not-supported, pending, unread).
        #[arg(long, value_enum, value_delimiter = ',')]
        fail_on: Vec<follow::FailOn>,
        #[command(flatten)]
        sign_in: sign_in::SignIn,
    },
    /// Write one self-contained HTML page about a run: outcomes, pace
    /// against the budget, every device, and the verdict if a status
    /// document is given. Opens offline; prints well.
    Report {
        /// The run's result document (`invoke --result-file`, or its JSON output).
        #[arg(long, value_name = "FILE")]
        result: PathBuf,
        /// A status document read after the run (`status --result`); without
        /// it, the result's own `verdict` (from `verify`) if it has one.
        #[arg(long, value_name = "FILE")]
        status: Option<PathBuf>,
        /// Where to write the page.
        #[arg(long, value_name = "FILE", default_value = "report.html")]
        out: PathBuf,
    },
    /// Validate a payload without calling Graph; print the normalised request.
    Check {
        /// The request payload: a JSON file, or `-` for standard input
        /// (devices picked below are added to it).
        #[arg(long, value_name = "FILE|-")]
        event: Option<String>,
        #[command(flatten)]
        picks: select::Picks,
        /// `json` (the document, for scripts) or `table` (for people).
        #[arg(long, value_enum, default_value_t = Output::Json)]
        output: Output,
    },
    /// Print a shell completion script (`source <(intune-attest completions bash)`).
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
}

fn read_event(source: &str) -> anyhow::Result<Vec<u8>> {
    let path = (source != "-").then(|| std::path::Path::new(source));
    read_bounded(path, MAX_EVENT_BYTES, "the event")
}

/// Reads a file (or standard input, for `None`), refusing more than `max`
/// bytes; `what` names it in the error.
fn read_bounded(source: Option<&std::path::Path>, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    match source {
        None => {
            std::io::stdin()
                .take(max + 1)
                .read_to_end(&mut buf)
                .context("reading standard input")?;
        }
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("opening {}", path.display()))?
                .take(max + 1)
                .read_to_end(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    anyhow::ensure!(buf.len() as u64 <= max, "{what} is larger than {max} bytes");
    Ok(buf)
}

/// Largest result or status document read (a 50,000-device result is
/// about 20 MB).
const MAX_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Reads a result or status document from `path`, bounded.
fn read_document(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    read_bounded(Some(path), MAX_DOCUMENT_BYTES, &path.display().to_string())
}

/// Runs the CLI and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init(
        progress::StderrAroundBar,
        crate::telemetry::LogStyle {
            ansi: std::io::stderr().is_terminal(),
            timestamps: true,
            level: match (cli.quiet, cli.verbose) {
                (true, _) => Some("warn"),
                (_, 0) => None,
                (_, 1) => Some("debug"),
                _ => Some("trace"),
            },
        },
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // The same sanitiser as every log line: bounded, no control or
            // bidirectional characters from a server's text.
            eprintln!("error: {}", bounded(&format!("{e:#}"), 4000));
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok();
    match cli.command {
        Command::Status {
            event,
            result,
            output,
            status_file,
            watch,
            fail_on,
            sign_in,
        } => {
            let watch = watch
                .map(|w| parse_go_duration(&w).map_err(|e| anyhow::anyhow!("--watch: {w:?}: {e}")))
                .transpose()?;
            status::run(
                event,
                result.as_deref(),
                status::Options {
                    output,
                    status_file: status_file.as_deref(),
                    watch,
                    fail_on: &fail_on,
                    sign_in: &sign_in,
                },
                env,
            )
            .await
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "intune-attest", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { event, picks, output } => {
            let bytes = select::payload(event.as_deref().map(read_event).transpose()?, &picks)?;
            check::run(&bytes, output, env)
        }
        Command::Report { result, status, out } => report::run(&result, status.as_deref(), &out),
        Command::Invoke {
            event,
            picks,
            sign_in,
            no_progress,
            output,
            result_file,
            wait,
            fail_on,
        } => {
            let settings = Settings::from_env(env)?;
            let mut bytes = select::payload(event.as_deref().map(read_event).transpose()?, &picks)?;
            if let Some(wait) = &wait {
                bytes = follow::with_wait(bytes, wait)?;
            }
            // Validate before anything else, so bad input never reaches Graph.
            let req = AttestationRequest::from_slice(&bytes, settings.limits)?;
            // Said before any write: the timeout cannot cover the devices.
            if let Some(w) = crate::core::estimate::timeout_warning(
                req.devices.len(),
                req.validate_device_exists && !req.dry_run,
                req.timeout,
                &settings.engine,
            ) {
                eprintln!("warning: {w}");
            }
            let creds = match sign_in::credentials(&sign_in, &settings, env).await {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let client = GraphClient::new(settings.endpoints.clone(), creds, settings.client.clone())?;
            let client = Arc::new(client);
            // One read budget for the run's validation and its verdict's reads.
            let pacers = crate::core::engine::Pacers::new(&settings.engine);
            // On a terminal the bar shows progress: no progress lines too
            // (they stay in logs when standard error is not a terminal).
            let draw_bar = !no_progress && std::io::stderr().is_terminal();
            let mut engine_cfg = settings.engine.clone();
            if draw_bar {
                engine_cfg.progress_interval = PROGRESS_LINES_OFF;
            }
            let engine = Engine::with_pacers(client.clone(), engine_cfg, pacers.clone());
            let plan = req.verify;
            let started = std::time::SystemTime::now();
            let progress = Arc::new(Progress::new());
            let bar = draw_bar.then(|| progress::spawn_bar(progress.clone()));
            let interrupts = tokio::spawn(stop_on_interrupt(progress.clone()));
            let outcome = engine.run(req, None, progress.clone()).await;
            interrupts.abort();
            if let Some((bar, task)) = bar {
                task.abort();
                bar.finish_and_clear();
            }
            let interrupted = progress.is_stopping();
            let mut result = match outcome {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {}", bounded(&e.to_string(), 4000));
                    let code = match e {
                        RunError::Credentials(_) | RunError::Configuration(_) => 2,
                        RunError::Selection(_) | RunError::Unavailable(_) => 1,
                    };
                    return Ok(ExitCode::from(code));
                }
            };
            if let Some(plan) = plan.filter(|_| !interrupted) {
                let reads = &settings.engine.reads;
                let (plan, raised) = plan.for_devices(result.initiated_devices().len(), reads.budget, reads.window);
                result.warnings.extend(raised);
                result.verdict =
                    follow::follow(client, &result, plan, started, &pacers.read_policy(&settings.engine)).await;
            }
            let doc = serde_json::to_string_pretty(&result)?;
            if let Some(path) = &result_file {
                std::fs::write(path, &doc).with_context(|| format!("writing {}", path.display()))?;
            }
            match output {
                Output::Json => println!("{doc}"),
                Output::Table => {
                    print!(
                        "{}",
                        table::result(&result, result_file.as_deref(), table::View::of_stdout())
                    );
                    if let Some(verdict) = &result.verdict {
                        print!("{}", table::status(verdict, table::View::of_stdout()));
                    }
                }
                Output::Summary => println!("{}", export::result_line(&result)),
                Output::Csv => print!("{}", export::result_csv(&result)?),
            }
            let verdict_fails = !fail_on.is_empty()
                && result
                    .verdict
                    .as_ref()
                    .is_some_and(|v| follow::failing(v, &fail_on) > 0);
            Ok(if interrupted {
                ExitCode::from(EXIT_INTERRUPTED)
            } else if verdict_fails {
                eprintln!("error: devices ended in a state --fail-on names");
                ExitCode::from(1)
            } else if !fail_on.is_empty() && result.verdict.is_some() {
                // The verdict decides, as asked.
                ExitCode::SUCCESS
            } else if result.failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// The progress-line interval while the bar is drawn: longer than any run.
const PROGRESS_LINES_OFF: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// The exit code of a run stopped by SIGINT or SIGTERM (128 + SIGINT, as
/// shells report it).
const EXIT_INTERRUPTED: u8 = 130;

/// On the first SIGINT or SIGTERM, stops the run (no new call; the calls
/// in flight end; every device is reported); on the second, exits at once.
async fn stop_on_interrupt(progress: Arc<Progress>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("interrupts cannot be caught here; Ctrl-C ends the run without a result");
        return;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!(
        "interrupted: no new call starts; waiting for the calls in flight, then writing the result (again to exit at once)"
    );
    progress.stop();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("interrupted again: exiting without a result");
    std::process::exit(i32::from(EXIT_INTERRUPTED));
}
