//! Work the service queues for itself: a webhook's request handed to the
//! queue consumers, and the devices a run's deadline left untried handed
//! to its next part, split to fit the queue's message limit.

use tokio::time::Instant;

use super::{AttestService, DEFAULT_QUEUE_MESSAGE, Disposition, ServiceError};
use crate::core::outcome::{Outcome, RunResult};
use crate::core::request::AttestationRequest;
use crate::queue::WorkMessage;

impl AttestService {
    /// Hands a webhook's request to the queue consumers, in as many
    /// messages as the queue's size limit needs.
    pub(super) async fn hand_off(
        &self,
        mut req: AttestationRequest,
        deadline: Option<Instant>,
    ) -> Result<Disposition, ServiceError> {
        let correlation_id = req
            .correlation_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let messages = self
            .messages_for(&req, req.devices.clone(), &correlation_id, req.part)
            .await?;
        let parts = messages.len();
        self.send(messages, deadline).await?;
        Ok(Disposition::Accepted { correlation_id, parts })
    }

    /// The work messages that carry `template` for `devices`: split so
    /// that every body fits the work queue's message limit, each device in
    /// exactly one message. A filter travels only in the first.
    pub(super) async fn messages_for(
        &self,
        template: &AttestationRequest,
        devices: Vec<crate::core::device::DeviceRef>,
        correlation_id: &str,
        part: u32,
    ) -> Result<Vec<WorkMessage>, ServiceError> {
        let limit = match &self.queue {
            Some(q) => q.max_message_bytes().await.unwrap_or(DEFAULT_QUEUE_MESSAGE),
            None => DEFAULT_QUEUE_MESSAGE,
        };
        let mut first = template.for_devices(Vec::new(), correlation_id.to_owned(), part);
        first.device_filter = template.device_filter.clone();
        let empty = first.to_payload().to_json()?.len();
        // A device ID costs its 36 characters, two quotes and a comma; a
        // list's key costs up to 30 bytes more.
        let budget = limit.saturating_sub(empty + 64);
        let per_message = (budget / 39).max(1);
        if budget < 39 {
            return Err(ServiceError::Configuration(format!(
                "the work queue's message limit ({limit} bytes) cannot hold a request"
            )));
        }
        let mut messages = Vec::new();
        let mut chunks = devices.chunks(per_message).peekable();
        if chunks.peek().is_none() {
            messages.push(WorkMessage::new(first.to_payload().to_json()?, correlation_id));
        }
        for (i, chunk) in chunks.enumerate() {
            let mut req = template.for_devices(chunk.to_vec(), correlation_id.to_owned(), part);
            if i == 0 {
                req.device_filter = template.device_filter.clone();
            }
            messages.push(WorkMessage::new(req.to_payload().to_json()?, correlation_id));
        }
        Ok(messages)
    }

    pub(super) async fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> Result<(), ServiceError> {
        let Some(queue) = &self.queue else {
            return Err(ServiceError::Configuration("no work queue is configured".into()));
        };
        queue
            .send(messages, deadline)
            .await
            .map_err(|e| ServiceError::ResultDeliveryFailed(format!("not queued: {e}")))
    }

    /// Hands devices the deadline left untried to the next part of the run.
    pub(super) async fn continue_untried(
        &self,
        req: &AttestationRequest,
        result: &mut RunResult,
        deadline: Option<Instant>,
    ) {
        if self.queue.is_none() {
            return;
        }
        let untried: Vec<usize> = result
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.outcome == Outcome::NotAttempted && d.attempts == 0)
            .map(|(i, _)| i)
            .collect();
        if untried.is_empty() {
            return;
        }
        let part = req.part + 1;
        let devices = untried.iter().map(|&i| result.devices[i].device_ref()).collect();
        let next = req.for_devices(Vec::new(), result.correlation_id.clone(), part);
        let messages = self.messages_for(&next, devices, &result.correlation_id, part).await;
        let sent = match messages {
            Ok(m) => self.send(m, deadline).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                for &i in &untried {
                    let d = &mut result.devices[i];
                    d.outcome = Outcome::Continued;
                    d.reason = Some(format!("handed on to part {part} of this run"));
                }
                result.warnings.push(format!(
                    "{} device(s) handed on to part {part} of this run",
                    untried.len()
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "the continuation could not be queued");
                result.warnings.push(format!(
                    "{} untried device(s) could not be handed on to part {part} ({e}); they are reported not_attempted",
                    untried.len()
                ));
            }
        }
    }
}
