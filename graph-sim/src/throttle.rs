//! Intune's throttling windows per app and per tenant, for writes and for
//! all requests: sliding (every interval of one window length holds at most
//! the limit) or fixed (the count resets at each window boundary, as many
//! clients' test fakes count).

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

/// How requests are counted against a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Windows {
    /// No interval one window long holds more than the limit.
    #[default]
    Sliding,
    /// Windows start at fixed boundaries (from the first request); the
    /// count resets at each.
    Fixed,
}

#[derive(Default)]
struct Log(VecDeque<Instant>);

impl Log {
    fn trim(&mut self, now: Instant, window: Duration, fixed: Option<Instant>) {
        let start = match fixed {
            Some(epoch) => window_start(epoch, now, window),
            None => now.checked_sub(window).unwrap_or(now),
        };
        let keep = |t: &Instant| match fixed {
            Some(_) => *t >= start,
            None => now.saturating_duration_since(*t) < window,
        };
        while self.0.front().is_some_and(|t| !keep(t)) {
            self.0.pop_front();
        }
    }
    fn wait(&self, limit: usize, now: Instant, window: Duration, fixed: Option<Instant>) -> Option<Duration> {
        (self.0.len() >= limit).then(|| match fixed {
            Some(epoch) => (window_start(epoch, now, window) + window).saturating_duration_since(now),
            None => {
                let idx = self.0.len() - limit;
                (self.0[idx] + window).saturating_duration_since(now)
            }
        })
    }
}

/// The start of the fixed window holding `now`.
fn window_start(epoch: Instant, now: Instant, window: Duration) -> Instant {
    let nanos = window.as_nanos().max(1);
    let since = now.saturating_duration_since(epoch).as_nanos();
    epoch + Duration::from_nanos(((since / nanos) * nanos) as u64)
}

/// How one request is counted.
#[derive(Clone, Copy, Debug)]
pub struct Counting {
    /// The limits per window.
    pub limits: Limits,
    /// The window.
    pub window: Duration,
    /// Whether throttled requests count too (Graph's do).
    pub count_rejected: bool,
    /// Sliding or fixed windows.
    pub windows: Windows,
}

/// The throttling state of one simulated tenant.
#[derive(Default)]
pub struct Throttle {
    logs: HashMap<(String, &'static str), Log>,
    /// The first request: where fixed windows start.
    epoch: Option<Instant>,
}

impl Throttle {
    /// Counts one request; returns how long to wait if it is over a limit.
    /// Rejected requests are counted too, as Graph keeps counting while a
    /// client is throttled.
    pub fn admit(&mut self, app: &str, write: bool, counting: &Counting, now: Instant) -> Option<Duration> {
        let Counting {
            ref limits,
            window,
            count_rejected,
            windows,
        } = *counting;
        let epoch = *self.epoch.get_or_insert(now);
        let fixed = (windows == Windows::Fixed).then_some(epoch);
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
            log.trim(now, window, fixed);
            if let Some(w) = log.wait(*limit, now, window, fixed) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(t: &mut Throttle, app: &str, at: Instant, windows: Windows) -> bool {
        let limits = Limits {
            app_writes: 3,
            ..Limits::default()
        };
        let counting = Counting {
            limits,
            window: Duration::from_secs(1),
            count_rejected: false,
            windows,
        };
        t.admit(app, true, &counting, at).is_none()
    }

    #[test]
    fn fixed_windows_reset_at_their_boundary_and_sliding_ones_do_not() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        for windows in [Windows::Sliding, Windows::Fixed] {
            let mut t = Throttle::default();
            // Another app's request starts the first window; three writes
            // late in it fill the app's limit, then one comes just after the
            // boundary.
            assert!(admitted(&mut t, "other", ms(0), windows));
            for at in [600, 900, 950, 990] {
                let ok = admitted(&mut t, "app", ms(at), windows);
                assert_eq!(ok, at != 990, "{windows:?} at {at} ms");
            }
            let after = admitted(&mut t, "app", ms(1_010), windows);
            assert_eq!(after, windows == Windows::Fixed, "{windows:?} just after the boundary");
        }
    }
}
