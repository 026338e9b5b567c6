//! Drop guards that give a run's resources back whatever ends it: a call's
//! permits when its task finishes, panics or is aborted, and the run's
//! helper tasks when the run's future is dropped.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::lock;
use crate::core::pacer::{Grant, Pacer};

/// Permits one call holds in its pacer. [`Permit::complete`] records the
/// call's end; dropping the permit without it (the task panicked, or the
/// run was cancelled and its tasks aborted) records the end as now, with no
/// answer, so the permits run out one window later instead of never.
pub(super) struct Permit {
    pacer: Arc<Mutex<Pacer>>,
    grant: Option<Grant>,
}

impl Permit {
    pub(super) fn new(pacer: Arc<Mutex<Pacer>>, grant: Grant) -> Self {
        Self {
            pacer,
            grant: Some(grant),
        }
    }

    /// Records that the call ended at `now`; `answered` when an HTTP answer
    /// came back.
    pub(super) fn complete(mut self, now: Instant, answered: bool) {
        if let Some(grant) = self.grant.take() {
            lock(&self.pacer).complete(grant, now, answered);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            lock(&self.pacer).complete(grant, Instant::now(), false);
        }
    }
}

/// A task that lives no longer than its owner: aborted on drop.
pub(super) struct AbortOnDrop(pub(super) JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
