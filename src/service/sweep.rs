//! Scheduled sweeps: which devices a schedule attests, and how it is cut
//! into queued chunks.

use std::time::Duration;

use tokio::time::Instant;

use super::{AttestService, Delivery, Disposition, ServiceError, SweepDispatch, Trigger};
use crate::core::gateway::{DeviceGateway, GatewayError};

use crate::core::duration::parse_go_duration;
use crate::core::filter::DeviceFilter;
use crate::core::request::AttestationRequest;

/// The most devices a sweep selects when `SWEEP_MAX_DEVICES` is not set.
pub const DEFAULT_SWEEP_MAX_DEVICES: usize = 100_000;

/// Sweep settings for schedules (EventBridge rules, Azure timers).
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// `SWEEP_ENABLED`: whether a schedule event sweeps at all (default
    /// no: an event shaped as a schedule's sweeps only where the
    /// deployment enabled its schedule).
    pub enabled: bool,
    /// `SWEEP_MAX_DEVICES`: the most devices one sweep selects (default
    /// 100,000); a larger fleet is cut there, with a warning.
    pub max_devices: usize,
    /// `SWEEP_FILTER` (default `operatingSystem eq 'Windows'`).
    pub filter: DeviceFilter,
    /// `SWEEP_CHUNK_SIZE`: devices per queued chunk (default 3000, about
    /// five minutes at the Intune ceiling).
    pub chunk_size: usize,
    /// `SWEEP_TIMEOUT`: `timeouts.invoke` of the sweep's runs (default 15m).
    pub timeout: Duration,
}

impl SweepSettings {
    /// Reads the sweep settings.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let enabled = match get("SWEEP_ENABLED").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("SWEEP_ENABLED: {other:?} is not true or false")),
        };
        let max_devices = match get("SWEEP_MAX_DEVICES") {
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("SWEEP_MAX_DEVICES: {v:?} is not a positive number"))?,
            None => DEFAULT_SWEEP_MAX_DEVICES,
        };
        let text = get("SWEEP_FILTER").unwrap_or_else(|| "operatingSystem eq 'Windows'".into());
        let filter = DeviceFilter::parse(&text).map_err(|e| format!("SWEEP_FILTER: {e}"))?;
        let chunk_size = match get("SWEEP_CHUNK_SIZE") {
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("SWEEP_CHUNK_SIZE: {v:?} is not a positive number"))?,
            None => 3000,
        };
        let timeout = match get("SWEEP_TIMEOUT") {
            Some(v) => parse_go_duration(&v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("SWEEP_TIMEOUT: {v:?} is not a Go duration"))?,
            None => Duration::from_secs(15 * 60),
        };
        Ok(Self {
            enabled,
            max_devices,
            filter,
            chunk_size,
            timeout,
        })
    }

    /// The request a sweep runs: every device the filter selects, validated
    /// first, partial failures ignored.
    pub fn request(&self, correlation_id: Option<String>) -> AttestationRequest {
        AttestationRequest {
            devices: Vec::new(),
            device_filter: Some(self.filter.clone()),
            ignore_partial_failures: true,
            validate_device_exists: true,
            timeout: self.timeout,
            dry_run: false,
            correlation_id,
            tenant: None,
            part: 1,
            verify: None,
            check: None,
            read_status: false,
            named_were_selected: false,
            warnings: Vec::new(),
        }
    }
}

/// The correlation id of the sweep a schedule event starts: derived from
/// the event's id, so a repeated event names the same sweep.
pub fn correlation_id(event_id: &str) -> String {
    format!(
        "sweep-{}",
        event_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(100)
            .collect::<String>()
    )
}

impl AttestService {
    /// A schedule tick: a sweep of the devices the sweep filter selects,
    /// queued in chunks when a work queue is configured, else run here.
    /// `event_id` names the tick, so a repeated tick is recognised.
    pub async fn sweep(&self, trigger: Trigger, event_id: &str, deadline: Option<Instant>) -> Disposition {
        let correlation_id = correlation_id(event_id);
        let req = self.sweep.request(Some(correlation_id.clone()));
        let delivery = Delivery {
            trigger,
            payload: Vec::new(),
            delivery_id: Some(event_id.to_owned()),
            caller: None,
            deadline,
            stamp: None,
        };
        if !self.sweep.enabled {
            let refused = crate::core::request::InvalidRequest::single(
                "(schedule event)",
                "a sweep",
                "no sweep: this deployment's sweep schedule is not enabled (SWEEP_ENABLED)",
            );
            return self.refuse(refused.into(), &delivery).await;
        }
        let outcome = if self.queue.is_some() {
            let key = format!("sweep#{correlation_id}");
            match self.claim(&key, deadline).await {
                Ok(None) => {}
                Ok(Some(done)) => return done,
                Err(e) => return self.refuse(e, &delivery).await,
            }
            let deadline = deadline.unwrap_or_else(|| Instant::now() + self.sweep.timeout);
            let dispatched = self.dispatch_sweep(&req, &correlation_id, deadline).await;
            if dispatched.is_err() {
                // Given back, so the schedule's retry dispatches it.
                let _ = self.store.release(&key, &self.instance).await;
            }
            dispatched
        } else {
            self.run(req, &delivery).await
        };
        match outcome {
            Ok(d) => d,
            Err(e) => self.refuse(e, &delivery).await,
        }
    }

    /// Selects the sweep's devices and queues them in chunks, each a
    /// request of its own.
    pub(super) async fn dispatch_sweep(
        &self,
        template: &AttestationRequest,
        correlation_id: &str,
        deadline: Instant,
    ) -> Result<Disposition, ServiceError> {
        let client = self.graph_client(&self.own, false).await?;
        let limit = self.sweep.max_devices;
        let listing = client
            .list_devices(&self.sweep.filter, limit, deadline)
            .await
            .map_err(|e| match e {
                e @ (GatewayError::Credentials(_) | GatewayError::Unavailable(_)) => ServiceError::from(e),
                other => ServiceError::SelectionFailed(other.to_string()),
            })?;
        for warning in listing.warnings() {
            tracing::warn!(correlation_id, "sweep: {warning}");
        }
        let ids = listing.devices;
        let chunk_size = self.sweep.chunk_size.clamp(1, self.settings.limits.max_devices);
        // The chunks name their devices; none carries the sweep's filter.
        let template = template.for_devices(Vec::new(), correlation_id.to_owned(), 1);
        let mut stamp = super::seal::Stamp::new(super::seal::Kind::SweepChunk, std::time::SystemTime::now());
        stamp.selected = true;
        let mut messages = Vec::new();
        for (i, chunk) in ids.chunks(chunk_size).enumerate() {
            let devices = chunk
                .iter()
                .map(|&id| crate::core::device::DeviceRef {
                    id,
                    kind: crate::core::device::DeviceKind::Managed,
                })
                .collect();
            let chunk_id = format!("{correlation_id}-c{}", i + 1);
            messages.extend(self.messages_for(&template, devices, &chunk_id, 1, &stamp).await?);
        }
        let chunks = messages.len();
        self.send(messages, Some(deadline))
            .await
            .map_err(|e| ServiceError::ResultDeliveryFailed(format!("sweep chunks {e}")))?;
        self.finished(&format!("sweep#{correlation_id}"), None).await;
        tracing::info!(devices = ids.len(), chunks, "sweep dispatched");
        Ok(Disposition::Dispatched(SweepDispatch {
            correlation_id: correlation_id.to_owned(),
            devices: ids.len(),
            chunks,
        }))
    }
}
