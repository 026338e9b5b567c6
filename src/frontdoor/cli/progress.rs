//! The progress bar on standard error, and log lines that step around it.

use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;

use crate::core::progress::Progress;

static BAR: OnceLock<ProgressBar> = OnceLock::new();

/// Log output that steps around the progress bar when one is drawn.
#[derive(Clone, Copy)]
pub(super) struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BAR.get() {
            Some(bar) if !bar.is_finished() => bar.suspend(|| std::io::stderr().write(buf)),
            _ => std::io::stderr().write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for StderrAroundBar {
    type Writer = StderrAroundBar;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}

pub(super) fn spawn_bar(progress: Arc<Progress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} devices, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let _ = BAR.set(bar.clone());
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            let s = progress.snapshot();
            b.set_length(s.total);
            b.set_position(s.done);
            b.set_message(format!(
                "{} initiated, {:.1}/s, ETA {}",
                s.initiated,
                s.rate,
                s.eta
                    .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
                    .unwrap_or_else(|| "-".into())
            ));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (bar, task)
}
