//! The work queue on Azure Storage (`ATTEST_WORK_QUEUE`, the queue the
//! `attest-queue` trigger reads): continuations, sweep chunks, webhook
//! hand-offs and follow-up checks, each check sent with a visibility
//! timeout as its delay (up to 7 days, so no hops are needed).
//!
//! A message is at most 64 KB as stored. The SDK sends the text exactly as
//! given, while the host's queue trigger decodes it per `host.json`'s
//! `extensions.queues.messageEncoding` (`base64` by default) and moves a
//! message it cannot decode to the poison queue: the text is encoded the
//! way the trigger decodes it, and the limit the service splits to is what
//! fits after that encoding (48 KB of JSON under base64).

use std::time::Duration;

use azure_storage_queue::QueueClient;
use azure_storage_queue::models::{QueueClientSendMessageOptions, QueueMessage};
use base64::Engine as _;
use tokio::time::Instant;

use super::{WorkMessage, WorkQueue};
use crate::azure_storage::StorageFault;
use crate::core::BoxFuture;
use crate::results::DeliveryError;

/// The longest visibility timeout a message can be sent with: 7 days.
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The largest message text Azure Storage keeps, as stored: 64 KB.
pub const MAX_STORED_BYTES: usize = 64 * 1024;

/// How long a message lives once visible: the queue's default, 7 days.
const LIVE_AFTER_VISIBLE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How the queue trigger decodes a message's text (`host.json`:
/// `extensions.queues.messageEncoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageEncoding {
    /// The text is base64 of the payload (the host's default).
    Base64,
    /// The text is the payload.
    None,
}

impl MessageEncoding {
    /// The encoding the trigger uses: the app setting that overrides
    /// `host.json` (`AzureFunctionsJobHost__extensions__queues__messageEncoding`),
    /// else `host.json`'s, else the default, base64.
    pub fn from_host(setting: Option<&str>, host_json: Option<&str>) -> Result<Self, String> {
        let from_file = host_json
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| {
                v.pointer("/extensions/queues/messageEncoding")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
            });
        match setting.map(str::to_owned).or(from_file).as_deref().map(str::trim) {
            None => Ok(Self::Base64),
            Some(v) if v.eq_ignore_ascii_case("base64") => Ok(Self::Base64),
            Some(v) if v.eq_ignore_ascii_case("none") => Ok(Self::None),
            Some(v) => Err(format!(
                "messageEncoding: {:?} is neither base64 nor none",
                crate::core::text::bounded(v, 40)
            )),
        }
    }

    /// The payload as the message text.
    pub fn encode(self, body: &str) -> String {
        match self {
            Self::Base64 => base64::engine::general_purpose::STANDARD.encode(body.as_bytes()),
            Self::None => body.to_owned(),
        }
    }

    /// The message text back to the payload (for readers of the queue).
    pub fn decode(self, text: &str) -> Option<String> {
        match self {
            Self::Base64 => base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok()),
            Self::None => Some(text.to_owned()),
        }
    }

    /// The largest payload whose text fits [`MAX_STORED_BYTES`].
    pub fn max_payload_bytes(self) -> usize {
        match self {
            // Four characters per three bytes.
            Self::Base64 => MAX_STORED_BYTES / 4 * 3,
            Self::None => MAX_STORED_BYTES,
        }
    }
}

/// Sends work messages to one Azure Storage queue, one request each.
pub struct AzureWorkQueue {
    client: QueueClient,
    encoding: MessageEncoding,
    requests: std::sync::atomic::AtomicU64,
}

impl AzureWorkQueue {
    /// A queue whose trigger decodes `encoding`.
    pub fn new(client: QueueClient, encoding: MessageEncoding) -> Self {
        Self {
            client,
            encoding,
            requests: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Storage requests made so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn send_one(&self, m: &WorkMessage) -> Result<(), DeliveryError> {
        let text = self.encoding.encode(&m.body);
        if text.len() > MAX_STORED_BYTES {
            return Err(DeliveryError(format!(
                "a work message of {} bytes as stored is over the queue's {MAX_STORED_BYTES}",
                text.len()
            )));
        }
        // Whole seconds, rounded up so a check never arrives early.
        let delay = m.delay.min(MAX_DELAY);
        let visibility = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let visibility = visibility.min(MAX_DELAY.as_secs());
        let options = QueueClientSendMessageOptions {
            visibility_timeout: (visibility > 0).then_some(visibility as i32),
            // Never shorter than the delay (the service refuses that).
            message_time_to_live: Some((visibility + LIVE_AFTER_VISIBLE.as_secs()) as i32),
            ..Default::default()
        };
        let message = QueueMessage {
            message_text: Some(text),
        };
        let content = message.try_into().map_err(|e: azure_core::Error| {
            DeliveryError(format!("bad queue message: {}", StorageFault::from_sdk(&e)))
        })?;
        self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A failed call was already retried by the SDK.
        self.client
            .send_message(content, Some(options))
            .await
            .map(|_| ())
            .map_err(|e| DeliveryError(StorageFault::from_sdk(&e).what().to_owned()))
    }
}

impl WorkQueue for AzureWorkQueue {
    fn max_delay(&self) -> Option<Duration> {
        Some(MAX_DELAY)
    }

    fn max_message_bytes(&self) -> BoxFuture<'_, Option<usize>> {
        let n = self.encoding.max_payload_bytes();
        Box::pin(async move { Some(n) })
    }

    fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> BoxFuture<'_, Result<(), DeliveryError>> {
        Box::pin(async move {
            let total = messages.len();
            for (i, m) in messages.iter().enumerate() {
                let sent = match deadline {
                    Some(at) => match tokio::time::timeout_at(at, self.send_one(m)).await {
                        Ok(r) => r,
                        Err(_) => Err(DeliveryError("the deadline came first".into())),
                    },
                    None => self.send_one(m).await,
                };
                if let Err(e) = sent {
                    tracing::warn!(unsent = total - i, error = %e, "work messages not sent to the Azure queue");
                    return Err(DeliveryError(format!(
                        "{} of {total} message(s) not sent to the work queue ({e})",
                        total - i
                    )));
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoding_follows_the_host_and_the_limit_its_expansion() {
        assert_eq!(MessageEncoding::from_host(None, None), Ok(MessageEncoding::Base64));
        let none = r#"{"version": "2.0", "extensions": {"queues": {"messageEncoding": "none"}}}"#;
        assert_eq!(MessageEncoding::from_host(None, Some(none)), Ok(MessageEncoding::None));
        assert_eq!(
            MessageEncoding::from_host(Some("base64"), Some(none)),
            Ok(MessageEncoding::Base64)
        );
        assert!(MessageEncoding::from_host(Some("utf16"), None).is_err());
        let b = MessageEncoding::Base64;
        let body = "x".repeat(b.max_payload_bytes());
        assert_eq!(b.encode(&body).len(), MAX_STORED_BYTES);
        assert_eq!(b.decode(&b.encode("{\"a\": 1}")).as_deref(), Some("{\"a\": 1}"));
        assert_eq!(MessageEncoding::None.max_payload_bytes(), MAX_STORED_BYTES);
    }
}
