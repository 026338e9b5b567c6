//! The lease algorithm a budget shared by many instances is kept by (pure:
//! no store, no clock of its own). A grant is a lease on permits over a
//! time interval, from when the call may be sent until one window after its
//! answer; at no instant do the leases covering it hold more permits than
//! the budget, so no sliding window, summed over all instances, sees more
//! requests than the budget. When the budget is taken now, the grant is a
//! reservation starting at the earliest time the permits are free. A 429
//! pauses everyone and lowers the ceiling, which each clean window restores
//! in part. The store that shares [`BudgetState`] lives in `state::budget`.

use std::time::{Duration, SystemTime};

use super::duration::epoch_ms as ms;

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
}

impl BudgetRules {
    /// Rules for `budget` per `window`, allowing 2% of the window for clock
    /// skew between instances.
    pub fn new(budget: u32, window: Duration) -> Self {
        Self {
            budget: budget.max(1),
            window,
            skew: window / 50,
        }
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
}

impl BudgetState {
    pub(crate) fn prune(&mut self, now: u64, rules: &BudgetRules) {
        if std::mem::take(&mut self.unreadable) {
            // Whatever the unreadable item held ends within a lease's
            // longest hold (a window and its allowances): pause past it.
            let pause = 2 * rules.window.as_millis() as u64 + rules.skew.as_millis() as u64;
            self.paused_until = self.paused_until.max(now + pause);
        }
        let skew = rules.skew.as_millis() as u64;
        self.leases.retain(|l| l.until + skew > now);
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
        self.peak(now, now + 1, 0)
    }

    /// The most permits the leases hold at any instant of `[from, to)`, a
    /// lease counting until `skew` after its end.
    pub(crate) fn peak(&self, from: u64, to: u64, skew: u64) -> u32 {
        let covers = |t: u64| -> u32 {
            self.leases
                .iter()
                .filter(|l| l.start <= t && t < l.until + skew)
                .map(|l| l.n)
                .sum()
        };
        // The sum only rises where a lease starts.
        std::iter::once(from)
            .chain(self.leases.iter().map(|l| l.start).filter(|&s| s > from && s < to))
            .map(covers)
            .max()
            .unwrap_or(0)
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
        let skew = rules.skew.as_millis() as u64;
        let hold = ask.hold.as_millis() as u64;
        // A caller that asked for "now" asked a moment ago.
        let latest = ms(ask.latest_start).max(now);
        let earliest = now.max(not_before).max(self.paused_until);
        let mut starts: Vec<u64> = std::iter::once(earliest)
            .chain(self.leases.iter().map(|l| l.until + skew).filter(|&e| e > earliest))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        for start in starts {
            if start > latest {
                return Err(start);
            }
            let effective = self.effective(start, rules);
            let peak = self.peak(start, start + hold, skew);
            // A call larger than the ceiling still goes when nothing else
            // is held, or it would never go.
            if peak + ask.n <= effective || peak == 0 {
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
        self.paused_until = self.paused_until.max(pause_until);
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
