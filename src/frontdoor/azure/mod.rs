//! The Azure Functions custom handler. When `FUNCTIONS_CUSTOMHANDLER_PORT`
//! is set, the binary serves the Functions host's protocol on that port: the
//! host POSTs `{"Data": {...}, "Metadata": {...}}` to `/<FunctionName>` and
//! expects `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`.
//!
//! Functions (see `infra/azure/`):
//! - `attest-queue`: an Azure Storage queue message is a payload; the result
//!   goes to the `result` output binding. A malformed message is answered
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
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::config::Settings;
use crate::credentials::{EnvCredentials, StaticSecrets, checked_webhook_secrets};
use crate::service::signature::SIGNATURE_HEADER;

use super::HostError;
pub use envelope::queue_payload;
use envelope::{function_timeout, header};

mod envelope;
use crate::service::{AttestService, Delivery, Disposition, SweepSettings, Trigger, WebhookAuth, WebhookRequest};

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
    match d {
        Disposition::Ran(result) => {
            let log = format!(
                "{}: {:?} {}",
                result.correlation_id,
                result.status,
                json!(result.summary)
            );
            reply(doc(serde_json::to_string(&*result).unwrap_or_default()), vec![log])
        }
        Disposition::Republished(kept) => {
            let log = format!("{}: republished", kept["correlation_id"]);
            reply(doc(kept.to_string()), vec![log])
        }
        Disposition::Rejected(r) => {
            let log = format!("request refused: {}", r.message);
            reply(doc(serde_json::to_string(&r).unwrap_or_default()), vec![log])
        }
        Disposition::Repeat { delivery_id } => {
            reply(json!({}), vec![format!("repeat delivery {delivery_id}; skipped")])
        }
        Disposition::Accepted { correlation_id, parts } => reply(
            json!({}),
            vec![format!("accepted {correlation_id} in {parts} message(s)")],
        ),
        Disposition::Dispatched(d) => reply(json!({}), vec![json!(d).to_string()]),
        Disposition::Retry(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"Outputs": {}, "Logs": [format!("{}: {e}", e.error_type())], "ReturnValue": null})),
        )
            .into_response(),
    }
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
                v => serde_json::to_vec(&v).unwrap_or_default(),
            };
            let mut delivery = Delivery::new(Trigger::AzureQueue, payload).deadline(deadline);
            delivery.delivery_id = metadata.get("Id").and_then(Value::as_str).map(str::to_owned);
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
                outputs[RESULT_BINDING] = json!(serde_json::to_string(&*result).unwrap_or_default());
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

/// Builds the service from app settings. `ATTEST_WEBHOOK_SECRETS`
/// (comma-separated) adds signature checks to the HTTP function's
/// function-key authentication.
pub fn build_service(get: impl Fn(&str) -> Option<String>) -> Result<AttestService, String> {
    let settings = Settings::from_env(&get).map_err(|e| e.0)?;
    let sweep = SweepSettings::from_env(&get)?;
    let auth = match get("ATTEST_WEBHOOK_SECRETS") {
        Some(s) => {
            let secrets: Vec<SecretString> = s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| SecretString::from(s.to_owned()))
                .collect();
            // A setting that yields no usable secret fails closed.
            let secrets = checked_webhook_secrets(secrets, "ATTEST_WEBHOOK_SECRETS").map_err(|e| e.0)?;
            Some(Arc::new(StaticSecrets(secrets)) as Arc<dyn crate::credentials::WebhookSecrets>)
        }
        None => None,
    };
    // The host authenticates every caller with a function key.
    let auth = WebhookAuth {
        signature: auth,
        iam: false,
        host: true,
    };
    Ok(
        AttestService::new(settings, Arc::new(EnvCredentials), None, None, Duration::from_secs(300))
            .with_webhook_auth(auth)
            .with_sweep(sweep),
    )
}

/// Serves the custom-handler protocol on `FUNCTIONS_CUSTOMHANDLER_PORT`.
pub fn main() -> std::process::ExitCode {
    let style = crate::telemetry::LogStyle {
        ansi: false,
        timestamps: true,
    };
    crate::telemetry::init(std::io::stderr, style);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    super::host(async move {
        let port = env("FUNCTIONS_CUSTOMHANDLER_PORT")
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or_else(|| HostError::Startup("FUNCTIONS_CUSTOMHANDLER_PORT is not a port number".into()))?;
        let timeout = function_timeout(
            env("AzureFunctionsJobHost__functionTimeout").as_deref(),
            std::fs::read_to_string("host.json").ok().as_deref(),
        );
        let app = Arc::new(AzureApp::new(build_service(env).map_err(HostError::Startup)?, timeout));
        // The host only reaches the handler on the local interface.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| HostError::Startup(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
        tracing::info!(port, "custom handler listening");
        axum::serve(listener, router(app))
            .await
            .map_err(|e| HostError::Stopped(e.to_string()))
    })
}
