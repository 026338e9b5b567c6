//! The service's own messages. Work the service queues for itself (a
//! continuation, a sweep chunk, a webhook's hand-off, a follow-up check)
//! travels sealed: the payload with a [`Stamp`] saying what it is, under an
//! HMAC-SHA256 made with a key every instance of the deployment shares (32
//! random bytes, written once to the state store). Only a sealed message may
//! carry `part` or `check`, or name the caller a webhook authenticated;
//! anyone else who can send to the work queue, or shape a direct invoke as a
//! queue event, sends a plain request and gets no more than a caller gets.
//!
//! On the queue a sealed message reads
//! `{"service_message": {"stamp": {...}, "mac": "<hex>"}, "payload": {...}}`;
//! the MAC covers a fixed context string, the stamp as written and the
//! payload's exact bytes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::core::duration::epoch_ms;
use crate::state::{StateStore, StoreError};

/// The state store item that holds the key.
pub const KEY_ITEM: &str = "key#service-messages";
/// The member that marks a sealed message.
pub const MARK: &str = "service_message";
/// What the MAC covers before the stamp: the purpose and the format's
/// version, so a MAC made for anything else never verifies here.
const CONTEXT: &[u8] = b"intune-attest service message 1\n";
/// The longest a sealed message stays good after it was written: longer
/// than a queue keeps a message (SQS: 14 days; Azure: 7).
pub const MAX_AGE: Duration = Duration::from_secs(15 * 24 * 3600);
/// How far ahead of this instance's clock another instance's may run.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// The longest caller name a stamp carries.
const MAX_CALLER: usize = 512;
/// Bytes a seal adds to a payload, at most (the stamp with its longest
/// caller, escaped, and the MAC).
pub const MAX_OVERHEAD: usize = 400 + 6 * MAX_CALLER;

/// What a sealed message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A webhook's request handed to the queue consumers.
    HandOff,
    /// Devices a run's deadline left untried, for its next part.
    Continuation,
    /// A chunk of a scheduled sweep.
    SweepChunk,
    /// A follow-up check of `verify`.
    Check,
}

/// What the service says of a message it queues for itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stamp {
    /// What the message is.
    pub kind: Kind,
    /// When it was sealed (ms since the epoch).
    pub issued_at: u64,
    /// When the run it belongs to started (ms since the epoch); carried
    /// unchanged from part to part and check to check.
    pub run_started_at: u64,
    /// Parts of this run so far that tried no device.
    #[serde(default)]
    pub stalled: u32,
    /// The caller a webhook authenticated, for a hand-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// The devices it names were selected by a filter (a sweep chunk, a
    /// continuation of selected devices), not named by a caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub selected: bool,
}

impl Stamp {
    /// A stamp for a message of `kind` written now in a run that started
    /// at `run_started_at`.
    pub fn new(kind: Kind, run_started_at: SystemTime) -> Self {
        Self {
            kind,
            issued_at: epoch_ms(SystemTime::now()),
            run_started_at: epoch_ms(run_started_at),
            stalled: 0,
            caller: None,
            selected: false,
        }
    }

    /// The same stamp naming `caller` (bounded).
    pub fn caller(mut self, caller: Option<&str>) -> Self {
        self.caller = caller.map(|c| c.chars().take(MAX_CALLER).collect());
        self
    }

    /// When the run started.
    pub fn run_started(&self) -> SystemTime {
        crate::core::duration::from_epoch_ms(self.run_started_at)
    }
}

/// Why a message that claims to be the service's own was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forged {
    /// Not the shape of a sealed message.
    #[error("a service message that cannot be read ({0})")]
    Malformed(String),
    /// The MAC does not verify under the deployment's key.
    #[error("a service message whose seal does not verify")]
    BadSeal,
    /// Its times are outside what the service writes.
    #[error("a service message {0}")]
    OutOfTime(String),
}

#[derive(Serialize)]
struct Envelope<'a> {
    service_message: Seal<'a>,
    payload: &'a RawValue,
}

#[derive(Serialize)]
struct Seal<'a> {
    stamp: &'a RawValue,
    mac: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming<'a> {
    #[serde(borrow)]
    service_message: IncomingSeal<'a>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncomingSeal<'a> {
    #[serde(borrow)]
    stamp: &'a RawValue,
    mac: String,
}

/// Whether `bytes` claim to be a sealed message (an object whose first
/// member is the mark, or that has it at all).
pub fn claims_seal(bytes: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        service_message: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(bytes).is_ok_and(|p| p.service_message.is_some())
}

fn mac(key: &[u8], stamp: &str, payload: &str) -> Hmac<Sha256> {
    // An HMAC takes a key of any length.
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC keys have no length limit"));
    mac.update(CONTEXT);
    mac.update(stamp.as_bytes());
    mac.update(b"\n");
    mac.update(payload.as_bytes());
    mac
}

/// Seals `payload` (a request document) under `key`.
pub fn seal_with(key: &[u8], stamp: &Stamp, payload: &str) -> Result<String, crate::core::encode::EncodeError> {
    let stamp_json = crate::core::encode::to_string(stamp)?;
    let tag = hex::encode(mac(key, &stamp_json, payload).finalize().into_bytes());
    let stamp_raw = RawValue::from_string(stamp_json).map_err(crate::core::encode::EncodeError::from)?;
    let payload_raw = RawValue::from_string(payload.to_owned()).map_err(crate::core::encode::EncodeError::from)?;
    crate::core::encode::to_string(&Envelope {
        service_message: Seal {
            stamp: &stamp_raw,
            mac: tag,
        },
        payload: &payload_raw,
    })
}

/// Opens a sealed message under `key` at `now`: its stamp and the
/// payload's exact text, or why it is refused.
pub fn open_with<'a>(key: &[u8], bytes: &'a [u8], now: SystemTime) -> Result<(Stamp, &'a str), Forged> {
    let incoming: Incoming<'a> = serde_json::from_slice(bytes)
        .map_err(|e| Forged::Malformed(crate::core::text::bounded(&e.to_string(), 120)))?;
    let stamp_text = incoming.service_message.stamp.get();
    let payload = incoming.payload.get();
    let tag = hex::decode(&incoming.service_message.mac).map_err(|_| Forged::BadSeal)?;
    // Compared in constant time.
    mac(key, stamp_text, payload)
        .verify_slice(&tag)
        .map_err(|_| Forged::BadSeal)?;
    let stamp: Stamp = serde_json::from_str(stamp_text)
        .map_err(|e| Forged::Malformed(crate::core::text::bounded(&e.to_string(), 120)))?;
    let now_ms = epoch_ms(now);
    let skew = CLOCK_SKEW.as_millis() as u64;
    if stamp.issued_at > now_ms.saturating_add(skew) || stamp.run_started_at > stamp.issued_at.saturating_add(skew) {
        return Err(Forged::OutOfTime("written in the future".into()));
    }
    if now_ms.saturating_sub(stamp.issued_at) > MAX_AGE.as_millis() as u64 {
        return Err(Forged::OutOfTime(format!(
            "older than {} (no queue keeps one that long)",
            crate::core::duration::format_go_duration(MAX_AGE)
        )));
    }
    Ok((stamp, payload))
}

/// Seals and opens the service's messages with the deployment's key,
/// read from the state store once per process.
pub struct Sealer {
    store: Arc<dyn StateStore>,
    key: tokio::sync::OnceCell<SecretSlice<u8>>,
}

impl Sealer {
    /// A sealer whose key lives in `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Self {
            store,
            key: tokio::sync::OnceCell::new(),
        }
    }

    /// The deployment's key: made at random by whichever instance asks
    /// first, then shared.
    async fn key(&self) -> Result<&SecretSlice<u8>, StoreError> {
        self.key
            .get_or_try_init(|| async {
                let candidate =
                    hex::encode([*uuid::Uuid::new_v4().as_bytes(), *uuid::Uuid::new_v4().as_bytes()].concat());
                let value = self.store.shared_value(KEY_ITEM, &candidate).await?;
                let bytes = hex::decode(&value)
                    .ok()
                    .filter(|b| b.len() >= 16)
                    .ok_or_else(|| StoreError::unreadable(KEY_ITEM, "the service message key is not a key"))?;
                Ok(SecretSlice::from(bytes))
            })
            .await
    }

    /// `payload` sealed with `stamp`.
    pub async fn seal(&self, stamp: &Stamp, payload: &str) -> Result<String, super::ServiceError> {
        let key = self.key().await?;
        Ok(seal_with(key.expose_secret(), stamp, payload)?)
    }

    /// Opens a sealed message: `Ok(Err(_))` when it is refused for good.
    pub async fn open<'a>(&self, bytes: &'a [u8]) -> Result<Result<(Stamp, &'a str), Forged>, StoreError> {
        let key = self.key().await?;
        Ok(open_with(key.expose_secret(), bytes, SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn stamp() -> Stamp {
        Stamp::new(Kind::Continuation, SystemTime::now()).caller(Some("arn:aws:iam::1:role/x"))
    }

    #[test]
    fn a_sealed_message_opens_to_its_stamp_and_exact_payload() {
        let payload = r#"{"managed_device_ids":["a"],  "part": 2}"#;
        let sealed = seal_with(KEY, &stamp(), payload).unwrap();
        assert!(claims_seal(sealed.as_bytes()));
        let (got, text) = open_with(KEY, sealed.as_bytes(), SystemTime::now()).unwrap();
        assert_eq!((got, text), (stamp_like(&sealed), payload));
    }

    fn stamp_like(sealed: &str) -> Stamp {
        let v: serde_json::Value = serde_json::from_str(sealed).unwrap();
        serde_json::from_value(v["service_message"]["stamp"].clone()).unwrap()
    }

    #[test]
    fn any_change_or_another_key_breaks_the_seal() {
        let payload = r#"{"managed_device_ids":["a"],"part":2}"#;
        let sealed = seal_with(KEY, &stamp(), payload).unwrap();
        let now = SystemTime::now();
        assert_eq!(open_with(b"another key", sealed.as_bytes(), now), Err(Forged::BadSeal));
        let more = sealed.replace("\"part\":2", "\"part\":3");
        assert_eq!(open_with(KEY, more.as_bytes(), now), Err(Forged::BadSeal));
        let stalled = sealed.replace("\"stalled\":0", "\"stalled\":1");
        assert_ne!(stalled, sealed);
        assert_eq!(open_with(KEY, stalled.as_bytes(), now), Err(Forged::BadSeal));
        let no_mac = sealed.replace("\"mac\":\"", "\"mac\":\"00");
        assert_eq!(open_with(KEY, no_mac.as_bytes(), now), Err(Forged::BadSeal));
        let extra = format!("{},\"x\":1}}", &sealed[..sealed.len() - 1]);
        assert!(matches!(
            open_with(KEY, extra.as_bytes(), now),
            Err(Forged::Malformed(_))
        ));
        assert!(!claims_seal(br#"{"managed_device_ids":[]}"#));
        assert!(matches!(
            open_with(KEY, br#"{"service_message": 1}"#, now),
            Err(Forged::Malformed(_))
        ));
    }

    #[test]
    fn a_seal_from_the_future_or_older_than_any_queue_keeps_is_refused() {
        let payload = "{}";
        let sealed = seal_with(KEY, &stamp(), payload).unwrap();
        let now = SystemTime::now();
        assert!(open_with(KEY, sealed.as_bytes(), now - Duration::from_secs(3600)).is_err());
        assert!(open_with(KEY, sealed.as_bytes(), now + MAX_AGE + Duration::from_secs(60)).is_err());
        assert!(open_with(KEY, sealed.as_bytes(), now + MAX_AGE - Duration::from_secs(60)).is_ok());
    }

    #[tokio::test]
    async fn instances_sharing_a_store_share_the_key() {
        let store: Arc<dyn StateStore> = Arc::new(crate::state::MemoryStore::default());
        let (a, b) = (Sealer::new(store.clone()), Sealer::new(store));
        let sealed = a.seal(&stamp(), "{}").await.unwrap();
        assert!(b.open(sealed.as_bytes()).await.unwrap().is_ok());
        let other = Sealer::new(Arc::new(crate::state::MemoryStore::default()));
        assert_eq!(other.open(sealed.as_bytes()).await.unwrap(), Err(Forged::BadSeal));
    }
}
