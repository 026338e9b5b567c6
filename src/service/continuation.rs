//! Work the service queues for itself: a webhook's request handed to the
//! queue consumers, and the devices a run's deadline left untried handed
//! to its next part, split to fit the queue's message limit. Every message
//! is sealed (see [`super::seal`]).
//!
//! A part that tried no device (its time was too short, or the budget was
//! paused) hands its devices on after a delay that doubles with every such
//! part of the run, and after [`MAX_STALLED_PARTS`] of them the run ends,
//! reporting its untried devices `not_attempted`. Every other part tries
//! at least one device, so a run of `n` devices takes at most
//! `n + MAX_STALLED_PARTS` parts from first to last.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::seal::{Kind, Stamp};
use super::{AttestService, DEFAULT_QUEUE_MESSAGE, Delivery, Disposition, ServiceError};
use crate::core::outcome::{Outcome, RunResult};
use crate::core::request::AttestationRequest;
use crate::queue::WorkMessage;

/// Parts of one run that may try no device before it ends.
pub const MAX_STALLED_PARTS: u32 = 6;
/// The delay before the part after the first that tried nothing; each
/// further one doubles it, up to what the queue can delay.
pub const FIRST_STALL_DELAY: Duration = Duration::from_secs(30);

/// How long to hold the next part after `stalled` parts in a row tried
/// nothing, at most `max`.
pub fn stall_delay(stalled: u32, max: Duration) -> Duration {
    if stalled == 0 {
        return Duration::ZERO;
    }
    FIRST_STALL_DELAY.saturating_mul(1u32 << (stalled - 1).min(16)).min(max)
}

impl AttestService {
    /// Hands a webhook's request to the queue consumers, in as many
    /// messages as the queue's size limit needs, naming the caller the
    /// webhook authenticated.
    pub(super) async fn hand_off(
        &self,
        mut req: AttestationRequest,
        delivery: &Delivery,
    ) -> Result<Disposition, ServiceError> {
        let correlation_id = req
            .correlation_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let stamp = Stamp::new(Kind::HandOff, SystemTime::now()).caller(delivery.caller.as_deref());
        let messages = self
            .messages_for(&req, req.devices.clone(), &correlation_id, req.part, &stamp)
            .await?;
        let parts = messages.len();
        self.send(messages, delivery.deadline).await?;
        Ok(Disposition::Accepted { correlation_id, parts })
    }

    /// A work message carrying `req`, sealed with `stamp`.
    pub(super) async fn sealed_message(
        &self,
        req: &AttestationRequest,
        group_id: &str,
        stamp: &Stamp,
    ) -> Result<WorkMessage, ServiceError> {
        let payload = req.to_payload().to_json()?;
        let body = self.sealer.seal(stamp, &payload).await?;
        // Deduplicated by what it asks, not by when it was sealed.
        let mut message = WorkMessage::new(payload, group_id);
        message.body = body;
        Ok(message)
    }

    /// The work messages that carry `template` for `devices`, sealed with
    /// `stamp`: split so that every body fits the work queue's message
    /// limit, each device in exactly one message. A filter travels only in
    /// the first.
    pub(super) async fn messages_for(
        &self,
        template: &AttestationRequest,
        devices: Vec<crate::core::device::DeviceRef>,
        correlation_id: &str,
        part: u32,
        stamp: &Stamp,
    ) -> Result<Vec<WorkMessage>, ServiceError> {
        let limit = match &self.queue {
            Some(q) => q.max_message_bytes().await.unwrap_or(DEFAULT_QUEUE_MESSAGE),
            None => DEFAULT_QUEUE_MESSAGE,
        };
        let mut first = template.for_devices(Vec::new(), correlation_id.to_owned(), part);
        first.device_filter = template.device_filter.clone();
        let empty = self.sealed_message(&first, correlation_id, stamp).await?.body.len();
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
            messages.push(self.sealed_message(&first, correlation_id, stamp).await?);
        }
        for (i, chunk) in chunks.enumerate() {
            let mut req = template.for_devices(chunk.to_vec(), correlation_id.to_owned(), part);
            if i == 0 {
                req.device_filter = template.device_filter.clone();
            }
            messages.push(self.sealed_message(&req, correlation_id, stamp).await?);
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

    /// Hands devices the deadline left untried to the next part of the
    /// run: at once when this part tried a device, else after a delay that
    /// grows with every part of the run that tried none, until it has had
    /// [`MAX_STALLED_PARTS`] of them.
    pub(super) async fn continue_untried(
        &self,
        req: &AttestationRequest,
        result: &mut RunResult,
        delivery: &Delivery,
        started: SystemTime,
    ) {
        // `started`: when the run's first part started.
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
        let before = delivery.stamp.as_ref();
        let progressed = untried.len() < result.devices.len();
        // Counted over the whole run, never reset: the run's parts are
        // bounded by its devices plus this.
        let stalled = before.map_or(0, |s| s.stalled) + u32::from(!progressed);
        if stalled > MAX_STALLED_PARTS || u64::from(part) > crate::core::request::MAX_PART {
            let why = format!(
                "{} part(s) of this run tried no device; it ends here",
                stalled.min(MAX_STALLED_PARTS + 1)
            );
            tracing::error!(part = req.part, stalled, "{why}");
            for &i in &untried {
                result.devices[i].reason = Some(format!("not attempted: {why}"));
            }
            result.warnings.push(format!(
                "{} untried device(s) were not handed on: {why} (send them again when Graph and the timeout allow)",
                untried.len()
            ));
            return;
        }
        let mut stamp = Stamp::new(Kind::Continuation, started);
        stamp.stalled = stalled;
        let max_delay = self
            .queue
            .as_ref()
            .and_then(|q| q.max_delay())
            .unwrap_or(Duration::ZERO);
        let delay = if progressed {
            Duration::ZERO
        } else {
            stall_delay(stalled, max_delay)
        };
        // Named and filter-selected devices travel apart, so the next part
        // still knows which the caller named.
        let (selected, named): (Vec<usize>, Vec<usize>) = untried.iter().partition(|&&i| result.devices[i].selected);
        let next = req.for_devices(Vec::new(), result.correlation_id.clone(), part);
        let mut messages = Vec::new();
        let mut built = Ok(());
        for (group, from_filter) in [(named, false), (selected, true)] {
            if group.is_empty() {
                continue;
            }
            let devices = group.iter().map(|&i| result.devices[i].device_ref()).collect();
            stamp.selected = from_filter;
            match self
                .messages_for(&next, devices, &result.correlation_id, part, &stamp)
                .await
            {
                Ok(m) => messages.extend(m),
                Err(e) => {
                    built = Err(e);
                    break;
                }
            }
        }
        let sent = match built {
            Ok(()) => {
                self.send(
                    messages.into_iter().map(|m| m.delayed(delay)).collect(),
                    delivery.deadline,
                )
                .await
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                for &i in &untried {
                    let d = &mut result.devices[i];
                    d.outcome = Outcome::Continued;
                    d.reason = Some(format!("handed on to part {part} of this run"));
                }
                result.warnings.push(if delay.is_zero() {
                    format!("{} device(s) handed on to part {part} of this run", untried.len())
                } else {
                    format!(
                        "{} device(s) handed on to part {part} of this run, held {} because this part tried no device",
                        untried.len(),
                        crate::core::duration::format_go_duration(delay)
                    )
                });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_after_a_part_that_tried_nothing_doubles_up_to_the_queue_limit() {
        let max = Duration::from_secs(900);
        let delays: Vec<u64> = (0..=MAX_STALLED_PARTS).map(|n| stall_delay(n, max).as_secs()).collect();
        assert_eq!(delays, [0, 30, 60, 120, 240, 480, 900]);
        assert_eq!(stall_delay(40, max), max);
        assert_eq!(
            stall_delay(3, Duration::ZERO),
            Duration::ZERO,
            "a queue that cannot delay"
        );
    }
}
