//! Where result documents go: the [`ResultSink`] port and its adapter for
//! EventBridge. (On Azure the result leaves through the function's output
//! binding, which the front door fills from the service's disposition.)

pub mod eventbridge;

use tokio::time::Instant;

use crate::core::BoxFuture;

/// A delivery failed (result events, queue messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// A request refused before it ran (a malformed queue message, say),
/// reported once so it is not silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The stable error type (`InvalidRequest`, `SelectionFailed`...).
    pub error_type: String,
    /// What was wrong (bounded, no secrets).
    pub message: String,
    /// The trigger it arrived through.
    pub trigger: String,
    /// The platform's id for the delivery (SQS message id...).
    pub delivery_id: Option<String>,
}

/// Where result documents go (EventBridge...).
pub trait ResultSink: Send + Sync {
    /// Publishes one result document (the JSON of a `RunResult`), split and
    /// retried as the sink needs, giving up rather than waiting past
    /// `deadline`.
    fn publish<'a>(
        &'a self,
        result: &'a serde_json::Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
    /// Publishes one verdict document (a follow-up check's statuses),
    /// split like a result.
    fn publish_verdict<'a>(
        &'a self,
        verdict: &'a serde_json::Value,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
    /// Reports a refused request.
    fn reject<'a>(
        &'a self,
        rejection: &'a Rejection,
        deadline: Option<Instant>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
}
