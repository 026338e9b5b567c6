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
