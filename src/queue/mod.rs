//! The work queue that carries continuations, sweep chunks and webhook
//! hand-offs: the [`WorkQueue`] port and its adapter for SQS.

pub mod sqs;

use tokio::time::Instant;

use crate::core::BoxFuture;
use crate::results::DeliveryError;

/// A message for the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkMessage {
    /// The payload (a request document).
    pub body: String,
    /// Identifies the message for deduplication (`{correlation_id}#{part}`).
    pub dedup_id: String,
    /// Groups the messages of one run.
    pub group_id: String,
}

/// The queue that carries continuations and sweep chunks.
pub trait WorkQueue: Send + Sync {
    /// Sends the messages; fails if any could not be sent before
    /// `deadline`.
    fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> BoxFuture<'_, Result<(), DeliveryError>>;
}
