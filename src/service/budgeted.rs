//! Graph behind the shared budget: every `$batch` call first leases its
//! permits from the budget all instances share (one lease per call), holds
//! them until one window after its answer, and reports a 429 to every
//! instance. Without a shared budget the calls go straight through, paced
//! by the engine's own pacer alone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::core::device::DeviceRef;
use crate::core::filter::DeviceFilter;
use crate::core::gateway::{
    CallFailure, DeviceGateway, DeviceInfo, FailureKind, GatewayError, GatewayStats, ItemAnswer,
};
use crate::core::status::{StatusGateway, StatusReport};
use crate::state::budget::{Acquired, Ask, BudgetRules, Lease, SharedBudget};

/// Round trips remembered to size a lease.
const RTT_SAMPLES: usize = 20;
/// Read calls served by one read lease: reads are far below their budget
/// (every device is read once, written once, and reads may be ten times
/// the writes), so one table request covers several read batches.
const READ_POOL_CALLS: u32 = 5;

/// One budget: its key in the shared state and its rules.
#[derive(Debug, Clone)]
pub struct BudgetKey {
    /// `budget#<tenant>#<client>#writes` or `#reads`.
    pub key: String,
    /// The rules.
    pub rules: BudgetRules,
}

struct Shared {
    budget: Arc<dyn SharedBudget>,
    writes: BudgetKey,
    reads: BudgetKey,
    rtts: Mutex<VecDeque<Duration>>,
    /// Recent round trips of the budget's own table requests.
    store_rtts: Mutex<VecDeque<Duration>>,
    /// The read lease calls draw on, its permits left and until when
    /// (ms since the epoch) a call may still be sent under it.
    read_pool: tokio::sync::Mutex<Option<(Lease, u32, u64)>>,
    /// Spare leases granted with a reservation, per budget key, for this
    /// instance's next calls.
    spares: Mutex<std::collections::HashMap<String, VecDeque<Lease>>>,
}

/// A gateway whose calls draw on the shared budget.
pub struct BudgetedGateway<G> {
    inner: Arc<G>,
    shared: Option<Shared>,
}

impl<G: DeviceGateway> BudgetedGateway<G> {
    /// `inner` with no shared budget.
    pub fn alone(inner: Arc<G>) -> Self {
        Self { inner, shared: None }
    }

    /// `inner` drawing on `budget` for writes and reads.
    pub fn shared(inner: Arc<G>, budget: Arc<dyn SharedBudget>, writes: BudgetKey, reads: BudgetKey) -> Self {
        Self {
            inner,
            shared: Some(Shared {
                budget,
                writes,
                reads,
                rtts: Mutex::new(VecDeque::new()),
                store_rtts: Mutex::new(VecDeque::new()),
                read_pool: tokio::sync::Mutex::new(None),
                spares: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// The gateway behind the budget.
    pub fn inner(&self) -> &Arc<G> {
        &self.inner
    }
}

impl Shared {
    /// How long a lease is held beyond its window: a call reaches Graph
    /// within a round trip of being sent, so half again the longest recent
    /// round trip, and a two-hundredth of the window for a busy host waking
    /// late. (A late answer extends the lease after the fact.)
    fn rtt_allowance(&self, rules: &BudgetRules) -> Duration {
        let graph = longest(&self.rtts).unwrap_or(rules.window / 20);
        graph * 3 / 2 + rules.window / 200
    }

    /// How long the grant takes to come back from the table: a lease
    /// starts no earlier, since no call can go before it.
    fn store_allowance(&self) -> Duration {
        longest(&self.store_rtts).unwrap_or_default() * 3 / 2
    }

    /// How late after its start a call may still be sent under a lease:
    /// the allowance less one Graph round trip for the request to arrive.
    fn lateness_allowed(&self, rules: &BudgetRules) -> u64 {
        let graph = longest(&self.rtts).unwrap_or(rules.window / 20);
        self.rtt_allowance(rules).saturating_sub(graph).as_millis() as u64
    }

    /// The latest instant a call may start and still have its answer back
    /// by `deadline`: the engine's own rule (two round trips before its
    /// cutoff), with the longest recent round trip, or a twentieth of the
    /// window before any was seen. A lease that would start later is of no
    /// use: its call would end as an answer lost.
    fn latest_useful_start(&self, rules: &BudgetRules, deadline: Instant) -> Instant {
        let graph = longest(&self.rtts).unwrap_or(rules.window / 20);
        deadline.checked_sub(graph * 2).unwrap_or_else(Instant::now)
    }

    /// The smallest recent round trip, by the local pacer's rule
    /// ([`crate::core::pacer::trusted_min_rtt`]).
    fn min_rtt(&self, rules: &BudgetRules) -> Duration {
        let samples = self.rtts.lock().unwrap_or_else(|p| p.into_inner());
        crate::core::pacer::trusted_min_rtt(samples.iter(), rules.window)
    }

    fn record_rtt(&self, rtt: Duration) {
        remember(&self.rtts, rtt);
    }

    /// A spare lease this instance holds for `which` that fits a call of
    /// `n` permits sent by `deadline`, if any. Spares whose start passed
    /// too long ago to cover the call's answer and a window are given back.
    async fn take_spare(&self, which: &BudgetKey, n: u32, deadline: Instant) -> Option<Lease> {
        let now = crate::state::epoch_ms(SystemTime::now());
        let latest = now + deadline.saturating_duration_since(Instant::now()).as_millis() as u64;
        let slack = self.lateness_allowed(&which.rules);
        let (usable, stale) = {
            let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
            let queue = spares.entry(which.key.clone()).or_default();
            let mut stale = Vec::new();
            let mut usable = None;
            while let Some(lease) = queue.pop_front() {
                if lease.start_ms + slack >= now && lease.start_ms <= latest && lease.n >= n {
                    usable = Some(lease);
                    break;
                }
                stale.push(lease);
            }
            (usable, stale)
        };
        for lease in stale {
            if let Err(e) = self.budget.release(&which.key, &lease).await {
                tracing::warn!(error = %e, "a spare lease could not be given back; it runs out");
            }
        }
        usable
    }

    fn keep_spare(&self, which: &BudgetKey, lease: Lease) {
        let mut spares = self.spares.lock().unwrap_or_else(|p| p.into_inner());
        spares.entry(which.key.clone()).or_default().push_back(lease);
    }

    /// Leases `n` permits, waiting for them no later than `deadline`: a
    /// spare from an earlier grant if one fits, else a grant from the
    /// table; a lease that starts later (a reservation) is waited for
    /// without asking again.
    async fn lease(&self, which: &BudgetKey, n: u32, deadline: Instant) -> Option<Lease> {
        let deadline = self.latest_useful_start(&which.rules, deadline);
        if let Some(lease) = self.take_spare(which, n, deadline).await
            && self.started_in_time(which, &lease).await
        {
            return Some(lease);
        }
        loop {
            let allowance = self.rtt_allowance(&which.rules);
            let ask = Ask {
                n,
                hold: which.rules.window + allowance,
                not_before: SystemTime::now() + self.store_allowance(),
                latest_start: SystemTime::now() + deadline.saturating_duration_since(Instant::now()),
                spare: true,
            };
            let asked = Instant::now();
            let acquired = self.budget.acquire(&which.key, ask, which.rules).await;
            remember(&self.store_rtts, asked.elapsed());
            let wait = match acquired {
                Ok(Acquired::Granted(grant)) => {
                    if let Some(spare) = grant.spare {
                        self.keep_spare(which, spare);
                    }
                    if self.started_in_time(which, &grant.lease).await {
                        return Some(grant.lease);
                    }
                    Duration::from_millis(1)
                }
                Ok(Acquired::WaitUntil(at)) => at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(Duration::from_millis(1)),
                Err(e) => {
                    tracing::warn!(error = %e, "the shared budget is unavailable; waiting");
                    which.rules.window / 20
                }
            };
            if Instant::now() + wait >= deadline {
                return None;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits for a lease to start. A call must reach Graph soon after its
    /// lease starts (the lease holds one window and an answer's time from
    /// its start, and the next lease may begin right after): an instance
    /// that woke too late (a busy host) gives the lease back rather than
    /// send under it.
    async fn started_in_time(&self, which: &BudgetKey, lease: &Lease) -> bool {
        wait_for_start(lease).await;
        let slack = self.lateness_allowed(&which.rules);
        let now = crate::state::epoch_ms(SystemTime::now());
        if now <= lease.start_ms + slack {
            return true;
        }
        tracing::debug!(
            late_ms = now - lease.start_ms,
            "woke too late for a lease; giving it back"
        );
        if let Err(e) = self.budget.release(&which.key, lease).await {
            tracing::warn!(error = %e, "a late lease could not be given back; it runs out");
        }
        false
    }

    /// Permits for a read call of `n`: drawn from the current read lease
    /// while it has them and is young enough (a quarter of a window after
    /// its start), else a new lease for [`READ_POOL_CALLS`] calls that is
    /// held a quarter of a window longer, so the calls drawn late still
    /// reach Graph inside it.
    async fn read_lease(&self, n: u32, deadline: Instant) -> Option<Lease> {
        let which = &self.reads;
        // Held while a new lease is asked for, so calls launched together
        // wait for it and draw on it instead of each asking.
        let mut pool = self.read_pool.lock().await;
        let now = crate::state::epoch_ms(SystemTime::now());
        if let Some((lease, left, usable_until)) = pool.as_mut()
            && *left >= n
            && now <= *usable_until
            && lease.start_ms <= now
        {
            *left -= n;
            return Some(lease.clone());
        }
        let draw = which.rules.window / 4;
        let pooled = BudgetKey {
            key: which.key.clone(),
            rules: BudgetRules {
                window: which.rules.window + draw,
                ..which.rules
            },
        };
        let lease = self.lease(&pooled, n * READ_POOL_CALLS, deadline).await?;
        let usable_until = lease.start_ms + draw.as_millis() as u64 + self.lateness_allowed(&which.rules);
        *pool = Some((lease.clone(), n * (READ_POOL_CALLS - 1), usable_until));
        Some(lease)
    }

    /// After the call: a lease that ends too early for a late answer is
    /// extended; a 429 pauses every instance.
    async fn settle<T>(&self, which: &BudgetKey, lease: &Lease, sent: Instant, answers: &[ItemAnswer<T>]) {
        if answers.iter().any(ItemAnswer::answered) {
            self.record_rtt(sent.elapsed());
            // The local pacer's rule: Graph counted the call no later than
            // a round trip before the answer, so it holds one window from
            // then. A read lease serves several calls and is not trimmed.
            if std::ptr::eq(which, &self.writes) {
                // The pacer's guard too: another instance's next call may
                // reach Graph faster than this one's smallest round trip.
                let hold = (which.rules.window + which.rules.window / 100).saturating_sub(self.min_rtt(&which.rules));
                let until = SystemTime::now() + hold;
                self.budget.trim(&which.key, lease, until);
            }
        }
        let needed = SystemTime::now() + which.rules.window;
        if crate::state::epoch_ms(needed) > lease.until_ms
            && let Err(e) = self.budget.extend(&which.key, lease, needed).await
        {
            tracing::warn!(error = %e, "a lease could not be extended");
        }
        let pause = answers
            .iter()
            .filter_map(|a| match a {
                ItemAnswer::Failed(f) if f.kind == FailureKind::Throttled => {
                    Some(f.retry_after.unwrap_or(Duration::from_secs(1)))
                }
                _ => None,
            })
            .max();
        if let Some(pause) = pause
            && let Err(e) = self
                .budget
                .throttled(&which.key, which.rules, SystemTime::now() + pause)
                .await
        {
            tracing::warn!(error = %e, "a 429 could not be shared");
        }
    }
}

/// The longest of the recent round trips, if any.
fn longest(samples: &Mutex<VecDeque<Duration>>) -> Option<Duration> {
    samples.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().max()
}

/// Keeps the last [`RTT_SAMPLES`] round trips.
fn remember(samples: &Mutex<VecDeque<Duration>>, rtt: Duration) {
    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    if samples.len() == RTT_SAMPLES {
        samples.pop_front();
    }
    samples.push_back(rtt);
}

/// Sleeps until a reserved lease starts.
async fn wait_for_start(lease: &Lease) {
    let start = crate::state::from_epoch_ms(lease.start_ms);
    if let Ok(wait) = start.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

fn not_sent<T>(n: usize) -> Vec<ItemAnswer<T>> {
    (0..n)
        .map(|_| {
            ItemAnswer::Failed(CallFailure::without_answer(
                FailureKind::NotSent,
                "the shared budget had no room before the deadline",
            ))
        })
        .collect()
}

impl<G: DeviceGateway> BudgetedGateway<G> {
    /// Makes a call of `n` items under a lease of `which` budget (or
    /// straight through without a shared budget).
    async fn through<T, F, Fut>(
        &self,
        which: fn(&Shared) -> &BudgetKey,
        n: usize,
        deadline: Instant,
        call: F,
    ) -> Vec<ItemAnswer<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Vec<ItemAnswer<T>>>,
    {
        let Some(shared) = &self.shared else {
            return call().await;
        };
        let key = which(shared);
        let leased = if std::ptr::eq(key, &shared.reads) {
            shared.read_lease(n as u32, deadline).await
        } else {
            shared.lease(key, n as u32, deadline).await
        };
        let Some(lease) = leased else {
            return not_sent(n);
        };
        let sent = Instant::now();
        let answers = call().await;
        shared.settle(which(shared), &lease, sent, &answers).await;
        answers
    }
}

impl<G: DeviceGateway> DeviceGateway for BudgetedGateway<G> {
    async fn prepare(&self, deadline: Instant) -> Result<(), GatewayError> {
        self.inner.prepare(deadline).await
    }

    async fn list_devices(
        &self,
        filter: &DeviceFilter,
        limit: usize,
        deadline: Instant,
    ) -> Result<crate::core::gateway::Listing, GatewayError> {
        self.inner.list_devices(filter, limit, deadline).await
    }

    async fn read_devices(&self, devices: &[DeviceRef], deadline: Instant) -> Vec<ItemAnswer<DeviceInfo>> {
        self.through(
            |s| &s.reads,
            devices.len(),
            deadline,
            || self.inner.read_devices(devices, deadline),
        )
        .await
    }

    async fn initiate(&self, devices: &[DeviceRef], deadline: Instant) -> Vec<ItemAnswer<()>> {
        self.through(
            |s| &s.writes,
            devices.len(),
            deadline,
            || self.inner.initiate(devices, deadline),
        )
        .await
    }

    fn stats(&self) -> GatewayStats {
        self.inner.stats()
    }

    fn configuration_error(&self) -> Option<String> {
        self.inner.configuration_error()
    }
}

impl<G: DeviceGateway + StatusGateway> StatusGateway for BudgetedGateway<G> {
    async fn read_status(
        &self,
        devices: &[DeviceRef],
        detail: bool,
        deadline: Instant,
    ) -> Vec<ItemAnswer<StatusReport>> {
        self.through(
            |s| &s.reads,
            devices.len(),
            deadline,
            || self.inner.read_status(devices, detail, deadline),
        )
        .await
    }

    fn detail_wanted(&self) -> bool {
        self.inner.detail_wanted()
    }

    fn detail_refused(&self) {
        self.inner.detail_refused();
    }
}
