//! `--output table`: the view a person reads, beside the JSON a script reads
//! (the AWS and Azure CLIs' flag). The run's status and correlation id, the
//! counts, and one row per device that did not reach the good end. A table
//! too wide for the terminal is printed as one record per row instead (a
//! device id on a line, its fields below), so nothing wraps inside a cell;
//! colour appears only on a terminal without `NO_COLOR`. Every text a document carries (Graph's device names and
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

/// Where the tables go: the terminal's width (none when standard output
/// is not a terminal: nothing is narrowed) and whether colour is on.
#[derive(Clone, Copy, Debug)]
pub struct View {
    width: Option<usize>,
    colour: bool,
}

/// Narrower than this, a terminal is taken to be this wide (a record's
/// field still needs a few columns).
const MIN_WIDTH: usize = 30;

impl View {
    /// Standard output's terminal, if it is one.
    pub fn of_stdout() -> Self {
        let tty = std::io::stdout().is_terminal();
        Self {
            width: if tty {
                Table::new().width().map(|w| usize::from(w).max(MIN_WIDTH))
            } else {
                None
            },
            colour: tty && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    /// A view `width` columns wide, without colour.
    #[cfg(test)]
    pub fn with_width(width: Option<usize>) -> Self {
        Self {
            width: width.map(|w| w.max(MIN_WIDTH)),
            colour: false,
        }
    }

    /// `rows` under `header`: a table when it fits the width, else one
    /// record per row, the first column its title when `titled` (nothing
    /// wraps inside a cell either way).
    fn grid(self, header: &[&str], rows: Vec<Vec<Cell>>, titled: bool) -> String {
        let fits = self.width.is_none_or(|w| natural_width(header, &rows) <= w);
        if fits {
            let mut t = Table::new();
            t.load_style(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Disabled);
            if self.colour {
                t.enforce_styling();
            } else {
                t.force_no_tty();
            }
            t.set_header(header.to_vec());
            for r in rows {
                t.add_row(r);
            }
            return format!("{t}\n");
        }
        let width = self.width.unwrap_or(usize::MAX);
        records(header, &rows, titled, width)
    }

    /// A line of prose, wrapped at spaces to the width (its later lines
    /// indented by two).
    fn line(self, text: &str) -> String {
        let Some(width) = self.width else {
            return format!("{text}\n");
        };
        let mut out = String::new();
        for (i, l) in wrap(text, width - 2).iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(l);
            out.push('\n');
        }
        out
    }
}

/// The width a table of these cells takes in `UTF8_FULL_CONDENSED`: a
/// border, then each column's widest text with a space either side and a
/// border.
fn natural_width(header: &[&str], rows: &[Vec<Cell>]) -> usize {
    let columns = header.len().max(rows.iter().map(Vec::len).max().unwrap_or(0));
    (0..columns)
        .map(|i| {
            let head = header.get(i).map_or(0, |h| h.chars().count());
            let widest = rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.content().chars().count())
                .max()
                .unwrap_or(0);
            head.max(widest) + 3
        })
        .sum::<usize>()
        + 1
}

/// Rows as records: a title line (the first column, when `titled`), then
/// one line per field that has a value, its name aligned; a value too long
/// for `width` goes on under itself.
fn records(header: &[&str], rows: &[Vec<Cell>], titled: bool, width: usize) -> String {
    let skip = usize::from(titled);
    let pad = header.iter().skip(skip).map(|h| h.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for row in rows {
        let mut cells = row.iter().map(Cell::content);
        if titled {
            out.push_str(&cells.next().unwrap_or_default());
            out.push('\n');
        }
        let indent = if titled { "  " } else { "" };
        for (name, value) in header.iter().skip(skip).zip(cells) {
            if value.is_empty() {
                continue;
            }
            let lead = format!("{indent}{name:<pad$}  ");
            let room = width.saturating_sub(lead.chars().count()).max(10);
            for (i, line) in wrap(&value, room).iter().enumerate() {
                if i == 0 {
                    out.push_str(&lead);
                } else {
                    out.push_str(&" ".repeat(lead.chars().count()));
                }
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken at spaces where
/// it can be.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        // A word longer than a line is cut.
        while word.len() > width {
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            lines.push(word.drain(..width).collect());
        }
        let word: String = word.into_iter().collect();
        let used = line.chars().count();
        if used > 0 && used + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

fn status_cell(status: RunStatus, failed: bool, view: View) -> Cell {
    let text = format!(
        "{}{}",
        serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        if failed { " (failed)" } else { "" }
    );
    let cell = Cell::new(text);
    if !view.colour {
        return cell;
    }
    cell.fg(match status {
        RunStatus::Succeeded => Color::Green,
        RunStatus::PartiallyFailed => Color::Yellow,
        RunStatus::Failed => Color::Red,
    })
}

/// A run's result as tables for `view`; `saved` is where the full
/// document was written, if it was.
pub fn result(r: &RunResult, saved: Option<&std::path::Path>, view: View) -> String {
    let head = view.grid(
        &["status", "correlation id", "requested", "duration"],
        vec![vec![
            status_cell(r.status, r.failed, view),
            Cell::new(text(&r.correlation_id)),
            Cell::new(r.summary.requested),
            Cell::new(format!("{:.1} s", r.stats.duration_ms as f64 / 1000.0)),
        ]],
        false,
    );
    let shown: Vec<Outcome> = Outcome::ALL
        .iter()
        .copied()
        .filter(|o| r.summary.count(*o) > 0)
        .collect();
    let counts = view.grid(
        &shown.iter().map(|o| o.as_str()).collect::<Vec<_>>(),
        vec![shown.iter().map(|o| Cell::new(r.summary.count(*o))).collect()],
        false,
    );

    let good = |o: Outcome| matches!(o, Outcome::Initiated | Outcome::WouldInitiate);
    let mut others: Vec<_> = r.devices.iter().filter(|d| !good(d.outcome)).collect();
    // What needs action first; a device that cannot attest last.
    others.sort_by_key(|d| needs_action_first(d.outcome));
    // No device at all: said in words, not an empty box.
    let mut out = if shown.is_empty() {
        format!(
            "{head}{}",
            view.line("no device: none was named, and no device_filter selected any")
        )
    } else {
        format!("{head}{counts}")
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
        out.push_str(&view.line(&format!("not initiated, by reason: {}", said.join(", "))));
    }
    push_devices(&mut out, view, &header, &others, &full, |d| {
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
    push_warnings(&mut out, view, &r.warnings);
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
fn push_devices<T>(
    out: &mut String,
    view: View,
    header: &[&str],
    devices: &[T],
    full: &str,
    row: impl Fn(&T) -> Vec<String>,
) {
    if devices.is_empty() {
        return;
    }
    let rows = devices
        .iter()
        .take(MAX_ROWS)
        .map(|d| row(d).into_iter().map(Cell::new).collect())
        .collect();
    out.push_str(&view.grid(header, rows, true));
    if devices.len() > MAX_ROWS {
        out.push_str(&view.line(&format!("and {} more; {full}", devices.len() - MAX_ROWS)));
    }
}

/// Appends a line per warning.
fn push_warnings(out: &mut String, view: View, warnings: &[String]) {
    for w in warnings {
        out.push_str(&view.line(&format!("warning: {}", bounded(w, MAX_WARNING))));
    }
}

/// A value's serialised name (`"managed"`, `"pending"`), if it has one.
fn word(v: impl serde::Serialize) -> Option<String> {
    serde_json::to_value(v).ok()?.as_str().map(str::to_owned)
}

/// A checked request as a table for `view`.
pub fn checked(rows: &[(&str, String)], warnings: &[String], view: View) -> String {
    let cells = rows
        .iter()
        .map(|(k, v)| vec![Cell::new(text(k)), Cell::new(text(v))])
        .collect();
    let mut out = view.grid(&["setting", "value"], cells, true);
    push_warnings(&mut out, view, warnings);
    out
}

/// A status document as tables for `view`: counts, and a row per device
/// whose action is not `done`.
pub fn status(doc: &StatusDocument, view: View) -> String {
    let head = view.grid(
        &["correlation id", "devices", "checked at"],
        vec![vec![
            Cell::new(doc.correlation_id.as_deref().map_or_else(|| "-".into(), text)),
            Cell::new(doc.summary.devices),
            Cell::new(text(&doc.checked_at)),
        ]],
        false,
    );
    let counts = |map: &std::collections::BTreeMap<&str, usize>| {
        view.grid(
            // The document counts devices without a status as `null`.
            &map.keys()
                .map(|k| if *k == "null" { "not served by Graph" } else { k })
                .collect::<Vec<_>>(),
            vec![map.values().map(Cell::new).collect()],
            false,
        )
    };
    let states = counts(&doc.summary.action_states);
    let verdicts = counts(&doc.summary.attestation_statuses);
    let mut out = format!("{head}action states\n{states}attestation statuses\n{verdicts}");
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
    push_devices(
        &mut out,
        view,
        &header,
        &others,
        "`--output json` lists every device",
        |d| {
            vec![
                d.device_id.to_string(),
                text(d.device_name.as_deref().unwrap_or_default()),
                word(d.kind).unwrap_or_else(|| "-".into()),
                word(d.action_state).unwrap_or_else(|| "-".into()),
                word(d.attestation_status).unwrap_or_else(|| "-".into()),
                text(d.action_updated_at.as_deref().unwrap_or_default()),
                text(d.read_error.as_deref().unwrap_or_default()),
            ]
        },
    );
    push_warnings(&mut out, view, &doc.warnings);
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
        let text = result(&r, None, View::with_width(None));
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
        let text = result(&r, None, View::with_width(None));
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
        assert_inert(&status(&doc, View::with_width(None)));

        let mut d = DeviceResult::new(id, DeviceKind::Managed, Outcome::Failed);
        d.device_name = Some(HOSTILE.into());
        d.error_code = Some(HOSTILE.into());
        let mut r = RunResult::new(RunRecord {
            correlation_id: HOSTILE.into(),
            devices: vec![d],
            ..Default::default()
        });
        r.warnings.push(HOSTILE.into());
        assert_inert(&result(&r, None, View::with_width(None)));
        assert_inert(&checked(
            &[("correlation_id", HOSTILE.into())],
            &[HOSTILE.into()],
            View::with_width(None),
        ));
    }

    #[test]
    fn device_rows_stop_at_the_limit_and_count_the_rest() {
        let mut none = String::new();
        push_devices(
            &mut none,
            View::with_width(None),
            &["n"],
            &Vec::<usize>::new(),
            "json has all",
            |n| vec![n.to_string()],
        );
        assert!(none.is_empty(), "no table for no devices");

        let devices: Vec<usize> = (0..MAX_ROWS + 7).collect();
        let mut out = String::new();
        push_devices(
            &mut out,
            View::with_width(None),
            &["n"],
            &devices,
            "json has all",
            |n| vec![format!("row-{n}")],
        );
        assert!(out.contains(&format!("row-{}", MAX_ROWS - 1)));
        assert!(!out.contains(&format!("row-{MAX_ROWS}")));
        assert!(out.ends_with("and 7 more; json has all\n"), "{out}");
    }

    #[test]
    fn at_sixty_columns_the_tables_become_records_and_no_line_is_wider() {
        use crate::core::device::{DeviceId, DeviceKind};
        use crate::core::outcome::{DeviceResult, RunRecord};
        let devices = (1..=4u8)
            .map(|n| {
                let id = DeviceId::parse(&format!("00000000-0000-4000-8000-0000000000{n:02x}"))
                    .unwrap_or_else(|| unreachable!());
                let mut d = DeviceResult::new(id, DeviceKind::Managed, Outcome::Failed);
                d.device_name = Some(format!("LAB-{n:04}"));
                d.http_status = Some(400);
                d.error_code = Some("BadRequest".into());
                d
            })
            .collect();
        let mut r = RunResult::new(RunRecord {
            correlation_id: "incident-4711".into(),
            devices,
            ..Default::default()
        });
        r.warnings.push(
            "the run was interrupted: devices not tried are not_attempted, and a retry-from run takes them".into(),
        );
        let wide = result(&r, None, View::with_width(None));
        assert!(wide.contains("│ device id"), "a table where there is room: {wide}");
        for width in [60, 80] {
            let narrow = result(&r, None, View::with_width(Some(width)));
            let longest = narrow.lines().map(|l| l.chars().count()).max().unwrap_or(0);
            assert!(longest <= width, "{longest} columns at {width}:\n{narrow}");
            // Each device id whole on its own line, its fields under it.
            for n in 1..=4u8 {
                let id = format!("00000000-0000-4000-8000-0000000000{n:02x}");
                assert!(narrow.lines().any(|l| l == id), "{id}:\n{narrow}");
                assert!(narrow.contains(&format!("  device name  LAB-{n:04}")), "{narrow}");
            }
            assert!(
                narrow.contains("status") && narrow.contains("incident-4711"),
                "{narrow}"
            );
            assert!(narrow.contains("warning: the run was interrupted"), "{narrow}");
        }
    }

    #[test]
    fn a_long_value_wraps_under_itself_at_spaces_or_is_cut() {
        assert_eq!(wrap("a bb ccc", 4), ["a bb", "ccc"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), [""]);
        let rows = vec![vec![Cell::new("id-1"), Cell::new("one two three four five")]];
        let out = records(&["id", "error"], &rows, true, 20);
        assert_eq!(out, "id-1\n  error  one two\n         three four\n         five\n");
    }
}
