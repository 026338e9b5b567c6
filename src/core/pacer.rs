//! Client-side pacing under the Intune throttling budget.
//!
//! Two rules hold together:
//! - a sliding-window log: the permits granted in any `window` (plus a small
//!   guard for network jitter), however it is aligned, never exceed the
//!   effective budget, so a fresh start cannot release a full bucket and then
//!   refill it inside the same window;
//! - a steady emission interval (GCRA): permits are spread evenly, so a run
//!   settles at the budget instead of bursting and idling.
//!
//! On a 429 the pacer pauses for `Retry-After` and cuts its effective budget
//! (at most once per window) to the lower of a fixed fraction and what Graph
//! actually accepted in the last window, which is the best estimate of the
//! real ceiling when the tenant is shared; each clean window afterwards
//! restores part of it. The clock is passed in, so the rules are tested without sleeping.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Pacing configuration for one class of requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PacerConfig {
    /// Permits per window (Intune per-app: 200 writes, 2,000 of any kind).
    pub budget: u32,
    /// The window the budget applies to (Intune: 20 s).
    pub window: Duration,
    /// Extra width added to the window to absorb network jitter.
    pub guard: Duration,
    /// The lowest fraction of the budget adaptive cuts may reach.
    pub min_factor: f64,
    /// The factor applied to the effective budget on a 429.
    pub cut: f64,
    /// The fraction of the budget restored after each clean window.
    pub recover: f64,
}

impl PacerConfig {
    /// A configuration with the default adaptive behaviour.
    pub fn new(budget: u32, window: Duration) -> Self {
        Self {
            budget: budget.max(1),
            window,
            guard: window / 40,
            min_factor: 0.2,
            cut: 0.8,
            recover: 0.05,
        }
    }
}

/// The pacer's state. Not thread-safe by itself; the engine wraps it.
#[derive(Debug)]
pub struct Pacer {
    cfg: PacerConfig,
    log: VecDeque<(Instant, u32)>,
    in_window: u32,
    accepted: VecDeque<(Instant, u32)>,
    accepted_in_window: u32,
    next_at: Option<Instant>,
    factor: f64,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
    clean_since: Instant,
}

impl Pacer {
    /// A pacer with a full budget.
    pub fn new(cfg: PacerConfig, now: Instant) -> Self {
        Self {
            cfg,
            log: VecDeque::new(),
            in_window: 0,
            accepted: VecDeque::new(),
            accepted_in_window: 0,
            next_at: None,
            factor: 1.0,
            paused_until: None,
            last_cut: None,
            clean_since: now,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PacerConfig {
        &self.cfg
    }

    fn span(&self) -> Duration {
        self.cfg.window + self.cfg.guard
    }

    /// The budget after adaptive cuts.
    pub fn effective_budget(&self) -> u32 {
        ((f64::from(self.cfg.budget) * self.factor).floor() as u32).max(1)
    }

    /// The batch size that packs the effective budget evenly: with a budget of
    /// 190 and at most 20 per batch, ten batches of 19.
    pub fn batch_size(&self, max: usize) -> usize {
        let budget = self.effective_budget() as usize;
        let max = max.max(1);
        if budget <= max {
            return budget;
        }
        let batches = budget.div_ceil(max);
        (budget / batches).max(1)
    }

    fn expire(&mut self, now: Instant) {
        let span = self.span();
        while let Some(&(at, n)) = self.log.front() {
            if now.saturating_duration_since(at) >= span {
                self.log.pop_front();
                self.in_window -= n;
            } else {
                break;
            }
        }
        while let Some(&(at, n)) = self.accepted.front() {
            if now.saturating_duration_since(at) >= span {
                self.accepted.pop_front();
                self.accepted_in_window -= n;
            } else {
                break;
            }
        }
        if self.factor < 1.0 && now.saturating_duration_since(self.clean_since) >= self.span() {
            self.factor = (self.factor + self.cfg.recover).min(1.0);
            self.clean_since = now;
        }
    }

    /// Takes `n` permits now, or says when to ask again.
    pub fn try_acquire(&mut self, n: u32, now: Instant) -> Result<(), Instant> {
        self.expire(now);
        if let Some(until) = self.paused_until.filter(|u| *u > now) {
            return Err(until);
        }
        if let Some(at) = self.next_at.filter(|a| *a > now) {
            return Err(at);
        }
        let budget = self.effective_budget();
        let fits = self.in_window + n <= budget || self.in_window == 0;
        if !fits {
            // Wait for the oldest grant to leave the window.
            let oldest = self.log.front().map_or(now, |(at, _)| *at);
            return Err(oldest + self.span());
        }
        self.log.push_back((now, n));
        self.in_window += n;
        let interval = self.span().mul_f64(f64::from(n) / f64::from(budget));
        self.next_at = Some(self.next_at.map_or(now, |a| a.max(now)) + interval);
        Ok(())
    }

    /// Records `n` requests Graph accepted.
    pub fn on_accepted(&mut self, now: Instant, n: u32) {
        if n > 0 {
            self.accepted.push_back((now, n));
            self.accepted_in_window += n;
        }
    }

    /// Records a 429: pause for `retry_after` and cut the budget (at most
    /// once per window, so one burst of 429s counts once).
    pub fn on_throttled(&mut self, now: Instant, retry_after: Duration) {
        self.expire(now);
        let until = now + retry_after;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        let cut_recently = self
            .last_cut
            .is_some_and(|at| now.saturating_duration_since(at) < self.span());
        if !cut_recently {
            let fixed = self.factor * self.cfg.cut;
            // What Graph accepted in the last window, with a little headroom.
            let observed = f64::from(self.accepted_in_window) * 0.95 / f64::from(self.cfg.budget);
            let estimate = if self.accepted_in_window > 0 {
                observed
            } else {
                fixed
            };
            self.factor = fixed.min(estimate).max(self.cfg.min_factor);
            self.last_cut = Some(now);
        }
        self.clean_since = until;
    }

    /// Permits granted within the current window.
    pub fn in_window(&self) -> u32 {
        self.in_window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a pacer with unbounded demand and returns the grant times.
    fn drive(pacer: &mut Pacer, start: Instant, until: Duration, n: u32) -> Vec<(Duration, u32)> {
        let mut t = start;
        let mut grants = Vec::new();
        while t.duration_since(start) < until {
            match pacer.try_acquire(n, t) {
                Ok(()) => grants.push((t.duration_since(start), n)),
                Err(at) => {
                    assert!(at > t, "asked to retry in the past");
                    t = at;
                }
            }
        }
        grants
    }

    fn max_in_any_window(grants: &[(Duration, u32)], window: Duration) -> u32 {
        grants
            .iter()
            .map(|(start, _)| {
                grants
                    .iter()
                    .filter(|(t, _)| *t >= *start && *t < *start + window)
                    .map(|(_, n)| n)
                    .sum::<u32>()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_window_however_aligned_exceeds_the_budget_and_the_rate_holds() {
        let start = Instant::now();
        let window = Duration::from_secs(20);
        let mut pacer = Pacer::new(PacerConfig::new(190, window), start);
        let size = pacer.batch_size(20) as u32;
        assert_eq!(size, 19);
        let grants = drive(&mut pacer, start, Duration::from_secs(600), size);
        assert!(max_in_any_window(&grants, window) <= 190);
        let total: u32 = grants.iter().map(|(_, n)| n).sum();
        let per_window = f64::from(total) / 30.0;
        assert!(per_window >= 0.95 * 190.0, "{per_window} per window");
    }

    #[test]
    fn a_fresh_pacer_does_not_burst_the_whole_budget() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PacerConfig::new(100, Duration::from_secs(20)), start);
        let grants = drive(&mut pacer, start, Duration::from_secs(5), 10);
        let first_five_seconds: u32 = grants.iter().map(|(_, n)| n).sum();
        assert!(first_five_seconds <= 40, "{first_five_seconds}");
    }

    #[test]
    fn a_429_pauses_cuts_once_per_window_and_recovers() {
        let start = Instant::now();
        let window = Duration::from_secs(20);
        let mut pacer = Pacer::new(PacerConfig::new(200, window), start);
        pacer.on_throttled(start, Duration::from_secs(3));
        pacer.on_throttled(start + Duration::from_millis(10), Duration::from_secs(1));
        assert_eq!(pacer.effective_budget(), 160);
        let at = pacer
            .try_acquire(1, start + Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(at, start + Duration::from_secs(3));
        // Clean windows restore the budget step by step.
        let mut t = start + Duration::from_secs(3);
        for _ in 0..10 {
            t += Duration::from_secs(21);
            let _ = pacer.try_acquire(1, t);
        }
        assert_eq!(pacer.effective_budget(), 200);
    }

    #[test]
    fn a_cut_follows_what_graph_accepted_when_that_is_lower() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PacerConfig::new(190, Duration::from_secs(20)), start);
        pacer.on_accepted(start, 40);
        pacer.on_accepted(start + Duration::from_secs(1), 20);
        pacer.on_throttled(start + Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(pacer.effective_budget(), 57);
        // Acceptances older than the window no longer count.
        let later = start + Duration::from_secs(60);
        pacer.on_accepted(later, 150);
        pacer.on_throttled(later, Duration::ZERO);
        assert!(
            pacer.effective_budget() < 57,
            "{}",
            pacer.effective_budget()
        );
    }

    #[test]
    fn cuts_stop_at_the_floor() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PacerConfig::new(100, Duration::from_secs(20)), start);
        let mut t = start;
        for _ in 0..50 {
            t += Duration::from_secs(25);
            pacer.on_throttled(t, Duration::ZERO);
        }
        assert_eq!(pacer.effective_budget(), 20);
        assert_eq!(pacer.batch_size(20), 20);
    }

    #[test]
    fn batch_sizes_pack_the_budget() {
        let now = Instant::now();
        for (budget, want) in [
            (190, 19),
            (200, 20),
            (100, 20),
            (7, 7),
            (45, 15),
            (1000, 20),
        ] {
            let p = Pacer::new(PacerConfig::new(budget, Duration::from_secs(20)), now);
            assert_eq!(p.batch_size(20), want, "budget {budget}");
        }
    }
}
