//! Logging, the same on every host: `ATTEST_LOG` (or Lambda's
//! `AWS_LAMBDA_LOG_LEVEL`) filters; `ATTEST_LOG_FORMAT=json` (or Lambda's
//! `AWS_LAMBDA_LOG_FORMAT=JSON`) gives one JSON object per line, with the
//! spans (invocation, run and its correlation id) listed on every line.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// How the host wants its lines.
#[derive(Debug, Clone, Copy)]
pub struct LogStyle {
    /// Colour (only on a terminal, never when `NO_COLOR` is set).
    pub ansi: bool,
    /// Timestamps (off where the platform stamps lines itself).
    pub timestamps: bool,
    /// A level the command line chose (`-q`, `-v`), over `ATTEST_LOG`.
    pub level: Option<&'static str>,
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case(value))
}

/// Installs the global subscriber writing to `writer`.
pub fn init<W>(writer: W, style: LogStyle)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = style
        .level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_env("ATTEST_LOG").ok())
        .or_else(|| {
            std::env::var("AWS_LAMBDA_LOG_LEVEL")
                .ok()
                .and_then(|l| EnvFilter::try_new(l.to_ascii_lowercase()).ok())
        })
        .unwrap_or_else(|| EnvFilter::new("info"));
    let json = env_is("ATTEST_LOG_FORMAT", "json") || env_is("AWS_LAMBDA_LOG_FORMAT", "json");
    let ansi = style.ansi && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match (json, style.timestamps) {
        (true, true) => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
        (true, false) => builder
            .without_time()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
        (false, true) => builder.with_ansi(ansi).init(),
        (false, false) => builder.without_time().with_ansi(ansi).init(),
    }
}
