//! The shared state on one DynamoDB table (`STATE_TABLE`; on-demand, TTL on
//! `expires_at`), written with conditional puts so that two instances can
//! never both claim a delivery.
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | a delivery | `delivery#<id>` | `state` | `state` (`claimed` / `done`), `owner`, `lease_until` (ms), `chunks`, `expires_at` (s) |
//! | a result kept for republication | `delivery#<id>` | `result#0000`... | `data` (a slice of the JSON, under the 400 KB item limit) |
//! | a used webhook signature | `replay#<t>:<v1>` | `state` | `state` (`used`), `expires_at` |
//! | a shared value (the key that seals service messages) | `key#<name>` | `state` | `state` (`value`), `value`; no `expires_at` |
//!
//! DynamoDB deletes expired items hours late, so every read compares
//! `expires_at` itself.
//!
//! A kept result is read by its count first: a count beyond
//! [`MAX_KEPT_CHUNKS`] is refused before any part is read, and then exactly
//! the parts `result#0000` to the count are read, by key, each no larger
//! than a part is written; other `result#` items are never loaded.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_sdk_dynamodb::types::AttributeValue;

use super::{Claim, DONE_TTL, StateStore, StoreError, epoch_ms};
use crate::core::BoxFuture;
use crate::core::text::bounded;

/// The largest slice of a kept result in one item (DynamoDB's item limit is
/// 400 KB, attribute names and keys included).
const CHUNK_BYTES: usize = 300 * 1024;

/// The largest result kept for republication: 64 MB, the largest result
/// document the CLI reads (a 50,000-device result is about 20 MB).
pub const MAX_KEPT_BYTES: usize = 64 * 1024 * 1024;
/// The most parts a kept result has.
pub const MAX_KEPT_CHUNKS: u64 = MAX_KEPT_BYTES.div_ceil(CHUNK_BYTES) as u64;

/// The state store on DynamoDB.
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl StoreError {
    /// A DynamoDB client error, described in the service's words (bounded)
    /// and kept as the source.
    pub(crate) fn from_sdk<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        StoreError::Unavailable {
            what: describe(&e),
            source: std::sync::Arc::new(e),
        }
    }
}

impl DynamoStore {
    /// The store on `table`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: String) -> Self {
        Self { client, table }
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or("")
}

/// A DynamoDB call's failure, for an error message: the service's own
/// words, bounded, or that the table did not answer.
pub(super) fn describe<E, R>(e: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => bounded(&s.to_string(), 200),
        None => "the state table did not answer".into(),
    }
}

impl DynamoStore {
    async fn item(&self, pk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s("state"))
            .consistent_read(true)
            .send()
            .await
            .map_err(StoreError::from_sdk)?;
        Ok(out.item().cloned())
    }

    async fn kept_result(&self, pk: &str, chunks: Option<u64>) -> Result<Option<String>, StoreError> {
        let chunks = match chunks {
            Some(0) => return Ok(None),
            Some(n) if n <= MAX_KEPT_CHUNKS => n,
            _ => {
                return Err(StoreError::unreadable(
                    pk,
                    format!("a kept result's part count is not one this service writes (at most {MAX_KEPT_CHUNKS})"),
                ));
            }
        };
        let mut kept = String::new();
        for i in 0..chunks {
            let out = self
                .client
                .get_item()
                .table_name(&self.table)
                .key("pk", s(pk))
                .key("sk", s(&format!("result#{i:04}")))
                .consistent_read(true)
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            let data = out.item().and_then(|i| i.get("data")).and_then(|d| d.as_s().ok());
            match data {
                Some(data) if data.len() <= CHUNK_BYTES => kept.push_str(data),
                Some(_) => {
                    return Err(StoreError::unreadable(
                        pk,
                        format!("part {i} of a kept result is larger than a part is written"),
                    ));
                }
                None => {
                    return Err(StoreError::unreadable(
                        pk,
                        format!("a kept result has no part {i} of its {chunks}"),
                    ));
                }
            }
        }
        Ok(Some(kept))
    }
}

impl StateStore for DynamoStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        lease_until: SystemTime,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let lease = epoch_ms(lease_until);
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(key))
                .item("sk", s("state"))
                .item("state", s("claimed"))
                .item("owner", s(owner))
                .item("lease_until", n(lease))
                .item("expires_at", n(lease / 1000 + DONE_TTL.as_secs()))
                // Free, expired, or claimed by an instance whose lease ran out
                // (or by this owner already).
                .condition_expression(
                    "attribute_not_exists(pk) OR expires_at < :now_s \
                     OR (#state = :claimed AND (lease_until < :now_ms OR #owner = :owner))",
                )
                .expression_attribute_names("#state", "state")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":now_s", n(epoch_ms(now) / 1000))
                .expression_attribute_values(":now_ms", n(epoch_ms(now)))
                .expression_attribute_values(":claimed", s("claimed"))
                .expression_attribute_values(":owner", s(owner))
                .send()
                .await;
            match put {
                Ok(_) => Ok(Claim::Claimed),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    let Some(item) = self.item(key).await? else {
                        // Gone since (released): the caller may try again.
                        return Ok(Claim::HeldElsewhere);
                    };
                    if text(&item, "state") == "done" {
                        let chunks = match item.get("chunks") {
                            None => Some(0),
                            Some(v) => v.as_n().ok().and_then(|v| v.parse::<u64>().ok()),
                        };
                        let undelivered = self.kept_result(key, chunks).await?;
                        Ok(Claim::Done { undelivered })
                    } else {
                        Ok(Claim::HeldElsewhere)
                    }
                }
                Err(e) => Err(StoreError::from_sdk(e)),
            }
        })
    }

    fn finish<'a>(
        &'a self,
        key: &'a str,
        owner: &'a str,
        undelivered: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let expires = epoch_ms(SystemTime::now() + DONE_TTL) / 1000;
            let mut chunks = 0u64;
            if let Some(result) = undelivered {
                if result.len() > MAX_KEPT_BYTES {
                    return Err(StoreError::unreadable(
                        key,
                        format!(
                            "a result of {} bytes is larger than one kept ({MAX_KEPT_BYTES})",
                            result.len()
                        ),
                    ));
                }
                let bytes = result.as_bytes();
                let mut start = 0;
                while start < bytes.len() {
                    // Cut on a character boundary.
                    let mut end = (start + CHUNK_BYTES).min(bytes.len());
                    while !result.is_char_boundary(end) {
                        end -= 1;
                    }
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .item("pk", s(key))
                        .item("sk", s(&format!("result#{chunks:04}")))
                        .item("data", s(&result[start..end]))
                        .item("expires_at", n(expires))
                        .send()
                        .await
                        .map_err(StoreError::from_sdk)?;
                    chunks += 1;
                    start = end;
                }
            }
            self.client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(key))
                .item("sk", s("state"))
                .item("state", s("done"))
                .item("owner", s(owner))
                .item("chunks", n(chunks))
                .item("expires_at", n(expires))
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str, owner: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let deleted = self
                .client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(key))
                .key("sk", s("state"))
                .condition_expression("#state = :claimed AND #owner = :owner")
                .expression_attribute_names("#state", "state")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":claimed", s("claimed"))
                .expression_attribute_values(":owner", s(owner))
                .send()
                .await;
            match deleted {
                Ok(_) => Ok(()),
                // Not ours any more: nothing to give back.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Ok(())
                }
                Err(e) => Err(StoreError::from_sdk(e)),
            }
        })
    }

    fn first_use<'a>(&'a self, key: &'a str, until: SystemTime) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(key))
                .item("sk", s("state"))
                .item("state", s("used"))
                .item("expires_at", n(epoch_ms(until) / 1000 + 1))
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now_s")
                .expression_attribute_values(":now_s", n(epoch_ms(SystemTime::now()) / 1000))
                .send()
                .await;
            match put {
                Ok(_) => Ok(true),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
                {
                    Ok(false)
                }
                Err(e) => Err(StoreError::from_sdk(e)),
            }
        })
    }

    fn forget<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.client
                .delete_item()
                .table_name(&self.table)
                .key("pk", s(key))
                .key("sk", s("state"))
                .send()
                .await
                .map_err(StoreError::from_sdk)?;
            Ok(())
        })
    }

    fn shared_value<'a>(&'a self, key: &'a str, candidate: &'a str) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(async move {
            // No `expires_at`: the table's time to live never removes it.
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .item("pk", s(key))
                .item("sk", s("state"))
                .item("state", s("value"))
                .item("value", s(candidate))
                .condition_expression("attribute_not_exists(pk)")
                .send()
                .await;
            match put {
                Ok(_) => return Ok(candidate.to_owned()),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(StoreError::from_sdk(e)),
            }
            let item = self.item(key).await?;
            match item.as_ref().map(|i| (text(i, "state"), text(i, "value"))) {
                Some(("value", value)) if !value.is_empty() => Ok(value.to_owned()),
                _ => Err(StoreError::unreadable(
                    key,
                    "the shared value is missing or not a value",
                )),
            }
        })
    }
}
