use serde_json::json;

use super::*;
use crate::core::device::{DeviceId, DeviceKind};
use crate::core::outcome::{DeviceResult, Outcome, RunRecord, RunResult};

const HOSTILE: &str = "<img src=x onerror=alert(1)>";

fn result() -> ResultDocument {
    let id = |n: u32| DeviceId::parse(&format!("00000000-0000-4000-8000-{n:012}")).unwrap();
    let mut failed = DeviceResult::new(id(2), DeviceKind::Managed, Outcome::Failed);
    failed.http_status = Some(400);
    failed.error_code = Some("BadRequest".into());
    failed.message = Some(HOSTILE.into());
    failed.request_id = Some("rid-2".into());
    failed.device_name = Some("LAB-<b>07</b>".into());
    let mut record = RunRecord {
        correlation_id: "incident-<7>".into(),
        started_at: "2026-11-29T10:00:00.000Z".into(),
        finished_at: "2026-11-29T10:00:41.000Z".into(),
        devices: vec![
            DeviceResult::new(id(1), DeviceKind::Managed, Outcome::Initiated),
            failed,
        ],
        ..Default::default()
    };
    record.stats.writes_per_window = vec![2];
    record.stats.write_budget = 190;
    record.stats.throttle_window_ms = 20_000;
    let doc = serde_json::to_value(RunResult::new(record)).unwrap();
    serde_json::from_value(doc).unwrap()
}

fn status() -> StatusDocument {
    serde_json::from_value(json!({
        "schema_version": "1", "correlation_id": "incident-<7>", "checked_at": "2026-11-29T10:20:00Z",
        "summary": {"devices": 1, "action_states": {"done": 1}, "attestation_statuses": {"trusted": 1}, "unread": 0},
        "warnings": [],
        "devices": [{"device_id": "00000000-0000-4000-8000-000000000001", "kind": "managed", "action_state": "done",
                     "action_started_at": null, "action_updated_at": null, "attestation_status": "trusted"}]
    }))
    .unwrap()
}

fn page(status: Option<&StatusDocument>) -> String {
    render(&ReportInput {
        result: &result(),
        status,
        version: "9.9.9",
        generated_at: "2026-11-29T11:00:00Z",
    })
}

#[test]
fn the_report_reads_what_the_engine_writes() {
    // The core's document, serialised, is what the report reads back.
    let r = result();
    assert_eq!(r.summary["requested"], 2);
    assert_eq!(r.devices[1].message.as_deref(), Some(HOSTILE));
    assert_eq!(r.stats.writes_per_window, document::Pace::of([2]));
}

#[test]
fn text_from_graph_and_the_payload_is_escaped() {
    let html = page(None);
    assert!(!html.contains(HOSTILE));
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("incident-&lt;7&gt;"));
    assert!(!html.contains("<img"));
}

#[test]
fn the_policy_allows_exactly_the_pages_own_style_and_script() {
    let html = page(None);
    let csp = content_security_policy();
    assert!(html.contains(&csp));
    assert!(csp.starts_with("default-src 'none';"));
    assert!(csp.contains(&sha256_source(STYLE)) && csp.contains(&sha256_source(SCRIPT)));
    assert!(!csp.contains("unsafe-inline"));
    // The hashed texts are in the page byte for byte.
    assert!(html.contains(&format!("<style>{STYLE}</style>")));
    assert!(html.contains(&format!("<script>{SCRIPT}</script>")));
    // Nothing to fetch: the SVG namespace is the only address in the page.
    let page = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("//"));
}

#[test]
fn every_device_has_a_row_and_the_filter_offers_the_outcomes_present() {
    let html = page(None);
    assert_eq!(html.matches("<tr data-outcome=").count(), 2);
    assert!(html.contains(r#"<option value="initiated">initiated (1)</option>"#));
    assert!(html.contains(r#"<option value="failed">failed (1)</option>"#));
    assert!(!html.contains(r#"<option value="throttled">"#));
    assert!(!html.contains("Action state"));
}

#[test]
fn device_names_have_a_column_and_the_filter_matches_them() {
    let html = page(None);
    assert!(html.contains("<th>Device name</th>"));
    assert!(
        html.contains(r#"data-name="LAB-&lt;b&gt;07&lt;/b&gt;""#),
        "escaped in the attribute"
    );
    assert!(
        html.contains(r#"<td class="name">LAB-&lt;b&gt;07&lt;/b&gt;</td>"#),
        "escaped in the cell"
    );
    assert!(html.contains(r#"id="name-filter""#));
    assert!(SCRIPT.contains("data-name"));
}

#[test]
fn a_status_adds_the_verdict_and_a_column_per_device() {
    let s = status();
    let html = page(Some(&s));
    assert!(html.contains("id=\"verdict\""));
    assert!(html.contains("Action state"));
    assert!(html.contains(r#"<span class="badge c-initiated">trusted</span>"#));
    assert!(
        html.contains("not checked"),
        "the device that was not initiated has no verdict"
    );
    assert!(html.contains("Verdict read at"));
}

#[test]
fn a_device_the_status_could_not_read_parses_and_shows_as_not_read() {
    // `status` writes `action_state: null` with the cause for a device it
    // could not read; the report takes that document.
    let s: StatusDocument = serde_json::from_value(json!({
        "schema_version": "1", "correlation_id": "incident-<7>", "checked_at": "2026-11-29T10:20:00Z",
        "summary": {"devices": 1, "action_states": {}, "attestation_statuses": {}, "unread": 1},
        "warnings": [],
        "devices": [{"device_id": "00000000-0000-4000-8000-000000000001", "kind": "managed", "action_state": null,
                     "read_error": "HTTP 503", "attestation_status": null}]
    }))
    .unwrap();
    assert_eq!(s.devices[0].action_state, None);
    let html = page(Some(&s));
    assert!(html.contains(r#"<span class="muted">not read</span> <span class="muted">HTTP 503</span>"#));
    assert!(html.contains(r#"data-verdict="unread""#));
    assert!(html.contains("id=\"unread\""));
}

#[test]
fn the_verdict_filter_offers_the_verdicts_present_untrusted_first_and_untrusted_is_its_own_card() {
    let s: StatusDocument = serde_json::from_value(json!({
        "schema_version": "1", "correlation_id": "incident-<7>", "checked_at": "2026-11-29T10:20:00Z",
        "summary": {"devices": 1, "action_states": {"done": 1}, "attestation_statuses": {"untrusted": 1}, "unread": 0},
        "warnings": [],
        "devices": [{"device_id": "00000000-0000-4000-8000-000000000001", "kind": "managed", "action_state": "done",
                     "attestation_status": "untrusted"}]
    }))
    .unwrap();
    let html = page(Some(&s));
    let filter = &html[html.find(r#"<select id="verdict-filter">"#).expect("a verdict filter")..];
    let filter = &filter[..filter.find("</select>").unwrap()];
    let untrusted = filter
        .find(r#"<option value="untrusted">untrusted (1)</option>"#)
        .expect("untrusted offered");
    let unchecked = filter
        .find(r#"<option value="not_checked">not_checked (1)</option>"#)
        .expect("not checked offered");
    assert!(untrusted < unchecked, "{filter}");
    assert!(html.contains(r#"data-verdict="untrusted""#));
    assert!(html.contains(r#"class="card alert" id="untrusted""#));
    // Every initiation that was tried succeeded or failed, and still the
    // status card says devices are untrusted.
    assert!(html.contains(r#"id="untrusted-badge">1 untrusted</span>"#));
    assert!(SCRIPT.contains("data-verdict"));
    // Without a status document there is no verdict filter.
    assert!(!page(None).contains(r#"<select id="verdict-filter">"#));
}

#[test]
fn unknown_values_get_a_neutral_class_never_their_own_name() {
    assert_eq!(style_class("\" onmouseover=\"x"), "c-neutral");
    assert_eq!(style_class("failed"), "c-failed");
}

/// A result document (JSON) with `devices` devices, each field as long as
/// `text` makes it, and `windows` windows of writes.
fn big_result(devices: usize, text: &str, windows: usize) -> String {
    let device = serde_json::to_string(&json!({
        "device_id": text, "kind": text, "device_name": text, "outcome": "failed", "reason": text,
        "reason_code": text, "http_status": 400, "error_code": text, "message": text, "request_id": text
    }))
    .unwrap();
    let mut doc = String::from(
        r#"{"schema_version": "1", "correlation_id": "big", "status": "failed", "started_at": "a", "finished_at": "b", "summary": {"requested": 1}, "#,
    );
    doc.push_str(r#""stats": {"write_budget": 190, "throttle_window_ms": 20000, "writes_per_window": ["#);
    for i in 0..windows {
        if i > 0 {
            doc.push(',');
        }
        // One window far over the budget, in the middle.
        doc.push_str(if i == windows / 2 { "999" } else { "1" });
    }
    doc.push_str(r#"]}, "devices": ["#);
    for i in 0..devices {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&device);
    }
    doc.push_str("]}");
    doc
}

#[test]
fn the_pace_chart_folds_millions_of_windows_into_a_few_hundred_columns_and_keeps_the_busiest() {
    let doc = big_result(1, "x", 2_000_000);
    let r: ResultDocument = serde_json::from_str(&doc).unwrap();
    let pace = &r.stats.writes_per_window;
    assert_eq!(pace.windows, 2_000_000);
    assert!(pace.columns.len() <= document::PACE_COLUMNS && pace.columns.len() > document::PACE_COLUMNS / 4);
    assert_eq!(
        pace.columns.iter().filter(|&&w| w == 999).count(),
        1,
        "the window over the budget shows"
    );
    let html = render(&ReportInput {
        result: &r,
        status: None,
        version: "9.9.9",
        generated_at: "now",
    });
    assert!(html.matches("<rect").count() <= document::PACE_COLUMNS);
    assert_eq!(html.matches("class=\"over\"").count(), 1);
    assert!(html.contains(&format!("each column the busiest of {}", pace.per_column)));
    assert!(html.len() < 200_000, "{} bytes", html.len());
    // A few hundred windows are drawn one a column.
    let few = document::Pace::of(std::iter::repeat_n(3, 300));
    assert_eq!((few.columns.len(), few.per_column), (300, 1));
}

#[test]
fn every_list_and_text_is_bounded_and_the_page_stays_under_its_size() {
    // A megabyte of text with markup and terminal controls in every field.
    let text = "<b>\u{1b}[2J\u{7}".repeat(100_000);
    let r: ResultDocument = serde_json::from_str(&big_result(3, &text, 10)).unwrap();
    let d = &r.devices[0];
    for field in [
        &d.device_id,
        &d.kind,
        d.device_name.as_ref().unwrap(),
        d.request_id.as_ref().unwrap(),
    ] {
        assert!(
            field.chars().count() <= document::SHORT_TEXT + 1,
            "{} chars",
            field.chars().count()
        );
    }
    for field in [d.reason.as_ref().unwrap(), d.message.as_ref().unwrap()] {
        assert!(field.chars().count() <= document::LONG_TEXT + 1);
    }
    assert!(!d.message.as_ref().unwrap().contains('\u{1b}'));

    // More devices than are read: the rest are counted, not kept.
    let many = big_result(document::MAX_DEVICES + 7, "00000000-0000-4000-8000-000000000001", 1);
    let r: ResultDocument = serde_json::from_str(&many).unwrap();
    assert_eq!((r.devices.len(), r.devices.omitted), (document::MAX_DEVICES, 7));
    let html = render(&ReportInput {
        result: &r,
        status: None,
        version: "9.9.9",
        generated_at: "now",
    });
    assert!(html.len() < MAX_PAGE_BYTES);
    assert!(
        html.contains("7 more devices are not listed here"),
        "the page says what it left out"
    );
    println!("{} devices listed in {} bytes", r.devices.len(), html.len());

    // Rows of the longest text stop at the table's budget.
    let long = "\"".repeat(document::LONG_TEXT);
    let r: ResultDocument = serde_json::from_str(&big_result(3_000, &long, 1)).unwrap();
    let html = render(&ReportInput {
        result: &r,
        status: None,
        version: "9.9.9",
        generated_at: "now",
    });
    assert!(html.len() < MAX_PAGE_BYTES, "{} bytes", html.len());
    let rows = html.matches("<tr data-outcome=").count();
    assert!(rows < 3_000, "{rows} rows");
    assert!(html.contains(&format!("{} more devices are not listed here", 3_000 - rows)));
    assert!(html.contains(&format!("{rows} devices</span>")));
}

#[test]
fn warnings_counts_and_options_are_read_up_to_a_few_dozen() {
    let mut doc: serde_json::Value = serde_json::from_str(&big_result(1, "x", 1)).unwrap();
    doc["warnings"] = json!((0..1000).map(|i| format!("w{i}")).collect::<Vec<_>>());
    doc["summary"] = json!(
        (0..1000)
            .map(|i| (format!("k{i:04}"), json!(1)))
            .collect::<serde_json::Map<_, _>>()
    );
    doc["options"] = json!({"verify": (0..1000).map(|i| (format!("o{i:04}"), json!({"deep": [1, 2]}))).collect::<serde_json::Map<_, _>>(),
                            "device_filter": "x"});
    let r: ResultDocument = serde_json::from_value(doc).unwrap();
    assert_eq!((r.warnings.len(), r.warnings.omitted), (document::MAX_WARNINGS, 950));
    assert_eq!(r.summary.len(), document::MAX_ENTRIES);
    let options = r.options.as_ref().unwrap();
    assert!(options.0.len() <= document::MAX_ENTRIES);
    assert!(options.0.iter().any(|(k, v)| k.starts_with("verify.o") && v == "{…}"));
    let html = render(&ReportInput {
        result: &r,
        status: None,
        version: "9.9.9",
        generated_at: "now",
    });
    assert!(html.contains("and 950 more in the result document"));
}
