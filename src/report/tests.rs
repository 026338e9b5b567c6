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
    assert_eq!(r.stats.writes_per_window, vec![2]);
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
        html.contains("<td>LAB-&lt;b&gt;07&lt;/b&gt;</td>"),
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
fn unknown_values_get_a_neutral_class_never_their_own_name() {
    assert_eq!(style_class("\" onmouseover=\"x"), "c-neutral");
    assert_eq!(style_class("failed"), "c-failed");
}
