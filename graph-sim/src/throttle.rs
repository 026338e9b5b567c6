//! Intune's throttling windows: sliding windows per app and per tenant, for
//! writes and for all requests.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Requests allowed per window.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// POST/PUT/PATCH/DELETE per app per tenant (Intune: 200).
    pub app_writes: usize,
    /// Writes per tenant, all apps (Intune: 400).
    pub tenant_writes: usize,
    /// Any request per app per tenant (Intune: 2,000).
    pub app_any: usize,
    /// Any request per tenant, all apps (Intune: 4,000).
    pub tenant_any: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            app_writes: 200,
            tenant_writes: 400,
            app_any: 2000,
            tenant_any: 4000,
        }
    }
}

#[derive(Default)]
struct Log(VecDeque<Instant>);

impl Log {
    fn trim(&mut self, now: Instant, window: Duration) {
        while self
            .0
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.0.pop_front();
        }
    }
    fn wait(&self, limit: usize, now: Instant, window: Duration) -> Option<Duration> {
        (self.0.len() >= limit).then(|| {
            let idx = self.0.len() - limit;
            (self.0[idx] + window).saturating_duration_since(now)
        })
    }
}

/// The throttling state of one simulated tenant.
#[derive(Default)]
pub struct Throttle {
    logs: HashMap<(String, &'static str), Log>,
}

impl Throttle {
    /// Counts one request; returns how long to wait if it is over a limit.
    /// Rejected requests are counted too, as Graph keeps counting while a
    /// client is throttled.
    pub fn admit(
        &mut self,
        app: &str,
        write: bool,
        limits: &Limits,
        window: Duration,
        now: Instant,
        count_rejected: bool,
    ) -> Option<Duration> {
        let mut checks: Vec<((String, &'static str), usize)> = vec![
            ((app.to_owned(), "any"), limits.app_any),
            ((String::new(), "any"), limits.tenant_any),
        ];
        if write {
            checks.push(((app.to_owned(), "write"), limits.app_writes));
            checks.push(((String::new(), "write"), limits.tenant_writes));
        }
        let mut wait: Option<Duration> = None;
        for (key, limit) in &checks {
            let log = self.logs.entry(key.clone()).or_default();
            log.trim(now, window);
            if let Some(w) = log.wait(*limit, now, window) {
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        if wait.is_none() || count_rejected {
            for (key, _) in checks {
                self.logs.entry(key).or_default().0.push_back(now);
            }
        }
        wait
    }
}
