//! The write (and read) budget of one app registration in one tenant,
//! shared by every instance: the local pacer's rule, made common. A grant
//! is a lease on permits over a time interval, from when the call may be
//! sent until one window after its answer; at no instant do the leases
//! covering it hold more permits than the budget, so no sliding window,
//! summed over all instances, sees more requests than the budget. When the
//! budget is taken now, the grant is a reservation: the lease starts at the
//! earliest time the permits are free, and the instance waits for it
//! without asking again, so a full budget costs one table request per call
//! however many instances wait. A lease carries its own end time, so the
//! permits of an instance that died come back when its leases run out. A
//! 429 seen by any instance pauses all of them (no lease granted after it
//! starts before the pause ends) and lowers the shared ceiling, which each
//! clean window restores in part.
//!
//! On DynamoDB the budget is one item per key, written with a version
//! condition: one request per grant when no other instance wrote since, two
//! when one did (the failed condition returns the current item).
//!
//! What is read back is bounded before it is used ([`BudgetState`]'s
//! repair: pauses, lease ends and sizes, the number of leases), and a
//! repaired state is written back. An item whose version is not one this
//! service writes (not a number, or beyond [`MAX_VERSION`]) is replaced,
//! conditioned on the value it holds, by a pause that outlasts whatever it
//! may have held.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::{StoreError, epoch_ms as ms, from_epoch_ms as from_ms};
use crate::core::BoxFuture;
use crate::core::lease::BudgetState;
pub use crate::core::lease::{Acquired, Ask, BudgetRules, Lease, LeaseGrant};
use crate::core::text::bounded;

/// The budget shared by the instances.
pub trait SharedBudget: Send + Sync {
    /// Leases `ask.n` permits of `key`'s budget for `ask.hold` from the
    /// earliest time they are free (now, or later: a reservation), or says
    /// when to ask again if that is after `ask.latest_start`.
    fn acquire<'a>(&'a self, key: &'a str, ask: Ask, rules: BudgetRules)
    -> BoxFuture<'a, Result<Acquired, StoreError>>;

    /// Gives back a lease no call was sent under (a spare that came too
    /// late to use), so its permits serve others at once.
    fn release<'a>(&'a self, key: &'a str, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Moves a lease's end later (an answer came later than its lease
    /// assumed).
    fn extend<'a>(&'a self, key: &'a str, lease: &'a Lease, until: SystemTime)
    -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records a 429: everyone pauses until `pause_until`, and the ceiling
    /// drops to 95% of what is leased now (at most once a window).
    fn throttled<'a>(
        &'a self,
        key: &'a str,
        rules: BudgetRules,
        pause_until: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Ends a lease earlier once its call's answer came (see
    /// [`BudgetState`]'s rule); applied with this instance's next write of
    /// the budget, so it costs no table request of its own.
    fn trim(&self, key: &str, lease: &Lease, until: SystemTime);

    /// Table requests made so far.
    fn requests(&self) -> u64;
}

/// The highest version this service writes: one write a millisecond for
/// 285,000 years. A version read back beyond it is not the service's.
pub const MAX_VERSION: u64 = 1 << 53;

/// The version an item was read at: what the next write's condition
/// compares, and the version it writes.
#[derive(Debug, Clone, PartialEq)]
struct Version {
    /// The item's `version` as it was read, or `None` for no item (or an
    /// item without one).
    stored: Option<AttributeValue>,
    /// Whether there was an item at all.
    exists: bool,
    /// The version the next write writes.
    next: u64,
}

impl Version {
    const NONE: Version = Version {
        stored: None,
        exists: false,
        next: 1,
    };

    fn written(next: u64) -> Self {
        Version {
            stored: Some(AttributeValue::N(next.to_string())),
            exists: true,
            next: next + 1,
        }
    }
}

/// The budget on the DynamoDB state table.
pub struct DynamoBudget {
    client: aws_sdk_dynamodb::Client,
    table: String,
    /// The last state seen per key, with its version.
    cache: Mutex<HashMap<String, (Version, BudgetState)>>,
    requests: AtomicU64,
    /// Reads of an item that could not be decoded.
    unreadable: AtomicU64,
    /// Trims of this instance's leases not yet written, per key.
    trims: Mutex<HashMap<String, Vec<(String, u64)>>>,
    /// Names this instance in its leases.
    holder: String,
}

impl DynamoBudget {
    /// The budget on `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self {
            client,
            table,
            cache: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            trims: Mutex::new(HashMap::new()),
            holder: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    fn cached(&self, key: &str) -> Option<(Version, BudgetState)> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn remember(&self, key: &str, version: Version, state: BudgetState) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), (version, state));
    }

    /// The item's version and state. An item whose state cannot be read
    /// (corrupted, or written by something else) is not an empty budget:
    /// it is marked unreadable, which the next grant turns into a pause
    /// that outlasts every lease the item may have held, written back as a
    /// valid state. So nobody writes on a budget it cannot see, and the
    /// budget recovers by itself when the pause ends. An item whose version
    /// is not one this service writes is unreadable too, and the write that
    /// replaces it is conditioned on the version as it was read.
    fn decode(&self, key: &str, item: Option<&HashMap<String, AttributeValue>>) -> (Version, BudgetState) {
        let Some(item) = item else {
            return (Version::NONE, BudgetState::default());
        };
        let stored = item.get("version");
        let version = stored
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v <= MAX_VERSION);
        let state = item
            .get("state")
            .and_then(|v| v.as_s().ok())
            .and_then(|s| serde_json::from_str::<BudgetState>(s).ok());
        match (version, state) {
            (Some(v), Some(state)) => (Version::written(v), state),
            (version, _) => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    key,
                    metric = "BudgetStateUnreadable",
                    version_readable = version.is_some(),
                    "the shared budget's item cannot be read; no writes until it is valid again (it is replaced by a pause)"
                );
                (
                    Version {
                        stored: stored.cloned(),
                        exists: true,
                        next: version.map_or(1, |v| v + 1),
                    },
                    BudgetState {
                        unreadable: true,
                        ..BudgetState::default()
                    },
                )
            }
        }
    }

    /// Times this instance found the budget's item unreadable.
    pub fn unreadable_reads(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
    }

    async fn read(&self, key: &str) -> Result<(Version, BudgetState), StoreError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.to_owned()))
            .key("sk", AttributeValue::S("budget".into()))
            .consistent_read(true)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(self.decode(key, out.item()))
    }

    /// Writes `state` as `version.next` if the item is still as it was
    /// read; on a lost race returns the current state instead.
    async fn write(
        &self,
        key: &str,
        version: &Version,
        state: &BudgetState,
    ) -> Result<Result<(), (Version, BudgetState)>, StoreError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let expires = ms(SystemTime::now()) / 1000 + 7 * 24 * 3600;
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("pk", AttributeValue::S(key.to_owned()))
            .item("sk", AttributeValue::S("budget".into()))
            .item("version", AttributeValue::N(version.next.to_string()))
            .item("state", AttributeValue::S(crate::core::encode::to_string(state)?))
            .item("expires_at", AttributeValue::N(expires.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let put = match (&version.stored, version.exists) {
            (Some(v), _) => put
                .condition_expression("version = :v")
                .expression_attribute_values(":v", v.clone()),
            (None, true) => put.condition_expression("attribute_exists(pk) AND attribute_not_exists(version)"),
            (None, false) => put.condition_expression("attribute_not_exists(pk)"),
        };
        let put = put.send().await;
        match put {
            Ok(_) => Ok(Ok(())),
            Err(e) => match e.into_service_error() {
                aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
                    match c.item() {
                        Some(item) => Ok(Err(self.decode(key, Some(item)))),
                        // The store did not return the item: read it.
                        None => Ok(Err(self.read(key).await?)),
                    }
                }
                other => Err(StoreError::Unavailable {
                    what: bounded(&other.to_string(), 200),
                    source: std::sync::Arc::new(other),
                }),
            },
        }
    }

    /// Applies `change` to the freshest state it can, retrying a lost race.
    async fn update<T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut BudgetState) -> Option<T>,
    ) -> Result<Option<T>, StoreError> {
        let (mut version, mut state) = match self.cached(key) {
            Some(c) => c,
            None => self.read(key).await?,
        };
        for _ in 0..16 {
            let mut next = state.clone();
            // This instance's trims ride along with the write.
            let trims = self
                .trims
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key)
                .cloned()
                .unwrap_or_default();
            for (id, until) in &trims {
                next.trim(id, *until);
            }
            let changed = change(&mut next);
            // Written back as it is now: the repair is not redone.
            let repaired = std::mem::take(&mut next.repaired);
            let Some(out) = changed else {
                // An unreadable item turned into a pause, or values out of
                // bounds cut back, are written back even when nothing was
                // granted, so the pause ends where it was first set instead
                // of moving with every ask.
                if (state.unreadable && !next.unreadable) || repaired {
                    match self.write(key, &version, &next).await? {
                        Ok(()) => self.remember(key, Version::written(version.next), next),
                        Err((v, s)) => self.remember(key, v, s),
                    }
                } else {
                    self.remember(key, version, state);
                }
                return Ok(None);
            };
            match self.write(key, &version, &next).await? {
                Ok(()) => {
                    self.remember(key, Version::written(version.next), next);
                    if let Some(pending) = self.trims.lock().unwrap_or_else(|p| p.into_inner()).get_mut(key) {
                        pending.retain(|t| !trims.contains(t));
                    }
                    return Ok(Some(out));
                }
                Err((v, s)) => (version, state) = (v, s),
            }
        }
        Err(StoreError::Contended { key: key.to_owned() })
    }
}

impl SharedBudget for DynamoBudget {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        ask: Ask,
        rules: BudgetRules,
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        Box::pin(async move {
            let mut wait = None;
            let granted = self
                .update(key, |state| {
                    let now = ms(SystemTime::now());
                    match state.grant(&ask, now, &self.holder, &rules) {
                        Ok(lease) => {
                            // A spare only behind a reservation some way
                            // ahead: when the budget is nearly free, the
                            // next call asks when it comes.
                            let ahead = (rules.window / 20).as_millis() as u64;
                            let spare = (ask.spare && lease.start_ms > ms(ask.not_before).max(now) + ahead)
                                .then(|| state.grant_from(&ask, now, lease.start_ms, &self.holder, &rules).ok())
                                .flatten();
                            Some(LeaseGrant { lease, spare })
                        }
                        Err(at) => {
                            wait = Some(at);
                            None
                        }
                    }
                })
                .await?;
            Ok(match granted {
                Some(grant) => Acquired::Granted(grant),
                None => Acquired::WaitUntil(from_ms(wait.unwrap_or_else(|| ms(SystemTime::now()) + 10))),
            })
        })
    }

    fn release<'a>(&'a self, key: &'a str, lease: &'a Lease) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.update(key, |state| {
                let before = state.leases.len();
                state.leases.retain(|l| l.id != lease.id);
                (state.leases.len() < before).then_some(())
            })
            .await?;
            Ok(())
        })
    }

    fn extend<'a>(
        &'a self,
        key: &'a str,
        lease: &'a Lease,
        until: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let until = ms(until);
            self.update(key, |state| {
                let l = state.leases.iter_mut().find(|l| l.id == lease.id)?;
                l.until = l.until.max(until);
                Some(())
            })
            .await?;
            Ok(())
        })
    }

    fn throttled<'a>(
        &'a self,
        key: &'a str,
        rules: BudgetRules,
        pause_until: SystemTime,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.update(key, |state| {
                state.on_throttled(ms(SystemTime::now()), ms(pause_until), &rules);
                Some(())
            })
            .await?;
            Ok(())
        })
    }

    fn trim(&self, key: &str, lease: &Lease, until: SystemTime) {
        let until = ms(until);
        if until < lease.until_ms {
            let mut trims = self.trims.lock().unwrap_or_else(|p| p.into_inner());
            let pending = trims.entry(key.to_owned()).or_default();
            // Past leases need no trim; keep the list short.
            let now = ms(SystemTime::now());
            pending.retain(|(_, u)| *u + 60_000 > now);
            pending.push((lease.id.clone(), until));
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}
