//! `--output summary` (one line for a ticket) and `--output csv` (the
//! device list, for a spreadsheet). Text from a document goes through the
//! same sanitiser as every terminal line, and a CSV cell that a
//! spreadsheet would take for a formula (`=`, `+`, `-`, `@` first) is
//! quoted as text.

use std::collections::BTreeMap;

use crate::core::outcome::{Outcome, RunResult};
use crate::core::status::StatusDocument;
use crate::core::text::bounded;

/// The most characters of a CSV cell; the JSON has the whole text.
const MAX_CELL: usize = 1000;

/// `counts` as `"3 done, 1 failed"`, largest first, skipping zeros.
fn counts<'a>(counts: impl IntoIterator<Item = (&'a str, usize)>) -> String {
    let mut v: Vec<(&str, usize)> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.iter().map(|(k, n)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
}

/// The verdict's part of a summary: `1326 trusted, 181 untrusted`.
fn verdict(status: &StatusDocument) -> String {
    let read = counts(status.summary.attestation_statuses.iter().map(|(k, n)| (*k, *n)));
    let states = counts(status.summary.action_states.iter().map(|(k, n)| (*k, *n)));
    match (
        read.is_empty() || status.summary.attestation_statuses.keys().all(|k| *k == "null"),
        states.is_empty(),
    ) {
        (false, _) => read.replace(" null", " without a verdict"),
        (true, false) => states,
        (true, true) => "nothing read".into(),
    }
}

/// A run in one line: `incident-4711: succeeded; 1610 initiated, 3 failed; 1326 trusted, 181 untrusted`.
pub fn result_line(r: &RunResult) -> String {
    let outcomes = counts(Outcome::ALL.iter().map(|o| (o.as_str(), r.summary.count(*o))));
    let mut line = format!(
        "{}: {}; {}",
        bounded(&r.correlation_id, 128),
        r.status.as_str(),
        if outcomes.is_empty() {
            "no device".into()
        } else {
            outcomes
        }
    );
    if let Some(v) = &r.verdict {
        line.push_str(&format!("; {}", verdict(v)));
    }
    line
}

/// A status document in one line.
pub fn status_line(doc: &StatusDocument) -> String {
    let mut line = format!(
        "{}: {} device(s); {}",
        bounded(doc.correlation_id.as_deref().unwrap_or("-"), 128),
        doc.summary.devices,
        verdict(doc)
    );
    if doc.summary.unread > 0 {
        line.push_str(&format!("; {} unread", doc.summary.unread));
    }
    line
}

/// A cell as a spreadsheet may open it: bounded, sanitised, and never a
/// formula.
fn cell(s: &str) -> String {
    let clean = bounded(s, MAX_CELL);
    if clean.starts_with(['=', '+', '-', '@']) {
        format!("'{clean}")
    } else {
        clean
    }
}

fn csv_text(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(header)?;
    for row in rows {
        w.write_record(row.iter().map(|c| cell(c)))?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

/// A device kind's name.
pub fn kind_word(kind: crate::core::device::DeviceKind) -> String {
    word(kind)
}

fn word(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A run's devices, one row each.
pub fn result_csv(r: &RunResult) -> anyhow::Result<String> {
    let header = [
        "device_id",
        "device_name",
        "kind",
        "outcome",
        "reason_code",
        "reason",
        "http_status",
        "error_code",
        "request_id",
    ];
    csv_text(
        &header,
        r.devices.iter().map(|d| {
            vec![
                d.device_id.to_string(),
                d.device_name.clone().unwrap_or_default(),
                word(d.kind),
                d.outcome.as_str().to_owned(),
                d.reason_code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
                d.reason.clone().unwrap_or_default(),
                d.http_status.map(|s| s.to_string()).unwrap_or_default(),
                d.error_code.clone().unwrap_or_default(),
                d.request_id.clone().unwrap_or_default(),
            ]
        }),
    )
}

/// A status document's devices, one row each.
pub fn status_csv(doc: &StatusDocument) -> anyhow::Result<String> {
    let header = [
        "device_id",
        "device_name",
        "kind",
        "action_state",
        "attestation_status",
        "action_updated_at",
        "read_error",
    ];
    csv_text(
        &header,
        doc.devices.iter().map(|d| {
            vec![
                d.device_id.to_string(),
                d.device_name.clone().unwrap_or_default(),
                word(d.kind),
                d.action_state.map(word).unwrap_or_default(),
                d.attestation_status.map(word).unwrap_or_default(),
                d.action_updated_at.clone().unwrap_or_default(),
                d.read_error.clone().unwrap_or_default(),
            ]
        }),
    )
}

/// Devices of a checked request, by kind, in one line.
pub fn checked_line(managed: usize, comanaged: usize, filter: Option<&str>) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    by.insert("managed", managed);
    by.insert("co-managed", comanaged);
    let mut line = format!("valid: {}", counts(by.iter().map(|(k, n)| (*k, *n))));
    if line == "valid: " {
        line.push_str("no device named");
    }
    if let Some(f) = filter {
        line.push_str(&format!("; device_filter {}", bounded(f, 200)));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_a_spreadsheet_would_run_is_text_and_control_characters_are_gone() {
        assert_eq!(cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert!(!cell("LAB-1\u{1b}[2J").contains('\u{1b}'));
        assert_eq!(cell("LAB-1"), "LAB-1");
    }

    #[test]
    fn counts_read_largest_first_without_zeros() {
        assert_eq!(counts([("failed", 3), ("done", 9), ("active", 0)]), "9 done, 3 failed");
    }
}
