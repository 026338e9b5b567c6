//! The request payload, with the Terraform action's option names, and its
//! validation. Every problem is collected and reported together, each naming
//! the field, the bad value and what was expected; nothing here touches
//! the network.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde_json::{Map, Value};

use super::device::{DeviceId, DeviceKind, DeviceRef};
use super::duration::rfc3339;
use super::duration::{format_go_duration, parse_go_duration};
use super::filter::DeviceFilter;
use super::verify::{CheckTicket, MAX_CHECKS, MAX_UNTIL, MIN_INTERVAL, VerifyPlan};

/// The timeout used when `timeouts.invoke` is absent (the Terraform action's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest `timeouts.invoke` accepted: less cannot send one call
/// (a token and a batch), and a run that can try nothing must not be
/// handed on to another part that can try nothing either.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// The default ceiling on devices in one request.
pub const DEFAULT_MAX_DEVICES: usize = 50_000;
/// The longest `correlation_id` accepted.
pub const MAX_CORRELATION_ID_LEN: usize = 128;
/// At most this many problems are listed in one error.
const MAX_PROBLEMS: usize = 20;

const FIELDS: &[&str] = &[
    "managed_device_ids",
    "comanaged_device_ids",
    "ignore_partial_failures",
    "validate_device_exists",
    "timeouts",
    "device_filter",
    "dry_run",
    "correlation_id",
    "part",
    "tenant",
    "verify",
    "check",
    "read_status",
];

/// Fields only the service writes, on the messages it seals for itself:
/// never offered to a caller.
const SERVICE_FIELDS: &[&str] = &["part", "check"];

/// The highest `part` number accepted.
pub const MAX_PART: u64 = 100_000;

/// A validated request: what to attest and how.
#[derive(Debug, Clone)]
pub struct AttestationRequest {
    /// Explicitly named devices, managed first then co-managed, deduplicated
    /// within each list, in the order given.
    pub devices: Vec<DeviceRef>,
    /// Selects further managed devices by listing Graph.
    pub device_filter: Option<DeviceFilter>,
    /// Succeed even when some devices fail (failures become warnings).
    pub ignore_partial_failures: bool,
    /// Read each device first and attest only existing Windows devices.
    pub validate_device_exists: bool,
    /// How long the whole run may take (`timeouts.invoke`).
    pub timeout: Duration,
    /// Validate and select, but send no attestation.
    pub dry_run: bool,
    /// The caller's correlation id, if given.
    pub correlation_id: Option<String>,
    /// Which of the deployment's configured tenants to attest in (its
    /// name, never a secret id); `None` for the deployment's own.
    pub tenant: Option<String>,
    /// Which part of a run split across invocations this is (1 = the first;
    /// continuation messages carry higher numbers).
    pub part: u32,
    /// Read the verdict back after initiating, on this schedule (`verify`).
    pub verify: Option<VerifyPlan>,
    /// A follow-up check, not a run (`check`: set only by the service, on
    /// the messages it queues itself).
    pub check: Option<CheckTicket>,
    /// Read the selected devices' attestation status instead of initiating
    /// (`read_status`: a playbook's wait-and-branch).
    pub read_status: bool,
    /// The named devices were selected by a filter, not named by a caller
    /// (a sweep chunk, or the continuation of selected devices): not part
    /// of the payload, set from the service's own stamp.
    pub named_were_selected: bool,
    /// Things worth saying that do not stop the run (duplicates removed...).
    pub warnings: Vec<String>,
}

/// Limits that come from deployment configuration, not from the payload.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Most devices one request may name or select.
    pub max_devices: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_devices: DEFAULT_MAX_DEVICES,
        }
    }
}

/// One thing wrong with a payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a JSON path (`managed_device_ids[2]`).
    pub field: String,
    /// A bounded, escaped rendering of the bad value.
    pub value: String,
    /// What was expected.
    pub expected: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: got {}; {}", self.field, self.value, self.expected)
    }
}

/// The payload was refused. Lists every problem found (up to a bound).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidRequest {
    /// The problems, in payload order.
    pub problems: Vec<Problem>,
    /// How many further problems were not listed.
    pub more: usize,
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid request: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        if self.more > 0 {
            write!(f, "; and {} more", self.more)?;
        }
        Ok(())
    }
}

impl InvalidRequest {
    /// A refusal with a single problem.
    pub fn single(field: &str, value: &str, expected: &str) -> Self {
        Self {
            problems: vec![Problem {
                field: field.into(),
                value: value.into(),
                expected: expected.into(),
            }],
            more: 0,
        }
    }
}

/// Renders a value for an error message: bounded in length, escaped, so a
/// hostile payload cannot flood or forge log lines.
pub fn excerpt(value: &Value) -> String {
    const MAX: usize = 80;
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(o) => format!("an object with {} keys", o.len()),
        other => other.to_string(),
    };
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}… ({} characters)", text.chars().count())
    } else {
        text
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, value: String, expected: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            value,
            expected: expected.into(),
        });
    }

    fn finish(self) -> Result<(), InvalidRequest> {
        if self.0.is_empty() {
            return Ok(());
        }
        let more = self.0.len().saturating_sub(MAX_PROBLEMS);
        let mut problems = self.0;
        problems.truncate(MAX_PROBLEMS);
        Err(InvalidRequest { problems, more })
    }
}

impl AttestationRequest {
    /// Parses raw JSON bytes (the body of an event or file).
    pub fn from_slice(bytes: &[u8], limits: RequestLimits) -> Result<Self, InvalidRequest> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            InvalidRequest::single(
                "(payload)",
                &format!("text that is not JSON ({e})"),
                "a JSON object with managed_device_ids, comanaged_device_ids or device_filter",
            )
        })?;
        Self::from_value(&value, limits)
    }

    /// Validates a parsed payload.
    pub fn from_value(value: &Value, limits: RequestLimits) -> Result<Self, InvalidRequest> {
        let Some(obj) = value.as_object() else {
            return Err(InvalidRequest::single(
                "(payload)",
                &excerpt(value),
                "a JSON object with managed_device_ids, comanaged_device_ids or device_filter",
            ));
        };
        let mut problems = Problems::default();
        for key in obj.keys() {
            if !FIELDS.contains(&key.as_str()) {
                let callers: Vec<&str> = FIELDS.iter().copied().filter(|f| !SERVICE_FIELDS.contains(f)).collect();
                let nearest = callers
                    .iter()
                    .map(|f| (strsim::jaro_winkler(key, f), *f))
                    .filter(|(score, _)| *score > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, f)| format!("did you mean {f}? "))
                    .unwrap_or_default();
                problems.add(
                    excerpt(&Value::String(key.clone())),
                    "an unknown field".into(),
                    format!("{nearest}expected one of {}", callers.join(", ")),
                );
            }
        }

        let total_ids: usize = ["managed_device_ids", "comanaged_device_ids"]
            .iter()
            .filter_map(|k| obj.get(*k).and_then(Value::as_array).map(Vec::len))
            .sum();
        let too_many = total_ids > limits.max_devices;
        if too_many {
            problems.add(
                "managed_device_ids + comanaged_device_ids",
                format!("{total_ids} IDs"),
                format!("at most {} devices per request (split the request)", limits.max_devices),
            );
        }

        let mut warnings = Vec::new();
        let managed = if too_many {
            Vec::new()
        } else {
            id_list(obj, "managed_device_ids", &mut problems, &mut warnings)
        };
        let comanaged = if too_many {
            Vec::new()
        } else {
            id_list(obj, "comanaged_device_ids", &mut problems, &mut warnings)
        };

        let ignore_partial_failures = flag(obj, "ignore_partial_failures", false, &mut problems);
        let validate_device_exists = flag(obj, "validate_device_exists", true, &mut problems);
        let dry_run = flag(obj, "dry_run", false, &mut problems);
        let timeout = timeouts(obj, &mut problems);

        let device_filter = match present(obj, "device_filter") {
            None => None,
            Some(Value::String(text)) => match DeviceFilter::parse(text) {
                Ok(f) => Some(f),
                Err(e) => {
                    problems.add("device_filter", excerpt(&Value::String(text.clone())), format!("{e}"));
                    None
                }
            },
            Some(other) => {
                problems.add("device_filter", excerpt(other), "expected an OData filter string");
                None
            }
        };

        let correlation_id = match present(obj, "correlation_id") {
            None => None,
            Some(Value::String(s)) if valid_correlation_id(s) => Some(s.clone()),
            Some(other) => {
                problems.add(
                    "correlation_id",
                    excerpt(other),
                    format!("expected 1 to {MAX_CORRELATION_ID_LEN} characters of letters, digits and . _ : / -"),
                );
                None
            }
        };

        let tenant = match present(obj, "tenant") {
            None => None,
            Some(Value::String(s)) if valid_tenant_name(s) => Some(s.clone()),
            Some(other) => {
                problems.add(
                    "tenant",
                    excerpt(other),
                    "expected the name of a configured tenant: 1 to 64 letters, digits and . _ -",
                );
                None
            }
        };

        // Lists whose entries were all refused already have their problems.
        let part = match present(obj, "part") {
            None => 1,
            Some(Value::Number(n)) if n.as_u64().is_some_and(|p| (1..=MAX_PART).contains(&p)) => {
                n.as_u64().unwrap_or(1) as u32
            }
            Some(other) => {
                problems.add(
                    "part",
                    excerpt(other),
                    format!("expected a whole number from 1 to {MAX_PART}"),
                );
                1
            }
        };

        let verify = verify_plan(obj, &mut problems);
        let check = check_ticket(obj, &mut problems);
        let read_status = flag(obj, "read_status", false, &mut problems);
        if read_status && (verify.is_some() || check.is_some() || dry_run) {
            problems.add(
                "read_status",
                "true".into(),
                "read_status reads and initiates nothing: it goes without verify, check and dry_run",
            );
        }
        if check.is_some() && (verify.is_none() || present(obj, "device_filter").is_some()) {
            problems.add(
                "check",
                "a check".into(),
                "a check names its devices and comes with verify (the service writes it)",
            );
        }

        let selects_something = total_ids > 0 || present(obj, "device_filter").is_some();
        let named_lists =
            present(obj, "managed_device_ids").is_some() || present(obj, "comanaged_device_ids").is_some();
        if !selects_something && !too_many {
            problems.add(
                "managed_device_ids",
                if named_lists {
                    "empty lists".into()
                } else {
                    "nothing".into()
                },
                "at least one of managed_device_ids, comanaged_device_ids or device_filter must select devices",
            );
        }
        problems.finish()?;

        let managed_set: HashSet<DeviceId> = managed.iter().copied().collect();
        for id in &comanaged {
            if managed_set.contains(id) {
                warnings.push(format!(
                    "{id} is in both managed_device_ids and comanaged_device_ids; it is attempted on both endpoints"
                ));
            }
        }
        let devices = managed
            .into_iter()
            .map(|id| DeviceRef {
                id,
                kind: DeviceKind::Managed,
            })
            .chain(comanaged.into_iter().map(|id| DeviceRef {
                id,
                kind: DeviceKind::Comanaged,
            }))
            .collect();
        Ok(Self {
            devices,
            device_filter,
            ignore_partial_failures,
            validate_device_exists,
            timeout,
            dry_run,
            correlation_id,
            tenant,
            part,
            verify,
            check,
            read_status,
            named_were_selected: false,
            warnings,
        })
    }
}

/// The serialisable form of a request: the payload a caller would send to
/// ask for exactly this request. Everything the service writes onto the work
/// queue (continuations, sweep chunks, webhook hand-offs) is one of these,
/// so a queued message can never say what a fresh request could not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Payload {
    /// `managed_device_ids`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub managed_device_ids: Vec<String>,
    /// `comanaged_device_ids`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comanaged_device_ids: Vec<String>,
    /// `device_filter`, in its canonical rendering.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_filter: Option<String>,
    /// `ignore_partial_failures`.
    pub ignore_partial_failures: bool,
    /// `validate_device_exists`.
    pub validate_device_exists: bool,
    /// `timeouts`.
    pub timeouts: PayloadTimeouts,
    /// `dry_run`.
    pub dry_run: bool,
    /// `correlation_id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// `part`, written only past the first part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    /// `tenant`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `verify`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<PayloadVerify>,
    /// `check`, on follow-up checks only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<PayloadCheck>,
    /// `read_status`, written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_status: bool,
}

/// The `verify` object of a [`Payload`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PayloadVerify {
    /// `verify.after`, a Go duration.
    pub after: String,
    /// `verify.until`, a Go duration.
    pub until: String,
}

impl From<VerifyPlan> for PayloadVerify {
    fn from(v: VerifyPlan) -> Self {
        Self {
            after: format_go_duration(v.after),
            until: format_go_duration(v.until),
        }
    }
}

/// The `check` object of a [`Payload`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PayloadCheck {
    /// `check.number`.
    pub number: u32,
    /// `check.due_at`, RFC 3339.
    pub due_at: String,
    /// `check.until_at`, RFC 3339.
    pub until_at: String,
}

/// The `timeouts` object of a [`Payload`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PayloadTimeouts {
    /// `timeouts.invoke`, a Go duration.
    pub invoke: String,
}

impl Payload {
    /// The payload as JSON text.
    pub fn to_json(&self) -> Result<String, crate::core::encode::EncodeError> {
        crate::core::encode::to_string(self)
    }
}

impl AttestationRequest {
    /// The payload that asks for this request.
    pub fn to_payload(&self) -> Payload {
        let ids = |kind: DeviceKind| -> Vec<String> {
            self.devices
                .iter()
                .filter(|d| d.kind == kind)
                .map(|d| d.id.to_string())
                .collect()
        };
        Payload {
            managed_device_ids: ids(DeviceKind::Managed),
            comanaged_device_ids: ids(DeviceKind::Comanaged),
            device_filter: self.device_filter.as_ref().map(ToString::to_string),
            ignore_partial_failures: self.ignore_partial_failures,
            validate_device_exists: self.validate_device_exists,
            timeouts: PayloadTimeouts {
                invoke: format_go_duration(self.timeout),
            },
            dry_run: self.dry_run,
            correlation_id: self.correlation_id.clone(),
            part: (self.part > 1).then_some(self.part),
            tenant: self.tenant.clone(),
            verify: self.verify.map(PayloadVerify::from),
            check: self.check.map(|c| PayloadCheck {
                number: c.number,
                due_at: rfc3339(c.due_at),
                until_at: rfc3339(c.until_at),
            }),
            read_status: self.read_status,
        }
    }

    /// The same request for other devices (named, no filter): a
    /// continuation, a sweep chunk, or a part of a check.
    pub fn for_devices(&self, devices: Vec<DeviceRef>, correlation_id: String, part: u32) -> Self {
        Self {
            devices,
            device_filter: None,
            correlation_id: Some(correlation_id),
            part,
            warnings: Vec::new(),
            named_were_selected: false,
            ..self.clone()
        }
    }

    /// A follow-up check of `devices` (named), carrying `ticket`.
    pub fn for_check(&self, devices: Vec<DeviceRef>, correlation_id: String, part: u32, ticket: CheckTicket) -> Self {
        Self {
            check: Some(ticket),
            ..self.for_devices(devices, correlation_id, part)
        }
    }
}

/// A field counts as absent when missing or `null` (Terraform writes nulls
/// for unset optional attributes).
fn present<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// Whether `s` can name a tenant (a configuration key, never a secret id).
pub fn valid_tenant_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_correlation_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_CORRELATION_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'))
}

fn id_list(obj: &Map<String, Value>, key: &str, problems: &mut Problems, warnings: &mut Vec<String>) -> Vec<DeviceId> {
    let Some(value) = present(obj, key) else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        problems.add(key, excerpt(value), "expected a list of device ID strings (GUIDs)");
        return Vec::new();
    };
    let mut seen = HashSet::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    let mut duplicates = 0usize;
    for (i, item) in items.iter().enumerate() {
        match item.as_str().and_then(DeviceId::parse) {
            Some(id) => {
                if seen.insert(id) {
                    ids.push(id);
                } else {
                    duplicates += 1;
                }
            }
            None => problems.add(
                format!("{key}[{i}]"),
                excerpt(item),
                "expected a device ID GUID like \"12345678-1234-1234-1234-123456789abc\"",
            ),
        }
    }
    if duplicates > 0 {
        warnings.push(format!("{duplicates} duplicate ID(s) removed from {key}"));
    }
    ids
}

fn flag(obj: &Map<String, Value>, key: &str, default: bool, problems: &mut Problems) -> bool {
    match present(obj, key) {
        None => default,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            problems.add(key, excerpt(other), "expected true or false");
            default
        }
    }
}

/// One Go duration of the `verify` object, or a problem.
fn verify_duration(v: &Map<String, Value>, key: &str, problems: &mut Problems) -> Option<Duration> {
    let field = format!("verify.{key}");
    match v.get(key).filter(|x| !x.is_null()) {
        Some(Value::String(s)) => match parse_go_duration(s) {
            Ok(d) if (MIN_INTERVAL..=MAX_UNTIL).contains(&d) => Some(d),
            Ok(_) => {
                problems.add(field, excerpt_str(s), "expected a duration from 1s to 24h".to_string());
                None
            }
            Err(e) => {
                problems.add(
                    field,
                    excerpt_str(s),
                    format!("expected a Go duration such as \"15m\" or \"2h\" ({e})"),
                );
                None
            }
        },
        Some(other) => {
            problems.add(field, excerpt(other), "expected a Go duration string such as \"15m\"");
            None
        }
        None => {
            problems.add(field, "nothing".into(), "expected a Go duration such as \"15m\"");
            None
        }
    }
}

/// `verify`: `{"after": "15m", "until": "2h"}`.
fn verify_plan(obj: &Map<String, Value>, problems: &mut Problems) -> Option<VerifyPlan> {
    let value = present(obj, "verify")?;
    let Some(v) = value.as_object() else {
        problems.add(
            "verify",
            excerpt(value),
            "expected an object like {\"after\": \"15m\", \"until\": \"2h\"}",
        );
        return None;
    };
    for key in v.keys().filter(|k| !["after", "until"].contains(&k.as_str())) {
        problems.add(
            format!("verify.{}", key.chars().take(40).collect::<String>()),
            "an unknown field".into(),
            "expected only verify.after and verify.until",
        );
    }
    let after = verify_duration(v, "after", problems);
    let until = verify_duration(v, "until", problems);
    let (after, until) = (after?, until?);
    if until < after {
        problems.add(
            "verify.until",
            excerpt(&v["until"]),
            format!(
                "expected at least verify.after ({})",
                v["after"].as_str().unwrap_or_default()
            ),
        );
        return None;
    }
    Some(VerifyPlan { after, until })
}

/// `check`, which only the service writes: `{"number", "due_at", "until_at"}`.
fn check_ticket(obj: &Map<String, Value>, problems: &mut Problems) -> Option<CheckTicket> {
    let value = present(obj, "check")?;
    let time = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| humantime::parse_rfc3339(s).ok())
    };
    let number = value
        .get("number")
        .and_then(Value::as_u64)
        .filter(|n| (1..=u64::from(MAX_CHECKS)).contains(n));
    match (
        value.as_object().map(|o| o.len()),
        number,
        time("due_at"),
        time("until_at"),
    ) {
        (Some(3), Some(number), Some(due_at), Some(until_at)) => Some(CheckTicket {
            number: number as u32,
            due_at,
            until_at,
        }),
        _ => {
            problems.add(
                "check",
                excerpt(value),
                format!(
                    "expected the service's own {{\"number\": 1 to {MAX_CHECKS}, \"due_at\", \"until_at\" (RFC 3339)}}"
                ),
            );
            None
        }
    }
}

fn timeouts(obj: &Map<String, Value>, problems: &mut Problems) -> Duration {
    let Some(value) = present(obj, "timeouts") else {
        return DEFAULT_TIMEOUT;
    };
    let Some(t) = value.as_object() else {
        problems.add(
            "timeouts",
            excerpt(value),
            "expected an object like {\"invoke\": \"10m\"}",
        );
        return DEFAULT_TIMEOUT;
    };
    for key in t.keys().filter(|k| k.as_str() != "invoke") {
        problems.add(
            format!("timeouts.{}", key.chars().take(40).collect::<String>()),
            "an unknown field".into(),
            "expected only timeouts.invoke",
        );
    }
    match t.get("invoke").filter(|v| !v.is_null()) {
        None => DEFAULT_TIMEOUT,
        Some(Value::String(s)) => match parse_go_duration(s) {
            Ok(d) if d < MIN_TIMEOUT => {
                problems.add(
                    "timeouts.invoke",
                    excerpt_str(s),
                    format!(
                        "expected at least {} (less cannot send one call)",
                        format_go_duration(MIN_TIMEOUT)
                    ),
                );
                DEFAULT_TIMEOUT
            }
            Ok(d) => d,
            Err(e) => {
                problems.add(
                    "timeouts.invoke",
                    excerpt_str(s),
                    format!("{e} (units ns, us, ms, s, m, h)"),
                );
                DEFAULT_TIMEOUT
            }
        },
        Some(other) => {
            problems.add(
                "timeouts.invoke",
                excerpt(other),
                "expected a duration string such as \"10m\"",
            );
            DEFAULT_TIMEOUT
        }
    }
}

fn excerpt_str(s: &str) -> String {
    excerpt(&Value::String(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<AttestationRequest, InvalidRequest> {
        AttestationRequest::from_value(&v, RequestLimits::default())
    }

    const A: &str = "12345678-1234-1234-1234-123456789abc";
    const B: &str = "87654321-4321-4321-4321-ba9876543210";

    #[test]
    fn the_terraform_maximal_example_parses() {
        let r = parse(json!({
            "managed_device_ids": [A, B.to_uppercase()],
            "comanaged_device_ids": ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"],
            "ignore_partial_failures": true,
            "validate_device_exists": true,
            "timeouts": {"invoke": "5m"}
        }))
        .unwrap();
        assert_eq!(r.devices.len(), 3);
        assert_eq!(r.devices[1].id.as_str(), B);
        assert_eq!(r.devices[2].kind, DeviceKind::Comanaged);
        assert_eq!(r.timeout, Duration::from_secs(300));
        assert!(r.ignore_partial_failures && r.validate_device_exists && !r.dry_run);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn defaults_follow_the_terraform_action() {
        let r = parse(json!({"managed_device_ids": [A], "timeouts": null, "dry_run": null})).unwrap();
        assert_eq!(r.timeout, DEFAULT_TIMEOUT);
        assert!(r.validate_device_exists);
        assert!(!r.ignore_partial_failures);
        assert!(r.correlation_id.is_none());
    }

    #[test]
    fn duplicates_are_removed_and_cross_list_ids_kept_with_warnings() {
        let r = parse(json!({
            "managed_device_ids": [A, A.to_uppercase(), B],
            "comanaged_device_ids": [A]
        }))
        .unwrap();
        let ids: Vec<_> = r.devices.iter().map(|d| (d.id.as_str().to_owned(), d.kind)).collect();
        assert_eq!(
            ids,
            vec![
                (A.to_owned(), DeviceKind::Managed),
                (B.to_owned(), DeviceKind::Managed),
                (A.to_owned(), DeviceKind::Comanaged)
            ]
        );
        assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("1 duplicate"));
        assert!(r.warnings[1].contains("both"));
    }

    #[test]
    fn every_problem_is_reported_together_with_field_value_and_expectation() {
        let err = parse(json!({
            "managed_device_ids": [A, "not-a-guid", 7],
            "comanaged_device_ids": "abc",
            "ignore_partial_failures": "yes",
            "timeouts": {"invoke": "10 minutes", "create": "1m"},
            "device_filter": "operatingSystem gt 'x'",
            "correlation_id": "has space",
            "surprise": 1
        }))
        .unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "\"surprise\"",
                "managed_device_ids[1]",
                "managed_device_ids[2]",
                "comanaged_device_ids",
                "ignore_partial_failures",
                "timeouts.create",
                "timeouts.invoke",
                "device_filter",
                "correlation_id"
            ]
        );
        let text = err.to_string();
        assert!(
            text.contains("managed_device_ids[1]: got \"not-a-guid\"; expected a device ID GUID"),
            "{text}"
        );
        assert!(text.contains("timeouts.invoke: got \"10 minutes\""), "{text}");
    }

    #[test]
    fn verify_takes_two_go_durations_the_second_not_shorter() {
        let r = parse(json!({"managed_device_ids": [A], "verify": {"after": "15m", "until": "2h"}})).unwrap();
        assert_eq!(
            r.verify,
            Some(VerifyPlan {
                after: Duration::from_secs(900),
                until: Duration::from_secs(7200)
            })
        );
        for (verify, field, expected) in [
            (json!({"after": "15m"}), "verify.until", "expected a Go duration"),
            (
                json!({"after": "10m", "until": "5m"}),
                "verify.until",
                "at least verify.after (10m)",
            ),
            (
                json!({"after": "500ms", "until": "5m"}),
                "verify.after",
                "from 1s to 24h",
            ),
            (json!({"after": "1m", "until": "48h"}), "verify.until", "from 1s to 24h"),
            (
                json!({"after": "1m", "until": "2m", "every": "1m"}),
                "verify.every",
                "only verify.after",
            ),
            (json!("15m"), "verify", "an object like"),
        ] {
            let err = parse(json!({"managed_device_ids": [A], "verify": verify})).unwrap_err();
            let p = err
                .problems
                .iter()
                .find(|p| p.field == field)
                .unwrap_or_else(|| panic!("{err}"));
            assert!(p.expected.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_check_comes_with_verify_and_named_devices_only() {
        let check = json!({"number": 2, "due_at": "2026-11-29T12:00:00.000Z", "until_at": "2026-11-29T14:00:00.000Z"});
        let verify = json!({"after": "15m", "until": "2h"});
        let r = parse(json!({"managed_device_ids": [A], "verify": verify, "check": check})).unwrap();
        assert_eq!(r.check.map(|c| c.number), Some(2));
        assert!(parse(json!({"managed_device_ids": [A], "check": check})).is_err());
        assert!(parse(json!({"device_filter": "deviceName eq 'x'", "verify": verify, "check": check})).is_err());
        let bad = json!({"number": 0, "due_at": "soon", "until_at": "later"});
        let err = parse(json!({"managed_device_ids": [A], "verify": verify, "check": bad})).unwrap_err();
        assert_eq!(err.problems[0].field, "check");
    }

    #[test]
    fn empty_selections_are_refused() {
        for v in [
            json!({}),
            json!({"managed_device_ids": []}),
            json!({"managed_device_ids": null}),
        ] {
            let err = parse(v).unwrap_err();
            assert!(err.to_string().contains("at least one of"), "{err}");
        }
        assert!(parse(json!({"device_filter": "operatingSystem eq 'Windows'"})).is_ok());
    }

    #[test]
    fn non_objects_and_non_json_are_refused() {
        assert!(parse(json!([A])).unwrap_err().to_string().contains("JSON object"));
        let err = AttestationRequest::from_slice(b"\xff\xfe{", RequestLimits::default()).unwrap_err();
        assert!(err.to_string().contains("not JSON"));
    }

    #[test]
    fn oversize_requests_are_refused_without_listing_every_id() {
        let ids: Vec<String> = (0..11).map(|i| format!("12345678-1234-1234-1234-{i:012x}")).collect();
        let err =
            AttestationRequest::from_value(&json!({"managed_device_ids": ids}), RequestLimits { max_devices: 10 })
                .unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(err.to_string().contains("at most 10 devices"), "{err}");
    }

    #[test]
    fn problem_lists_and_values_are_bounded() {
        let ids: Vec<String> = (0..100).map(|i| format!("bad{i}")).collect();
        let err = parse(json!({"managed_device_ids": ids})).unwrap_err();
        assert_eq!(err.problems.len(), 20);
        assert_eq!(err.more, 80);
        let err = parse(json!({"managed_device_ids": ["x".repeat(10_000)]})).unwrap_err();
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn bad_durations_are_named() {
        for bad in ["0s", "-1s", "1d", "", "10"] {
            let err = parse(json!({"managed_device_ids": [A], "timeouts": {"invoke": bad}})).unwrap_err();
            assert_eq!(err.problems[0].field, "timeouts.invoke", "{bad}");
        }
        let r = parse(json!({"managed_device_ids": [A], "timeouts": {"invoke": "1h30m10s"}})).unwrap();
        assert_eq!(r.timeout, Duration::from_secs(5410));
    }

    #[test]
    fn an_unknown_field_names_the_nearest_a_caller_may_send() {
        let err = parse(json!({"managed_device_id": [A]})).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("did you mean managed_device_ids?"), "{text}");
        assert!(!text.contains("part,") && !text.contains("check"), "{text}");
        let err = parse(json!({"managed_device_ids": [A], "zzz": 1})).unwrap_err();
        assert!(!err.to_string().contains("did you mean"), "{err}");
    }

    #[test]
    fn a_timeout_too_short_to_send_one_call_is_refused() {
        for short in ["1ms", "999ms", "1ns"] {
            let err = parse(json!({"managed_device_ids": [A], "timeouts": {"invoke": short}})).unwrap_err();
            assert_eq!(err.problems[0].field, "timeouts.invoke", "{short}");
            assert!(err.to_string().contains("at least 1s"), "{err}");
        }
        let r = parse(json!({"managed_device_ids": [A], "timeouts": {"invoke": "1s"}})).unwrap();
        assert_eq!(r.timeout, MIN_TIMEOUT);
    }
}
