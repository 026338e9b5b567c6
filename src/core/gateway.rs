//! The port through which the engine reaches Graph. The Graph adapter
//! implements it over HTTP; tests can implement it with fakes.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::device::{DeviceId, DeviceRef};
use super::filter::DeviceFilter;

/// How a failed call should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// 429 (or a throttled batch): retry after the given delay.
    Throttled,
    /// 5xx, or the request could not be sent: retry.
    Transient,
    /// The request may have reached Graph but no answer came (timeout, reset
    /// connection, unreadable or missing answer): retry, and count it.
    AnswerLost,
    /// 404: the device does not exist.
    NotFound,
    /// 403: the app registration lacks permission.
    Forbidden,
    /// Any other 4xx: final.
    Rejected,
    /// The call was never sent (no room in the shared budget before the
    /// deadline): not an attempt.
    NotSent,
}

impl FailureKind {
    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::Throttled | FailureKind::Transient | FailureKind::AnswerLost
        )
    }
}

/// Everything known about one failed call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallFailure {
    /// How to treat it.
    pub kind: FailureKind,
    /// HTTP status, when one arrived.
    pub status: Option<u16>,
    /// Graph `error.code`.
    pub code: Option<String>,
    /// Graph `error.message` (opaque), or a description of the fault.
    pub message: Option<String>,
    /// Graph `request-id`.
    pub request_id: Option<String>,
    /// The server's `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

impl CallFailure {
    /// Graph's 429 for one item, as the tests' fakes answer it.
    #[cfg(test)]
    pub(crate) fn throttled(retry_after: Option<std::time::Duration>) -> Self {
        Self {
            kind: FailureKind::Throttled,
            status: Some(429),
            code: Some("TooManyRequests".into()),
            message: None,
            request_id: None,
            retry_after,
        }
    }

    /// A failure with no HTTP answer behind it.
    pub fn without_answer(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            status: None,
            code: None,
            message: Some(message.into()),
            request_id: None,
            retry_after: None,
        }
    }
}

/// The answer for one item of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemAnswer<T> {
    /// A 2xx answer.
    Ok {
        /// The decoded body.
        value: T,
        /// The HTTP status.
        status: u16,
        /// Graph `request-id`.
        request_id: Option<String>,
    },
    /// Anything else.
    Failed(CallFailure),
}

impl<T> ItemAnswer<T> {
    /// Whether an HTTP answer came back for this item (a failure with a
    /// status did; a timeout or a lost answer did not).
    pub fn answered(&self) -> bool {
        match self {
            ItemAnswer::Ok { .. } => true,
            ItemAnswer::Failed(f) => f.status.is_some(),
        }
    }
}

/// What a device reports about its TPM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TpmReport {
    /// A specification version was reported (for example `"2.0"`).
    Present(String),
    /// The field was reported and empty: no TPM.
    Empty,
    /// Not reported at all: proceed and let Intune decide.
    #[default]
    Unknown,
}

/// The facts validation needs about a device (see
/// [`eligibility`](super::eligibility)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `deviceName`.
    pub device_name: Option<String>,
    /// `operatingSystem`.
    pub operating_system: Option<String>,
    /// `osVersion` (`10.0.<build>.<revision>` on Windows).
    pub os_version: Option<String>,
    /// `model`.
    pub model: Option<String>,
    /// `manufacturer`.
    pub manufacturer: Option<String>,
    /// `deviceType` (`cloudPC` for Windows 365).
    pub device_type: Option<String>,
    /// `hardwareInformation.tpmSpecificationVersion`.
    pub tpm: TpmReport,
    /// `managementAgent` (enum `managementAgentType`, as Graph spells it).
    pub management_agent: Option<String>,
    /// `skuFamily`.
    pub sku_family: Option<String>,
    /// `hardwareInformation.operatingSystemEdition`.
    pub os_edition: Option<String>,
    /// `hardwareInformation.operatingSystemProductType` (Windows'
    /// `GetProductInfo` product type).
    pub os_product_type: Option<u32>,
}

/// What a filtered listing found. Every device Graph listed was checked
/// against the whole filter on the client; only those that match are here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// The devices that match the whole filter, in Graph's order.
    pub devices: Vec<DeviceId>,
    /// Listed devices that do not match the `$filter` Graph was sent: Graph
    /// did not apply it (or part of it). Left out, never written.
    pub not_applied_by_graph: usize,
    /// Listed devices that match what Graph was sent but not the parts of
    /// the filter only the client applies. Left out, never written.
    pub left_out_by_client: usize,
}

impl Listing {
    /// The warnings a run reports about this listing (none when Graph
    /// applied what it was sent and the client left nothing out).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.not_applied_by_graph > 0 {
            out.push(format!(
                "Graph did not apply part of device_filter: it listed {} device(s) that do not match the $filter it was sent; they were left out (no write)",
                self.not_applied_by_graph
            ));
        }
        if self.left_out_by_client > 0 {
            out.push(format!(
                "{} listed device(s) did not match the parts of device_filter the client applies; they were left out (no write)",
                self.left_out_by_client
            ));
        }
        out
    }
}

/// A failure that stops the whole run rather than one device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The credentials were refused (for example `invalid_client`).
    #[error("credentials refused: {0}")]
    Credentials(String),
    /// Graph or the token endpoint could not be reached in time.
    #[error("Graph unavailable: {0}")]
    Unavailable(String),
    /// Graph refused a read that selection needs.
    #[error("Graph refused the request: {0}")]
    Refused(String),
    /// A deployment setting is wrong (a federated issuer not set up, a
    /// token for another cloud): no retry can help.
    #[error("{0}")]
    Configuration(String),
    /// A filter selected more devices than a request may hold.
    #[error("the filter selects more than {limit} devices")]
    TooManyDevices {
        /// The limit that was exceeded.
        limit: usize,
    },
}

/// Graph's limit on requests in one `$batch`.
pub const MAX_BATCH: usize = 20;

/// Cumulative traffic counters of a gateway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// HTTP requests sent (Graph and token endpoint).
    pub http_requests: u64,
    /// 429 answers, counting each throttled batch item.
    pub throttled: u64,
}

/// Graph, as the engine needs it. Batch methods take at most 20 devices and
/// return exactly one answer per device, in the same order.
pub trait DeviceGateway: Send + Sync + 'static {
    /// Makes sure calls can be authorised (fetches a token).
    fn prepare(&self, deadline: Instant) -> impl Future<Output = Result<(), GatewayError>> + Send;

    /// Lists managed devices matching `filter`, following paging: sends
    /// Graph [`DeviceFilter::graph_filter`], `$select`s the filter's
    /// properties and keeps only the listed devices that
    /// [`DeviceFilter::classify`] finds matching; fails with
    /// [`GatewayError::TooManyDevices`] past `limit` matching devices.
    fn list_devices(
        &self,
        filter: &DeviceFilter,
        limit: usize,
        deadline: Instant,
    ) -> impl Future<Output = Result<Listing, GatewayError>> + Send;

    /// Reads the devices' validation facts in one batch.
    fn read_devices(
        &self,
        devices: &[DeviceRef],
        deadline: Instant,
    ) -> impl Future<Output = Vec<ItemAnswer<DeviceInfo>>> + Send;

    /// Sends `initiateDeviceAttestation` for the devices in one batch.
    fn initiate(&self, devices: &[DeviceRef], deadline: Instant) -> impl Future<Output = Vec<ItemAnswer<()>>> + Send;

    /// Traffic so far.
    fn stats(&self) -> GatewayStats;

    /// A configuration error the gateway met during calls (Graph refused
    /// its token as issued for another cloud): the run that met it ends
    /// with it instead of a result.
    fn configuration_error(&self) -> Option<String> {
        None
    }
}
