//! The work queue on SQS: continuation messages and sweep chunks.

use std::time::Duration;

use tokio::time::Instant;

use super::{WorkMessage, WorkQueue};
use crate::core::BoxFuture;
use crate::core::backoff::{Backoff, Unsent};
use crate::results::DeliveryError;

/// Sends work messages to one queue, 10 per call, retrying failed entries.
/// On a FIFO queue (`.fifo`) the group and deduplication ids are set, so
/// SQS drops a repeated send within its 5-minute deduplication window; a
/// standard queue delays a message by up to [`MAX_DELAY`] (`DelaySeconds`),
/// which a FIFO queue cannot do per message.
pub struct SqsWorkQueue {
    client: aws_sdk_sqs::Client,
    url: String,
    backoff: Backoff,
    max_message: tokio::sync::OnceCell<usize>,
}

/// SQS's longest `DelaySeconds`: 15 minutes.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

impl SqsWorkQueue {
    /// A queue at `url`.
    pub fn new(client: aws_sdk_sqs::Client, url: String) -> Self {
        Self {
            client,
            url,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2), 4),
            max_message: tokio::sync::OnceCell::new(),
        }
    }
}

fn dedup_token(id: &str) -> String {
    // SQS ids allow [A-Za-z0-9_-] and at most 80 characters (dedup: 128, more characters).
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect()
}

impl WorkQueue for SqsWorkQueue {
    fn max_delay(&self) -> Option<Duration> {
        (!self.url.ends_with(".fifo")).then_some(MAX_DELAY)
    }

    fn max_message_bytes(&self) -> BoxFuture<'_, Option<usize>> {
        Box::pin(async move {
            let read = self.max_message.get_or_try_init(|| async {
                let out = self
                    .client
                    .get_queue_attributes()
                    .queue_url(&self.url)
                    .attribute_names(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                out.attributes()
                    .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize))
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| "no MaximumMessageSize in the answer".to_owned())
            });
            match read.await {
                Ok(n) => Some(*n),
                Err(e) => {
                    tracing::warn!(error = %crate::core::text::bounded(&e, 200), "the work queue's message size limit could not be read");
                    None
                }
            }
        })
    }

    fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> BoxFuture<'_, Result<(), DeliveryError>> {
        Box::pin(async move {
            let fifo = self.url.ends_with(".fifo");
            // A batch is at most ten messages and, in all, no larger than one
            // message may be.
            let batch_bytes = self.max_message_bytes().await.unwrap_or(256 * 1024);
            let pending: Vec<(usize, WorkMessage)> = messages.into_iter().enumerate().collect();
            let unsent = self
                .backoff
                .resend_failed(pending, deadline, |pending: Vec<(usize, WorkMessage)>| async move {
                    let mut failed = Unsent {
                        entries: Vec::new(),
                        reason: String::new(),
                    };
                    for chunk in crate::core::pack::by_count_and_size(&pending, 10, batch_bytes, |(_, m)| m.body.len()) {
                        let mut entries = Vec::with_capacity(chunk.len());
                        for (i, m) in chunk {
                            let mut b = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                                .id(format!("m{i}"))
                                .message_body(&m.body);
                            if fifo {
                                b = b
                                    .message_group_id(dedup_token(&m.group_id))
                                    .message_deduplication_id(dedup_token(&m.dedup_id));
                            } else if !m.delay.is_zero() {
                                // Whole seconds, rounded up so a check never
                                // arrives before it is due.
                                let secs = m.delay.min(MAX_DELAY).as_secs_f64().ceil() as i32;
                                b = b.delay_seconds(secs);
                            }
                            entries.push(b.build().map_err(|e| DeliveryError(format!("bad SQS entry: {e}")))?);
                        }
                        // A call that fails whole was already retried by the SDK.
                        let out = self
                            .client
                            .send_message_batch()
                            .queue_url(&self.url)
                            .set_entries(Some(entries))
                            .send()
                            .await
                            .map_err(|e| {
                                let detail = e
                                    .as_service_error()
                                    .map(|s| s.to_string())
                                    .unwrap_or_else(|| "SQS did not answer".into());
                                DeliveryError(format!("message(s) not sent to the work queue ({detail})"))
                            })?;
                        for f in out.failed() {
                            failed.reason = format!("{} {}", f.code(), f.message().unwrap_or_default());
                            if let Some(entry) = chunk.iter().find(|(i, _)| format!("m{i}") == f.id()) {
                                failed.entries.push(entry.clone());
                            }
                        }
                    }
                    if !failed.entries.is_empty() {
                        tracing::warn!(failed = failed.entries.len(), error = %failed.reason, "SQS refused work messages");
                    }
                    Ok(failed)
                })
                .await?;
            if unsent.entries.is_empty() {
                return Ok(());
            }
            Err(DeliveryError(format!(
                "{} message(s) not sent to the work queue ({})",
                unsent.entries.len(),
                unsent.reason
            )))
        })
    }
}
