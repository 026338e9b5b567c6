//! The Azure Functions custom handler. When `FUNCTIONS_CUSTOMHANDLER_PORT`
//! is set, the binary serves the Functions host's protocol on that port: the
//! host POSTs `{"Data": {...}, "Metadata": {...}}` to `/<FunctionName>` and
//! expects `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`.
//!
//! Functions (see `infra/azure/`):
//! - `attest-queue`: an Azure Storage queue message is a payload; the result
//!   (or a follow-up check's verdict) goes to the `result` output binding. A malformed message is answered
//!   with a rejection on the same binding and acknowledged; a run that can
//!   pass later (credentials, Graph unreachable) fails the invocation so the
//!   host retries the message, then moves it to the poison queue.
//! - `attest-http`: a webhook, authenticated by the host's function key
//!   (`authLevel: function`) and, when `ATTEST_WEBHOOK_SECRETS` is set, by
//!   the same `X-Intune-Attest-Signature` scheme as on AWS.
//! - `attest-sweep`: a timer; runs the `SWEEP_FILTER` sweep.
//!
//! Credentials come from the `AZURE_*` app settings (Key Vault references on
//! Azure), so the function never holds a Key Vault client.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::service::signature::SIGNATURE_HEADER;

use envelope::header;
pub use envelope::queue_payload;

mod envelope;
mod setup;

use crate::service::{AttestService, Delivery, Disposition, ServiceError, Trigger, WebhookRequest};
pub use setup::{build_service, build_service_with, main};

/// The output binding that receives result documents.
pub const RESULT_BINDING: &str = "result";
/// The HTTP output binding.
pub const HTTP_BINDING: &str = "res";
/// Largest body accepted from the host.
const MAX_BODY: usize = 1024 * 1024;

/// Time kept back from the host's timeout, so a run reports before the
/// host abandons the invocation.
const HOST_MARGIN: Duration = Duration::from_secs(10);

/// The handler: the service, and the host's per-invocation time limit.
pub struct AzureApp {
    service: AttestService,
    timeout: Option<Duration>,
}

impl AzureApp {
    /// A handler over `service`; `timeout` is the host's `functionTimeout`.
    pub fn new(service: AttestService, timeout: Option<Duration>) -> Self {
        Self { service, timeout }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.timeout
            .map(|t| tokio::time::Instant::now() + t.saturating_sub(HOST_MARGIN.min(t / 4)))
    }
}

/// The handler's routes, one per function.
pub fn router(app: Arc<AzureApp>) -> Router {
    Router::new()
        .route("/{function}", axum::routing::post(invoke))
        .with_state(app)
}

fn reply(outputs: Value, logs: Vec<String>) -> Response {
    Json(json!({"Outputs": outputs, "Logs": logs, "ReturnValue": null})).into_response()
}

/// A disposition in the host's terms: the result (or the refusal) on the
/// result binding and acknowledged; a retry as a failed invocation, which
/// the host retries (a queue message, up to its poison queue).
fn encode(d: Disposition) -> Response {
    let doc = |v: String| json!({RESULT_BINDING: v});
    // A document that cannot be encoded fails the invocation, so the host
    // retries the message: nothing is acknowledged with `null`.
    let text = |doc: Result<String, crate::core::encode::EncodeError>| doc.map_err(ServiceError::from);
    match d {
        Disposition::Ran(result) => match text(crate::core::encode::to_string(&*result)) {
            Ok(body) => {
                let log = format!(
                    "{}: {:?} {}",
                    result.correlation_id,
                    result.status,
                    json!(result.summary)
                );
                reply(doc(body), vec![log])
            }
            Err(e) => retry(&e),
        },
        Disposition::Rejected(r) => match text(crate::core::encode::to_string(&r)) {
            Ok(body) => reply(doc(body), vec![format!("request refused: {}", r.message)]),
            Err(e) => retry(&e),
        },
        Disposition::Republished(kept) => {
            let log = format!("{}: republished", kept["correlation_id"]);
            reply(doc(kept.to_string()), vec![log])
        }
        Disposition::Repeat { delivery_id } => {
            reply(json!({}), vec![format!("repeat delivery {delivery_id}; skipped")])
        }
        Disposition::Accepted { correlation_id, parts } => reply(
            json!({}),
            vec![format!("accepted {correlation_id} in {parts} message(s)")],
        ),
        Disposition::Dispatched(d) => reply(json!({}), vec![json!(d).to_string()]),
        // The verdict goes where results go: the result binding's queue.
        Disposition::Checked(v) => match text(crate::core::encode::to_string(&*v)) {
            Ok(body) => reply(doc(body), vec![v.brief().to_string()]),
            Err(e) => retry(&e),
        },
        Disposition::Deferred(d) => reply(json!({}), vec![json!(d).to_string()]),
        // Answered over HTTP (the webhook path); a queue cannot ask for it.
        Disposition::Status(doc) => reply(json!({}), vec![format!("status of {} device(s)", doc.summary.devices)]),
        Disposition::Retry(e) => retry(&e),
    }
}

/// A failed invocation: the host retries the message.
fn retry(e: &ServiceError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"Outputs": {}, "Logs": [format!("{}: {e}", e.error_type())], "ReturnValue": null})),
    )
        .into_response()
}

async fn invoke(State(app): State<Arc<AzureApp>>, Path(function): Path<String>, body: axum::body::Bytes) -> Response {
    let (service, deadline) = (&app.service, app.deadline());
    if body.len() > MAX_BODY * 2 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response();
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the host's request is not JSON").into_response();
    };
    let data = envelope.get("Data").cloned().unwrap_or(Value::Null);
    let metadata = envelope.get("Metadata").cloned().unwrap_or(Value::Null);
    match function.as_str() {
        "attest-queue" => {
            let message = data
                .get("message")
                .or_else(|| data.as_object().and_then(|o| o.values().next()))
                .cloned()
                .unwrap_or(Value::Null);
            let payload = match queue_payload(&message) {
                Value::String(s) => s.into_bytes(),
                v => match crate::core::encode::to_string(&v) {
                    Ok(text) => text.into_bytes(),
                    Err(e) => return retry(&ServiceError::from(e)),
                },
            };
            let mut delivery = Delivery::new(Trigger::AzureQueue, payload).deadline(deadline);
            // The host passes the message id JSON-quoted inside its string.
            delivery.delivery_id = metadata
                .get("Id")
                .and_then(Value::as_str)
                .map(|id| serde_json::from_str::<String>(id).unwrap_or_else(|_| id.to_owned()));
            encode(service.deliver(delivery).await)
        }
        "attest-http" => {
            let req = data.get("req").cloned().unwrap_or(Value::Null);
            let text = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_owned);
            let call = WebhookRequest {
                method: text("Method").unwrap_or_default(),
                body: text("Body").unwrap_or_default(),
                signature: header(req.get("Headers").unwrap_or(&Value::Null), SIGNATURE_HEADER),
                request_id: metadata
                    .pointer("/sys/RandGuid")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                deadline,
                ..WebhookRequest::default()
            };
            let (answer, result) = service.webhook(call, Trigger::AzureHttp).await;
            let http = json!({"statusCode": answer.status, "headers": {"Content-Type": "application/json"}, "body": answer.body.to_string()});
            let mut outputs = json!({HTTP_BINDING: http});
            if let Some(result) = result {
                // The caller has its answer and the run is recorded: a
                // failed binding is logged, not turned into a retry that
                // the caller's signature could no longer pass.
                match crate::core::encode::to_string(&*result) {
                    Ok(text) => outputs[RESULT_BINDING] = json!(text),
                    Err(e) => tracing::error!(error = %e, "the result binding could not be encoded"),
                }
            }
            reply(outputs, vec![])
        }
        "attest-sweep" => {
            let id = metadata
                .pointer("/sys/UtcNow")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            encode(service.sweep(Trigger::AzureTimer, &id, deadline).await)
        }
        other => (StatusCode::NOT_FOUND, format!("no function {other:?}")).into_response(),
    }
}
