//! `verify` on a hosted deployment: after a run, its initiated devices are
//! checked again on the schedule the payload gave, each check carried by a
//! delayed message on the work queue (SQS delays a message by at most 15
//! minutes, so a later check hops: it is sent on until it is due). Each
//! check reads the devices' status, publishes a `Device Attestation
//! Verdict`, and queues the next one while any device is still pending or
//! active and the schedule has not ended.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::seal::{Kind, Stamp};
use super::{AttestService, Delivery, Disposition, ServiceError};
use crate::core::device::DeviceRef;
use crate::core::duration::rfc3339;
use crate::core::outcome::{RunResult, Verification};
use crate::core::request::{AttestationRequest, InvalidRequest};
use crate::core::status::{self, StatusDocument};
use crate::core::verify::{Arrival, CheckReport, CheckTicket, Verdict};

/// How long a check may spend reading when the host gives no deadline.
const READ_WITHOUT_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// Time kept free after the reads to publish and queue the next check.
const CHECK_RESERVE: Duration = Duration::from_secs(5);

/// Where the full status is when an answer lists only some devices.
pub const FULL_STATUS_AT: &str = "read every device with `intune-attest status --event` and the same selection";

/// A status document bounded for a channel of `max_bytes`: every device
/// when it fits, else those whose attestation is not done, as many as fit.
pub fn bounded_status(
    doc: &StatusDocument,
    max_bytes: usize,
) -> Result<serde_json::Value, crate::core::encode::EncodeError> {
    Ok(crate::core::outcome::bounded_listing(
        &crate::core::encode::to_value(doc)?,
        max_bytes,
        FULL_STATUS_AT,
        |d| d["action_state"] != "done",
    ))
}

/// When reads for a host deadline must end: a reserve before it, or a
/// fixed time without one.
fn read_deadline(deadline: Option<Instant>) -> Instant {
    deadline
        .and_then(|d| d.checked_sub(CHECK_RESERVE))
        .unwrap_or_else(|| Instant::now() + READ_WITHOUT_DEADLINE)
}

/// A check that was not due yet and was sent on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Deferral {
    /// The run's correlation id.
    pub correlation_id: String,
    /// The check's number.
    pub check: u32,
    /// When it is due (RFC 3339).
    pub due_at: String,
    /// Devices it covers.
    pub devices: usize,
}

impl AttestService {
    /// `read_status`: the selected devices' attestation status, read now
    /// and answered (a playbook's wait-and-branch). Only a caller that
    /// waits for the answer may ask: a direct invoke or a webhook.
    pub(super) async fn read_status(
        &self,
        req: AttestationRequest,
        delivery: &Delivery,
    ) -> Result<Disposition, ServiceError> {
        if delivery.trigger.is_queue()
            || matches!(delivery.trigger, super::Trigger::Schedule | super::Trigger::AzureTimer)
        {
            return Err(InvalidRequest::single(
                "read_status",
                "true",
                "read_status only from a caller that waits for the answer (a direct invoke or a webhook)",
            )
            .into());
        }
        let tenant = self.tenant(req.tenant.as_deref())?;
        let client = self.graph_client(tenant, false).await?;
        let read_until = read_deadline(delivery.deadline);
        let devices = match &req.device_filter {
            Some(filter) => {
                let selected = crate::core::gateway::DeviceGateway::list_devices(
                    &*client,
                    filter,
                    self.settings.limits.max_devices,
                    read_until,
                )
                .await?;
                for warning in selected.warnings() {
                    tracing::warn!("status: {warning}");
                }
                crate::core::device::with_selected(&req.devices, selected.devices).0
            }
            None => req.devices.clone(),
        };
        let doc = self
            .read_statuses(client, &devices, &req, read_until, "the selection")
            .await?;
        Ok(Disposition::Status(Box::new(doc)))
    }

    /// Reads the status of `devices` by `until`, paced by the read budget;
    /// Graph unavailable when not one device could be read (`what` names
    /// them in the error).
    async fn read_statuses(
        &self,
        client: Arc<super::Gateway>,
        devices: &[DeviceRef],
        req: &AttestationRequest,
        until: Instant,
        what: &str,
    ) -> Result<StatusDocument, ServiceError> {
        let tenant = self.tenant(req.tenant.as_deref())?;
        let policy = tenant.pacers.read_policy(&self.settings.engine);
        let doc = status::read(client, devices, req.correlation_id.clone(), &policy, until).await;
        if !devices.is_empty() && doc.summary.unread == devices.len() {
            return Err(ServiceError::GraphUnavailable(format!(
                "no device of {what} could be read"
            )));
        }
        Ok(doc)
    }

    /// After a run with `verify`: queues the first check of the devices it
    /// initiated, and says in the result what was arranged.
    pub(super) async fn schedule_verification(
        &self,
        req: &AttestationRequest,
        result: &mut RunResult,
        started: SystemTime,
        deadline: Option<Instant>,
    ) {
        let Some(plan) = req.verify else {
            return;
        };
        let devices = result.initiated_devices();
        let reads = &self.settings.engine.reads;
        let (plan, raised) = plan.for_devices(devices.len(), reads.budget, reads.window);
        result.warnings.extend(raised);
        let ticket = CheckTicket::first(plan, started, SystemTime::now());
        let mut arranged = Verification {
            scheduled: false,
            devices: devices.len(),
            first_check_at: None,
            until: Some(rfc3339(ticket.until_at)),
            reason: None,
        };
        if devices.is_empty() {
            arranged.reason = Some("no device was initiated, so there is nothing to check".into());
        } else {
            let mut template = req.for_check(Vec::new(), result.correlation_id.clone(), req.part, ticket);
            // Every check carries the interval in force.
            template.verify = Some(plan);
            let stamp = Stamp::new(Kind::Check, started);
            match self.queue_check(&template, devices, &stamp, deadline).await {
                Ok(()) => {
                    arranged.scheduled = true;
                    arranged.first_check_at = Some(rfc3339(ticket.due_at));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the follow-up checks could not be queued");
                    arranged.reason = Some(format!("the follow-up checks could not be queued: {e}"));
                    result.warnings.push(
                        "verify: no follow-up check was queued; read the verdict with `intune-attest status`".into(),
                    );
                }
            }
        }
        result.verification = Some(arranged);
    }

    /// The longest delay the work queue can give a message, or why it
    /// cannot carry checks.
    fn check_delay_limit(&self) -> Result<Duration, ServiceError> {
        let Some(queue) = &self.queue else {
            return Err(ServiceError::Configuration(
                "no work queue is configured to carry follow-up checks".into(),
            ));
        };
        queue.max_delay().ok_or_else(|| {
            ServiceError::Configuration(
                "the work queue cannot delay messages (a FIFO queue); verify needs a standard queue".into(),
            )
        })
    }

    /// Queues `template`'s check for `devices`, in as many messages as the
    /// queue's size limit needs, each held back until the check is due (or
    /// as long as the queue can).
    async fn queue_check(
        &self,
        template: &AttestationRequest,
        devices: Vec<DeviceRef>,
        stamp: &Stamp,
        deadline: Option<Instant>,
    ) -> Result<(), ServiceError> {
        let max_delay = self.check_delay_limit()?;
        let Some(ticket) = template.check else {
            return Ok(());
        };
        let correlation_id = template.correlation_id.clone().unwrap_or_default();
        let delay = ticket.delay(SystemTime::now(), max_delay);
        let messages = self
            .messages_for(template, devices, &correlation_id, template.part, stamp)
            .await?
            .into_iter()
            .map(|m| m.delayed(delay))
            .collect();
        self.send(messages, deadline).await
    }

    /// A follow-up check from the work queue: sent on if it is not due
    /// yet; otherwise read, published as a verdict, and followed by the
    /// next check while devices are still pending or active. A check runs
    /// once per delivery, under the delivery's claim.
    pub(super) async fn check(
        &self,
        req: AttestationRequest,
        delivery: &Delivery,
    ) -> Result<Disposition, ServiceError> {
        let Some(ticket) = req.check else {
            return Err(InvalidRequest::single("check", "nothing", "a follow-up check").into());
        };
        let Some(stamp) = delivery.stamp.as_ref().filter(|_| delivery.trigger.is_queue()) else {
            return Err(InvalidRequest::single(
                "check",
                "a check",
                "no check: the service sets it on the messages it seals for itself",
            )
            .into());
        };
        // The same run, sealed again now.
        let stamp = Stamp::new(Kind::Check, stamp.run_started());
        let correlation_id = req.correlation_id.clone().unwrap_or_default();
        let max_delay = self.check_delay_limit()?;
        if let Arrival::Hop(delay) = ticket.arrival(SystemTime::now(), max_delay) {
            let message = self.sealed_message(&req, &correlation_id, &stamp).await?.delayed(delay);
            self.send(vec![message], delivery.deadline).await?;
            tracing::info!(
                check = ticket.number,
                delay_s = delay.as_secs(),
                "check not due yet; sent on"
            );
            return Ok(Disposition::Deferred(Deferral {
                correlation_id,
                check: ticket.number,
                due_at: rfc3339(ticket.due_at),
                devices: req.devices.len(),
            }));
        }
        let key = delivery.delivery_id.as_ref().map(|d| format!("delivery#{d}"));
        if let Some(key) = &key
            && let Some(done) = self.claim(key, delivery.deadline).await?
        {
            return Ok(done);
        }
        match self.check_now(&req, ticket, &stamp, delivery.deadline).await {
            Ok(verdict) => {
                if let Some(key) = &key {
                    self.finished(key, None).await;
                }
                Ok(Disposition::Checked(Box::new(verdict)))
            }
            Err(e) => {
                self.give_back(key.as_deref()).await;
                Err(e)
            }
        }
    }

    /// Reads the devices, publishes the verdict, queues the next check.
    async fn check_now(
        &self,
        req: &AttestationRequest,
        ticket: CheckTicket,
        stamp: &Stamp,
        deadline: Option<Instant>,
    ) -> Result<Verdict, ServiceError> {
        let tenant = self.tenant(req.tenant.as_deref())?;
        let client = self.graph_client(tenant, false).await?;
        let doc = self
            .read_statuses(
                client,
                &req.devices,
                req,
                read_deadline(deadline),
                &format!("check {}", ticket.number),
            )
            .await?;
        let next = match req.verify {
            Some(plan) if !doc.all_terminal() => ticket.next(plan, SystemTime::now()),
            _ => None,
        };
        let verdict = Verdict {
            check: CheckReport {
                number: ticket.number,
                last: next.is_none(),
                next_check_at: next.map(|n| rfc3339(n.due_at)),
                until: rfc3339(ticket.until_at),
                part: req.part,
            },
            status: doc,
        };
        if let Some(sink) = &self.sink {
            let json = crate::core::encode::to_value(&verdict)?;
            sink.publish_verdict(&json, deadline)
                .await
                .map_err(|e| ServiceError::ResultDeliveryFailed(format!("verdict of check {}: {e}", ticket.number)))?;
        }
        if let Some(next) = next {
            let correlation_id = req.correlation_id.clone().unwrap_or_default();
            let template = req.for_check(Vec::new(), correlation_id, req.part, next);
            self.queue_check(&template, req.devices.clone(), stamp, deadline)
                .await?;
        }
        tracing::info!(
            check = ticket.number,
            devices = req.devices.len(),
            done = verdict.status.summary.action_states.get("done").copied().unwrap_or(0),
            last = verdict.check.last,
            "verdict published"
        );
        Ok(verdict)
    }
}
