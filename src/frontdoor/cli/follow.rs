//! `invoke` with `verify`: the command waits, checks the initiated devices
//! on the payload's schedule, logs each check, and hands back the last
//! status read (the result document's `verdict`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::core::duration::rfc3339;
use crate::core::outcome::RunResult;
use crate::core::status::{self, ReadPolicy, StatusDocument, StatusGateway};
use crate::core::verify::{CheckTicket, VerifyPlan};

/// The longest one check's reads may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Checks the devices `result` initiated until every action is over or the
/// schedule ends; the last status read, or `None` when nothing was
/// initiated.
pub(super) async fn follow<G: StatusGateway>(
    gateway: Arc<G>,
    result: &RunResult,
    plan: VerifyPlan,
    started: SystemTime,
    reads: &ReadPolicy,
) -> Option<StatusDocument> {
    let devices = result.initiated_devices();
    if devices.is_empty() {
        return None;
    }
    let mut ticket = CheckTicket::first(plan, started, SystemTime::now());
    tracing::info!(
        devices = devices.len(),
        first_check_at = %rfc3339(ticket.due_at),
        until = %rfc3339(ticket.until_at),
        "verify: waiting for the devices to attest"
    );
    loop {
        let wait = ticket.due_at.duration_since(SystemTime::now()).unwrap_or_default();
        tokio::time::sleep(wait).await;
        let doc = status::read(
            gateway.clone(),
            &devices,
            Some(result.correlation_id.clone()),
            reads,
            Instant::now() + READ_TIMEOUT,
        )
        .await;
        let next = if doc.all_terminal() {
            None
        } else {
            ticket.next(plan, SystemTime::now())
        };
        tracing::info!(
            check = ticket.number,
            states = %serde_json::json!(doc.summary.action_states),
            unread = doc.summary.unread,
            next_check_at = %next.map(|n| rfc3339(n.due_at)).unwrap_or_else(|| "none".into()),
            "verify: check done"
        );
        match next {
            Some(n) => ticket = n,
            None => return Some(doc),
        }
    }
}

/// A state `--fail-on` may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FailOn {
    /// Intune's verdict is untrusted, or there is no verdict for a device
    /// whose action is done (it cannot be shown trusted).
    Untrusted,
    /// The attestation action failed.
    Failed,
    /// The device cannot attest (the action is not supported).
    NotSupported,
    /// Still pending or active when the wait ended.
    Pending,
    /// The device could not be read.
    Unread,
}

/// The devices of `doc` in any of `states`.
pub(super) fn failing(doc: &StatusDocument, states: &[FailOn]) -> usize {
    use crate::core::status::{ActionState, AttestationStatus};
    doc.devices
        .iter()
        .filter(|d| {
            states.iter().any(|s| match s {
                FailOn::Untrusted => match d.attestation_status {
                    Some(status) => status == AttestationStatus::Untrusted,
                    None => d.action_state == Some(ActionState::Done),
                },
                FailOn::Failed => d.action_state == Some(ActionState::Failed),
                FailOn::NotSupported => d.action_state == Some(ActionState::NotSupported),
                FailOn::Pending => matches!(d.action_state, Some(ActionState::Pending | ActionState::Active)),
                FailOn::Unread => d.read_error.is_some(),
            })
        })
        .count()
}

/// The verify schedule `--wait` asks for: a check every `after` until
/// `wait` has passed, added to the payload (and validated with it).
pub(super) fn with_wait(payload: Vec<u8>, wait: &str) -> anyhow::Result<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|_| anyhow::anyhow!("--wait needs a payload that is a JSON object"))?;
    let Some(obj) = v.as_object_mut() else {
        anyhow::bail!("--wait needs a payload that is a JSON object");
    };
    if obj.contains_key("verify") {
        anyhow::bail!("--wait and the payload's verify both set a schedule: give one");
    }
    obj.insert(
        "verify".into(),
        serde_json::json!({"after": WAIT_INTERVAL, "until": wait}),
    );
    Ok(serde_json::to_vec(&v)?)
}

/// How often `--wait` and `status --watch` read (the verify floor may
/// raise it for many devices).
pub(super) const WAIT_INTERVAL: &str = "30s";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_adds_a_schedule_and_refuses_a_second() {
        let v: serde_json::Value = serde_json::from_slice(&with_wait(b"{}".to_vec(), "20m").unwrap()).unwrap();
        assert_eq!(v["verify"], serde_json::json!({"after": "30s", "until": "20m"}));
        assert!(with_wait(br#"{"verify": {"after": "1m"}}"#.to_vec(), "20m").is_err());
    }
}
