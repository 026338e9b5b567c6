//! The lease algorithm a budget shared by many instances is kept by (pure:
//! no store, no clock of its own). A grant is a lease on permits over a
//! time interval, from when the call may be sent until one window after its
//! answer; at no instant do the leases covering it hold more permits than
//! the budget, so no sliding window, summed over all instances, sees more
//! requests than the budget. When the budget is taken now, the grant is a
//! reservation starting at the earliest time the permits are free. A 429
//! pauses everyone and lowers the ceiling, which each clean window restores
//! in part. The store that shares [`BudgetState`] lives in `state::budget`.
//!
//! The state is read back from a table other writers can reach, so nothing
//! in it is trusted as it is: a pause ends no later than the longest one the
//! service sets, a lease ends within a few windows of now and holds no more
//! than the budget, and a state with more leases than a budget can hold is
//! treated as unreadable (a pause past every lease it may have held). A
//! grant sorts the leases once and sweeps them: its cost grows with the
//! number of leases times its logarithm, and that number is bounded.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use super::duration::epoch_ms as ms;

/// The most leases one budget's state holds: more than a budget's leases
/// over the windows a lease may reach ahead (190 writes a window, one permit
/// each, over six windows, is 1,140), and few enough for the state to stay
/// well under DynamoDB's 400 KB item. A grant that would add one more waits
/// for a lease to end; a state read back with more is unreadable.
pub const MAX_LEASES: usize = 2_048;
/// How many windows ahead of now a reservation may start.
const RESERVE_WINDOWS: u32 = 4;
/// The most windows a lease is held (an answer slower than that extends
/// it when it comes).
const MAX_HOLD_WINDOWS: u32 = 4;

/// The rules a budget is kept by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetRules {
    /// Permits per window.
    pub budget: u32,
    /// The window.
    pub window: Duration,
    /// How far instances' clocks may differ: a lease counts until this long
    /// after its end (a fraction of the window, never a fixed time).
    pub skew: Duration,
    /// The longest pause a 429 sets (`ATTEST_MAX_RETRY_AFTER`): a pause read
    /// back that ends later is cut to it.
    pub max_pause: Duration,
}

impl BudgetRules {
    /// Rules for `budget` per `window`, allowing 2% of the window for clock
    /// skew between instances, and pauses of up to a minute (the default
    /// `ATTEST_MAX_RETRY_AFTER`).
    pub fn new(budget: u32, window: Duration) -> Self {
        Self {
            budget: budget.max(1),
            window,
            skew: window / 50,
            max_pause: Duration::from_secs(60),
        }
    }

    /// These rules with pauses of up to `max_pause`.
    #[must_use]
    pub fn with_max_pause(self, max_pause: Duration) -> Self {
        Self { max_pause, ..self }
    }

    fn window_ms(&self) -> u64 {
        (self.window.as_millis() as u64).max(1)
    }

    fn skew_ms(&self) -> u64 {
        self.skew.as_millis() as u64
    }

    /// The pause that replaces an unreadable state: whatever it held ends
    /// within a lease's longest hold (a window and its allowances).
    fn unreadable_pause_ms(&self) -> u64 {
        2 * self.window_ms() + self.skew_ms()
    }

    /// The latest a pause set by the service may end, from now: the
    /// longest `Retry-After` honoured, or the unreadable state's pause.
    fn longest_pause_ms(&self) -> u64 {
        (self.max_pause.as_millis() as u64).max(self.unreadable_pause_ms()) + self.skew_ms()
    }

    /// The latest a lease granted now may end, from now: a reservation's
    /// furthest start and the longest hold.
    fn horizon_ms(&self) -> u64 {
        u64::from(RESERVE_WINDOWS + MAX_HOLD_WINDOWS) * self.window_ms() + self.skew_ms()
    }
}

/// Permits leased from `start_ms` until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Names the lease in the shared state.
    pub id: String,
    /// Permits.
    pub n: u32,
    /// When the call may be sent, ms since the epoch.
    pub start_ms: u64,
    /// When the permits come back, ms since the epoch.
    pub until_ms: u64,
}

/// What an instance asks of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    /// Permits (the calls in one `$batch`).
    pub n: u32,
    /// How long the permits are held from the start: one window plus the
    /// time the answer may take.
    pub hold: Duration,
    /// The earliest start that is of use: the grant's answer has to come
    /// back from the table before the call can go.
    pub not_before: SystemTime,
    /// The latest start that is of use (the caller's deadline).
    pub latest_start: SystemTime,
    /// When the permits are not free now (the budget is full), also
    /// reserve a spare lease of the same size behind the first, for the
    /// caller's next call: one table request then serves two calls.
    pub spare: bool,
}

/// What a granted ask holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease for this call.
    pub lease: Lease,
    /// A spare for the next call, when one was asked for and the budget
    /// was full.
    pub spare: Option<Lease>,
}

/// What asking for permits gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The permits, until the lease ends (and perhaps a spare lease).
    Granted(LeaseGrant),
    /// None now; ask again at this time.
    WaitUntil(SystemTime),
}

/// One lease in the shared state.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeldLease {
    pub(crate) id: String,
    pub(crate) n: u32,
    pub(crate) start: u64,
    pub(crate) until: u64,
    pub(crate) holder: String,
}

/// The shared state of one budget.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BudgetState {
    /// Every lease not yet over.
    pub(crate) leases: Vec<HeldLease>,
    pub(crate) paused_until: u64,
    /// The lowered ceiling after a 429, if any, and when it was set.
    pub(crate) ceiling: Option<u32>,
    pub(crate) cut_at: u64,
    /// Read from an item that could not be decoded: what it held is not
    /// known.
    #[serde(skip)]
    pub(crate) unreadable: bool,
    /// Values read back out of bounds were repaired: the state is to be
    /// written back even when nothing is granted.
    #[serde(skip)]
    pub(crate) repaired: bool,
}

impl BudgetState {
    /// Brings every value read back within what the service itself
    /// writes: a pause no later than the longest one it sets, a ceiling no
    /// higher than the budget and cut no later than now, a lease no larger
    /// than the budget and ending within the horizon. More leases than
    /// [`MAX_LEASES`] cannot be told apart from a forgery: the state is
    /// then unreadable.
    fn repair(&mut self, now: u64, rules: &BudgetRules) {
        let mut repaired = false;
        let pause_bound = now.saturating_add(rules.longest_pause_ms());
        if self.paused_until > pause_bound {
            self.paused_until = pause_bound;
            repaired = true;
        }
        if self.cut_at > now {
            self.cut_at = now;
            repaired = true;
        }
        if let Some(c) = self.ceiling
            && c > rules.budget
        {
            self.ceiling = Some(rules.budget);
            repaired = true;
        }
        let horizon = now.saturating_add(rules.horizon_ms());
        for l in &mut self.leases {
            // A call larger than the budget holds the whole budget, no more
            // (no write needed: it is read the same way every time).
            l.n = l.n.min(rules.budget);
            if l.until > horizon {
                l.until = horizon;
                repaired = true;
            }
            if l.start > l.until {
                l.start = l.until;
                repaired = true;
            }
        }
        if self.leases.len() > MAX_LEASES {
            self.unreadable = true;
            repaired = true;
        }
        if repaired {
            tracing::warn!(
                metric = "BudgetStateRepaired",
                leases = self.leases.len(),
                "the shared budget's state held values out of bounds; they were cut to the service's own limits"
            );
        }
        self.repaired |= repaired;
    }

    pub(crate) fn prune(&mut self, now: u64, rules: &BudgetRules) {
        self.repair(now, rules);
        if std::mem::take(&mut self.unreadable) {
            // Whatever the unreadable item held ends within a lease's
            // longest hold (a window and its allowances): pause past it.
            self.leases.clear();
            self.paused_until = self.paused_until.max(now + rules.unreadable_pause_ms());
        }
        let skew = rules.skew_ms();
        self.leases.retain(|l| l.until.saturating_add(skew) > now);
    }

    /// The permits held as steps: from each time on (in order), the sum the
    /// leases hold, a lease counting from its start until `skew` after its
    /// end. One sort of the leases.
    fn steps(&self, skew: u64) -> Vec<(u64, u64)> {
        let mut events: Vec<(u64, bool, u64)> = Vec::with_capacity(2 * self.leases.len());
        for l in &self.leases {
            let end = l.until.saturating_add(skew);
            if end > l.start && l.n > 0 {
                events.push((l.start, true, u64::from(l.n)));
                events.push((end, false, u64::from(l.n)));
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let mut steps: Vec<(u64, u64)> = Vec::with_capacity(events.len());
        let mut level = 0u64;
        for (t, starts, n) in events {
            // Every end comes after its own start, so the level never
            // drops below zero once a time's events are all applied.
            level = if starts { level + n } else { level.saturating_sub(n) };
            match steps.last_mut() {
                Some(last) if last.0 == t => last.1 = level,
                _ => steps.push((t, level)),
            }
        }
        steps
    }

    /// The budget in force: the ceiling after a cut, restored by 5% of the
    /// budget for every whole window since.
    pub(crate) fn effective(&self, now: u64, rules: &BudgetRules) -> u32 {
        match self.ceiling {
            None => rules.budget,
            Some(c) => {
                let windows = now.saturating_sub(self.cut_at) / (rules.window.as_millis() as u64).max(1);
                let restored = c as u64 + windows * (rules.budget as u64 / 20).max(1);
                restored.min(rules.budget as u64) as u32
            }
        }
    }

    /// Permits held now.
    pub(crate) fn held(&self, now: u64) -> u32 {
        let held: u64 = self
            .leases
            .iter()
            .filter(|l| l.start <= now && now < l.until)
            .map(|l| u64::from(l.n))
            .sum();
        u32::try_from(held).unwrap_or(u32::MAX)
    }

    /// Leases `ask.n` permits to `holder` from the earliest time at or after
    /// `now` and `not_before` (and after any pause) that keeps every
    /// instant within the ceiling, or says when to ask again if that is
    /// after `ask.latest_start`.
    pub(crate) fn grant_from(
        &mut self,
        ask: &Ask,
        now: u64,
        not_before: u64,
        holder: &str,
        rules: &BudgetRules,
    ) -> Result<Lease, u64> {
        self.prune(now, rules);
        let skew = rules.skew_ms();
        let hold = (ask.hold.as_millis() as u64).clamp(1, u64::from(MAX_HOLD_WINDOWS) * rules.window_ms());
        // A caller that asked for "now" asked a moment ago; no reservation
        // starts further ahead than a few windows.
        let latest = ms(ask.latest_start)
            .max(now)
            .min(now + u64::from(RESERVE_WINDOWS) * rules.window_ms());
        let earliest = now.max(not_before).max(self.paused_until);
        if self.leases.len() >= MAX_LEASES {
            // Full: ask again when the first lease is over.
            let first_end = self.leases.iter().map(|l| l.until.saturating_add(skew)).min();
            return Err(first_end.unwrap_or(now).max(earliest).max(now + 1));
        }
        let mut starts: Vec<u64> = std::iter::once(earliest)
            .chain(
                self.leases
                    .iter()
                    .map(|l| l.until.saturating_add(skew))
                    .filter(|&e| e > earliest),
            )
            .collect();
        starts.sort_unstable();
        starts.dedup();
        // The most held over [start, start + hold), for each start in
        // order: a sliding maximum over the steps, each step entering and
        // leaving the window once.
        let steps = self.steps(skew);
        let mut window: VecDeque<usize> = VecDeque::new();
        let mut next = 0;
        for start in starts {
            if start > latest {
                return Err(start);
            }
            while next < steps.len() && steps[next].0 < start.saturating_add(hold) {
                while window.back().is_some_and(|&j| steps[j].1 <= steps[next].1) {
                    window.pop_back();
                }
                window.push_back(next);
                next += 1;
            }
            // A step is over once the next one has begun by `start`.
            while window
                .front()
                .is_some_and(|&j| steps.get(j + 1).is_some_and(|s| s.0 <= start))
            {
                window.pop_front();
            }
            let peak = window.front().map_or(0, |&j| steps[j].1);
            let effective = u64::from(self.effective(start, rules));
            // A call larger than the ceiling still goes when nothing else
            // is held, or it would never go.
            if peak + u64::from(ask.n) <= effective || peak == 0 {
                let lease = Lease {
                    id: uuid::Uuid::new_v4().simple().to_string(),
                    n: ask.n,
                    start_ms: start,
                    until_ms: start + hold,
                };
                self.leases.push(HeldLease {
                    id: lease.id.clone(),
                    n: ask.n,
                    start,
                    until: start + hold,
                    holder: holder.to_owned(),
                });
                return Ok(lease);
            }
        }
        // Not reached: after the last lease ends nothing is held.
        Err(now + 1)
    }

    /// [`BudgetState::grant_from`] at the ask's earliest start.
    pub(crate) fn grant(&mut self, ask: &Ask, now: u64, holder: &str, rules: &BudgetRules) -> Result<Lease, u64> {
        self.grant_from(ask, now, ms(ask.not_before), holder, rules)
    }

    /// Ends lease `id` at `until` when that is earlier: its call's answer
    /// came, so Graph counted the call no later than the answer. Never
    /// before the lease's start.
    pub(crate) fn trim(&mut self, id: &str, until: u64) {
        if let Some(l) = self.leases.iter_mut().find(|l| l.id == id) {
            l.until = l.until.min(until).max(l.start);
        }
    }

    pub(crate) fn on_throttled(&mut self, now: u64, pause_until: u64, rules: &BudgetRules) {
        self.prune(now, rules);
        // Never longer than the longest `Retry-After` honoured.
        let longest = now.saturating_add(rules.max_pause.as_millis() as u64);
        self.paused_until = self.paused_until.max(pause_until.min(longest));
        if now.saturating_sub(self.cut_at) >= rules.window.as_millis() as u64 || self.ceiling.is_none() {
            let seen = self.held(now).max(1);
            let floor = (rules.budget / 5).max(1);
            let cut = ((seen as f64) * 0.95) as u32;
            self.ceiling = Some(cut.clamp(floor, rules.budget.saturating_sub(1).max(1)));
            self.cut_at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::duration::from_epoch_ms as from_ms;

    fn rules() -> BudgetRules {
        BudgetRules::new(190, Duration::from_secs(20))
    }

    /// The rule a grant keeps, by its definition: the most permits the
    /// leases hold at any instant of `[from, to)` (the sum only rises where
    /// a lease starts).
    fn peak(s: &BudgetState, from: u64, to: u64, skew: u64) -> u64 {
        let covers = |t: u64| -> u64 {
            s.leases
                .iter()
                .filter(|l| l.start <= t && t < l.until + skew)
                .map(|l| u64::from(l.n))
                .sum()
        };
        std::iter::once(from)
            .chain(s.leases.iter().map(|l| l.start).filter(|&x| x > from && x < to))
            .map(covers)
            .max()
            .unwrap_or(0)
    }

    fn lease(id: usize, n: u32, start: u64, until: u64) -> HeldLease {
        HeldLease {
            id: format!("l{id}"),
            n,
            start,
            until,
            holder: "forger".into(),
        }
    }

    #[test]
    fn a_grant_starts_where_the_definition_says_whatever_the_leases() {
        // The sweep finds the same start as checking every instant of every
        // candidate's interval one by one.
        let r = rules();
        let skew = r.skew.as_millis() as u64;
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..300 {
            let now = 1_000_000u64;
            let mut s = BudgetState::default();
            for i in 0..rng.usize(0..60) {
                let start = now + rng.u64(0..60_000);
                s.leases
                    .push(lease(i, rng.u32(1..60), start, start + rng.u64(0..25_000)));
            }
            let a = Ask {
                n: rng.u32(1..40),
                hold: Duration::from_millis(rng.u64(1..25_000)),
                not_before: from_ms(now + rng.u64(0..5_000)),
                latest_start: from_ms(now + rng.u64(0..80_000)),
                spare: false,
            };
            let before = s.clone();
            let got = s.clone().grant(&a, now, "x", &r);
            // The first candidate start that fits, by the definition.
            let mut pruned = before.clone();
            pruned.prune(now, &r);
            let earliest = now.max(ms(a.not_before)).max(pruned.paused_until);
            let mut starts: Vec<u64> = std::iter::once(earliest)
                .chain(pruned.leases.iter().map(|l| l.until + skew).filter(|&e| e > earliest))
                .collect();
            starts.sort_unstable();
            starts.dedup();
            let latest = ms(a.latest_start).max(now);
            let hold = a.hold.as_millis() as u64;
            let want = starts
                .into_iter()
                .find(|&t| {
                    let p = peak(&pruned, t, t + hold, skew);
                    t > latest || p + u64::from(a.n) <= u64::from(pruned.effective(t, &r)) || p == 0
                })
                .map(|t| if t > latest { Err(t) } else { Ok(t) });
            assert_eq!(
                got.map(|l| l.start_ms),
                want.unwrap_or(Err(now + 1)),
                "{before:?} {a:?}"
            );
        }
    }

    #[test]
    fn values_read_back_out_of_bounds_are_cut_to_the_services_own_limits() {
        let r = rules().with_max_pause(Duration::from_secs(60));
        let now = 1_000_000_000u64;
        let year_9999 = 253_402_300_799_000u64;
        // A pause "until 9999" ends within ATTEST_MAX_RETRY_AFTER.
        let mut s = BudgetState {
            paused_until: year_9999,
            ..Default::default()
        };
        let at = s.grant(&ask(19, now), now, "b", &r).unwrap_err();
        assert_eq!(at, now + 60_000 + r.skew.as_millis() as u64);
        assert!(s.repaired, "the repair is to be written back");
        // Leases "until 9999" holding every permit there is end within a
        // few windows, and no sum of permits overflows.
        let mut s = BudgetState {
            leases: vec![
                lease(0, u32::MAX, now - 1_000, year_9999),
                lease(1, u32::MAX, now - 1_000, year_9999),
            ],
            ceiling: Some(1),
            cut_at: year_9999,
            ..Default::default()
        };
        let at = s.grant(&ask(19, now), now, "b", &r).unwrap_err();
        let skew = r.skew.as_millis() as u64;
        assert_eq!(at, now + r.horizon_ms() + skew);
        assert!(s.repaired && s.cut_at <= now);
        assert!(s.leases.iter().all(|l| l.n <= 190 && l.until <= now + r.horizon_ms()));
        // Once the leases are over, the budget grants again, and the
        // ceiling cut "in 9999" restores from now.
        let later = at + 1;
        assert!(s.grant(&ask(19, later), later, "b", &r).is_ok());
        assert!(s.effective(now + 20 * 20_000, &r) > 1);
        // A 429's pause is never longer than the longest Retry-After.
        let mut t = BudgetState::default();
        t.on_throttled(now, year_9999, &r);
        assert_eq!(t.paused_until, now + 60_000);
    }

    #[test]
    fn more_leases_than_a_budget_holds_make_the_state_unreadable_and_a_grant_never_adds_past_the_bound() {
        let r = rules();
        let now = 1_000_000_000u64;
        let mut s = BudgetState {
            leases: (0..5_200).map(|i| lease(i, 1, now, now + 10_000)).collect(),
            ..Default::default()
        };
        let at = s.grant(&ask(1, now), now, "b", &r).unwrap_err();
        assert!(s.leases.is_empty(), "the forged leases are dropped");
        assert_eq!(at, now + r.unreadable_pause_ms(), "a pause past every lease they held");
        assert!(s.repaired);

        // Granted one by one, the leases stop at the bound: the next ask
        // waits for the first to end.
        let mut s = BudgetState::default();
        let big = BudgetRules::new(1_000_000, Duration::from_secs(20));
        for _ in 0..MAX_LEASES {
            s.grant(&ask(1, now), now, "a", &big).unwrap();
        }
        assert_eq!(s.leases.len(), MAX_LEASES);
        let at = s.grant(&ask(1, now), now, "a", &big).unwrap_err();
        assert_eq!(at, now + 20_000 + big.skew.as_millis() as u64);
        assert_eq!(s.leases.len(), MAX_LEASES);
    }

    #[test]
    fn no_reservation_starts_more_than_a_few_windows_ahead() {
        let r = rules();
        let mut s = BudgetState::default();
        let t = 1_000_000;
        // The budget is taken for ten windows ahead, by reservations.
        let mut last = t;
        while let Ok(l) = s.grant(&ask(190, t + 3_600_000), t, "a", &r) {
            last = l.start_ms;
        }
        assert!(last <= t + 4 * 20_000, "a reservation {} ms ahead", last - t);
        assert!(s.leases.iter().all(|l| l.until <= t + r.horizon_ms()));
    }

    fn ask(n: u32, latest: u64) -> Ask {
        Ask {
            n,
            hold: Duration::from_secs(20),
            not_before: from_ms(0),
            latest_start: from_ms(latest),
            spare: false,
        }
    }

    #[test]
    fn no_more_than_the_budget_is_leased_at_once_and_a_full_budget_reserves_the_next_free_time() {
        let r = rules();
        let mut s = BudgetState::default();
        let t = 1_000_000;
        for _ in 0..10 {
            assert_eq!(s.grant(&ask(19, t), t, "a", &r).unwrap().start_ms, t);
        }
        let free = t + 20_000 + r.skew.as_millis() as u64;
        // Only now is of use: ask again when the permits come back.
        assert_eq!(s.grant(&ask(19, t + 5_000), t, "b", &r).unwrap_err(), free);
        // Later is of use: a reservation starting then.
        let reserved = s.grant(&ask(19, t + 60_000), t, "b", &r).unwrap();
        assert_eq!((reserved.start_ms, reserved.until_ms), (free, free + 20_000));
        // The next one queues behind it, not beside it beyond the budget.
        for _ in 0..9 {
            assert_eq!(s.grant(&ask(19, t + 60_000), t, "c", &r).unwrap().start_ms, free);
        }
        let next = s.grant(&ask(19, t + 40_000), t, "c", &r).unwrap_err();
        assert_eq!(next, free + 20_000 + r.skew.as_millis() as u64);
    }

    #[test]
    fn no_instant_ever_holds_more_than_the_budget_whatever_the_asks() {
        let r = rules();
        let skew = r.skew.as_millis() as u64;
        let mut s = BudgetState::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut now = 1_000_000u64;
        let mut granted = Vec::new();
        for _ in 0..2_000 {
            now += rng.u64(0..400);
            let a = Ask {
                n: rng.u32(1..=20),
                hold: Duration::from_millis(rng.u64(20_000..21_000)),
                not_before: from_ms(now + rng.u64(0..50)),
                latest_start: from_ms(now + rng.u64(0..30_000)),
                spare: false,
            };
            if let Ok(l) = s.grant(&a, now, "x", &r) {
                assert!(l.start_ms >= ms(a.not_before) && l.start_ms <= ms(a.latest_start));
                granted.push(l);
            }
        }
        // 400 s of asks at 190 permits a window (~10 a call): about 360 fit.
        assert!(granted.len() > 300, "{} granted", granted.len());
        for l in &granted {
            let at = l.start_ms;
            let held: u32 = granted
                .iter()
                .filter(|o| o.start_ms <= at && at < o.until_ms + skew)
                .map(|o| o.n)
                .sum();
            assert!(held <= 190, "{held} permits held at {at}");
        }
    }

    #[test]
    fn a_trimmed_lease_frees_its_permits_earlier_and_never_before_it_started() {
        let r = rules();
        let mut s = BudgetState::default();
        let t = 1_000_000;
        let whole = s.grant(&ask(190, t), t, "a", &r).unwrap();
        let skew = r.skew.as_millis() as u64;
        assert_eq!(
            s.grant(&ask(19, t + 60_000), t, "b", &r).unwrap().start_ms,
            whole.until_ms + skew
        );
        s.trim(&whole.id, t + 5_000);
        assert_eq!(
            s.grant(&ask(19, t + 60_000), t, "b", &r).unwrap().start_ms,
            t + 5_000 + skew
        );
        // A later end, or one before the start, changes nothing unsafe.
        s.trim(&whole.id, t + 50_000);
        assert_eq!(s.leases[0].until, t + 5_000);
        s.trim(&whole.id, 0);
        assert_eq!(s.leases[0].until, t);
    }

    #[test]
    fn a_throttle_pauses_everyone_and_cuts_the_ceiling_which_windows_restore() {
        let r = rules();
        let mut s = BudgetState::default();
        let t = 1_000_000;
        for _ in 0..5 {
            s.grant(&ask(19, t), t, "a", &r).unwrap();
        }
        s.on_throttled(t, t + 2_000, &r);
        assert_eq!(s.grant(&ask(1, t + 1), t + 1, "b", &r), Err(t + 2_000));
        assert!(s.grant(&ask(1, t + 30_000), t + 1, "b", &r).unwrap().start_ms >= t + 2_000);
        assert_eq!(s.effective(t, &r), 90, "95% of the 95 leased");
        assert_eq!(s.effective(t + 40_000, &r), 90 + 2 * 9);
        assert_eq!(s.effective(t + 2_000_000, &r), 190);
    }
}
