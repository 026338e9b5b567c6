//! Client-side pacing under the Intune throttling budget.
//!
//! Graph counts a request when it *arrives*; the client only knows when it
//! sent the request and when the answer came back. A grant is therefore
//! held in the pacer's sliding window from the moment it is sent until
//! `window - min_rtt` after its answer arrived (the latest it can have been
//! counted, measured against the earliest a new request can arrive), plus a
//! small guard. Calls still in flight are always held. With that rule no
//! server-side window, however aligned and however round trips vary, sees
//! more than the budget from this client, and a fresh start cannot release a
//! full bucket and refill it inside one window.
//!
//! Grants are also spread evenly (GCRA) at the rate the rule sustains, so a
//! run settles at the budget instead of bursting and idling.
//!
//! On a 429 the pacer pauses for `Retry-After` and lowers its effective
//! budget (at most once per window) to what Graph accepted in the last
//! window, which is the best estimate of the real ceiling when the tenant is
//! shared with other apps; each clean window afterwards restores part of it.
//! The clock is passed in, so the rules are tested without sleeping.

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
    /// Extra time every grant is held, against timing noise.
    pub guard: Duration,
    /// The lowest fraction of the budget adaptive cuts may reach.
    pub min_factor: f64,
    /// The cut applied on a 429 when nothing is known of what Graph accepted.
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
            guard: window / 100,
            min_factor: 0.2,
            cut: 0.8,
            recover: 0.05,
        }
    }
}

/// A handle on granted permits; give it back with [`Pacer::complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant(u64);

#[derive(Debug)]
struct Held {
    id: u64,
    n: u32,
    sent: Instant,
    done: Option<Instant>,
    /// Whether an HTTP answer came back: only then can the smallest round
    /// trip come off the hold (an aborted or timed-out request may still
    /// reach Graph after it ended here).
    answered: bool,
}

/// Round trips remembered for the latency estimates.
const RTT_SAMPLES: usize = 64;
/// Round trips needed before their minimum is trusted.
const MIN_SAMPLES: usize = 5;

/// The smallest of recent round trips that may come off a hold after an
/// answer: trusted only once it rests on a few samples, and never more than
/// a quarter `window`.
pub fn trusted_min_rtt<'a>(rtts: impl IntoIterator<Item = &'a Duration>, window: Duration) -> Duration {
    let (mut n, mut min) = (0, Duration::MAX);
    for rtt in rtts {
        n += 1;
        min = min.min(*rtt);
    }
    if n < MIN_SAMPLES {
        return Duration::ZERO;
    }
    min.min(window / 4)
}

/// The pacer's state. Not thread-safe by itself; the engine wraps it.
#[derive(Debug)]
pub struct Pacer {
    cfg: PacerConfig,
    held: VecDeque<Held>,
    next_id: u64,
    accepted: VecDeque<(Instant, u32)>,
    accepted_in_window: u32,
    next_at: Option<Instant>,
    factor: f64,
    paused_until: Option<Instant>,
    last_cut: Option<Instant>,
    clean_since: Instant,
    rtts: VecDeque<Duration>,
    min_rtt: Duration,
    mean_rtt: Duration,
    ceiling: Option<f64>,
}

/// Recovery after a 429 is fast up to this fraction of the ceiling then seen.
const PLATEAU: f64 = 0.97;

impl Pacer {
    /// A pacer with a full budget.
    pub fn new(cfg: PacerConfig, now: Instant) -> Self {
        Self {
            cfg,
            held: VecDeque::new(),
            next_id: 0,
            accepted: VecDeque::new(),
            accepted_in_window: 0,
            next_at: None,
            factor: 1.0,
            paused_until: None,
            last_cut: None,
            clean_since: now,
            rtts: VecDeque::with_capacity(RTT_SAMPLES),
            min_rtt: Duration::ZERO,
            mean_rtt: Duration::ZERO,
            ceiling: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PacerConfig {
        &self.cfg
    }

    /// How long a completed grant is held after its answer.
    fn hold_after_answer(&self) -> Duration {
        (self.cfg.window + self.cfg.guard).saturating_sub(self.min_rtt)
    }

    /// The time one grant occupies the window on average: what the steady
    /// emission interval is based on.
    fn cycle(&self) -> Duration {
        self.hold_after_answer() + self.mean_rtt
    }

    /// The budget after adaptive cuts.
    pub fn effective_budget(&self) -> u32 {
        ((f64::from(self.cfg.budget) * self.factor + 1e-9).floor() as u32).max(1)
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

    fn release_at(&self, h: &Held) -> Option<Instant> {
        let hold = if h.answered {
            self.hold_after_answer()
        } else {
            self.cfg.window + self.cfg.guard
        };
        h.done.map(|d| d + hold)
    }

    fn expire(&mut self, now: Instant) {
        let held = std::mem::take(&mut self.held);
        self.held = held
            .into_iter()
            .filter(|h| self.release_at(h).is_none_or(|at| at > now))
            .collect();
        let window = self.cfg.window;
        while let Some(&(at, n)) = self.accepted.front() {
            if now.saturating_duration_since(at) >= window {
                self.accepted.pop_front();
                self.accepted_in_window -= n;
            } else {
                break;
            }
        }
        let clean_for = self.cfg.window + self.cfg.guard;
        if self.factor < 1.0 && now.saturating_duration_since(self.clean_since) >= clean_for {
            // Recover quickly up to just under the ceiling last seen, then
            // probe above it slowly: a shared tenant's ceiling stays put.
            let step = match self.ceiling {
                Some(c) if self.factor >= c * PLATEAU => self.cfg.recover / 5.0,
                Some(c) => self
                    .cfg
                    .recover
                    .min(c * PLATEAU - self.factor)
                    .max(self.cfg.recover / 5.0),
                None => self.cfg.recover,
            };
            self.factor = (self.factor + step).min(1.0);
            if self.ceiling.is_some_and(|c| self.factor > c * 1.2) {
                self.ceiling = None;
            }
            self.clean_since = now;
        }
    }

    /// The mean round trip of recent answered calls (zero before any).
    pub fn mean_rtt(&self) -> Duration {
        self.mean_rtt
    }

    /// Permits currently held in the window (sent, and not yet released).
    pub fn in_window(&self) -> u32 {
        self.held.iter().map(|h| h.n).sum()
    }

    /// Takes `n` permits now, or says when to ask again.
    pub fn try_acquire(&mut self, n: u32, now: Instant) -> Result<Grant, Instant> {
        self.expire(now);
        if let Some(until) = self.paused_until.filter(|u| *u > now) {
            return Err(until);
        }
        if let Some(at) = self.next_at.filter(|a| *a > now) {
            return Err(at);
        }
        let budget = self.effective_budget();
        let held = self.in_window();
        if held + n > budget && held > 0 {
            // The earliest release of a completed grant; with everything in
            // flight, look again shortly (an answer will arrive).
            let at = self
                .held
                .iter()
                .filter_map(|h| self.release_at(h))
                .min()
                .unwrap_or(now + self.cfg.window / 50);
            return Err(at.max(now + Duration::from_millis(1)));
        }
        self.next_id += 1;
        self.held.push_back(Held {
            id: self.next_id,
            n,
            sent: now,
            done: None,
            answered: false,
        });
        let interval = self.cycle().mul_f64(f64::from(n) / f64::from(budget));
        self.next_at = Some(self.next_at.map_or(now, |a| a.max(now)) + interval);
        Ok(Grant(self.next_id))
    }

    /// Records that the call made with `grant` ended. Only calls that got an
    /// HTTP answer (`answered`) teach the pacer about round trips: a timeout
    /// says nothing about how fast a request reaches Graph.
    pub fn complete(&mut self, grant: Grant, now: Instant, answered: bool) {
        let Some(h) = self.held.iter_mut().find(|h| h.id == grant.0) else {
            return;
        };
        h.done = Some(now);
        h.answered = answered;
        if !answered {
            return;
        }
        let rtt = now.saturating_duration_since(h.sent);
        if self.rtts.len() == RTT_SAMPLES {
            self.rtts.pop_front();
        }
        self.rtts.push_back(rtt);
        self.mean_rtt = self.rtts.iter().sum::<Duration>() / self.rtts.len() as u32;
        self.min_rtt = trusted_min_rtt(&self.rtts, self.cfg.window);
    }

    /// Records `n` requests Graph accepted.
    pub fn on_accepted(&mut self, now: Instant, n: u32) {
        if n > 0 {
            self.accepted.push_back((now, n));
            self.accepted_in_window += n;
        }
    }

    /// Records a 429: pause for `retry_after` and lower the budget (at most
    /// once per window, so one burst of 429s counts once).
    pub fn on_throttled(&mut self, now: Instant, retry_after: Duration) {
        self.expire(now);
        let until = now + retry_after;
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
        let cut_recently = self
            .last_cut
            .is_some_and(|at| now.saturating_duration_since(at) < self.cfg.window);
        if !cut_recently {
            // What Graph accepted in the last window, with a little headroom,
            // is the best estimate of the real ceiling; without it, a fixed cut.
            let estimate = if self.accepted_in_window > 0 {
                let seen = f64::from(self.accepted_in_window) / f64::from(self.cfg.budget);
                self.ceiling = Some(seen.min(1.0));
                seen * 0.95
            } else {
                self.factor * self.cfg.cut
            };
            self.factor = self.factor.min(estimate).max(self.cfg.min_factor);
            if self.factor >= 1.0 {
                self.factor = 1.0 - self.cfg.recover;
            }
            self.last_cut = Some(now);
        }
        self.clean_since = until;
    }
}

/// Permits one call holds in a shared pacer. [`Permit::complete`] records
/// the call's end; dropping the permit without it (the task panicked, or
/// the run was cancelled and its tasks aborted) records the end as now,
/// with no answer, so the permits run out one window later instead of
/// never.
pub struct Permit {
    pacer: std::sync::Arc<std::sync::Mutex<Pacer>>,
    grant: Option<Grant>,
}

impl Permit {
    /// Holds `grant`, taken from `pacer`.
    pub fn new(pacer: std::sync::Arc<std::sync::Mutex<Pacer>>, grant: Grant) -> Self {
        Self {
            pacer,
            grant: Some(grant),
        }
    }

    /// Records that the call ended at `now`; `answered` when an HTTP answer
    /// came back.
    pub fn complete(mut self, now: Instant, answered: bool) {
        if let Some(grant) = self.grant.take() {
            self.pacer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .complete(grant, now, answered);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            self.pacer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .complete(grant, Instant::now(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a pacer with unbounded demand; each call takes `rtt(i)` and
    /// "arrives" at the server `arrive(i)` after it is sent. Returns arrival
    /// times and sizes.
    fn drive(
        pacer: &mut Pacer,
        start: Instant,
        until: Duration,
        n: u32,
        rtt: impl Fn(usize) -> Duration,
        arrive: impl Fn(usize) -> Duration,
    ) -> Vec<(Duration, u32)> {
        let mut t = start;
        let mut arrivals = Vec::new();
        let mut pending: Vec<(Instant, Grant)> = Vec::new();
        let mut i = 0;
        while t.duration_since(start) < until {
            pending.sort_by_key(|(at, _)| *at);
            while pending.first().is_some_and(|(at, _)| *at <= t) {
                let (at, g) = pending.remove(0);
                pacer.complete(g, at, true);
            }
            match pacer.try_acquire(n, t) {
                Ok(g) => {
                    arrivals.push((t.duration_since(start) + arrive(i), n));
                    pending.push((t + rtt(i), g));
                    i += 1;
                }
                Err(at) => {
                    assert!(at > t, "asked to retry in the past");
                    let next_done = pending.iter().map(|(a, _)| *a).min().unwrap_or(at);
                    t = at.min(next_done).max(t + Duration::from_micros(1));
                }
            }
        }
        arrivals
    }

    fn max_in_any_window(arrivals: &[(Duration, u32)], window: Duration) -> u32 {
        arrivals
            .iter()
            .map(|(start, _)| {
                arrivals
                    .iter()
                    .filter(|(t, _)| *t >= *start && *t < *start + window)
                    .map(|(_, n)| n)
                    .sum::<u32>()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn no_server_window_exceeds_the_budget_and_the_rate_holds() {
        let start = Instant::now();
        let window = Duration::from_secs(20);
        let mut pacer = Pacer::new(PacerConfig::new(190, window), start);
        let size = pacer.batch_size(20) as u32;
        assert_eq!(size, 19);
        let steady = |_| Duration::from_millis(150);
        let arrivals = drive(&mut pacer, start, Duration::from_secs(600), size, steady, |_| {
            Duration::from_millis(75)
        });
        assert!(max_in_any_window(&arrivals, window) <= 190);
        let total: u32 = arrivals.iter().map(|(_, n)| n).sum();
        let per_window = f64::from(total) / 30.0;
        assert!(per_window >= 0.97 * 190.0, "{per_window} per window");
    }

    #[test]
    fn varying_round_trips_cannot_squeeze_two_windows_into_one() {
        let start = Instant::now();
        let window = Duration::from_secs(2);
        let mut pacer = Pacer::new(PacerConfig::new(190, window), start);
        // Round trips from 80 ms to 1 s; Graph counts each call at a random
        // point of its round trip.
        let rtt = |i: usize| Duration::from_millis(80 + ((i * 7919) % 920) as u64);
        let arrive = |i: usize| rtt(i).mul_f64(((i * 104_729) % 100) as f64 / 100.0);
        let arrivals = drive(&mut pacer, start, Duration::from_secs(120), 19, rtt, arrive);
        assert!(
            max_in_any_window(&arrivals, window) <= 190,
            "{}",
            max_in_any_window(&arrivals, window)
        );
        let total: u32 = arrivals.iter().map(|(_, n)| n).sum();
        assert!(f64::from(total) / 60.0 >= 0.7 * 190.0, "{total}");
    }

    #[test]
    fn a_fresh_pacer_does_not_burst_the_whole_budget() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PacerConfig::new(100, Duration::from_secs(20)), start);
        let fast = |_| Duration::from_millis(10);
        let arrivals = drive(&mut pacer, start, Duration::from_secs(5), 10, fast, fast);
        let first_five_seconds: u32 = arrivals.iter().map(|(_, n)| n).sum();
        assert!(first_five_seconds <= 40, "{first_five_seconds}");
    }

    #[test]
    fn calls_in_flight_hold_their_permits() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PacerConfig::new(40, Duration::from_secs(1)), start);
        let g1 = pacer.try_acquire(20, start).unwrap();
        let later = start + Duration::from_secs(5);
        let _g2 = pacer.try_acquire(20, later).unwrap();
        // Both calls hang: nothing is released however long it takes.
        let answer = later + Duration::from_secs(60);
        assert!(pacer.try_acquire(20, answer).is_err());
        // A timeout teaches nothing about round trips; the hold stays whole.
        pacer.complete(g1, answer, false);
        let free_at = answer + Duration::from_millis(1010);
        assert_eq!(pacer.try_acquire(20, answer + Duration::from_millis(500)), Err(free_at));
        assert!(pacer.try_acquire(20, free_at).is_ok());
    }

    #[test]
    fn an_unanswered_call_is_held_a_whole_window_whatever_the_round_trips_seen() {
        let start = Instant::now();
        let window = Duration::from_secs(20);
        let mut pacer = Pacer::new(PacerConfig::new(20, window), start);
        // Five answered calls of 2 s: the smallest round trip is trusted.
        let mut t = start;
        for _ in 0..5 {
            let g = pacer.try_acquire(1, t).unwrap();
            t += Duration::from_secs(2);
            pacer.complete(g, t, true);
            t += window * 2;
        }
        let full = pacer.try_acquire(20, t).unwrap();
        // Aborted (a dropped Permit): it may still reach Graph after this.
        pacer.complete(full, t, false);
        let guard = window / 100;
        assert!(pacer.try_acquire(20, t + window - Duration::from_secs(1)).is_err());
        assert!(pacer.try_acquire(20, t + window + guard).is_ok());
    }

    #[test]
    fn a_429_pauses_cuts_once_per_window_and_recovers() {
        let start = Instant::now();
        let window = Duration::from_secs(20);
        let mut pacer = Pacer::new(PacerConfig::new(200, window), start);
        pacer.on_throttled(start, Duration::from_secs(3));
        pacer.on_throttled(start + Duration::from_millis(10), Duration::from_secs(1));
        assert_eq!(pacer.effective_budget(), 160);
        let at = pacer.try_acquire(1, start + Duration::from_secs(1)).unwrap_err();
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
    fn a_cut_follows_what_graph_accepted() {
        let start = Instant::now();
        let mut pacer = Pacer::new(PacerConfig::new(190, Duration::from_secs(20)), start);
        pacer.on_accepted(start, 40);
        pacer.on_accepted(start + Duration::from_secs(1), 20);
        pacer.on_throttled(start + Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(pacer.effective_budget(), 57);
        // Acceptances older than the window no longer count.
        let later = start + Duration::from_secs(60);
        pacer.on_accepted(later, 50);
        pacer.on_throttled(later, Duration::ZERO);
        assert_eq!(pacer.effective_budget(), 47);
        // A 429 while Graph accepted more than the budget: a small step down.
        let mut p = Pacer::new(PacerConfig::new(100, Duration::from_secs(20)), start);
        p.on_accepted(start, 100);
        p.on_throttled(start, Duration::ZERO);
        assert_eq!(p.effective_budget(), 95);
    }

    #[test]
    fn after_a_cut_recovery_stops_short_of_the_ceiling_seen_then_probes_slowly() {
        let start = Instant::now();
        let window = Duration::from_secs(20);
        let mut p = Pacer::new(PacerConfig::new(200, window), start);
        p.on_accepted(start, 120);
        p.on_throttled(start, Duration::ZERO);
        assert_eq!(p.effective_budget(), 114);
        let mut t = start;
        let mut seen = Vec::new();
        for _ in 0..6 {
            t += Duration::from_secs(21);
            let _ = p.try_acquire(1, t);
            seen.push(p.effective_budget());
        }
        // Up to 97% of 120 at once, then a step of 1% of the budget per clean window.
        assert_eq!(seen, vec![116, 118, 120, 122, 124, 126]);
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
        for (budget, want) in [(190, 19), (200, 20), (100, 20), (7, 7), (45, 15), (1000, 20)] {
            let p = Pacer::new(PacerConfig::new(budget, Duration::from_secs(20)), now);
            assert_eq!(p.batch_size(20), want, "budget {budget}");
        }
    }
}
