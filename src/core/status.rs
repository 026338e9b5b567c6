//! The verdict: did attestation happen? Intune answers later than the
//! initiation (up to 15 minutes), in each device's `deviceActionResults`
//! entry for `initiateDeviceAttestation` and, only when a deployment opts
//! in (the current beta schema no longer has it on `managedDevice`),
//! `deviceIdentityAttestationDetail.deviceIdentityAttestationStatus`. This
//! module reads them for a set of devices, paced and batched, and builds
//! the status document (`schema/status.schema.json`). A value Graph adds to
//! either enum later is `unknown`, never terminal, and logged once.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::device::{DeviceId, DeviceKind, DeviceRef};
use super::gateway::{FailureKind, ItemAnswer, MAX_BATCH};
use super::pacer::{Pacer, Permit};

/// The status document's schema version.
pub const STATUS_SCHEMA_VERSION: &str = "1";

/// Where the attestation action stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionState {
    /// No attestation action recorded for the device.
    None,
    /// Queued for the device.
    Pending,
    /// The device is working on it.
    Active,
    /// Finished.
    Done,
    /// The device reported a failure.
    Failed,
    /// The device cannot do it.
    NotSupported,
    /// Cancelled.
    Canceled,
    /// A value this version does not know (Graph adds enum members): not
    /// terminal, so a verify schedule keeps checking.
    Unknown,
}

/// Logs, once per process for each value, that Graph sent an enum value
/// this version does not know.
fn note_unknown(property: &'static str, value: &str) {
    static SEEN: std::sync::Mutex<Vec<(&'static str, String)>> = std::sync::Mutex::new(Vec::new());
    let value = super::text::bounded(value, 64);
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !seen.iter().any(|(p, v)| *p == property && *v == value) {
        tracing::warn!(property, value = %value, "Graph sent a value this version does not know; reported as unknown");
        seen.push((property, value));
    }
}

impl ActionState {
    /// Every state, in the order the summary lists them.
    pub const ALL: [ActionState; 8] = [
        ActionState::None,
        ActionState::Pending,
        ActionState::Active,
        ActionState::Done,
        ActionState::Failed,
        ActionState::NotSupported,
        ActionState::Canceled,
        ActionState::Unknown,
    ];

    /// Graph's `actionState` value (`none pending canceled active done
    /// failed notSupported` in the beta schema); any other is `Unknown`.
    pub fn from_graph(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "none" => ActionState::None,
            "pending" => ActionState::Pending,
            "active" => ActionState::Active,
            "done" => ActionState::Done,
            "failed" => ActionState::Failed,
            "notsupported" => ActionState::NotSupported,
            "canceled" | "cancelled" => ActionState::Canceled,
            _ => {
                note_unknown("actionState", s);
                ActionState::Unknown
            }
        }
    }

    /// Whether the device will report nothing more (an unknown state may
    /// still change).
    pub fn is_terminal(self) -> bool {
        !matches!(self, ActionState::Pending | ActionState::Active | ActionState::Unknown)
    }

    /// The name the status document uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::None => "none",
            ActionState::Pending => "pending",
            ActionState::Active => "active",
            ActionState::Done => "done",
            ActionState::Failed => "failed",
            ActionState::NotSupported => "not_supported",
            ActionState::Canceled => "canceled",
            ActionState::Unknown => "unknown",
        }
    }
}

/// Intune's verdict on the device's identity attestation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttestationStatus {
    /// Attested.
    Trusted,
    /// Attestation failed.
    Untrusted,
    /// The device cannot attest.
    NotSupported,
    /// Not enough data.
    IncompleteData,
    /// Not known (yet).
    Unknown,
}

impl AttestationStatus {
    /// Every status, in the order the summary lists them.
    pub const ALL: [AttestationStatus; 5] = [
        AttestationStatus::Trusted,
        AttestationStatus::Untrusted,
        AttestationStatus::NotSupported,
        AttestationStatus::IncompleteData,
        AttestationStatus::Unknown,
    ];

    /// Graph's `deviceIdentityAttestationStatus` value.
    pub fn from_graph(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "trusted" => AttestationStatus::Trusted,
            "untrusted" => AttestationStatus::Untrusted,
            "notsupported" => AttestationStatus::NotSupported,
            "incompletedata" => AttestationStatus::IncompleteData,
            "unknown" => AttestationStatus::Unknown,
            _ => {
                note_unknown("deviceIdentityAttestationStatus", s);
                AttestationStatus::Unknown
            }
        }
    }

    /// The name the status document uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationStatus::Trusted => "trusted",
            AttestationStatus::Untrusted => "untrusted",
            AttestationStatus::NotSupported => "not_supported",
            AttestationStatus::IncompleteData => "incomplete_data",
            AttestationStatus::Unknown => "unknown",
        }
    }
}

/// What Graph reported of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Graph's `deviceName`.
    pub device_name: Option<String>,
    /// The `initiateDeviceAttestation` entry: state, start, last update.
    pub action: Option<(ActionState, Option<String>, Option<String>)>,
    /// The attestation status, when Graph served it.
    pub attestation: Option<AttestationStatus>,
}

/// Reading the status, as a port (Graph implements it over `$batch`).
pub trait StatusGateway: Send + Sync + 'static {
    /// Reads up to 20 devices; with `detail`, selects the attestation
    /// detail too. One answer per device, in order.
    fn read_status(
        &self,
        devices: &[DeviceRef],
        detail: bool,
        deadline: Instant,
    ) -> impl std::future::Future<Output = Vec<ItemAnswer<StatusReport>>> + Send;

    /// Whether reads should select the attestation detail: an opt-in, not
    /// yet refused in this run.
    fn detail_wanted(&self) -> bool {
        false
    }

    /// Graph refused the attestation detail: stop asking for the rest of
    /// the run.
    fn detail_refused(&self) {}
}

/// Whether a failed read that selected the attestation detail is Graph
/// refusing the property (400 `BadRequest`, as Graph answers a `$select`
/// of a property the type does not have), judged by the status and the
/// error code, never the message text.
fn refuses_detail(status: Option<u16>, code: Option<&str>) -> bool {
    status == Some(400) && code.is_some_and(|c| c.eq_ignore_ascii_case("BadRequest"))
}

/// One device's line in the status document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    /// The device.
    pub device_id: DeviceId,
    /// Which endpoint it was attested through.
    pub kind: DeviceKind,
    /// Graph's `deviceName`, when the read found the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// Where the action stands (`none` when Graph has no entry for it);
    /// null when the device could not be read (`read_error` says why).
    pub action_state: Option<ActionState>,
    /// When the action started (RFC 3339, as Graph gave it).
    pub action_started_at: Option<String>,
    /// When the action last changed.
    pub action_updated_at: Option<String>,
    /// Intune's verdict, or null when Graph does not serve it.
    pub attestation_status: Option<AttestationStatus>,
    /// Why the device could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
}

/// Counts per state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusSummary {
    /// Devices asked about.
    pub devices: usize,
    /// Per action state (states with devices only).
    pub action_states: std::collections::BTreeMap<&'static str, usize>,
    /// Per attestation status (null when Graph does not serve it).
    pub attestation_statuses: std::collections::BTreeMap<&'static str, usize>,
    /// Devices that could not be read.
    pub unread: usize,
}

/// The status document.
#[derive(Clone, Debug, Serialize)]
pub struct StatusDocument {
    /// [`STATUS_SCHEMA_VERSION`].
    pub schema_version: &'static str,
    /// The run the devices belong to, when known.
    pub correlation_id: Option<String>,
    /// When the status was read (RFC 3339).
    pub checked_at: String,
    /// Counts.
    pub summary: StatusSummary,
    /// Things worth saying (Graph not serving the attestation status...).
    pub warnings: Vec<String>,
    /// One entry per device, in the order asked.
    pub devices: Vec<DeviceStatus>,
}

impl StatusDocument {
    /// Whether every device's action is over (a device that could not be
    /// read is not known to be).
    pub fn all_terminal(&self) -> bool {
        self.devices
            .iter()
            .all(|d| d.read_error.is_none() && d.action_state.is_some_and(ActionState::is_terminal))
    }
}

/// How status reads are paced and retried: the tenant's read pacer, shared
/// with every other read (validation, other checks), and the engine's retry
/// policy, `Retry-After` included.
#[derive(Clone)]
pub struct ReadPolicy {
    /// The read pacer.
    pub pacer: Arc<std::sync::Mutex<Pacer>>,
    /// Delays and attempts when Graph gives no `Retry-After`.
    pub backoff: Backoff,
    /// The longest `Retry-After` honoured as given.
    pub max_retry_after: Duration,
}

/// Reads the status of `devices` under `policy`, retrying what can be
/// retried until `deadline`.
pub async fn read<G: StatusGateway>(
    gateway: Arc<G>,
    devices: &[DeviceRef],
    correlation_id: Option<String>,
    policy: &ReadPolicy,
    deadline: Instant,
) -> StatusDocument {
    let pacer = &policy.pacer;
    let lock = || pacer.lock().unwrap_or_else(|p| p.into_inner());
    let backoff = policy.backoff;
    let mut detail = gateway.detail_wanted();
    let mut warnings = Vec::new();
    let mut out: Vec<Option<DeviceStatus>> = vec![None; devices.len()];
    let mut todo: Vec<(usize, u32)> = (0..devices.len()).map(|i| (i, 0)).collect();
    while !todo.is_empty() {
        let n = todo.len().min(MAX_BATCH);
        let grant = loop {
            let asked = lock().try_acquire(n as u32, Instant::now());
            match asked {
                Ok(g) => break Some(g),
                Err(at) if at < deadline => tokio::time::sleep_until(at).await,
                Err(_) => break None,
            }
        };
        let Some(grant) = grant else { break };
        let permit = Permit::new(pacer.clone(), grant);
        let batch: Vec<(usize, u32)> = todo.drain(..n).collect();
        let refs: Vec<DeviceRef> = batch.iter().map(|(i, _)| devices[*i]).collect();
        let asked_detail = detail;
        let answers = gateway.read_status(&refs, asked_detail, deadline).await;
        let now = Instant::now();
        permit.complete(now, answers.iter().any(ItemAnswer::answered));
        let accepted = answers.iter().filter(|a| matches!(a, ItemAnswer::Ok { .. })).count();
        lock().on_accepted(now, accepted as u32);
        // What Graph asked for: the longest `Retry-After` of this batch.
        let retry_after = answers
            .iter()
            .filter_map(|a| match a {
                ItemAnswer::Failed(f) if f.kind.is_retryable() => f.retry_after,
                _ => None,
            })
            .max()
            .map(|ra| ra.min(policy.max_retry_after));
        let throttled = answers
            .iter()
            .any(|a| matches!(a, ItemAnswer::Failed(f) if f.kind == FailureKind::Throttled));
        if throttled {
            let pause = retry_after.unwrap_or(backoff.base);
            lock().on_throttled(now, pause);
        }
        let mut retry = Vec::new();
        for ((i, tries), answer) in batch.into_iter().zip(answers) {
            let d = devices[i];
            match answer {
                ItemAnswer::Ok { value, .. } => {
                    let (state, started, updated) = value.action.unwrap_or((ActionState::None, None, None));
                    out[i] = Some(DeviceStatus {
                        device_id: d.id,
                        kind: d.kind,
                        device_name: value.device_name,
                        action_state: Some(state),
                        action_started_at: started,
                        action_updated_at: updated,
                        attestation_status: if asked_detail { value.attestation } else { None },
                        read_error: None,
                    });
                }
                ItemAnswer::Failed(f) if asked_detail && refuses_detail(f.status, f.code.as_deref()) => {
                    // Recent Graph no longer serves the property: go on
                    // without it for the rest of the run (a read refused
                    // again without it is a real failure), saying so once.
                    if detail {
                        detail = false;
                        gateway.detail_refused();
                        warnings.push(
                            "Graph does not serve deviceIdentityAttestationDetail here; attestation_status is null"
                                .into(),
                        );
                    }
                    retry.push((i, tries));
                }
                ItemAnswer::Failed(f) if f.kind.is_retryable() && backoff.allows(tries + 1) => {
                    retry.push((i, tries + 1));
                }
                ItemAnswer::Failed(f) => {
                    let why = match (f.kind, f.status) {
                        (FailureKind::NotFound, _) => "Graph has no such device".to_owned(),
                        (_, Some(status)) => {
                            format!("HTTP {status}{}", f.code.map(|c| format!(" {c}")).unwrap_or_default())
                        }
                        // No answer: what kept it from coming.
                        (_, None) => format!(
                            "no answer from Graph: {}",
                            crate::core::text::bounded(f.message.as_deref().unwrap_or("the call failed"), 300)
                        ),
                    };
                    out[i] = Some(unread(d, why));
                }
            }
        }
        if let Some(tries) = retry.iter().map(|(_, t)| *t).max().filter(|t| *t > 0)
            && !Backoff::sleep_within(retry_after.unwrap_or_else(|| backoff.delay(tries)), Some(deadline)).await
        {
            for (i, _) in retry.drain(..) {
                out[i] = Some(unread(devices[i], "Graph kept failing until the deadline".into()));
            }
        }
        todo.extend(retry);
    }
    let devices_out: Vec<DeviceStatus> = out
        .into_iter()
        .zip(devices)
        .map(|(s, d)| s.unwrap_or_else(|| unread(*d, "the deadline came before this device was read".into())))
        .collect();
    let mut summary = StatusSummary {
        devices: devices_out.len(),
        ..StatusSummary::default()
    };
    for d in &devices_out {
        if d.read_error.is_some() {
            summary.unread += 1;
            continue;
        }
        let state = d.action_state.map_or("unknown", ActionState::as_str);
        *summary.action_states.entry(state).or_default() += 1;
        let status = d.attestation_status.map_or("null", AttestationStatus::as_str);
        *summary.attestation_statuses.entry(status).or_default() += 1;
    }
    StatusDocument {
        schema_version: STATUS_SCHEMA_VERSION,
        correlation_id,
        checked_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        summary,
        warnings,
        devices: devices_out,
    }
}

fn unread(d: DeviceRef, why: String) -> DeviceStatus {
    DeviceStatus {
        device_id: d.id,
        kind: d.kind,
        device_name: None,
        action_state: None,
        action_started_at: None,
        action_updated_at: None,
        attestation_status: None,
        read_error: Some(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::gateway::CallFailure;
    use crate::core::pacer::PacerConfig;

    /// Answers the first call with 429 and `Retry-After: 3`, then reads
    /// every device; records when each call came.
    struct Throttling {
        calls: std::sync::Mutex<Vec<Instant>>,
    }

    impl StatusGateway for Throttling {
        async fn read_status(&self, devices: &[DeviceRef], _: bool, _: Instant) -> Vec<ItemAnswer<StatusReport>> {
            let first = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(Instant::now());
                calls.len() == 1
            };
            devices
                .iter()
                .map(|_| {
                    if first {
                        ItemAnswer::Failed(CallFailure::throttled(Some(Duration::from_secs(3))))
                    } else {
                        ItemAnswer::Ok {
                            value: StatusReport {
                                action: Some((ActionState::Done, None, None)),
                                attestation: None,
                                device_name: None,
                            },
                            status: 200,
                            request_id: None,
                        }
                    }
                })
                .collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn status_reads_share_the_read_pacer_and_honour_retry_after() {
        let pacer = Arc::new(std::sync::Mutex::new(Pacer::new(
            PacerConfig::new(1000, Duration::from_secs(20)),
            Instant::now(),
        )));
        let policy = ReadPolicy {
            pacer: pacer.clone(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 6),
            max_retry_after: Duration::from_secs(60),
        };
        let gateway = Arc::new(Throttling {
            calls: std::sync::Mutex::new(Vec::new()),
        });
        let devices: Vec<DeviceRef> = (0..5)
            .map(|i| DeviceRef {
                id: DeviceId::parse(&format!("00000000-0000-0000-0000-{i:012x}")).unwrap(),
                kind: DeviceKind::Managed,
            })
            .collect();
        let doc = read(
            gateway.clone(),
            &devices,
            None,
            &policy,
            Instant::now() + Duration::from_secs(60),
        )
        .await;
        assert_eq!(doc.summary.unread, 0, "{:?}", doc.devices);
        let calls = gateway.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 2);
        assert!(
            calls[1] - calls[0] >= Duration::from_secs(3),
            "retried {:?} after a Retry-After of 3 s",
            calls[1] - calls[0]
        );
        // The reads were counted in the pacer given, which the 429 paused.
        let mut p = pacer.lock().unwrap();
        assert!(p.in_window() >= 10, "{} permits held", p.in_window());
        assert!(
            p.try_acquire(1, calls[0] + Duration::from_secs(1)).is_err(),
            "the 429 paused the shared pacer"
        );
    }

    #[test]
    fn graph_values_map_to_the_documents_words() {
        assert_eq!(ActionState::from_graph("notSupported"), ActionState::NotSupported);
        assert_eq!(ActionState::from_graph("done"), ActionState::Done);
        assert_eq!(ActionState::from_graph("something new"), ActionState::Unknown);
        assert_eq!(ActionState::from_graph("none"), ActionState::None);
        assert!(!ActionState::Unknown.is_terminal());
        assert_eq!(
            AttestationStatus::from_graph("unknownFutureValue"),
            AttestationStatus::Unknown
        );
        assert!(refuses_detail(Some(400), Some("BadRequest")));
        assert!(!refuses_detail(Some(400), Some("InvalidRequest")));
        assert!(!refuses_detail(Some(404), Some("BadRequest")));
        assert_eq!(AttestationStatus::from_graph("unTrusted"), AttestationStatus::Untrusted);
        assert_eq!(
            AttestationStatus::from_graph("incompleteData"),
            AttestationStatus::IncompleteData
        );
        assert!(ActionState::Done.is_terminal() && !ActionState::Active.is_terminal());
    }
}
