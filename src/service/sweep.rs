//! Scheduled sweeps: which devices a schedule attests, and how it is cut
//! into queued chunks.

use std::time::Duration;

use crate::core::duration::parse_go_duration;
use crate::core::filter::DeviceFilter;
use crate::core::request::AttestationRequest;

/// Sweep settings for schedules (EventBridge rules, Azure timers).
#[derive(Debug, Clone)]
pub struct SweepSettings {
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
