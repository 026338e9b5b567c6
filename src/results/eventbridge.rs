//! Result events on EventBridge.
//!
//! Each run puts a summary entry (`DetailType` "Device Attestation Result":
//! the result without its device list) and device entries ("Device
//! Attestation Result Devices", each with the summary counts), all sharing
//! the correlation id and saying `event_part` k of `event_parts` n; every
//! device is in exactly one part. A follow-up check's verdict is split the
//! same way ("Device Attestation Verdict" and "... Verdict Devices").
//! EventBridge limits the *total* size of
//! the entries in one `PutEvents` call (256 KB, counted as the UTF-8 bytes of
//! `Source`, `DetailType`, `Detail` and each resource, plus 14 when `Time`
//! is set) as well as their number (10), so calls are packed by both.
//! Entries EventBridge reports failed are sent again, and the publication
//! fails if any still fails.

use std::time::Duration;

use serde_json::{Value, json};

use tokio::time::Instant;

use super::{DeliveryError, Rejection, ResultSink};
use crate::core::BoxFuture;
use crate::core::backoff::{Backoff, Unsent};

/// `Source` of every entry.
pub const SOURCE: &str = "intune-attest";
/// `DetailType` of the summary entry.
pub const SUMMARY_DETAIL_TYPE: &str = "Device Attestation Result";
/// `DetailType` of a refused request.
pub const REJECTED_DETAIL_TYPE: &str = "Device Attestation Request Rejected";
/// `DetailType` of the device entries.
pub const DEVICES_DETAIL_TYPE: &str = "Device Attestation Result Devices";
/// `DetailType` of a verdict's summary entry.
pub const VERDICT_DETAIL_TYPE: &str = "Device Attestation Verdict";
/// `DetailType` of a verdict's device entries.
pub const VERDICT_DEVICES_DETAIL_TYPE: &str = "Device Attestation Verdict Devices";
/// The most entry bytes sent in one `PutEvents` call, and so the largest
/// entry: EventBridge's limit is 256 KB (262,144 bytes) for the whole call;
/// this keeps a margin under it.
pub const MAX_CALL_BYTES: usize = 256 * 1000;
/// The largest entry made.
pub const MAX_ENTRY_BYTES: usize = MAX_CALL_BYTES;
/// EventBridge's limit of entries per `PutEvents` call.
pub const MAX_ENTRIES_PER_CALL: usize = 10;

/// One entry to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `DetailType`.
    pub detail_type: &'static str,
    /// `Detail` (JSON).
    pub detail: String,
}

impl Entry {
    /// The size EventBridge counts: source, detail type and detail (no
    /// resources are set, nor `Time`).
    pub fn size(&self) -> usize {
        SOURCE.len() + self.detail_type.len() + self.detail.len()
    }
}

/// Packs entries into calls of at most [`MAX_ENTRIES_PER_CALL`] entries and
/// [`MAX_CALL_BYTES`] in all, in order.
pub fn calls(entries: &[Entry]) -> Vec<&[Entry]> {
    crate::core::pack::by_count_and_size(entries, MAX_ENTRIES_PER_CALL, MAX_CALL_BYTES, Entry::size)
}

/// How one kind of document becomes events: the summary entry's detail
/// type, the device entries' detail type, and the members every device
/// entry repeats from the document.
#[derive(Debug, Clone, Copy)]
pub struct EventKind {
    /// `DetailType` of the entry with the document less its devices.
    pub summary: &'static str,
    /// `DetailType` of the entries that carry the devices.
    pub devices: &'static str,
    /// Members of the document repeated in every device entry.
    pub carried: &'static [&'static str],
}

/// Result documents: "Device Attestation Result" and its device entries.
pub const RESULT_EVENTS: EventKind = EventKind {
    summary: SUMMARY_DETAIL_TYPE,
    devices: DEVICES_DETAIL_TYPE,
    carried: &["schema_version", "correlation_id", "status", "summary"],
};

/// Verdict documents: "Device Attestation Verdict" and its device entries.
pub const VERDICT_EVENTS: EventKind = EventKind {
    summary: VERDICT_DETAIL_TYPE,
    devices: VERDICT_DEVICES_DETAIL_TYPE,
    carried: &["schema_version", "correlation_id", "checked_at", "summary", "check"],
};

/// Splits a result document into entries of at most `max_bytes`.
pub fn entries(result: &Value, max_bytes: usize) -> Vec<Entry> {
    entries_of(result, max_bytes, RESULT_EVENTS)
}

/// Splits a document with a `devices` list into a summary entry (the
/// document without its devices) and device entries of at most `max_bytes`
/// each, all saying `event_part` k of `event_parts` n; every device is in
/// exactly one entry.
pub fn entries_of(doc: &Value, max_bytes: usize, kind: EventKind) -> Vec<Entry> {
    let mut summary = doc.clone();
    if let Some(obj) = summary.as_object_mut() {
        obj.remove("devices");
    }
    let base = |part: usize| {
        let mut b = serde_json::Map::new();
        for key in kind.carried {
            b.insert((*key).to_owned(), doc[*key].clone());
        }
        b.insert("event_part".into(), json!(part));
        b.insert("devices".into(), json!([]));
        Value::Object(b)
    };
    // Pack devices greedily; `{"event_parts": n}` is filled in at the end.
    let overhead = SOURCE.len() + kind.devices.len() + base(0).to_string().len() + 32;
    let mut chunks: Vec<Vec<Value>> = Vec::new();
    let mut current: Vec<Value> = Vec::new();
    let mut size = overhead;
    for v in doc["devices"].as_array().into_iter().flatten() {
        let len = v.to_string().len() + 1;
        if !current.is_empty() && size + len > max_bytes {
            chunks.push(std::mem::take(&mut current));
            size = overhead;
        }
        size += len;
        current.push(v.clone());
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    let parts = chunks.len() + 1;
    if let Some(obj) = summary.as_object_mut() {
        obj.insert("event_part".into(), json!(1));
        obj.insert("event_parts".into(), json!(parts));
    }
    let mut out = vec![Entry {
        detail_type: kind.summary,
        detail: summary.to_string(),
    }];
    for (i, devices) in chunks.into_iter().enumerate() {
        let mut detail = base(i + 2);
        detail["event_parts"] = json!(parts);
        detail["devices"] = Value::Array(devices);
        out.push(Entry {
            detail_type: kind.devices,
            detail: detail.to_string(),
        });
    }
    out
}

/// The `PutEvents` call, as a port, so partial failures can be exercised.
pub trait PutEvents: Send + Sync {
    /// Puts up to 10 entries; returns, per entry, `None` when accepted or
    /// the error code.
    fn put<'a>(&'a self, bus: &'a str, entries: &'a [Entry]) -> BoxFuture<'a, Result<Vec<Option<String>>, String>>;
}

impl PutEvents for aws_sdk_eventbridge::Client {
    fn put<'a>(&'a self, bus: &'a str, entries: &'a [Entry]) -> BoxFuture<'a, Result<Vec<Option<String>>, String>> {
        Box::pin(async move {
            let req: Vec<_> = entries
                .iter()
                .map(|e| {
                    aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
                        .event_bus_name(bus)
                        .source(SOURCE)
                        .detail_type(e.detail_type)
                        .detail(&e.detail)
                        .build()
                })
                .collect();
            let out = self.put_events().set_entries(Some(req)).send().await.map_err(|e| {
                e.as_service_error()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "EventBridge did not answer".into())
            })?;
            let results = out.entries();
            Ok((0..entries.len())
                .map(|i| match results.get(i) {
                    Some(r) if r.error_code().is_none() && r.event_id().is_some() => None,
                    Some(r) => Some(r.error_code().unwrap_or("Unknown").to_owned()),
                    None => Some("NoResult".to_owned()),
                })
                .collect())
        })
    }
}

/// Publishes results to an event bus.
pub struct EventBridgeSink<P> {
    put: P,
    bus: String,
    backoff: Backoff,
}

impl<P: PutEvents> EventBridgeSink<P> {
    /// A sink putting to `bus` through `put`.
    pub fn new(put: P, bus: String) -> Self {
        Self {
            put,
            bus,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2), 4),
        }
    }

    /// The transport (for tests that read back what was put).
    pub fn transport(&self) -> &P {
        &self.put
    }

    /// Sets the retry policy for entries EventBridge reports failed.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Puts every entry. A call that fails whole was already retried by the
    /// SDK and fails the publication; entries EventBridge reports failed in
    /// an accepted call are put again (the SDK cannot see those), with the
    /// shared backoff and never past `deadline`.
    async fn put_all(&self, pending: Vec<Entry>, deadline: Option<Instant>) -> Result<(), DeliveryError> {
        let mut attempt = 0;
        let unsent = self
            .backoff
            .resend_failed(pending, deadline, |pending: Vec<Entry>| {
                attempt += 1;
                let attempt = attempt;
                async move {
                    let mut failed = Unsent {
                        entries: Vec::new(),
                        reason: String::new(),
                    };
                    for chunk in calls(&pending) {
                        let codes = self
                            .put
                            .put(&self.bus, chunk)
                            .await
                            .map_err(|e| DeliveryError(format!("PutEvents failed ({e})")))?;
                        for (entry, code) in chunk.iter().zip(codes) {
                            if let Some(code) = code {
                                failed.reason = code;
                                failed.entries.push(entry.clone());
                            }
                        }
                    }
                    if !failed.entries.is_empty() {
                        tracing::warn!(failed = failed.entries.len(), error = %failed.reason, attempt, "EventBridge refused result entries");
                    }
                    Ok(failed)
                }
            })
            .await?;
        if unsent.entries.is_empty() {
            return Ok(());
        }
        Err(DeliveryError(format!(
            "{} EventBridge entries failed ({})",
            unsent.entries.len(),
            unsent.reason
        )))
    }
}

impl<P: PutEvents> ResultSink for EventBridgeSink<P> {
    fn publish<'a>(&'a self, result: &'a Value, deadline: Option<Instant>) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move { self.put_all(entries(result, MAX_ENTRY_BYTES), deadline).await })
    }

    fn publish_verdict<'a>(
        &'a self,
        verdict: &'a Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            self.put_all(entries_of(verdict, MAX_ENTRY_BYTES, VERDICT_EVENTS), deadline)
                .await
        })
    }

    fn reject<'a>(
        &'a self,
        rejection: &'a Rejection,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let detail = crate::core::encode::to_string(rejection).map_err(|e| DeliveryError(e.to_string()))?;
            let entry = Entry {
                detail_type: REJECTED_DETAIL_TYPE,
                detail,
            };
            self.put_all(vec![entry], deadline).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::device::{DeviceId, DeviceKind};
    use crate::core::outcome::{DeviceResult, Outcome, RunRecord, RunResult};
    use std::sync::Mutex;

    fn result(n: usize) -> Value {
        let devices = (0..n)
            .map(|i| {
                let id = DeviceId::parse(&format!("00000000-0000-0000-0000-{i:012x}")).unwrap();
                let mut d = DeviceResult::new(id, DeviceKind::Managed, Outcome::Failed);
                d.message = Some("x".repeat(300));
                d
            })
            .collect();
        serde_json::to_value(RunResult::new(RunRecord {
            correlation_id: "corr".into(),
            devices,
            ..RunRecord::default()
        }))
        .unwrap()
    }

    #[test]
    fn large_results_split_under_the_limit_and_keep_every_device() {
        let r = result(5000);
        let es = entries(&r, MAX_ENTRY_BYTES);
        assert!(es.len() > 3, "{}", es.len());
        let mut ids = 0;
        for (i, e) in es.iter().enumerate() {
            assert!(e.size() <= MAX_ENTRY_BYTES, "entry {i} is {} bytes", e.size());
            let v: Value = serde_json::from_str(&e.detail).unwrap();
            assert_eq!(v["correlation_id"], "corr");
            assert_eq!(v["event_part"], i + 1);
            assert_eq!(v["event_parts"], es.len());
            ids += v["devices"].as_array().map_or(0, Vec::len);
        }
        assert_eq!(ids, 5000);
        assert_eq!(es[0].detail_type, SUMMARY_DETAIL_TYPE);
        let summary: Value = serde_json::from_str(&es[0].detail).unwrap();
        assert_eq!(summary["summary"]["failed"], 5000);
    }

    #[test]
    fn a_small_result_is_a_summary_and_one_device_entry() {
        let es = entries(&result(2), MAX_ENTRY_BYTES);
        assert_eq!(es.len(), 2);
    }

    /// Fails the first `fail` entries of each call for the first `rounds` calls.
    struct Flaky {
        rounds: Mutex<u32>,
        fail: usize,
        sent: Mutex<Vec<String>>,
    }

    impl PutEvents for Flaky {
        fn put<'a>(
            &'a self,
            _bus: &'a str,
            entries: &'a [Entry],
        ) -> BoxFuture<'a, Result<Vec<Option<String>>, String>> {
            Box::pin(async move {
                assert!(entries.len() <= MAX_ENTRIES_PER_CALL);
                let mut rounds = self.rounds.lock().unwrap();
                let failing = *rounds > 0;
                *rounds = rounds.saturating_sub(1);
                Ok(entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| {
                        if failing && i < self.fail {
                            Some("ThrottlingException".to_owned())
                        } else {
                            self.sent.lock().unwrap().push(e.detail.clone());
                            None
                        }
                    })
                    .collect())
            })
        }
    }

    /// A sink over [`Flaky`] failing `fail` entries a call for `rounds`
    /// calls, trying each entry `attempts` times 1 ms apart.
    fn flaky(rounds: u32, fail: usize, attempts: u32) -> EventBridgeSink<Flaky> {
        let put = Flaky {
            rounds: Mutex::new(rounds),
            fail,
            sent: Mutex::new(vec![]),
        };
        EventBridgeSink::new(put, "bus".into()).with_backoff(Backoff::new(
            Duration::from_millis(1),
            Duration::from_millis(1),
            attempts,
        ))
    }

    #[tokio::test]
    async fn partly_failed_puts_are_retried_until_every_entry_is_in() {
        let sink = flaky(2, 2, 4);
        let r = result(3000);
        sink.publish(&r, None).await.unwrap();
        let sent = sink.put.sent.lock().unwrap().clone();
        assert_eq!(
            sent.len(),
            entries(&r, MAX_ENTRY_BYTES).len(),
            "each entry exactly once"
        );
    }

    #[tokio::test]
    async fn puts_that_keep_failing_are_reported() {
        let sink = flaky(100, 10, 3);
        let err = sink.publish(&result(1), None).await.unwrap_err();
        assert!(err.0.contains("ThrottlingException"), "{err}");
    }

    /// EventBridge's limits as AWS enforces them (moto does not): at most
    /// ten entries, and a call whose entries total more than 256 KB is
    /// refused whole.
    #[derive(Default)]
    struct Enforcing {
        calls: Mutex<Vec<usize>>,
        accepted: Mutex<Vec<String>>,
    }

    impl PutEvents for Enforcing {
        fn put<'a>(
            &'a self,
            _bus: &'a str,
            entries: &'a [Entry],
        ) -> BoxFuture<'a, Result<Vec<Option<String>>, String>> {
            Box::pin(async move {
                let total: usize = entries.iter().map(Entry::size).sum();
                if entries.len() > 10 || total > 262_144 {
                    return Err(format!("ValidationException: {} entries, {total} bytes", entries.len()));
                }
                self.calls.lock().unwrap().push(total);
                self.accepted
                    .lock()
                    .unwrap()
                    .extend(entries.iter().map(|e| e.detail.clone()));
                Ok(vec![None; entries.len()])
            })
        }
    }

    #[tokio::test]
    async fn calls_are_packed_under_the_total_size_limit_and_every_device_lands_once() {
        // 1,500 devices with Graph-sized messages: about 700 KB of entries,
        // which ten-per-call packing would send as one refused call.
        let r = result(1500);
        let sink = EventBridgeSink::new(Enforcing::default(), "bus".into());
        sink.publish(&r, None).await.unwrap();
        let calls = sink.put.calls.lock().unwrap().clone();
        assert!(calls.len() >= 3, "{calls:?}");
        assert!(calls.iter().all(|&b| b <= MAX_CALL_BYTES));
        let accepted = sink.put.accepted.lock().unwrap().clone();
        let mut seen = std::collections::HashMap::new();
        for detail in &accepted {
            let v: Value = serde_json::from_str(detail).unwrap();
            assert_eq!(v["summary"]["requested"], 1500, "the summary travels with every part");
            for d in v["devices"].as_array().into_iter().flatten() {
                *seen.entry(d["device_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 1500);
        assert!(seen.values().all(|&n| n == 1));
    }
}
