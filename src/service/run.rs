//! One request run to the end under its delivery's claim: the engine,
//! the continuation of untried devices, the verify schedule, publication.

use std::sync::Arc;

use tokio::time::Instant;

use super::{AttestService, Delivery, Disposition, ServiceError};
use crate::core::engine::RunError;
use crate::core::outcome::{Invocation, RunResult};
use crate::core::progress::Progress;
use crate::core::request::AttestationRequest;
use crate::state::Claim;

impl AttestService {
    pub(super) async fn publish(&self, doc: &serde_json::Value, deadline: Option<Instant>) -> Result<(), ServiceError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        sink.publish(doc, deadline).await.map_err(|e| {
            ServiceError::ResultDeliveryFailed(format!(
                "the result of {} was not delivered: {e}",
                doc["correlation_id"].as_str().unwrap_or("a run")
            ))
        })
    }

    /// Runs one request to the end: claim, engine, continuation,
    /// publication. Every log line of the run carries its correlation id.
    pub(super) async fn run(
        &self,
        mut req: AttestationRequest,
        delivery: &Delivery,
    ) -> Result<Disposition, ServiceError> {
        // A run the caller named is also recognised by what it asks for (a
        // Step Functions retry arrives with a new request id), and by who
        // asks: a result kept for one caller is never another's answer.
        let request_key = match req.correlation_id {
            Some(_) => {
                use sha2::{Digest, Sha256};
                let payload = req.to_payload().to_json()?;
                let mut digest = Sha256::new();
                digest.update(delivery.caller.as_deref().unwrap_or_default().as_bytes());
                digest.update(b"\n");
                digest.update(payload.as_bytes());
                Some(format!("request#{}", hex::encode(digest.finalize())))
            }
            None => None,
        };
        let correlation_id = req
            .correlation_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let span = tracing::info_span!("run", correlation_id = %correlation_id, part = req.part);
        tracing::Instrument::instrument(self.claimed_run(req, delivery, request_key), span).await
    }

    /// A run under its delivery's claim: a repeat is acknowledged or its
    /// kept result republished, a delivery another instance holds is
    /// returned for retry, and a run that fails, or is cancelled, gives its
    /// claim back.
    pub(super) async fn claimed_run(
        &self,
        req: AttestationRequest,
        delivery: &Delivery,
        request_key: Option<String>,
    ) -> Result<Disposition, ServiceError> {
        let key = delivery.delivery_id.as_ref().map(|d| format!("delivery#{d}"));
        // Armed before the claim is written: a cancel while it is in flight
        // gives it back too (a release only removes this instance's claim).
        let on_cancel = self.release_on_cancel(key.as_deref());
        let answering = super::claims::Answering {
            req: &req,
            named: request_key.is_some(),
        };
        if let Some(key) = &key {
            match self.claim_answering(key, delivery.deadline, Some(answering)).await {
                Ok(None) => {}
                Ok(Some(done)) => {
                    on_cancel.disarm();
                    return Ok(done);
                }
                Err(e) => {
                    on_cancel.disarm();
                    return Err(e);
                }
            }
        }
        self.run_claimed(req, delivery, key.as_deref(), request_key, on_cancel)
            .await
    }

    /// The run of a claimed delivery, which settles the claim: finished
    /// (with the result kept when it could not be published) or given back.
    async fn run_claimed(
        &self,
        req: AttestationRequest,
        delivery: &Delivery,
        key: Option<&str>,
        request_key: Option<String>,
        on_cancel: super::claims::OnCancel,
    ) -> Result<Disposition, ServiceError> {
        if let Some(rk) = &request_key {
            // Only a kept result counts for a request key: the same request
            // sent again later is a new run.
            match self
                .store
                .claim(rk, &self.instance, self.lease_until(delivery.deadline))
                .await
            {
                // A kept result that does not answer this request is not
                // published: the request runs.
                Ok(Claim::Done {
                    undelivered: Some(kept),
                }) if self
                    .kept_document(rk, &kept, Some(super::claims::Answering { req: &req, named: true }))
                    .is_ok() =>
                {
                    let kept = Claim::Done {
                        undelivered: Some(kept),
                    };
                    if let Some(republished) = self.on_claim(rk, kept, delivery.deadline, None).await? {
                        if let Some(key) = key {
                            self.finished(key, None).await;
                        }
                        on_cancel.disarm();
                        return Ok(republished);
                    }
                }
                Ok(Claim::Claimed) => {
                    let _ = self.store.release(rk, &self.instance).await;
                }
                _ => {}
            }
        }
        let ran = self.run_to_result(req, delivery).await;
        let encoded = ran.and_then(|result| Ok((crate::core::encode::to_value(&result)?, result)));
        let (doc, result) = match encoded {
            Ok(done) => done,
            Err(e) => {
                self.give_back(key).await;
                on_cancel.disarm();
                return Err(e);
            }
        };
        // The devices have run: from here a cancel keeps the result for the
        // redelivery to publish and never gives the claim back (the retry
        // would run every device, and its continuation, again).
        on_cancel.disarm();
        let kept = doc.to_string();
        let keys: Vec<String> = key
            .into_iter()
            .chain(request_key.as_deref())
            .map(str::to_owned)
            .collect();
        let keep = self.keep_on_cancel(keys.clone(), kept.clone());
        let settled = match self.publish(&doc, delivery.deadline).await {
            Ok(()) => {
                if let Some(key) = key {
                    self.finished(key, None).await;
                }
                Ok(Disposition::Ran(Box::new(result)))
            }
            Err(e) => {
                // Kept, so the redelivery publishes it instead of running the
                // devices again.
                for k in &keys {
                    self.finished(k, Some(&kept)).await;
                }
                Err(e)
            }
        };
        keep.disarm();
        settled
    }

    /// Runs the engine (reading rotated credentials again once), then hands
    /// untried devices to the next part.
    pub(super) async fn run_to_result(
        &self,
        req: AttestationRequest,
        delivery: &Delivery,
    ) -> Result<RunResult, ServiceError> {
        // A later part belongs to the run its first part started.
        let started = delivery
            .stamp
            .as_ref()
            .map_or_else(std::time::SystemTime::now, super::seal::Stamp::run_started);
        let ignore = req.ignore_partial_failures;
        let tenant = self.tenant(req.tenant.as_deref())?;
        let mut client = self.graph_client(tenant, false).await?;
        let mut refreshed = false;
        let mut result = loop {
            let engine = self.engine(tenant, client.clone());
            match engine
                .run(req.clone(), delivery.deadline, Arc::new(Progress::new()))
                .await
            {
                Ok(r) => break r,
                Err(RunError::Credentials(m)) if !refreshed => {
                    // A rotated secret: read it again once before giving up.
                    tracing::warn!(reason = %m, "credentials refused; reading them again");
                    refreshed = true;
                    client = self.graph_client(tenant, true).await?;
                }
                Err(e) => return Err(self.map_run_error(tenant, e)),
            }
        };
        result.invocation = Some(Invocation {
            trigger: delivery.trigger.as_str().into(),
            delivery_id: delivery.delivery_id.clone(),
            caller: delivery.caller.clone(),
            part: req.part,
        });
        if !req.dry_run {
            self.continue_untried(&req, &mut result, delivery, started).await;
            self.schedule_verification(&req, &mut result, started, delivery.deadline)
                .await;
        }
        result.refresh(ignore);
        Ok(result)
    }
}
