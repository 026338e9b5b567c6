//! Live progress counters, shared between the engine and whoever displays
//! them (a log line every few seconds, a terminal progress bar), and the
//! stop a caller asks for (a responder's Ctrl-C): the engine then starts no
//! new call, lets the calls in flight end, and reports every device.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Counters updated by the engine as devices reach their outcome.
#[derive(Debug)]
pub struct Progress {
    started: Instant,
    total: AtomicU64,
    done: AtomicU64,
    initiated: AtomicU64,
    stopping: AtomicBool,
    stop: tokio::sync::Notify,
}

/// A point-in-time reading of [`Progress`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProgressSnapshot {
    /// Devices in the run (known once selection is done).
    pub total: u64,
    /// Devices with an outcome.
    pub done: u64,
    /// Devices initiated.
    pub initiated: u64,
    /// Outcomes per second so far.
    pub rate: f64,
    /// Estimated time left at the current rate.
    pub eta: Option<Duration>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Counters starting now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            initiated: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
        }
    }

    /// Asks the run to stop: no new call starts; calls in flight end and
    /// every device still gets its outcome (`not_attempted` if untried).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves once a stop is asked for (at once if it was).
    pub async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        // Registered before the flag is read, so a stop in between is seen.
        notified.as_mut().enable();
        if self.is_stopping() {
            return;
        }
        notified.await;
    }

    /// Sets the number of devices in the run.
    pub fn set_total(&self, total: usize) {
        self.total.store(total as u64, Ordering::Relaxed);
    }

    /// Counts one device reaching its outcome.
    pub fn record(&self, initiated: bool) {
        self.done.fetch_add(1, Ordering::Relaxed);
        if initiated {
            self.initiated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let total = self.total.load(Ordering::Relaxed);
        let done = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let eta = (rate > 0.0 && total >= done).then(|| Duration::from_secs_f64((total - done) as f64 / rate));
        ProgressSnapshot {
            total,
            done,
            initiated: self.initiated.load(Ordering::Relaxed),
            rate,
            eta,
        }
    }
}
