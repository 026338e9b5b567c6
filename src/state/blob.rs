//! The shared state in one Azure Storage blob container
//! (`ATTEST_STATE_CONTAINER`), with the semantics of the DynamoDB store:
//! every item is one small JSON blob, created with `If-None-Match: *` and
//! replaced with `If-Match` and the ETag it was read at, so two instances
//! can never both claim a delivery. Blob Storage deletes nothing by itself
//! (a lifecycle rule removes old blobs, days late), so every read compares
//! `expires_at` itself.
//!
//! | item | blob | document |
//! |---|---|---|
//! | a delivery (also `request#`, `sweep#` keys) | `delivery/<sha256 of the key>` (`request/`, `sweep/`) | `state` (`claimed` / `done`), `owner`, `lease_until` (ms), `expires_at` (ms), `result` (the kept result) |
//! | a used webhook signature | `replay/<sha256 of the key>` | `state` (`used`), `expires_at` |
//! | a budget ([`BlobBudget`]) | `budget/<sha256 of the key>` | `state` (the lease state) |
//! | a shared value (the key that seals service messages) | `key/<sha256 of the key>` | `state` (`value`), `result` (the value); never expires |
//!
//! Names are digests so that any key makes a valid blob name; the key
//! itself is kept in the document.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use azure_core::Bytes;
use azure_core::http::{Etag, RequestContent};
use azure_storage_blob::BlobContainerClient;
use azure_storage_blob::models::{BlobClientDeleteOptions, BlobClientUploadOptions};
use serde::{Deserialize, Serialize};

use super::budget::SharedBudget;
use super::{Claim, DONE_TTL, StateStore, StoreError, epoch_ms as ms, from_epoch_ms as from_ms};
use crate::azure_storage::StorageFault;
use crate::core::BoxFuture;
use crate::core::lease::{Acquired, Ask, BudgetRules, BudgetState, Lease, LeaseGrant};

/// How often one operation re-reads and retries after losing a race.
const RACES: usize = 16;

impl StoreError {
    /// A storage call's failure, redacted, kept as the source.
    pub(crate) fn from_storage(fault: StorageFault) -> Self {
        StoreError::Unavailable {
            what: fault.what().to_owned(),
            source: std::sync::Arc::new(fault),
        }
    }
}

/// The outcome of a conditional write.
enum Put {
    Written(Option<Etag>),
    /// The condition failed: another instance wrote first.
    Lost,
}

/// The condition a write is made under.
enum When<'a> {
    Absent,
    At(&'a Etag),
    Always,
}

/// The container, and a count of the requests made to it.
struct Blobs {
    container: BlobContainerClient,
    requests: AtomicU64,
}

fn blob_name(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let kind: String = key
        .split('#')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let kind = if kind.is_empty() { "item".to_owned() } else { kind };
    format!("{kind}/{}", hex::encode(Sha256::digest(key.as_bytes())))
}

fn storage_error(e: &azure_core::Error) -> StoreError {
    StoreError::from_storage(StorageFault::from_sdk(e))
}

impl Blobs {
    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The blob's body and ETag; `None` when there is no such blob (a
    /// missing container is an error: the state would look empty).
    async fn get(&self, name: &str) -> Result<Option<(Bytes, Option<Etag>)>, StoreError> {
        self.count();
        let blob = self.container.blob_client(name);
        match blob.download(None).await {
            Ok(out) => {
                let etag = out.properties.etag.clone();
                let body = out.body.collect().await.map_err(|e| storage_error(&e))?;
                Ok(Some((body, etag)))
            }
            Err(e) => {
                let fault = StorageFault::from_sdk(&e);
                if fault.status == Some(404) && fault.code.as_deref() == Some("BlobNotFound") {
                    Ok(None)
                } else {
                    Err(StoreError::from_storage(fault))
                }
            }
        }
    }

    async fn put(&self, name: &str, body: Vec<u8>, when: When<'_>) -> Result<Put, StoreError> {
        self.count();
        let blob = self.container.blob_client(name);
        let mut options = BlobClientUploadOptions {
            blob_content_type: Some("application/json".into()),
            ..Default::default()
        };
        match when {
            When::Absent => options.if_none_match = Some(Etag::from("*")),
            When::At(etag) => options.if_match = Some(etag.clone()),
            When::Always => {}
        }
        match blob.upload(RequestContent::from(body), Some(options)).await {
            Ok(out) => Ok(Put::Written(out.etag)),
            Err(e) => {
                let fault = StorageFault::from_sdk(&e);
                // An existing blob answers 409 to If-None-Match: *, a stale
                // ETag 412.
                if matches!(fault.status, Some(409) | Some(412))
                    && matches!(fault.code.as_deref(), Some("BlobAlreadyExists" | "ConditionNotMet"))
                {
                    Ok(Put::Lost)
                } else {
                    Err(StoreError::from_storage(fault))
                }
            }
        }
    }

    /// Deletes the blob (if still at `etag`); false when it was gone or
    /// had changed.
    async fn delete(&self, name: &str, etag: Option<&Etag>) -> Result<bool, StoreError> {
        self.count();
        let blob = self.container.blob_client(name);
        let options = BlobClientDeleteOptions {
            if_match: etag.cloned(),
            ..Default::default()
        };
        match blob.delete(Some(options)).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let fault = StorageFault::from_sdk(&e);
                if (fault.status == Some(404) && fault.code.as_deref() == Some("BlobNotFound"))
                    || fault.status == Some(412)
                {
                    Ok(false)
                } else {
                    Err(StoreError::from_storage(fault))
                }
            }
        }
    }
}

/// One delivery or used key, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    key: String,
    state: String,
    #[serde(default)]
    owner: String,
    #[serde(default)]
    lease_until: u64,
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

impl Item {
    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        Ok(crate::core::encode::to_string(self)?.into_bytes())
    }

    fn decode(key: &str, body: &[u8]) -> Result<Self, StoreError> {
        let item: Item = serde_json::from_slice(body)
            .map_err(|e| StoreError::unreadable(key, format!("the state blob is not a state document ({e})")))?;
        if item.key != key {
            return Err(StoreError::unreadable(key, "the state blob belongs to another key"));
        }
        Ok(item)
    }
}

/// The state store on a blob container.
pub struct BlobStore {
    blobs: Blobs,
}

impl BlobStore {
    /// The store on `container` (which must exist).
    pub fn new(container: BlobContainerClient) -> Self {
        Self {
            blobs: Blobs {
                container,
                requests: AtomicU64::new(0),
            },
        }
    }

    /// Storage requests made so far.
    pub fn requests(&self) -> u64 {
        self.blobs.requests.load(Ordering::Relaxed)
    }
}

impl StateStore for BlobStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease_until: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let name = blob_name(key);
            let lease = ms(lease_until);
            let mine = Item {
                key: key.to_owned(),
                state: "claimed".into(),
                owner: owner.to_owned(),
                lease_until: lease,
                expires_at: lease + DONE_TTL.as_millis() as u64,
                result: None,
            }
            .encode()?;
            for _ in 0..RACES {
                if let Put::Written(_) = self.blobs.put(&name, mine.clone(), When::Absent).await? {
                    return Ok(Claim::Claimed);
                }
                let Some((body, etag)) = self.blobs.get(&name).await? else {
                    // Given back since: try to create it again.
                    continue;
                };
                let item = Item::decode(key, &body)?;
                let now = ms(SystemTime::now());
                let free = item.expires_at < now
                    || (item.state == "claimed" && (item.lease_until < now || item.owner == owner));
                if !free {
                    return Ok(match item.state.as_str() {
                        "done" => Claim::Done {
                            undelivered: item.result,
                        },
                        _ => Claim::HeldElsewhere,
                    });
                }
                let Some(etag) = etag else {
                    return Err(StoreError::unreadable(key, "the state blob has no ETag"));
                };
                if let Put::Written(_) = self.blobs.put(&name, mine.clone(), When::At(&etag)).await? {
                    return Ok(Claim::Claimed);
                }
                // Another instance wrote in between: look again.
            }
            Err(StoreError::Contended { key: key.to_owned() })
        })
    }

    fn finish<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        undelivered: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let item = Item {
                key: key.to_owned(),
                state: "done".into(),
                owner: owner.to_owned(),
                lease_until: 0,
                expires_at: ms(SystemTime::now() + DONE_TTL),
                result: undelivered.map(str::to_owned),
            };
            self.blobs.put(&blob_name(key), item.encode()?, When::Always).await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let name = blob_name(key);
            let Some((body, etag)) = self.blobs.get(&name).await? else {
                return Ok(());
            };
            let item = Item::decode(key, &body)?;
            // Only this owner's claim is given back, and only as it was read.
            if item.state == "claimed" && item.owner == owner && etag.is_some() {
                self.blobs.delete(&name, etag.as_ref()).await?;
            }
            Ok(())
        })
    }

    fn first_use<'a>(&'a self, key: &'a str, until: SystemTime) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let name = blob_name(key);
            let used = Item {
                key: key.to_owned(),
                state: "used".into(),
                owner: String::new(),
                lease_until: 0,
                expires_at: ms(until) + 1000,
                result: None,
            }
            .encode()?;
            for _ in 0..RACES {
                if let Put::Written(_) = self.blobs.put(&name, used.clone(), When::Absent).await? {
                    return Ok(true);
                }
                let Some((body, etag)) = self.blobs.get(&name).await? else {
                    continue;
                };
                let item = Item::decode(key, &body)?;
                if item.expires_at >= ms(SystemTime::now()) {
                    return Ok(false);
                }
                let Some(etag) = etag else {
                    return Err(StoreError::unreadable(key, "the state blob has no ETag"));
                };
                // Expired: whoever replaces it first uses it.
                return Ok(matches!(
                    self.blobs.put(&name, used, When::At(&etag)).await?,
                    Put::Written(_)
                ));
            }
            Err(StoreError::Contended { key: key.to_owned() })
        })
    }

    fn shared_value<'a>(&'a self, key: &'a str, candidate: &'a str) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            let name = blob_name(key);
            let value = Item {
                key: key.to_owned(),
                state: "value".into(),
                owner: String::new(),
                lease_until: 0,
                // Never expires (no lifecycle rule covers `key/`).
                expires_at: u64::MAX,
                result: Some(candidate.to_owned()),
            }
            .encode()?;
            if let Put::Written(_) = self.blobs.put(&name, value, When::Absent).await? {
                return Ok(candidate.to_owned());
            }
            let Some((body, _)) = self.blobs.get(&name).await? else {
                return Err(StoreError::unreadable(
                    key,
                    "the shared value vanished as it was written",
                ));
            };
            match Item::decode(key, &body)? {
                Item {
                    state,
                    result: Some(value),
                    ..
                } if state == "value" && !value.is_empty() => Ok(value),
                _ => Err(StoreError::unreadable(
                    key,
                    "the shared value is missing or not a value",
                )),
            }
        })
    }

    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.blobs.delete(&blob_name(key), None).await?;
            Ok(())
        })
    }
}

/// A budget document as stored.
#[derive(Serialize, Deserialize)]
struct BudgetDoc {
    key: String,
    state: BudgetState,
}

/// The shared budget on the blob container: one blob per key, replaced
/// with `If-Match` on the ETag it was read at (see [`super::budget`] for
/// the rule). One request per grant when no other instance wrote since;
/// when one did, the lost write costs a read of the current state (Blob
/// Storage does not return it with the failure, as DynamoDB does).
pub struct BlobBudget {
    blobs: Blobs,
    /// The last state seen per key, with its ETag (`None`: no blob yet).
    cache: Mutex<HashMap<String, (Option<Etag>, BudgetState)>>,
    unreadable: AtomicU64,
    /// Trims of this instance's leases not yet written, per key.
    trims: Mutex<HashMap<String, Vec<(String, u64)>>>,
    holder: String,
}

type Version = Option<Etag>;

impl BlobBudget {
    /// The budget on `container` (which must exist).
    pub fn new(container: BlobContainerClient) -> Self {
        Self {
            blobs: Blobs {
                container,
                requests: AtomicU64::new(0),
            },
            cache: Mutex::new(HashMap::new()),
            unreadable: AtomicU64::new(0),
            trims: Mutex::new(HashMap::new()),
            holder: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// Times this instance found the budget's blob unreadable.
    pub fn unreadable_reads(&self) -> u64 {
        self.unreadable.load(Ordering::Relaxed)
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

    /// The blob's ETag and state. A blob that cannot be read is not an
    /// empty budget: it becomes a pause longer than any lease it may have
    /// held, written back as a valid state by the next write (the rule of
    /// [`BudgetState`]).
    async fn read(&self, key: &str) -> Result<(Version, BudgetState), StoreError> {
        let Some((body, etag)) = self.blobs.get(&blob_name(key)).await? else {
            return Ok((None, BudgetState::default()));
        };
        let Some(etag) = etag else {
            return Err(StoreError::unreadable(key, "the budget blob has no ETag"));
        };
        match serde_json::from_slice::<BudgetDoc>(&body) {
            Ok(doc) if doc.key == key => Ok((Some(etag), doc.state)),
            _ => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    key,
                    metric = "BudgetStateUnreadable",
                    "the shared budget's blob cannot be read; no writes until it is valid again (it is replaced by a pause)"
                );
                Ok((
                    Some(etag),
                    BudgetState {
                        unreadable: true,
                        ..BudgetState::default()
                    },
                ))
            }
        }
    }

    /// Writes `state` if the blob is still at `version`; on a lost race
    /// returns the current state instead.
    async fn write(
        &self,
        key: &str,
        version: &Version,
        state: &BudgetState,
    ) -> Result<Result<Version, (Version, BudgetState)>, StoreError> {
        let doc = BudgetDoc {
            key: key.to_owned(),
            state: state.clone(),
        };
        let body = crate::core::encode::to_string(&doc)?.into_bytes();
        let when = match version {
            Some(etag) => When::At(etag),
            None => When::Absent,
        };
        match self.blobs.put(&blob_name(key), body, when).await? {
            Put::Written(Some(etag)) => Ok(Ok(Some(etag))),
            // Written, but the answer named no ETag: read it next time.
            Put::Written(None) => Ok(Err(self.read(key).await?)),
            Put::Lost => Ok(Err(self.read(key).await?)),
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
        for _ in 0..RACES {
            let mut next = state.clone();
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
                // Values out of bounds cut back, or an unreadable blob turned
                // into a pause, are written back even when nothing was
                // granted (the rule of `DynamoBudget`).
                if (state.unreadable && !next.unreadable) || repaired {
                    match self.write(key, &version, &next).await? {
                        Ok(v) => self.remember(key, v, next),
                        Err((v, s)) => self.remember(key, v, s),
                    }
                } else {
                    self.remember(key, version, state);
                }
                return Ok(None);
            };
            match self.write(key, &version, &next).await? {
                Ok(v) => {
                    self.remember(key, v, next);
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

impl SharedBudget for BlobBudget {
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
            let now = ms(SystemTime::now());
            pending.retain(|(_, u)| *u + 60_000 > now);
            pending.push((lease.id.clone(), until));
        }
    }

    fn requests(&self) -> u64 {
        self.blobs.requests.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_key_names_a_valid_blob() {
        let a = blob_name("delivery#\"msg/..?x\"");
        assert!(a.starts_with("delivery/") && a.len() == "delivery/".len() + 64, "{a}");
        assert!(blob_name("#").starts_with("item/"));
        assert_ne!(blob_name("replay#1:a"), blob_name("replay#1:b"));
    }
}
