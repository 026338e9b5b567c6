//! The HTML report: one self-contained page from a result document and,
//! optionally, a status document, for the compliance or incident review.
//!
//! The page fetches nothing (inline CSS and SVG, one inline script) and
//! opens from a file on an isolated workstation. Everything that came from
//! Graph or from the payload is escaped by the template engine; the page's
//! Content-Security-Policy allows only its own style and script, by hash,
//! so even markup that slipped through could not load or run anything.
//! The device table filters by outcome and, with a status document, by
//! verdict without a server (`#outcome=failed`, `#verdict=untrusted` or
//! both joined by `&` in the address preselect them), and a print
//! stylesheet keeps it legible on paper.
//!
//! The page is bounded whatever the documents hold: what they are read into
//! is bounded ([`document`]), the pace chart has at most
//! [`document::PACE_COLUMNS`] columns, and device rows stop once the table
//! reaches [`TABLE_BYTES`] (the page then says how many more the result
//! document lists). So the page stays under [`MAX_PAGE_BYTES`].

mod charts;
pub mod document;

use std::collections::HashMap;

use base64::Engine as _;
use maud::{DOCTYPE, Markup, PreEscaped, Render, html};
use sha2::{Digest, Sha256};

pub use document::{ResultDocument, StatusDocument};

/// The device rows stop once they take this much of the page.
pub const TABLE_BYTES: usize = 40 * 1024 * 1024;
/// The largest page: the rows, one row past them, and the rest of the
/// page, whose every part is bounded (warnings, counts, options, the
/// chart).
pub const MAX_PAGE_BYTES: usize = TABLE_BYTES + 4 * 1024 * 1024;

/// Where the device rows go in the page's template.
const ROWS: &str = "\u{0}rows\u{0}";

use charts::Bar;

/// What a report is made from.
pub struct ReportInput<'a> {
    /// The run's result document.
    pub result: &'a ResultDocument,
    /// A status document read after the run, if any.
    pub status: Option<&'a StatusDocument>,
    /// The tool's version, for the footer.
    pub version: &'a str,
    /// When the report was made (RFC 3339), for the footer.
    pub generated_at: &'a str,
}

/// Outcomes in the order the result's summary lists them.
const OUTCOMES: [&str; 9] = [
    "initiated",
    "would_initiate",
    "continued",
    "not_found",
    "unsupported",
    "forbidden",
    "failed",
    "throttled",
    "not_attempted",
];

const ACTION_STATES: [&str; 7] = [
    "done",
    "active",
    "pending",
    "failed",
    "not_supported",
    "canceled",
    "none",
];

const ATTESTATION_STATUSES: [&str; 5] = ["trusted", "untrusted", "not_supported", "incomplete_data", "unknown"];

/// How a device without an attestation status is shown.
const NOT_SERVED: &str = "not served by Graph";

/// The colour class of a value the documents use; values the report does
/// not know get a neutral class (class names never come from a document).
pub fn style_class(value: &str) -> &'static str {
    match value {
        "initiated" | "would_initiate" | "done" | "trusted" | "succeeded" => "c-initiated",
        "continued" | "active" | "pending" => "c-progress",
        "not_found" | "none" | "canceled" | "unknown" => "c-neutral",
        "unsupported" | "not_supported" | "incomplete_data" | "partially_failed" => "c-warn",
        "forbidden" | "failed" | "untrusted" => "c-failed",
        "throttled" | "not_attempted" => "c-throttled",
        _ => "c-neutral",
    }
}

const STYLE: &str = r#"
:root { --ok: #2e7d32; --progress: #1565c0; --neutral: #78909c; --warn: #b7791f; --bad: #c62828; --slow: #ef6c00; --ink: #1d2733; --line: #d5dbe1; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); margin: 0 auto; max-width: 1280px; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.muted { color: #5f6b76; fill: #5f6b76; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 130px; }
.card .n { font-size: 24px; font-weight: 600; display: block; }
.card.alert { border-color: var(--bad); border-width: 2px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px; }
.badge.c-initiated, rect.c-initiated { background: var(--ok); fill: var(--ok); }
.badge.c-progress, rect.c-progress { background: var(--progress); fill: var(--progress); }
.badge.c-neutral, rect.c-neutral { background: var(--neutral); fill: var(--neutral); }
.badge.c-warn, rect.c-warn { background: var(--warn); fill: var(--warn); }
.badge.c-failed, rect.c-failed { background: var(--bad); fill: var(--bad); }
.badge.c-throttled, rect.c-throttled { background: var(--slow); fill: var(--slow); }
rect.over { fill: var(--bad); }
line.axis { stroke: #8a96a3; stroke-width: 1; } line.budget { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 6 4; }
svg text { font-size: 12px; fill: var(--ink); } svg text.tick { font-size: 11px; fill: #5f6b76; } svg text.count { font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure.chart { margin: 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
ul.warnings li { margin: 2px 0; }
.filter { margin: 8px 0; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: #f3f5f7; position: sticky; top: 0; }
td.id, td.rid { font-family: ui-monospace, "Cascadia Mono", Consolas, monospace; }
td.id, td.rid, td.name { white-space: nowrap; } td.id { font-size: 11.5px; } td.rid { font-size: 10.5px; }
.scroll { overflow-x: auto; }
td.msg { min-width: 110px; max-width: 360px; overflow-wrap: anywhere; }
footer { margin-top: 32px; border-top: 1px solid var(--line); padding-top: 8px; font-size: 12px; color: #5f6b76; }
footer dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; }
footer dt { font-weight: 600; } footer dd { margin: 0; overflow-wrap: anywhere; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .filter { display: none; }
  th { position: static; }
  tr, figure.chart, .card { break-inside: avoid; }
  .badge, rect, .card { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2 { break-after: avoid; }
}
"#;

const SCRIPT: &str = r#"
(function () {
  var select = document.getElementById('outcome-filter');
  var verdict = document.getElementById('verdict-filter');
  var name = document.getElementById('name-filter');
  var rows = document.querySelectorAll('#devices tbody tr');
  var shown = document.getElementById('shown');
  function apply() {
    var want = select.value, text = name.value.toLowerCase(), n = 0;
    var wantVerdict = verdict ? verdict.value : '';
    for (var i = 0; i < rows.length; i++) {
      var hide = (want !== '' && rows[i].getAttribute('data-outcome') !== want)
        || (wantVerdict !== '' && rows[i].getAttribute('data-verdict') !== wantVerdict)
        || (text !== '' && (rows[i].getAttribute('data-name') || '').toLowerCase().indexOf(text) < 0);
      rows[i].hidden = hide;
      if (!hide) { n++; }
    }
    shown.textContent = n + ' of ' + rows.length + ' devices shown';
  }
  var scroller = document.getElementById('devices-scroll');
  var hint = document.getElementById('scroll-hint');
  function fit() { hint.hidden = scroller.scrollWidth <= scroller.clientWidth + 1; }
  window.addEventListener('resize', fit);
  window.addEventListener('load', fit);
  fit();
  select.addEventListener('change', apply);
  if (verdict) { verdict.addEventListener('change', apply); }
  name.addEventListener('input', apply);
  var parts = location.hash.replace(/^#/, '').split('&');
  for (var j = 0; j < parts.length; j++) {
    var pair = /^(outcome|verdict)=([a-z_]+)$/.exec(parts[j]);
    if (!pair) { continue; }
    if (pair[1] === 'outcome') { select.value = pair[2]; }
    else if (verdict) { verdict.value = pair[2]; }
  }
  apply();
})();
"#;

fn sha256_source(text: &str) -> String {
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    )
}

/// The page's Content-Security-Policy: nothing may load; only the page's own
/// style and script, by hash, may apply or run.
fn content_security_policy() -> String {
    format!(
        "default-src 'none'; style-src {}; script-src {}; base-uri 'none'; form-action 'none'",
        sha256_source(STYLE),
        sha256_source(SCRIPT)
    )
}

/// Renders the report as one HTML document.
pub fn render(input: &ReportInput<'_>) -> String {
    let r = input.result;
    let verdicts: HashMap<&str, &document::StatusDevice> = input
        .status
        .map(|s| s.devices.iter().map(|d| (d.device_id.as_str(), d)).collect())
        .unwrap_or_default();
    let rows = device_rows(r, input.status.is_some(), &verdicts);
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="Content-Security-Policy" content=(content_security_policy());
                meta name="referrer" content="no-referrer";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Device attestation report: " (r.correlation_id) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { "Device attestation report" }
                    p.muted { "Run " code { (r.correlation_id) } " · " (r.started_at) " to " (r.finished_at)
                        @if r.dry_run { " · dry run" } }
                }
                (summary(r, input.status))
                @if let Some(status) = input.status { (verdict(status)) }
                section #throughput {
                    h2 { "Pace" }
                    p.muted { (r.stats.http_requests) " HTTP requests, " (r.stats.throttled_responses) " answered 429, in " (charts::seconds(r.stats.duration_ms)) "." }
                    (charts::windows(&r.stats.writes_per_window, r.stats.write_budget, r.stats.throttle_window_ms))
                }
                (device_table(r, input.status.is_some(), &rows))
                (footer(input))
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    // The rows go into the page without a second copy of them.
    let page = page.into_string();
    let rows = rows.html;
    let (head, tail) = page.split_once(ROWS).unwrap_or((&page, ""));
    let mut out = String::with_capacity(head.len() + rows.len() + tail.len());
    out.push_str(head);
    out.push_str(&rows);
    drop(rows);
    out.push_str(tail);
    out
}

fn count(map: &std::collections::BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// Known keys first in their order, then any others the document has.
fn ordered<'a>(map: &'a std::collections::BTreeMap<String, u64>, known: &[&'a str]) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&str, u64)> = known
        .iter()
        .map(|k| (*k, count(map, k)))
        .filter(|(_, n)| *n > 0)
        .collect();
    out.extend(
        map.iter()
            .filter(|(k, n)| **n > 0 && !known.contains(&k.as_str()) && k.as_str() != "requested")
            .map(|(k, n)| (k.as_str(), *n)),
    );
    out
}

fn to_bars<'a>(items: &[(&'a str, u64)]) -> Vec<Bar<'a>> {
    items
        .iter()
        .map(|(label, count)| Bar {
            // The status document counts devices without a status as `null`.
            label: if *label == "null" { NOT_SERVED } else { label },
            count: *count,
            class: style_class(label),
        })
        .collect()
}

fn summary(r: &ResultDocument, status: Option<&StatusDocument>) -> Markup {
    // Every initiation may have succeeded while Intune found devices
    // untrusted: the status card says so too.
    let untrusted = status.map_or(0, |s| count(&s.summary.attestation_statuses, "untrusted"));
    let requested = count(&r.summary, "requested");
    let good: u64 = ["initiated", "would_initiate", "continued"]
        .iter()
        .map(|k| count(&r.summary, k))
        .sum();
    let outcomes = ordered(&r.summary, &OUTCOMES);
    html! {
        section #summary {
            h2 { "Outcome" }
            div.cards {
                div.card { span.n { span class={"badge " (style_class(&r.status))} { (r.status) } } "status" @if r.failed { " (failed for the caller)" }
                    @if untrusted > 0 { " " span.badge.c-failed #untrusted-badge { (untrusted) " untrusted" } } }
                div.card #requested { span.n { (requested) } "devices requested" }
                div.card #initiated { span.n { (good) } @if r.dry_run { "would be initiated" } @else { "initiated" } }
                div.card #not-initiated { span.n { (requested.saturating_sub(good)) } "not initiated" }
            }
            div.charts { (charts::bars("Devices by outcome", &to_bars(&outcomes))) }
            @if !r.warnings.is_empty() {
                h2 { "Warnings" }
                ul.warnings {
                    @for w in r.warnings.iter() { li { (w) } }
                    @if r.warnings.omitted > 0 { li.muted { "and " (r.warnings.omitted) " more in the result document" } }
                }
            }
            @if let Some(t) = &r.truncated {
                p.muted { "This document lists " (t.devices_listed) " devices; " (t.devices_omitted) " more are in " (t.full_result) "." }
            }
        }
    }
}

fn verdict(s: &StatusDocument) -> Markup {
    let states = ordered(&s.summary.action_states, &ACTION_STATES);
    let statuses = ordered(&s.summary.attestation_statuses, &ATTESTATION_STATUSES);
    let in_progress = count(&s.summary.action_states, "pending") + count(&s.summary.action_states, "active");
    let untrusted = count(&s.summary.attestation_statuses, "untrusted");
    let unserved = count(&s.summary.attestation_statuses, "null");
    html! {
        section #verdict {
            h2 { "Verdict" }
            p.muted { "Read at " (s.checked_at) "." }
            div.cards {
                div.card #checked { span.n { (s.summary.devices) } "devices checked" }
                div.card #done { span.n { (count(&s.summary.action_states, "done")) } "attestation done" }
                div.card #in-progress { span.n { (in_progress) } "still pending or active" }
                div.card #failed { span.n { (count(&s.summary.action_states, "failed")) } "attestation failed" }
                div.card #not-supported { span.n { (count(&s.summary.action_states, "not_supported")) } "not supported" }
                div.card #trusted { span.n { (count(&s.summary.attestation_statuses, "trusted")) } "trusted" }
                div.card.alert[untrusted > 0] #untrusted { span.n { (untrusted) } "untrusted" }
                @if s.summary.unread > 0 { div.card #unread { span.n { (s.summary.unread) } "could not be read" } }
            }
            @if unserved > 0 && unserved == s.summary.devices.saturating_sub(s.summary.unread) {
                p #no-verdict.muted { "Graph served no attestation status for any device read (the beta schema does not carry one today): "
                    "an action that is done has run, but says nothing of trust; the Intune admin center shows each device's verdict." }
            }
            div.charts {
                (charts::bars("Attestation action state", &to_bars(&states)))
                (charts::bars("Attestation status", &to_bars(&statuses)))
            }
            @if !s.warnings.is_empty() {
                ul.warnings {
                    @for w in s.warnings.iter() { li { (w) } }
                    @if s.warnings.omitted > 0 { li.muted { "and " (s.warnings.omitted) " more in the status document" } }
                }
            }
            @if s.devices.omitted > 0 {
                p.muted { "The status document lists " (s.devices.omitted) " devices more than the " (s.devices.len()) " read here; those show as not checked." }
            }
        }
    }
}

/// The device rows, until they reach [`TABLE_BYTES`]: the rows and how
/// many they are.
fn device_rows<'a>(
    r: &ResultDocument,
    with_status: bool,
    verdicts: &HashMap<&str, &'a document::StatusDevice>,
) -> Rows<'a> {
    let mut rows = Rows::default();
    for (i, d) in r.devices.iter().enumerate() {
        if rows.html.len() >= TABLE_BYTES {
            break;
        }
        if with_status {
            *rows.verdicts.entry(verdict_key(verdicts, &d.device_id)).or_default() += 1;
        }
        device_row(i, d, with_status, verdicts).render_to(&mut rows.html);
        rows.listed += 1;
    }
    rows
}

/// The rendered device rows and what the table's filters need of them.
#[derive(Default)]
struct Rows<'a> {
    html: String,
    listed: usize,
    /// The listed rows by verdict key, for the verdict filter.
    verdicts: std::collections::BTreeMap<&'a str, u64>,
}

/// What the verdict filter matches a device by: its attestation status
/// when Intune gave one, else its action state; `unread` when the status
/// read failed, `not_checked` when the status document does not list it.
fn verdict_key<'a>(verdicts: &HashMap<&str, &'a document::StatusDevice>, id: &str) -> &'a str {
    match verdicts.get(id) {
        None => "not_checked",
        Some(v) => match (&v.attestation_status, &v.action_state) {
            (_, None) => "unread",
            (Some(status), Some(_)) => status.as_str(),
            (None, Some(state)) => state.as_str(),
        },
    }
}

fn device_row(
    i: usize,
    d: &document::ResultDevice,
    with_status: bool,
    verdicts: &HashMap<&str, &document::StatusDevice>,
) -> Markup {
    html! {
        tr data-outcome=(d.outcome) data-verdict=[with_status.then(|| verdict_key(verdicts, &d.device_id))]
            data-name=(d.device_name.as_deref().unwrap_or_default()) {
            td { (i + 1) }
            td.id { (d.device_id) }
            td.name { @if let Some(n) = &d.device_name { (n) } }
            td { (d.kind) }
            td { span class={"badge " (style_class(&d.outcome))} { (d.outcome) } }
            td.msg {
                @if let Some(code) = &d.reason_code { code { (code) } " " }
                @if let Some(reason) = &d.reason { (reason) }
            }
            td.msg {
                @if let Some(s) = d.http_status { span.http { (s) } " " }
                @if let Some(code) = &d.error_code { code { (code) } " " }
                @if let Some(m) = &d.message { span.graph-message { (m) } }
            }
            td.rid { @if let Some(rid) = &d.request_id { (rid) } }
            @if with_status {
                @match verdicts.get(d.device_id.as_str()) {
                    Some(v) => {
                        td {
                            @match &v.action_state {
                                Some(state) => { span class={"badge " (style_class(state))} { (state) } }
                                None => { span.muted { "not read" } }
                            }
                            @if let Some(e) = &v.read_error { " " span.muted { (e) } } }
                        td { @if let Some(a) = &v.attestation_status { span class={"badge " (style_class(a))} { (a) } } }
                    }
                    None => { td.muted { "not checked" } td {} }
                }
            }
        }
    }
}

fn device_table(r: &ResultDocument, with_status: bool, rows: &Rows<'_>) -> Markup {
    let listed = rows.listed;
    let outcomes = ordered(&r.summary, &OUTCOMES);
    let mut verdicts: Vec<(&str, u64)> = rows.verdicts.iter().map(|(k, n)| (*k, *n)).collect();
    // Untrusted first: it is what a reviewer filters for.
    verdicts.sort_by_key(|(k, _)| (*k != "untrusted", *k));
    let unlisted = (r.devices.len() - listed) as u64 + r.devices.omitted;
    html! {
        section {
            h2 { "Devices" }
            div.filter {
                label for="outcome-filter" { "Show " }
                select #outcome-filter {
                    option value="" { "every outcome" }
                    @for (o, n) in &outcomes { option value=(o) { (o) " (" (n) ")" } }
                }
                @if with_status {
                    " "
                    label for="verdict-filter" { "with verdict " }
                    select #verdict-filter {
                        option value="" { "any verdict" }
                        @for (v, n) in &verdicts { option value=(v) { (v) " (" (n) ")" } }
                    }
                }
                " "
                label for="name-filter" { "named like " }
                input #name-filter type="search" placeholder="device name";
                " "
                span #shown.muted { (listed) " devices" }
            }
            p #scroll-hint.muted { "More columns to the right: scroll the table sideways." }
            div.scroll #devices-scroll { table #devices {
                thead { tr {
                    th { "#" } th { "Device ID" } th { "Device name" } th { "Kind" } th { "Outcome" } th { "Reason" }
                    th { "Graph answer" } th { "Request ID" }
                    @if with_status { th { "Action state" } th { "Attestation" } }
                } }
                tbody { (PreEscaped(ROWS)) }
            } }
            @if unlisted > 0 {
                p #unlisted.muted { (unlisted) " more devices are not listed here, to keep the page small: the result document lists them." }
            }
        }
    }
}

fn footer(input: &ReportInput<'_>) -> Markup {
    let r = input.result;
    let none = document::Fields::default();
    let options = r.options.as_ref().unwrap_or(&none);
    html! {
        footer {
            dl {
                dt { "Correlation id" } dd { (r.correlation_id) }
                dt { "Run" } dd { (r.started_at) " to " (r.finished_at) " (" (charts::seconds(r.stats.duration_ms)) ")" }
                @if let Some(inv) = &r.invocation {
                    @for (k, v) in &inv.0 { dt { "Invocation " (k) } dd { (v) } }
                }
                @if let Some(s) = input.status { dt { "Verdict read at" } dd { (s.checked_at) } }
                @for (k, v) in &options.0 { dt { "Option " (k) } dd { (v) } }
                dt { "Dry run" } dd { (r.dry_run) }
                dt { "Tool" } dd { "intune-attest " (input.version) }
                dt { "Report made" } dd { (input.generated_at) }
            }
        }
    }
}

#[cfg(test)]
mod tests;
