//! Webhook admission, the same on every host: method, size, base64, the
//! caller's authentication (signature with rotation, or the platform's own
//! IAM), replay protection, then the payload. A front door only decodes its
//! HTTP envelope into a [`WebhookRequest`] and encodes the [`HttpAnswer`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{AttestService, Delivery, Disposition, ServiceError, Trigger, bounded_status, signature};
use crate::core::outcome::RunResult;
use crate::credentials::WebhookSecrets;
use crate::state::StateStore;

/// Largest webhook body accepted (after base64 decoding), before anything
/// is parsed.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// The largest answer body sent (a Lambda function URL refuses responses
/// over 6 MB); larger results are answered in brief.
pub const MAX_ANSWER_BYTES: usize = 5 * 1024 * 1024;
/// Where a brief answer says the full result is.
pub const FULL_RESULT_AT: &str = "the result events (every device, in parts)";

/// How webhook callers are authenticated. The default admits nobody.
#[derive(Clone, Default)]
pub struct WebhookAuth {
    /// Signing secrets: when set, every call not admitted by IAM must carry
    /// a valid signature.
    pub signature: Option<std::sync::Arc<dyn WebhookSecrets>>,
    /// The platform authenticates callers with IAM (a function URL with
    /// `AuthType AWS_IAM`): a call naming an IAM caller needs no signature.
    /// Only set from deployment configuration.
    pub iam: bool,
    /// The host authenticates every caller before the call arrives (Azure
    /// function keys): with no signing secrets, nothing more is checked.
    pub host: bool,
}

/// A webhook call as the host delivered it.
#[derive(Debug, Clone, Default)]
pub struct WebhookRequest {
    /// The HTTP method.
    pub method: String,
    /// The body as delivered (base64 text when `base64` is set).
    pub body: String,
    /// Whether the host base64-encoded the body.
    pub base64: bool,
    /// The `X-Intune-Attest-Signature` header.
    pub signature: Option<String>,
    /// The caller the platform authenticated (an IAM ARN), if any.
    pub iam_caller: Option<String>,
    /// The host's id for this call.
    pub request_id: Option<String>,
    /// The host's deadline.
    pub deadline: Option<Instant>,
}

/// The answer to a webhook call, for the host to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpAnswer {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

impl HttpAnswer {
    /// An answer with `status` and `body`.
    pub fn new(status: u16, body: Value) -> Self {
        Self { status, body }
    }

    /// A refusal with a stable error code.
    pub fn error(status: u16, code: &str) -> Self {
        Self::new(status, json!({"error": code}))
    }

    /// A server-side failure: a stable error code and the request id to
    /// quote, never the detail.
    pub fn server_error(status: u16, code: &str, request_id: Option<String>) -> Self {
        Self::new(status, json!({"error": code, "request_id": request_id}))
    }

    /// A refusal with a stable error code and a message.
    pub fn error_with(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self::new(status, json!({"error": code, "message": message.into()}))
    }
}

/// An admitted call: its payload bytes, who sent it, and the replay key to
/// record once the request is accepted.
#[derive(Debug)]
pub struct Admitted {
    /// The raw payload.
    pub payload: Vec<u8>,
    /// The authenticated caller, when the platform named one.
    pub caller: Option<String>,
    /// The signature's replay key, claimed until the call is settled.
    pub replay_key: Option<String>,
}

/// The admission gate. Signatures already used are remembered in the
/// state store, so a replay is refused whichever instance it reaches.
pub struct Gate {
    auth: WebhookAuth,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Gate {
    /// A gate authenticating with `auth`.
    pub fn new(auth: WebhookAuth) -> Self {
        Self { auth }
    }

    /// Checks everything but the payload's meaning. A signed call's replay
    /// key is claimed here and must be settled with [`Gate::settle`].
    pub async fn admit(&self, req: &WebhookRequest, store: &dyn StateStore) -> Result<Admitted, HttpAnswer> {
        if !req.method.eq_ignore_ascii_case("POST") {
            return Err(HttpAnswer::error(405, "method_not_allowed"));
        }
        if req.body.len() > MAX_WEBHOOK_BODY * 4 / 3 + 4 {
            return Err(HttpAnswer::error(413, "payload_too_large"));
        }
        let payload: Vec<u8> = if req.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(&req.body)
                .map_err(|_| HttpAnswer::error_with(400, "invalid_request", "the body is not valid base64"))?
        } else {
            req.body.as_bytes().to_vec()
        };
        if payload.len() > MAX_WEBHOOK_BODY {
            return Err(HttpAnswer::error(413, "payload_too_large"));
        }
        // An empty caller is no caller; and an IAM caller counts only where
        // the deployment says the platform checks IAM.
        let caller = req.iam_caller.clone().filter(|c| self.auth.iam && !c.trim().is_empty());
        let replay_key = match (&self.auth.signature, &caller) {
            (_, Some(_)) => None,
            (None, None) if self.auth.host => None,
            (None, None) => {
                tracing::warn!("webhook refused: no signing secret configured and no IAM caller");
                return Err(HttpAnswer::error(401, "unauthorized"));
            }
            (Some(source), None) => {
                let secrets = source.secrets().await.map_err(|e| {
                    tracing::error!(error = %e, "webhook secrets unavailable");
                    HttpAnswer::error(503, "unavailable")
                })?;
                let verified = match signature::verify(req.signature.as_deref(), &payload, &secrets, now_unix()) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(reason = %e, "webhook refused");
                        return Err(HttpAnswer::error(401, "unauthorized"));
                    }
                };
                // Remembered past the signature's tolerance, after which the
                // timestamp alone refuses it.
                let key = format!("replay#{}:{}", verified.timestamp, verified.signature);
                let until = SystemTime::now() + Duration::from_secs(2 * signature::TOLERANCE_SECS);
                match store.first_use(&key, until).await {
                    Ok(true) => Some(key),
                    Ok(false) => {
                        tracing::warn!(reason = %signature::SignatureError::Replayed, "webhook refused");
                        return Err(HttpAnswer::error(401, "unauthorized"));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "replay protection unavailable");
                        return Err(HttpAnswer::error(503, "unavailable"));
                    }
                }
            }
        };
        Ok(Admitted {
            payload,
            caller,
            replay_key,
        })
    }

    /// Settles a claimed replay key: kept when the request was accepted
    /// (a replay is then refused), given back when it was not, so that the
    /// caller's identical retry is not taken for a replay.
    pub async fn settle(&self, replay_key: Option<&str>, accepted: bool, store: &dyn StateStore) {
        if let (Some(key), false) = (replay_key, accepted)
            && let Err(e) = store.forget(key).await
        {
            tracing::warn!(error = %e, "a replay key could not be given back");
        }
    }
}

impl AttestService {
    /// Admits a webhook call and handles its request.
    pub async fn webhook(&self, req: WebhookRequest, trigger: Trigger) -> (HttpAnswer, Option<Box<RunResult>>) {
        let admitted = match self.gate.admit(&req, self.store.as_ref()).await {
            Ok(a) => a,
            Err(answer) => return (answer, None),
        };
        let delivery = Delivery {
            trigger,
            payload: admitted.payload,
            delivery_id: req.request_id.clone(),
            caller: admitted.caller,
            deadline: req.deadline,
            stamp: None,
        };
        let on_cancel = self.forget_on_cancel(admitted.replay_key.as_deref());
        let disposition = self.deliver(delivery).await;
        let accepted = !matches!(disposition, Disposition::Retry(_));
        self.gate
            .settle(admitted.replay_key.as_deref(), accepted, self.store.as_ref())
            .await;
        on_cancel.disarm();
        match disposition {
            Disposition::Ran(result) => match result.bounded_document(MAX_ANSWER_BYTES, FULL_RESULT_AT) {
                Ok(body) => (HttpAnswer::new(200, body), Some(result)),
                Err(e) => {
                    tracing::error!(error = %e, "the answer could not be encoded");
                    let e = ServiceError::from(e);
                    (HttpAnswer::server_error(500, e.error_type(), req.request_id), None)
                }
            },
            Disposition::Republished(doc) => (
                HttpAnswer::new(
                    200,
                    crate::core::outcome::bounded_document(&doc, MAX_ANSWER_BYTES, FULL_RESULT_AT),
                ),
                None,
            ),
            Disposition::Accepted { correlation_id, parts } => (
                HttpAnswer::new(
                    202,
                    json!({"accepted": true, "correlation_id": correlation_id, "parts": parts}),
                ),
                None,
            ),
            Disposition::Repeat { delivery_id } => (
                HttpAnswer::new(200, json!({"repeat": true, "delivery_id": delivery_id})),
                None,
            ),
            Disposition::Dispatched(d) => (HttpAnswer::new(202, json!(d)), None),
            // A webhook never carries a check (refused above); said for
            // completeness.
            Disposition::Checked(v) => (HttpAnswer::new(200, v.brief()), None),
            Disposition::Deferred(d) => (HttpAnswer::new(202, json!(d)), None),
            Disposition::Status(doc) => match bounded_status(&doc, MAX_ANSWER_BYTES) {
                Ok(body) => (HttpAnswer::new(200, body), None),
                Err(e) => {
                    tracing::error!(error = %e, "the answer could not be encoded");
                    let e = ServiceError::from(e);
                    (HttpAnswer::server_error(500, e.error_type(), req.request_id), None)
                }
            },
            Disposition::Rejected(r) if r.error_type == "InvalidRequest" => {
                (HttpAnswer::error_with(400, "invalid_request", r.message), None)
            }
            // The caller learns a stable code and the request id to quote;
            // the detail (queue names, AADSTS text, secret names) stays in
            // the log.
            Disposition::Rejected(r) => (HttpAnswer::server_error(500, &r.error_type, req.request_id), None),
            Disposition::Retry(e) => (HttpAnswer::server_error(503, e.error_type(), req.request_id), None),
        }
    }
}
