//! `--output table`: the view a person reads, beside the JSON a script reads
//! (the AWS and Azure CLIs' flag). The run's status and correlation id, the
//! counts, and one row per device that did not reach the good end; column
//! widths follow the terminal, and colour appears only on a terminal without
//! `NO_COLOR`. Every text a document carries (Graph's device names and
//! error codes, a caller's correlation id, warnings) is shown through the
//! same sanitiser as the CLI's error lines: bounded, and without control or
//! bidirectional characters, so no field can move the cursor, clear the
//! screen, set the terminal's title or forge a line.

use std::io::IsTerminal;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Color, ContentArrangement, Table};

use crate::core::outcome::{Outcome, RunResult, RunStatus};
use crate::core::status::{ActionState, StatusDocument};
use crate::core::text::bounded;

/// The most characters of one cell; the JSON has the whole text.
const MAX_CELL: usize = 200;
/// The most characters of one warning line.
const MAX_WARNING: usize = 1000;

/// A document's text as a cell may show it.
fn text(s: &str) -> String {
    bounded(s, MAX_CELL)
}

/// The most device rows shown; the JSON lists every device.
pub const MAX_ROWS: usize = 50;

/// What the CLI prints on standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// The document, for scripts (the default).
    Json,
    /// Tables, for people.
    Table,
    /// One line, for a ticket or a chat.
    Summary,
    /// The device list as CSV, for a spreadsheet.
    Csv,
}

fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !std::io::stdout().is_terminal() {
        t.force_no_tty();
    }
    t
}

fn status_cell(status: RunStatus, failed: bool) -> Cell {
    let text = format!(
        "{}{}",
        serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        if failed { " (failed)" } else { "" }
    );
    let cell = Cell::new(text);
    if !colour() {
        return cell;
    }
    cell.fg(match status {
        RunStatus::Succeeded => Color::Green,
        RunStatus::PartiallyFailed => Color::Yellow,
        RunStatus::Failed => Color::Red,
    })
}

/// A run's result as tables; `saved` is where the full document was
/// written, if it was.
pub fn result(r: &RunResult, saved: Option<&std::path::Path>) -> String {
    let mut head = table();
    head.set_header(vec!["status", "correlation id", "requested", "duration"]);
    head.add_row(vec![
        status_cell(r.status, r.failed),
        Cell::new(text(&r.correlation_id)),
        Cell::new(r.summary.requested),
        Cell::new(format!("{:.1} s", r.stats.duration_ms as f64 / 1000.0)),
    ]);
    let mut counts = table();
    let shown: Vec<Outcome> = Outcome::ALL
        .iter()
        .copied()
        .filter(|o| r.summary.count(*o) > 0)
        .collect();
    counts.set_header(shown.iter().map(|o| o.as_str()).collect::<Vec<_>>());
    counts.add_row(shown.iter().map(|o| r.summary.count(*o)).collect::<Vec<_>>());

    let good = |o: Outcome| matches!(o, Outcome::Initiated | Outcome::WouldInitiate);
    let mut others: Vec<_> = r.devices.iter().filter(|d| !good(d.outcome)).collect();
    // What needs action first; a device that cannot attest last.
    others.sort_by_key(|d| needs_action_first(d.outcome));
    // No device at all: said in words, not an empty box.
    let mut out = if shown.is_empty() {
        format!("{head}\nno device: none was named, and no device_filter selected any\n")
    } else {
        format!("{head}\n{counts}\n")
    };
    let full = match saved {
        Some(path) => format!("{} lists every device with its reason and request id", path.display()),
        None => "`--output json` lists every device with its reason and request id".to_owned(),
    };
    let header = [
        "device id",
        "device name",
        "kind",
        "outcome",
        "reason code",
        "HTTP",
        "Graph error",
    ];
    let mut reasons: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for d in &others {
        // The reason code where there is one, else the outcome.
        *reasons
            .entry(d.reason_code.map_or(d.outcome.as_str(), |c| c.as_str()))
            .or_default() += 1;
    }
    if !others.is_empty() {
        let mut by: Vec<(&str, usize)> = reasons.into_iter().collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let said: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
        out.push_str(&format!("not initiated, by reason: {}\n", said.join(", ")));
    }
    push_devices(&mut out, &header, &others, &full, |d| {
        vec![
            d.device_id.to_string(),
            text(d.device_name.as_deref().unwrap_or_default()),
            word(d.kind).unwrap_or_default(),
            d.outcome.as_str().to_owned(),
            d.reason_code.map(|c| c.as_str().to_owned()).unwrap_or_default(),
            d.http_status.map(|s| s.to_string()).unwrap_or_default(),
            text(d.error_code.as_deref().unwrap_or_default()),
        ]
    });
    push_warnings(&mut out, &r.warnings);
    out
}

/// The order rows are shown in: what a responder acts on first (a refusal,
/// throttling, a missing permission), what may pass on a retry next, and
/// devices that cannot attest last.
fn needs_action_first(o: Outcome) -> u8 {
    match o {
        Outcome::Failed => 0,
        Outcome::Forbidden => 1,
        Outcome::Throttled => 2,
        Outcome::NotAttempted => 3,
        Outcome::NotFound => 4,
        Outcome::Unsupported => 6,
        _ => 5,
    }
}

/// Appends a table of the first [`MAX_ROWS`] of `devices` (none if there
/// are none) and a line saying how many more `full` lists.
fn push_devices<T>(out: &mut String, header: &[&str], devices: &[T], full: &str, row: impl Fn(&T) -> Vec<String>) {
    if devices.is_empty() {
        return;
    }
    let mut rows = table();
    rows.set_header(header.to_vec());
    for d in devices.iter().take(MAX_ROWS) {
        rows.add_row(row(d));
    }
    out.push_str(&format!("{rows}\n"));
    if devices.len() > MAX_ROWS {
        out.push_str(&format!("and {} more; {full}\n", devices.len() - MAX_ROWS));
    }
}

/// Appends a line per warning.
fn push_warnings(out: &mut String, warnings: &[String]) {
    for w in warnings {
        out.push_str(&format!("warning: {}\n", bounded(w, MAX_WARNING)));
    }
}

/// A value's serialised name (`"managed"`, `"pending"`), if it has one.
fn word(v: impl serde::Serialize) -> Option<String> {
    serde_json::to_value(v).ok()?.as_str().map(str::to_owned)
}

/// A checked request as a table.
pub fn checked(rows: &[(&str, String)], warnings: &[String]) -> String {
    let mut t = table();
    t.set_header(vec!["setting", "value"]);
    for (k, v) in rows {
        t.add_row(vec![text(k), text(v)]);
    }
    let mut out = format!("{t}\n");
    push_warnings(&mut out, warnings);
    out
}

/// A status document as tables: counts, and a row per device whose action
/// is not `done`.
pub fn status(doc: &StatusDocument) -> String {
    let mut head = table();
    head.set_header(vec!["correlation id", "devices", "checked at"]);
    head.add_row(vec![
        doc.correlation_id.as_deref().map_or_else(|| "-".into(), text),
        doc.summary.devices.to_string(),
        text(&doc.checked_at),
    ]);
    let mut states = table();
    states.set_header(doc.summary.action_states.keys().copied().collect::<Vec<_>>());
    states.add_row(doc.summary.action_states.values().collect::<Vec<_>>());
    let mut verdicts = table();
    verdicts.set_header(doc.summary.attestation_statuses.keys().copied().collect::<Vec<_>>());
    verdicts.add_row(doc.summary.attestation_statuses.values().collect::<Vec<_>>());
    let mut out = format!("{head}\naction states\n{states}\nattestation statuses\n{verdicts}\n");
    let mut others: Vec<_> = doc
        .devices
        .iter()
        .filter(|d| d.action_state != Some(ActionState::Done))
        .collect();
    // Untrusted, failed and unread first; still pending after them.
    others.sort_by_key(|d| {
        let untrusted = d.attestation_status.and_then(word).as_deref() == Some("untrusted");
        match (untrusted, d.action_state) {
            (true, _) => 0,
            (_, Some(ActionState::Failed)) => 1,
            (_, None) => 2,
            (_, Some(ActionState::NotSupported)) => 4,
            _ => 3,
        }
    });
    let header = [
        "device id",
        "device name",
        "kind",
        "action state",
        "attestation",
        "updated",
        "read error",
    ];
    push_devices(&mut out, &header, &others, "`--output json` lists every device", |d| {
        vec![
            d.device_id.to_string(),
            text(d.device_name.as_deref().unwrap_or_default()),
            word(d.kind).unwrap_or_else(|| "-".into()),
            word(d.action_state).unwrap_or_else(|| "-".into()),
            word(d.attestation_status).unwrap_or_else(|| "-".into()),
            text(d.action_updated_at.as_deref().unwrap_or_default()),
            text(d.read_error.as_deref().unwrap_or_default()),
        ]
    });
    push_warnings(&mut out, &doc.warnings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_row_names_the_device() {
        use crate::core::device::{DeviceId, DeviceKind};
        use crate::core::outcome::{DeviceResult, RunRecord};
        let id = DeviceId::parse("00000000-0000-4000-8000-000000000001").unwrap_or_else(|| unreachable!());
        let mut d = DeviceResult::new(id, DeviceKind::Managed, Outcome::Unsupported);
        d.device_name = Some("LAB-0042".into());
        let r = RunResult::new(RunRecord {
            devices: vec![d],
            ..Default::default()
        });
        let text = result(&r, None);
        assert!(text.contains("device name") && text.contains("LAB-0042"), "{text}");
    }

    #[test]
    fn failures_come_before_devices_that_cannot_attest_and_reasons_are_counted() {
        use crate::core::device::{DeviceId, DeviceKind};
        use crate::core::outcome::{DeviceResult, RunRecord};
        let dev = |n: u8, o: Outcome| {
            let id = DeviceId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02x}"))
                .unwrap_or_else(|| unreachable!());
            DeviceResult::new(id, DeviceKind::Managed, o)
        };
        let r = RunResult::new(RunRecord {
            devices: vec![
                dev(1, Outcome::Unsupported),
                dev(2, Outcome::Failed),
                dev(3, Outcome::Unsupported),
            ],
            ..Default::default()
        });
        let text = result(&r, None);
        let failed = text.find("00000000-0000-4000-8000-000000000002").unwrap_or_default();
        let unsupported = text.find("00000000-0000-4000-8000-000000000001").unwrap_or_default();
        assert!(failed < unsupported, "{text}");
        assert!(
            text.contains("not initiated, by reason: 2 unsupported, 1 failed"),
            "{text}"
        );
    }

    /// Text a terminal would act on: escape sequences (clear the screen,
    /// set the title), a carriage return, a forged log line, bidi overrides.
    const HOSTILE: &str = "LAB\u{1b}[2J\u{1b}]0;owned\u{7}\r\nerror: forged line\u{202E}x";

    /// No character in `out` but the table's own line breaks a terminal
    /// would act on, and no line a field started.
    fn assert_inert(out: &str) {
        let acting: Vec<char> = out.chars().filter(|c| c.is_control() && *c != '\n').collect();
        assert!(
            acting.is_empty(),
            "control characters reach the terminal: {acting:?}\n{out}"
        );
        assert!(!out.contains('\u{202E}'), "a bidi override reaches the terminal");
        assert!(
            !out.lines().any(|l| l.starts_with("error: forged")),
            "a field forged a line: {out}"
        );
        assert!(out.contains("LAB"), "the text is kept, cleaned: {out}");
    }

    #[test]
    fn document_text_reaches_the_terminal_without_control_characters() {
        use crate::core::device::{DeviceId, DeviceKind};
        use crate::core::outcome::{DeviceResult, RunRecord};
        use crate::core::status::{DeviceStatus, StatusSummary};
        let id = DeviceId::parse("00000000-0000-4000-8000-000000000001").unwrap_or_else(|| unreachable!());
        let doc = StatusDocument {
            schema_version: "1",
            correlation_id: Some(HOSTILE.into()),
            checked_at: HOSTILE.into(),
            summary: StatusSummary::default(),
            warnings: vec![HOSTILE.into()],
            devices: vec![DeviceStatus {
                device_id: id,
                kind: DeviceKind::Managed,
                device_name: Some(HOSTILE.into()),
                action_state: Some(ActionState::Pending),
                action_started_at: None,
                action_updated_at: Some(HOSTILE.into()),
                attestation_status: None,
                read_error: Some(HOSTILE.into()),
            }],
        };
        assert_inert(&status(&doc));

        let mut d = DeviceResult::new(id, DeviceKind::Managed, Outcome::Failed);
        d.device_name = Some(HOSTILE.into());
        d.error_code = Some(HOSTILE.into());
        let mut r = RunResult::new(RunRecord {
            correlation_id: HOSTILE.into(),
            devices: vec![d],
            ..Default::default()
        });
        r.warnings.push(HOSTILE.into());
        assert_inert(&result(&r, None));
        assert_inert(&checked(&[("correlation_id", HOSTILE.into())], &[HOSTILE.into()]));
    }

    #[test]
    fn device_rows_stop_at_the_limit_and_count_the_rest() {
        let mut none = String::new();
        push_devices(&mut none, &["n"], &Vec::<usize>::new(), "json has all", |n| {
            vec![n.to_string()]
        });
        assert!(none.is_empty(), "no table for no devices");

        let devices: Vec<usize> = (0..MAX_ROWS + 7).collect();
        let mut out = String::new();
        push_devices(&mut out, &["n"], &devices, "json has all", |n| vec![format!("row-{n}")]);
        assert!(out.contains(&format!("row-{}", MAX_ROWS - 1)));
        assert!(!out.contains(&format!("row-{MAX_ROWS}")));
        assert!(out.ends_with("and 7 more; json has all\n"), "{out}");
    }
}
