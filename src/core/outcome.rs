//! What happened: one outcome per device, the run's status, and the result
//! document (a public contract, described by `schema/result.schema.json`).

use serde::{Serialize, Serializer};

use super::device::{DeviceId, DeviceKind};
pub use super::eligibility::ReasonCode;

/// The result document's schema version. Bump on any breaking change.
pub const SCHEMA_VERSION: &str = "1";

/// What finally happened to one device ([`Outcome::as_str`] names it in
/// every document and view).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Graph accepted the request; the device will report later.
    Initiated,
    /// Graph has no such device.
    NotFound,
    /// The device cannot be attested (not Windows, no TPM reported).
    Unsupported,
    /// The app registration lacks permission.
    Forbidden,
    /// Graph refused the request for another reason, or transient errors
    /// outlasted the retries.
    Failed,
    /// Throttling outlasted the retries or the deadline.
    Throttled,
    /// The deadline came before this device was tried.
    NotAttempted,
    /// The deadline came before this device was tried, and it was handed on
    /// to the next part of the run (a continuation message on the work
    /// queue); its outcome is in that part's result.
    Continued,
    /// Dry run: the device would have been attested.
    WouldInitiate,
}

impl Outcome {
    /// Every outcome, in the order the summary lists them.
    pub const ALL: [Outcome; 9] = [
        Outcome::Initiated,
        Outcome::NotFound,
        Outcome::Unsupported,
        Outcome::Forbidden,
        Outcome::Failed,
        Outcome::Throttled,
        Outcome::NotAttempted,
        Outcome::Continued,
        Outcome::WouldInitiate,
    ];

    /// Whether this outcome counts as success for the run (a continued
    /// device is judged in the part that tries it).
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Initiated | Outcome::WouldInitiate | Outcome::Continued)
    }

    /// The snake_case name used in the result document.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Initiated => "initiated",
            Outcome::NotFound => "not_found",
            Outcome::Unsupported => "unsupported",
            Outcome::Forbidden => "forbidden",
            Outcome::Failed => "failed",
            Outcome::Throttled => "throttled",
            Outcome::NotAttempted => "not_attempted",
            Outcome::Continued => "continued",
            Outcome::WouldInitiate => "would_initiate",
        }
    }
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One device's line in the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceResult {
    /// The device ID, lower case.
    pub device_id: DeviceId,
    /// Which endpoint it was addressed through.
    pub kind: DeviceKind,
    /// Graph's `deviceName`, when the validation read found the device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// Why, for `unsupported` and for failures decided without Graph's word.
    pub reason: Option<String>,
    /// Why, for machines: one of [`ReasonCode::ALL`]; `tpm_unknown` and
    /// `os_build_unlisted` mark a device attempted with a warning.
    pub reason_code: Option<ReasonCode>,
    /// The last HTTP status Graph gave for this device.
    pub http_status: Option<u16>,
    /// Graph's `error.code`, when it gave one.
    pub error_code: Option<String>,
    /// Graph's error message (opaque text), or a description of the fault.
    pub message: Option<String>,
    /// Graph's `request-id` for the last call about this device.
    pub request_id: Option<String>,
    /// HTTP attempts made for this device (reads and writes).
    pub attempts: u32,
    /// Attempts whose answer never arrived (timeout, reset connection): Graph
    /// may have acted on them, so the action may have been sent more than once.
    pub lost_answers: u32,
    /// A filter selected the device (the payload did not name it): if it
    /// cannot attest, it is reported and does not count as a failure.
    #[serde(rename = "selected_by_filter", skip_serializing_if = "std::ops::Not::not")]
    pub selected: bool,
}

impl DeviceResult {
    /// The device this entry is about.
    pub fn device_ref(&self) -> super::device::DeviceRef {
        super::device::DeviceRef {
            id: self.device_id,
            kind: self.kind,
        }
    }

    /// A result with only the outcome set.
    pub fn new(device_id: DeviceId, kind: DeviceKind, outcome: Outcome) -> Self {
        Self {
            device_id,
            kind,
            device_name: None,
            outcome,
            reason: None,
            reason_code: None,
            http_status: None,
            error_code: None,
            message: None,
            request_id: None,
            attempts: 0,
            lost_answers: 0,
            selected: false,
        }
    }

    /// Whether this device counts against the run: it was not initiated,
    /// and it is not a device a filter selected that cannot attest.
    pub fn counts_as_failure(&self) -> bool {
        let excused = self.selected && self.outcome == Outcome::Unsupported;
        !(self.outcome.is_success() || excused)
    }
}

/// The run's overall status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every device was initiated (or would be, in a dry run).
    Succeeded,
    /// Some devices were, some were not.
    PartiallyFailed,
    /// No device was.
    Failed,
}

impl RunStatus {
    /// The name the result document and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::PartiallyFailed => "partially_failed",
            RunStatus::Failed => "failed",
        }
    }
}

/// Counts per outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Devices in the run.
    pub requested: usize,
    /// `initiated`
    pub initiated: usize,
    /// `not_found`
    pub not_found: usize,
    /// `unsupported`
    pub unsupported: usize,
    /// `forbidden`
    pub forbidden: usize,
    /// `failed`
    pub failed: usize,
    /// `throttled`
    pub throttled: usize,
    /// `not_attempted`
    pub not_attempted: usize,
    /// `continued` (handed to the next part)
    #[serde(skip_serializing_if = "is_zero")]
    pub continued: usize,
    /// `would_initiate` (dry runs only)
    #[serde(skip_serializing_if = "is_zero")]
    pub would_initiate: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Summary {
    /// Counts the outcomes of `devices`.
    pub fn of(devices: &[DeviceResult]) -> Self {
        let mut s = Summary {
            requested: devices.len(),
            ..Default::default()
        };
        for d in devices {
            *s.slot(d.outcome) += 1;
        }
        s
    }

    fn slot(&mut self, o: Outcome) -> &mut usize {
        match o {
            Outcome::Initiated => &mut self.initiated,
            Outcome::NotFound => &mut self.not_found,
            Outcome::Unsupported => &mut self.unsupported,
            Outcome::Forbidden => &mut self.forbidden,
            Outcome::Failed => &mut self.failed,
            Outcome::Throttled => &mut self.throttled,
            Outcome::NotAttempted => &mut self.not_attempted,
            Outcome::Continued => &mut self.continued,
            Outcome::WouldInitiate => &mut self.would_initiate,
        }
    }

    /// The count for one outcome.
    pub fn count(&self, o: Outcome) -> usize {
        let mut copy = self.clone();
        *copy.slot(o)
    }
}

/// Figures about the run's traffic, for operators and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// HTTP requests sent to Graph and the token endpoint.
    pub http_requests: u64,
    /// Responses or batch items that said 429.
    pub throttled_responses: u64,
    /// Milliseconds the run took.
    pub duration_ms: u64,
    /// The throttle window the write budget applies to, in milliseconds.
    pub throttle_window_ms: u64,
    /// The writes this instance may send per window (its configured budget).
    pub write_budget: u32,
    /// `initiateDeviceAttestation` writes sent in each throttle window since
    /// the run started (the first entry is the first window).
    pub writes_per_window: Vec<u32>,
}

/// How a run was invoked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Invocation {
    /// `cli`, `direct`, `sqs`, `webhook`, `schedule` or `azure-*`.
    pub trigger: String,
    /// The platform's id for this delivery (Lambda request id, SQS message id...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    /// The authenticated caller, when the platform names one (IAM ARN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Which part of a run split across invocations this is (1 = the first).
    pub part: u32,
}

/// What `verify` arranged after the run: follow-up checks of the
/// initiated devices, or why there are none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Whether the follow-up checks are on their way.
    pub scheduled: bool,
    /// Devices the checks cover (this part's initiated devices).
    pub devices: usize,
    /// When the first check is due (RFC 3339).
    pub first_check_at: Option<String>,
    /// When the schedule ends (RFC 3339).
    pub until: Option<String>,
    /// Why no check was scheduled, when none was.
    pub reason: Option<String>,
}

/// The request's options, as the payload named them, for readers of the
/// result (the report's footer) and for audits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunOptions {
    /// `ignore_partial_failures`.
    pub ignore_partial_failures: bool,
    /// `validate_device_exists`.
    pub validate_device_exists: bool,
    /// `timeouts.invoke` (a Go duration).
    pub timeouts: Timeouts,
    /// `device_filter`, in its canonical form.
    pub device_filter: Option<String>,
    /// `tenant`, when the payload named one.
    pub tenant: Option<String>,
    /// `verify`, when the payload asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<super::request::PayloadVerify>,
}

/// The request's `timeouts`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// `timeouts.invoke` (a Go duration).
    pub invoke: String,
}

const IGNORED_SUFFIX: &str = "ignored because ignore_partial_failures is true";
/// How the warning about excused devices ends (so a refresh replaces it).
const EXCUSED_SUFFIX: &str = "reported, not counted as failures";

/// The result document.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// [`SCHEMA_VERSION`].
    pub schema_version: &'static str,
    /// The caller's correlation id, or one made for this run.
    pub correlation_id: String,
    /// The overall status.
    pub status: RunStatus,
    /// Whether the run counts as failed for the caller: any device not
    /// initiated, unless `ignore_partial_failures` was set.
    pub failed: bool,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// Counts per outcome.
    pub summary: Summary,
    /// Warnings: input clean-ups, and failures when they are ignored.
    pub warnings: Vec<String>,
    /// Traffic figures.
    pub stats: RunStats,
    /// How the run was invoked, when a front door says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invocation: Option<Invocation>,
    /// The request's options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<RunOptions>,
    /// What `verify` arranged (hosted runs with `verify`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The last status read by `verify` (the CLI, which waits for it):
    /// a status document (`schema/status.schema.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<super::status::StatusDocument>,
    /// One entry per device, in request order.
    pub devices: Vec<DeviceResult>,
}

/// A result document for a channel that carries at most `max_bytes`: the
/// whole document when it fits; otherwise everything but the device list,
/// the devices that did not succeed (as many as fit), and a `truncated`
/// member saying how many were left out and where the full list is.
pub fn bounded_document(whole: &serde_json::Value, max_bytes: usize, full_result: &str) -> serde_json::Value {
    let success: Vec<&str> = Outcome::ALL
        .iter()
        .filter(|o| o.is_success())
        .map(|o| o.as_str())
        .collect();
    bounded_listing(whole, max_bytes, full_result, |d| {
        !d["outcome"].as_str().is_some_and(|o| success.contains(&o))
    })
}

/// A document with a `devices` list for a channel that carries at most
/// `max_bytes`: the whole document when it fits; otherwise the devices
/// `worth_listing` says need attention (as many as fit) and a `truncated`
/// member saying how many were left out and where the full list is.
pub fn bounded_listing(
    whole: &serde_json::Value,
    max_bytes: usize,
    full_result: &str,
    worth_listing: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    if whole.to_string().len() <= max_bytes {
        return whole.clone();
    }
    let devices = whole["devices"].as_array().cloned().unwrap_or_default();
    let mut doc = whole.clone();
    doc["devices"] = serde_json::Value::Array(Vec::new());
    doc["truncated"] = serde_json::json!({"devices_listed": 0, "devices_omitted": 0, "full_result": full_result});
    let mut size = doc.to_string().len() + 64;
    let mut listed = Vec::new();
    for d in devices.iter().filter(|d| worth_listing(d)) {
        let len = d.to_string().len() + 1;
        if size + len > max_bytes {
            break;
        }
        size += len;
        listed.push(d.clone());
    }
    let n = listed.len();
    doc["devices"] = serde_json::Value::Array(listed);
    doc["truncated"]["devices_listed"] = n.into();
    doc["truncated"]["devices_omitted"] = (devices.len() - n).into();
    doc
}

/// What a run produced, before its summary and status are derived.
#[derive(Clone, Debug, Default)]
pub struct RunRecord {
    /// The correlation id.
    pub correlation_id: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
    /// Whether failures are only warned about.
    pub ignore_partial_failures: bool,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// Warnings so far.
    pub warnings: Vec<String>,
    /// Traffic figures.
    pub stats: RunStats,
    /// The request's options, when known.
    pub options: Option<RunOptions>,
    /// One entry per device, in request order.
    pub devices: Vec<DeviceResult>,
}

impl RunResult {
    /// Builds the document, deriving the summary and status from the devices.
    pub fn new(record: RunRecord) -> Self {
        let RunRecord {
            correlation_id,
            dry_run,
            ignore_partial_failures,
            started_at,
            finished_at,
            mut warnings,
            stats,
            options,
            devices,
        } = record;
        let summary = Summary::of(&devices);
        let ok = devices.iter().filter(|d| d.outcome.is_success()).count();
        let failures = devices.iter().filter(|d| d.counts_as_failure()).count();
        let excused = devices.len() - ok - failures;
        if excused > 0 {
            warnings.push(format!(
                "{excused} device(s) device_filter selected cannot attest (unsupported: virtual machines, Cloud PCs, builds or TPMs that cannot); {EXCUSED_SUFFIX}"
            ));
        }
        let status = if failures == 0 {
            RunStatus::Succeeded
        } else if ok == 0 {
            RunStatus::Failed
        } else {
            RunStatus::PartiallyFailed
        };
        let failed = status != RunStatus::Succeeded && !ignore_partial_failures;
        if status != RunStatus::Succeeded && ignore_partial_failures {
            let bad: Vec<String> = Outcome::ALL
                .iter()
                .filter(|o| !o.is_success())
                .filter_map(|o| {
                    let n = summary.count(*o);
                    (n > 0).then(|| format!("{n} {}", o.as_str()))
                })
                .collect();
            warnings.push(format!(
                "{} of {} devices were not initiated ({}); {IGNORED_SUFFIX}",
                devices.len() - ok,
                devices.len(),
                bad.join(", ")
            ));
        }
        Self {
            schema_version: SCHEMA_VERSION,
            correlation_id,
            status,
            failed,
            dry_run,
            started_at,
            finished_at,
            summary,
            warnings,
            stats,
            invocation: None,
            options,
            verification: None,
            verdict: None,
            devices,
        }
    }

    /// The devices Graph accepted the request for, in order (what a
    /// verdict check reads).
    pub fn initiated_devices(&self) -> Vec<super::device::DeviceRef> {
        self.devices
            .iter()
            .filter(|d| d.outcome == Outcome::Initiated)
            .map(DeviceResult::device_ref)
            .collect()
    }

    /// The document for a channel that carries at most `max_bytes` (see
    /// [`bounded_document`]).
    pub fn bounded_document(
        &self,
        max_bytes: usize,
        full_result: &str,
    ) -> Result<serde_json::Value, crate::core::encode::EncodeError> {
        Ok(bounded_document(
            &crate::core::encode::to_value(self)?,
            max_bytes,
            full_result,
        ))
    }

    /// Re-derives the summary, status and failure after outcomes changed
    /// (a front door handing devices on to a continuation).
    pub fn refresh(&mut self, ignore_partial_failures: bool) {
        let rebuilt = RunResult::new(RunRecord {
            correlation_id: std::mem::take(&mut self.correlation_id),
            dry_run: self.dry_run,
            ignore_partial_failures,
            started_at: std::mem::take(&mut self.started_at),
            finished_at: std::mem::take(&mut self.finished_at),
            warnings: self
                .warnings
                .iter()
                .filter(|w| !w.ends_with(IGNORED_SUFFIX) && !w.ends_with(EXCUSED_SUFFIX))
                .cloned()
                .collect(),
            stats: std::mem::take(&mut self.stats),
            options: self.options.take(),
            devices: std::mem::take(&mut self.devices),
        });
        let invocation = self.invocation.take();
        let verification = self.verification.take();
        let verdict = self.verdict.take();
        *self = rebuilt;
        self.invocation = invocation;
        self.verification = verification;
        self.verdict = verdict;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8, o: Outcome) -> DeviceResult {
        let id = DeviceId::parse(&format!("00000000-0000-0000-0000-0000000000{n:02x}")).unwrap();
        DeviceResult::new(id, DeviceKind::Managed, o)
    }

    #[test]
    fn a_status_has_one_name_in_the_document_and_the_logs() {
        for s in [RunStatus::Succeeded, RunStatus::PartiallyFailed, RunStatus::Failed] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn a_device_a_filter_selected_that_cannot_attest_is_reported_not_failed() {
        let mut vm = dev(1, Outcome::Unsupported);
        vm.selected = true;
        let devices = vec![dev(0, Outcome::Initiated), vm.clone()];
        let r = RunResult::new(RunRecord {
            correlation_id: "c".into(),
            devices,
            ..RunRecord::default()
        });
        assert_eq!((r.status, r.failed), (RunStatus::Succeeded, false));
        assert_eq!(r.summary.count(Outcome::Unsupported), 1, "still reported");
        assert!(r.warnings[0].contains("not counted as failures"), "{:?}", r.warnings);
        // Refreshed, the warning is not repeated.
        let mut again = r.clone();
        again.refresh(false);
        assert_eq!(again.warnings.len(), 1);
        // Named in the payload, the same device fails the run.
        let named = RunResult::new(RunRecord {
            correlation_id: "c".into(),
            devices: vec![dev(0, Outcome::Initiated), dev(1, Outcome::Unsupported)],
            ..RunRecord::default()
        });
        assert_eq!((named.status, named.failed), (RunStatus::PartiallyFailed, true));
        // A selected device that failed for another reason still counts.
        let mut broken = dev(2, Outcome::Failed);
        broken.selected = true;
        let r = RunResult::new(RunRecord {
            correlation_id: "c".into(),
            devices: vec![vm, broken],
            ..RunRecord::default()
        });
        assert_eq!(r.status, RunStatus::Failed);
    }

    fn run(ignore: bool, outcomes: &[Outcome]) -> RunResult {
        let devices = outcomes.iter().enumerate().map(|(i, o)| dev(i as u8, *o)).collect();
        RunResult::new(RunRecord {
            correlation_id: "c".into(),
            ignore_partial_failures: ignore,
            devices,
            ..RunRecord::default()
        })
    }

    #[test]
    fn status_and_failure_follow_the_outcomes() {
        let r = run(false, &[Outcome::Initiated, Outcome::Initiated]);
        assert_eq!((r.status, r.failed), (RunStatus::Succeeded, false));
        let r = run(false, &[Outcome::Initiated, Outcome::NotFound]);
        assert_eq!((r.status, r.failed), (RunStatus::PartiallyFailed, true));
        assert_eq!(r.summary.not_found, 1);
        assert_eq!(r.summary.requested, 2);
        let r = run(false, &[Outcome::Throttled]);
        assert_eq!((r.status, r.failed), (RunStatus::Failed, true));
    }

    #[test]
    fn ignored_failures_become_a_warning() {
        let r = run(true, &[Outcome::Initiated, Outcome::NotFound, Outcome::Unsupported]);
        assert_eq!((r.status, r.failed), (RunStatus::PartiallyFailed, false));
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].contains("1 not_found, 1 unsupported"),
            "{}",
            r.warnings[0]
        );
    }

    #[test]
    fn a_document_too_large_for_its_channel_keeps_the_summary_and_the_failures() {
        let outcomes: Vec<Outcome> = (0..5000)
            .map(|i| {
                if i % 100 == 0 {
                    Outcome::NotFound
                } else {
                    Outcome::Initiated
                }
            })
            .collect();
        let mut r = run(false, &[]);
        r.devices = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let id = DeviceId::parse(&format!("00000000-0000-0000-0000-{i:012x}")).unwrap();
                DeviceResult::new(id, DeviceKind::Managed, *o)
            })
            .collect();
        r.refresh(false);
        let whole = serde_json::to_string(&r).unwrap().len();
        assert_eq!(
            r.bounded_document(whole, "x").unwrap()["devices"]
                .as_array()
                .unwrap()
                .len(),
            5000
        );
        let doc = r.bounded_document(100_000, "the result events").unwrap();
        assert!(doc.to_string().len() <= 100_000);
        assert_eq!(doc["summary"]["requested"], 5000);
        assert_eq!(doc["devices"].as_array().unwrap().len(), 50, "every failure fits");
        assert_eq!(doc["truncated"]["devices_omitted"], 4950);
        let tiny = r.bounded_document(2_000, "the result events").unwrap();
        assert!(tiny.to_string().len() <= 2_000, "{}", tiny.to_string().len());
    }
}
