//! The report's reading of the two public documents: the parts of a result
//! document and of a status document that it shows. Members it does not
//! know are ignored and members added since a document was written default,
//! so reports can be made from older and newer documents alike.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A result document (`schema/result.schema.json`), as the report reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct ResultDocument {
    /// The run's correlation id.
    pub correlation_id: String,
    /// `succeeded`, `partially_failed` or `failed`.
    pub status: String,
    /// Whether the caller should treat the run as failed.
    #[serde(default)]
    pub failed: bool,
    /// Whether this was a dry run.
    #[serde(default)]
    pub dry_run: bool,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time.
    pub finished_at: String,
    /// Counts per outcome, and `requested`.
    pub summary: BTreeMap<String, u64>,
    /// The run's warnings.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Traffic figures.
    #[serde(default)]
    pub stats: Stats,
    /// The request's options, as the payload named them.
    #[serde(default)]
    pub options: Option<BTreeMap<String, Value>>,
    /// How the run was invoked.
    #[serde(default)]
    pub invocation: Option<BTreeMap<String, Value>>,
    /// Present when the document lists only some devices.
    #[serde(default)]
    pub truncated: Option<Truncated>,
    /// The last status read under `verify` (the CLI waits for it).
    #[serde(default)]
    pub verdict: Option<StatusDocument>,
    /// The devices listed.
    pub devices: Vec<ResultDevice>,
}

/// The result's `stats`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Stats {
    /// HTTP requests sent.
    #[serde(default)]
    pub http_requests: u64,
    /// 429 answers.
    #[serde(default)]
    pub throttled_responses: u64,
    /// How long the run took.
    #[serde(default)]
    pub duration_ms: u64,
    /// The throttle window, in milliseconds (0 in documents without it).
    #[serde(default)]
    pub throttle_window_ms: u64,
    /// The instance's write budget per window (0 in documents without it).
    #[serde(default)]
    pub write_budget: u32,
    /// Writes sent per throttle window.
    #[serde(default)]
    pub writes_per_window: Vec<u32>,
}

/// The result's `truncated` member.
#[derive(Clone, Debug, Deserialize)]
pub struct Truncated {
    /// Devices listed.
    pub devices_listed: u64,
    /// Devices left out.
    pub devices_omitted: u64,
    /// Where every device is.
    pub full_result: String,
}

/// One device of a result document.
#[derive(Clone, Debug, Deserialize)]
pub struct ResultDevice {
    /// The device ID.
    pub device_id: String,
    /// `managed` or `comanaged`.
    pub kind: String,
    /// Graph's `deviceName`, when the validation read found the device.
    #[serde(default)]
    pub device_name: Option<String>,
    /// What happened.
    pub outcome: String,
    /// Why, in words.
    #[serde(default)]
    pub reason: Option<String>,
    /// Why, for machines.
    #[serde(default)]
    pub reason_code: Option<String>,
    /// Graph's last HTTP status.
    #[serde(default)]
    pub http_status: Option<u16>,
    /// Graph's error code.
    #[serde(default)]
    pub error_code: Option<String>,
    /// Graph's error message (opaque text).
    #[serde(default)]
    pub message: Option<String>,
    /// Graph's request id.
    #[serde(default)]
    pub request_id: Option<String>,
}

/// A status document (`schema/status.schema.json`), as the report reads it.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusDocument {
    /// The run the devices belong to.
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// When the status was read.
    pub checked_at: String,
    /// Counts.
    pub summary: StatusSummary,
    /// Warnings (Graph not serving the attestation status...).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// One entry per device.
    pub devices: Vec<StatusDevice>,
}

/// The status document's counts.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusSummary {
    /// Devices asked about.
    pub devices: u64,
    /// Per action state.
    #[serde(default)]
    pub action_states: BTreeMap<String, u64>,
    /// Per attestation status.
    #[serde(default)]
    pub attestation_statuses: BTreeMap<String, u64>,
    /// Devices that could not be read.
    #[serde(default)]
    pub unread: u64,
}

/// One device of a status document.
#[derive(Clone, Debug, Deserialize)]
pub struct StatusDevice {
    /// The device ID.
    pub device_id: String,
    /// Where the attestation action stands.
    pub action_state: String,
    /// When the action last changed.
    #[serde(default)]
    pub action_updated_at: Option<String>,
    /// Intune's verdict, when Graph served it.
    #[serde(default)]
    pub attestation_status: Option<String>,
    /// Why the device could not be read.
    #[serde(default)]
    pub read_error: Option<String>,
}
