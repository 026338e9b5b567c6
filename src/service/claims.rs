//! Delivery claims: a delivery runs once across every instance; a repeat is
//! acknowledged or its kept result republished; a claim is given back when
//! its run fails or is cancelled. A kept result is read from a table that
//! others may write, so it is republished only when it answers the request
//! it is kept for: a result document, with that request's correlation id
//! when the caller named one, listing only devices the request named.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{AttestService, Disposition, ServiceError};
use crate::core::request::AttestationRequest;
use crate::state::{Claim, StateStore, StoreError};

/// The request a kept result must answer to be republished.
#[derive(Clone, Copy)]
pub(super) struct Answering<'a> {
    /// The request.
    pub(super) req: &'a AttestationRequest,
    /// Whether the caller named the correlation id (else each delivery
    /// draws its own, and a redelivery's differs from the kept one's).
    pub(super) named: bool,
}

impl Answering<'_> {
    /// Why `doc` does not answer the request, if it does not.
    fn refuses(&self, doc: &serde_json::Value) -> Option<String> {
        let req = self.req;
        let Some(correlation_id) = doc.get("correlation_id").and_then(|c| c.as_str()) else {
            return Some("it is not a result document".into());
        };
        if doc.get("schema_version").is_none() || doc.get("status").and_then(|s| s.as_str()).is_none() {
            return Some("it is not a result document".into());
        }
        if self.named && req.correlation_id.as_deref() != Some(correlation_id) {
            return Some("it is for another correlation id".into());
        }
        if doc.get("dry_run").and_then(|d| d.as_bool()) != Some(req.dry_run) {
            return Some("it is not for a run of the same kind (dry run or not)".into());
        }
        let Some(devices) = doc.get("devices").and_then(|d| d.as_array()) else {
            return Some("it lists no devices".into());
        };
        if req.device_filter.is_some() {
            // A filter's selection is not known here: the devices cannot
            // be checked against it.
            return None;
        }
        let named: std::collections::HashSet<String> = req.devices.iter().map(|d| d.id.to_string()).collect();
        // Each named device once, or twice when it is named in both
        // collections.
        if devices.len() > req.devices.len() {
            return Some(format!(
                "it lists {} devices for a request naming {}",
                devices.len(),
                req.devices.len()
            ));
        }
        let foreign = devices
            .iter()
            .filter(|d| {
                d.get("device_id")
                    .and_then(|i| i.as_str())
                    .is_none_or(|id| !named.contains(&id.to_ascii_lowercase()))
            })
            .count();
        (foreign > 0).then(|| format!("it lists {foreign} device(s) the request does not name"))
    }
}

/// How long a claim outlives the host's deadline: a claim whose instance died
/// is taken over after it, and never while its run may still be going.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);
/// A claim's lease when the host gives no deadline (Lambda's longest run).
const LEASE_WITHOUT_DEADLINE: Duration = Duration::from_secs(15 * 60);

impl AttestService {
    /// When a claim taken now runs out.
    pub(super) fn lease_until(&self, deadline: Option<Instant>) -> std::time::SystemTime {
        let left = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(LEASE_WITHOUT_DEADLINE);
        std::time::SystemTime::now() + left + CLAIM_MARGIN
    }

    /// Claims `key` for this instance: `Ok(None)` to go ahead, or the
    /// disposition of a delivery that must not run here (done before, or
    /// held by another instance).
    pub(super) async fn claim(
        &self,
        key: &str,
        deadline: Option<Instant>,
    ) -> Result<Option<Disposition>, ServiceError> {
        self.claim_answering(key, deadline, None).await
    }

    /// [`AttestService::claim`], republishing a kept result only if it
    /// answers `answering`.
    pub(super) async fn claim_answering(
        &self,
        key: &str,
        deadline: Option<Instant>,
        answering: Option<Answering<'_>>,
    ) -> Result<Option<Disposition>, ServiceError> {
        let found = self
            .store
            .claim(key, &self.instance, self.lease_until(deadline))
            .await?;
        self.on_claim(key, found, deadline, answering).await
    }

    /// A kept result, read: the document, if it answers `answering`.
    pub(super) fn kept_document(
        &self,
        key: &str,
        kept: &str,
        answering: Option<Answering<'_>>,
    ) -> Result<serde_json::Value, StoreError> {
        let doc: serde_json::Value =
            serde_json::from_str(kept).map_err(|_| StoreError::unreadable(key, "the kept result is unreadable"))?;
        if let Some(why) = answering.and_then(|a| a.refuses(&doc)) {
            tracing::warn!(
                key,
                metric = "KeptResultRefused",
                why = %why,
                "a kept result does not answer the request it is kept for; not published"
            );
            return Err(StoreError::unreadable(
                key,
                format!("the kept result does not answer this request: {why}"),
            ));
        }
        Ok(doc)
    }

    pub(super) async fn on_claim(
        &self,
        key: &str,
        found: Claim,
        deadline: Option<Instant>,
        answering: Option<Answering<'_>>,
    ) -> Result<Option<Disposition>, ServiceError> {
        match found {
            Claim::Claimed => Ok(None),
            Claim::HeldElsewhere => Err(ServiceError::InProgress(format!(
                "{key} is being handled by another instance"
            ))),
            Claim::Done { undelivered: None } => {
                tracing::info!(key, "repeat of a completed delivery; skipped");
                Ok(Some(Disposition::Repeat {
                    delivery_id: key.split_once('#').map_or(key, |(_, id)| id).to_owned(),
                }))
            }
            Claim::Done {
                undelivered: Some(kept),
            } => {
                tracing::info!(
                    key,
                    "repeat of a run whose result was not delivered; publishing the kept result"
                );
                let doc = self
                    .kept_document(key, &kept, answering)
                    .map_err(ServiceError::StateUnavailable)?;
                self.publish(&doc, deadline).await?;
                self.finished(key, None).await;
                Ok(Some(Disposition::Republished(Box::new(doc))))
            }
        }
    }

    /// Gives a claim back after a run that failed, so a retry runs at once;
    /// a failure is logged (the claim then runs out with its lease).
    pub(super) async fn give_back(&self, key: Option<&str>) {
        if let Some(key) = key
            && let Err(e) = self.store.release(key, &self.instance).await
        {
            tracing::warn!(error = %e, "a claim could not be given back; it runs out with its lease");
        }
    }

    /// Marks a claimed key done. A failure is logged, not raised: the run
    /// is over, and a repeat would at worst run again (the action is
    /// idempotent).
    pub(super) async fn finished(&self, key: &str, undelivered: Option<&str>) {
        if let Err(e) = self.store.finish(key, &self.instance, undelivered).await {
            tracing::warn!(key, error = %e, "a finished delivery could not be recorded");
        }
    }
}

/// Work to do if a request's future is dropped before it ends (its caller
/// went away and the host cancelled it): give back what the request holds
/// (a claim, a used webhook signature) so that the retry runs at once.
/// Disarmed when the request ended on its own and settled what it held.
pub(super) struct OnCancel(Option<Box<dyn FnOnce() -> crate::core::BoxFuture<'static, ()> + Send>>);

impl OnCancel {
    /// Runs `give_back` in a task of its own if dropped armed.
    pub(super) fn new(give_back: impl FnOnce() -> crate::core::BoxFuture<'static, ()> + Send + 'static) -> Self {
        Self(Some(Box::new(give_back)))
    }

    /// The request settled what it held: nothing to do on drop.
    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        if let Some(give_back) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(give_back());
        }
    }
}

impl AttestService {
    /// Forgets a webhook's used signature if the request it admitted is
    /// cancelled, so the caller's identical retry is not taken for a replay.
    pub(super) fn forget_on_cancel(&self, replay_key: Option<&str>) -> OnCancel {
        let store: Arc<dyn StateStore> = self.store.clone();
        let key = replay_key.map(str::to_owned);
        OnCancel::new(move || {
            Box::pin(async move {
                if let Some(key) = key
                    && let Err(e) = store.forget(&key).await
                {
                    tracing::warn!(error = %e, "a cancelled webhook's signature could not be forgotten");
                }
            })
        })
    }

    /// Keeps `kept` (the result of a run that has happened) under `keys` if
    /// the request is cancelled before it is published: the redelivery
    /// republishes it instead of running the devices again.
    pub(super) fn keep_on_cancel(&self, keys: Vec<String>, kept: String) -> OnCancel {
        let store: Arc<dyn StateStore> = self.store.clone();
        let owner = self.instance.clone();
        OnCancel::new(move || {
            Box::pin(async move {
                for key in keys {
                    if let Err(e) = store.finish(&key, &owner, Some(&kept)).await {
                        tracing::warn!(key, error = %e, "a cancelled run's result could not be kept");
                    }
                }
            })
        })
    }

    /// Gives claim `key` back if the request holding it is cancelled.
    pub(super) fn release_on_cancel(&self, key: Option<&str>) -> OnCancel {
        let store: Arc<dyn StateStore> = self.store.clone();
        let owner = self.instance.clone();
        let key = key.map(str::to_owned);
        OnCancel::new(move || {
            Box::pin(async move {
                let Some(key) = key else { return };
                tracing::warn!(key, "the request was cancelled; giving its claim back");
                if let Err(e) = store.release(&key, &owner).await {
                    tracing::warn!(error = %e, "a cancelled request's claim could not be given back; it runs out with its lease");
                }
            })
        })
    }
}
