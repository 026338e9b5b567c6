//! State every instance of the function must share: which deliveries are
//! claimed or done (so a repeat is acknowledged, not run again, whichever
//! instance it reaches), results whose publication failed (so a redelivery
//! republishes them), and webhook signatures already used. The
//! [`StateStore`] port has two adapters: [`MemoryStore`], in process (the
//! CLI, local runs, a single Azure instance), and [`dynamodb`], one DynamoDB
//! table shared by every instance (`STATE_TABLE`).

pub mod budget;
pub mod dynamodb;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::core::BoxFuture;

/// The store could not be reached, refused the request, or holds an item
/// that cannot be read. The delivery is then returned for retry: nothing
/// runs without its claim.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer or refused the request; `what` is the
    /// service's own words, bounded.
    #[error("the state store is unavailable: {what}")]
    Unavailable {
        /// What the store said.
        what: String,
        /// The client's error.
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    /// Too many instances wrote the same item at once.
    #[error("the state store is unavailable: {key}: too many instances wrote at once; try again")]
    Contended {
        /// The item.
        key: String,
    },
    /// An item cannot be read (corrupted, foreign or incomplete).
    #[error("the state store is unavailable: {key}: {what}")]
    Unreadable {
        /// The item.
        key: String,
        /// What is wrong with it.
        what: String,
    },
    /// A document could not be encoded for the store.
    #[error("the state store is unavailable: {0}")]
    Encoding(#[from] crate::core::encode::EncodeError),
}

impl StoreError {
    /// An item that cannot be read.
    pub fn unreadable(key: &str, what: impl Into<String>) -> Self {
        StoreError::Unreadable {
            key: key.to_owned(),
            what: what.into(),
        }
    }
}

/// What claiming a delivery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This instance holds the delivery now: run it, then
    /// [`StateStore::finish`] or [`StateStore::release`] it.
    Claimed,
    /// Another instance holds it and its lease has not run out.
    HeldElsewhere,
    /// It was run to the end before. `undelivered` is the result document
    /// (JSON) when its publication failed.
    Done {
        /// The result still to publish, if any.
        undelivered: Option<String>,
    },
}

pub use crate::core::duration::{epoch_ms, from_epoch_ms};

/// How long a finished delivery is remembered: longer than SQS keeps a
/// message and than Step Functions retries a task.
pub const DONE_TTL: Duration = Duration::from_secs(4 * 24 * 3600);

/// State shared by the instances of a deployment.
pub trait StateStore: Send + Sync {
    /// Claims delivery `key` for `owner` until `lease_until` (longer than
    /// the run can take, so a claim whose instance died runs out).
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease_until: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;

    /// Marks a claimed delivery done, keeping `undelivered` (the result
    /// JSON) when its publication failed.
    fn finish<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        undelivered: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Gives a claim back (the run can pass later): the next delivery runs.
    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records `key` as used until `until`; false when it already was (a
    /// replayed webhook signature).
    fn first_use<'a>(&'a self, key: &'a str, until: SystemTime) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Forgets a used key (the call it admitted was not accepted, so the
    /// caller's identical retry must pass).
    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The value every instance shares under `key`: `candidate` when no
    /// instance wrote one before, else the value the first writer kept. It
    /// never expires (the key that seals the service's own messages).
    fn shared_value<'a>(&'a self, key: &'a str, candidate: &'a str) -> BoxFuture<'a, Result<String, StoreError>>;
}

#[derive(Debug, Clone)]
enum Entry {
    Claimed { owner: String, lease_until: u64 },
    Done { undelivered: Option<String>, until: u64 },
    Used { until: u64 },
}

/// The in-process store: correct for one instance, and what every host uses
/// when no shared store is configured. Bounded: the oldest entries are
/// forgotten first.
pub struct MemoryStore {
    entries: Mutex<(HashMap<String, Entry>, std::collections::VecDeque<String>)>,
    capacity: usize,
    /// Shared values, never forgotten to make room.
    values: Mutex<HashMap<String, String>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl MemoryStore {
    /// A store remembering up to `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new((HashMap::new(), std::collections::VecDeque::new())),
            capacity: capacity.max(1),
            values: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        let before: std::collections::HashSet<String> = map.keys().cloned().collect();
        let out = f(map);
        for k in map.keys() {
            if !before.contains(k) {
                order.push_back(k.clone());
            }
        }
        while map.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
        out
    }
}

impl StateStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease_until: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        let now = epoch_ms(SystemTime::now());
        let out = self.with(|map| match map.get(key) {
            Some(Entry::Done { undelivered, until }) if *until > now => Claim::Done {
                undelivered: undelivered.clone(),
            },
            Some(Entry::Claimed { owner: o, lease_until }) if *lease_until > now && o != owner => Claim::HeldElsewhere,
            _ => {
                map.insert(
                    key.to_owned(),
                    Entry::Claimed {
                        owner: owner.to_owned(),
                        lease_until: epoch_ms(lease_until),
                    },
                );
                Claim::Claimed
            }
        });
        Box::pin(async move { Ok(out) })
    }

    fn finish<'a>(
        &'a self,
        key: &'a str,
        _owner: &'a str,
        undelivered: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let until = epoch_ms(SystemTime::now() + DONE_TTL);
        self.with(|map| {
            map.insert(
                key.to_owned(),
                Entry::Done {
                    undelivered: undelivered.map(str::to_owned),
                    until,
                },
            )
        });
        Box::pin(async move { Ok(()) })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|map| {
            if matches!(map.get(key), Some(Entry::Claimed { owner: o, .. }) if o == owner) {
                map.remove(key);
            }
        });
        Box::pin(async move { Ok(()) })
    }

    fn first_use<'a>(&'a self, key: &'a str, until: SystemTime) -> BoxFuture<'a, Result<bool, StoreError>> {
        let now = epoch_ms(SystemTime::now());
        let first = self.with(|map| match map.get(key) {
            Some(Entry::Used { until }) if *until > now => false,
            _ => {
                map.insert(key.to_owned(), Entry::Used { until: epoch_ms(until) });
                true
            }
        });
        Box::pin(async move { Ok(first) })
    }

    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(|map| map.remove(key));
        Box::pin(async move { Ok(()) })
    }

    fn shared_value<'a>(&'a self, key: &'a str, candidate: &'a str) -> BoxFuture<'a, Result<String, StoreError>> {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let value = values
            .entry(key.to_owned())
            .or_insert_with(|| candidate.to_owned())
            .clone();
        Box::pin(async move { Ok(value) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_claim_is_held_done_or_expired() {
        let s = MemoryStore::default();
        let later = SystemTime::now() + Duration::from_secs(60);
        assert_eq!(s.claim("m-1", "a", later).await.unwrap(), Claim::Claimed);
        assert_eq!(s.claim("m-1", "b", later).await.unwrap(), Claim::HeldElsewhere);
        s.finish("m-1", "a", Some("{}")).await.unwrap();
        assert_eq!(
            s.claim("m-1", "b", later).await.unwrap(),
            Claim::Done {
                undelivered: Some("{}".into())
            }
        );
        // A claim whose lease ran out (its instance died) can be taken.
        let past = SystemTime::now() - Duration::from_secs(1);
        assert_eq!(s.claim("m-2", "a", past).await.unwrap(), Claim::Claimed);
        assert_eq!(s.claim("m-2", "b", later).await.unwrap(), Claim::Claimed);
        // A released claim runs again.
        s.release("m-2", "b").await.unwrap();
        assert_eq!(s.claim("m-2", "c", later).await.unwrap(), Claim::Claimed);
    }

    #[tokio::test]
    async fn a_shared_value_is_the_first_one_written() {
        let s = MemoryStore::new(1);
        assert_eq!(s.shared_value("key#k", "one").await.unwrap(), "one");
        // Neither a later candidate nor a full store replaces it.
        let later = SystemTime::now() + Duration::from_secs(60);
        s.claim("m-1", "a", later).await.unwrap();
        s.claim("m-2", "a", later).await.unwrap();
        assert_eq!(s.shared_value("key#k", "two").await.unwrap(), "one");
    }

    #[tokio::test]
    async fn a_used_key_is_refused_until_forgotten() {
        let s = MemoryStore::new(2);
        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(s.first_use("sig", later).await.unwrap());
        assert!(!s.first_use("sig", later).await.unwrap());
        s.forget("sig").await.unwrap();
        assert!(s.first_use("sig", later).await.unwrap());
        // Bounded: the oldest is forgotten first.
        s.first_use("x", later).await.unwrap();
        s.first_use("y", later).await.unwrap();
        assert!(s.first_use("sig", later).await.unwrap());
    }
}
