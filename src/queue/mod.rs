//! The work queue that carries continuations, sweep chunks, webhook
//! hand-offs and follow-up checks: the [`WorkQueue`] port and its adapters for
//! SQS ([`sqs`]) and Azure Storage queues ([`azure`]).

pub mod azure;
pub mod sqs;

use tokio::time::Instant;

use crate::core::BoxFuture;
use crate::results::DeliveryError;

/// A message for the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkMessage {
    /// The payload (a request document).
    pub body: String,
    /// Identifies the message for deduplication: a digest of the body, so
    /// that only a message saying exactly the same thing is dropped as a
    /// repeat (on a FIFO queue, within its deduplication window).
    pub dedup_id: String,
    /// Groups the messages of one run.
    pub group_id: String,
    /// How long the queue should hold the message before delivering it
    /// (a follow-up check); zero for at once.
    pub delay: std::time::Duration,
}

/// The queue that carries continuations and sweep chunks.
pub trait WorkQueue: Send + Sync {
    /// The largest message body the queue accepts, in bytes (learnt from
    /// the queue itself, once); `None` when it could not be learnt.
    fn max_message_bytes(&self) -> BoxFuture<'_, Option<usize>>;

    /// The longest delay the queue can put on a message (SQS: 15 minutes),
    /// or `None` when it cannot delay messages at all (a FIFO queue).
    fn max_delay(&self) -> Option<std::time::Duration>;

    /// Sends the messages; fails if any could not be sent before
    /// `deadline`.
    fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> BoxFuture<'_, Result<(), DeliveryError>>;
}

impl WorkMessage {
    /// A message carrying `body` in the run `group_id`.
    pub fn new(body: String, group_id: &str) -> Self {
        use sha2::{Digest, Sha256};
        Self {
            dedup_id: hex::encode(Sha256::digest(body.as_bytes())),
            body,
            group_id: group_id.to_owned(),
            delay: std::time::Duration::ZERO,
        }
    }

    /// The same message, held back by `delay`.
    pub fn delayed(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }
}
