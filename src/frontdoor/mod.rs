//! Thin entry points: decode the host's envelope, call the service (or, for
//! the CLI, the engine), encode the answer.

pub mod azure;
pub mod cli;
pub mod lambda;
pub mod metrics;

use std::future::Future;
use std::process::ExitCode;

/// Why a host's main loop ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostError {
    /// It could not start (configuration, listener).
    #[error("cannot start: {0}")]
    Startup(String),
    /// It stopped with an error.
    #[error("stopped: {0}")]
    Stopped(String),
}

/// Runs a hosted front door's main loop on a multi-threaded runtime: exit
/// code 2 when it cannot start, 1 when it stops with an error.
pub(crate) fn host(main: impl Future<Output = Result<(), HostError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the host loop ended");
            eprintln!("{e}");
            ExitCode::from(match e {
                HostError::Startup(_) => 2,
                HostError::Stopped(_) => 1,
            })
        }
    }
}
