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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::config::Settings;
use crate::core::outcome::Invocation;
use crate::core::request::AttestationRequest;
use crate::credentials::EnvCredentials;
use crate::service::{AttestService, Handled, ServiceError};

use super::lambda::SweepSettings;
use super::webhook::{self, SIGNATURE_HEADER};

/// The output binding that receives result documents.
pub const RESULT_BINDING: &str = "result";
/// The HTTP output binding.
pub const HTTP_BINDING: &str = "res";
/// Largest body accepted from the host.
const MAX_BODY: usize = 1024 * 1024;

/// The handler's state.
pub struct AzureApp {
    service: AttestService,
    webhook_secrets: Option<Vec<SecretString>>,
    sweep: SweepSettings,
}

impl AzureApp {
    /// An application over its parts; `webhook_secrets` enables signature
    /// checks on the HTTP function.
    pub fn new(service: AttestService, webhook_secrets: Option<Vec<SecretString>>, sweep: SweepSettings) -> Self {
        Self {
            service,
            webhook_secrets,
            sweep,
        }
    }
}

/// The handler's routes, one per function.
pub fn router(app: Arc<AzureApp>) -> Router {
    Router::new()
        .route("/{function}", axum::routing::post(invoke))
        .with_state(app)
}

fn reply(outputs: Value, logs: Vec<String>, return_value: Value) -> Response {
    Json(json!({"Outputs": outputs, "Logs": logs, "ReturnValue": return_value})).into_response()
}

/// The host treats a non-2xx answer as a failed invocation (and retries
/// queue messages).
fn fail(e: &ServiceError) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({"Outputs": {}, "Logs": [format!("{}: {e}", e.error_type())], "ReturnValue": null})),
    )
        .into_response()
}

/// A queue message arrives as a JSON string, as a string quoted once more,
/// or as parsed JSON, depending on the host version: accept all three.
pub fn queue_payload(data: &Value) -> Value {
    let mut v = data.clone();
    for _ in 0..2 {
        match v {
            Value::String(ref s) => match serde_json::from_str::<Value>(s) {
                Ok(inner) => v = inner,
                Err(_) => return v,
            },
            _ => return v,
        }
    }
    v
}

fn header<'a>(headers: &'a Value, name: &str) -> Option<&'a str> {
    let obj = headers.as_object()?;
    let (_, v) = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match v {
        Value::String(s) => Some(s),
        Value::Array(a) => a.first().and_then(Value::as_str),
        _ => None,
    }
}

fn http_answer(status: u16, body: Value) -> Value {
    json!({"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body.to_string()})
}

async fn invoke(State(app): State<Arc<AzureApp>>, Path(function): Path<String>, body: axum::body::Bytes) -> Response {
    if body.len() > MAX_BODY * 2 {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request too large").into_response();
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "the host's request is not JSON").into_response();
    };
    let data = envelope.get("Data").cloned().unwrap_or(Value::Null);
    let metadata = envelope.get("Metadata").cloned().unwrap_or(Value::Null);
    match function.as_str() {
        "attest-queue" => queue(&app, &data, &metadata).await,
        "attest-http" => http(&app, &data).await,
        "attest-sweep" => sweep(&app).await,
        other => (StatusCode::NOT_FOUND, format!("no function {other:?}")).into_response(),
    }
}

async fn queue(app: &AzureApp, data: &Value, metadata: &Value) -> Response {
    let message = data
        .get("message")
        .or_else(|| data.as_object().and_then(|o| o.values().next()))
        .cloned()
        .unwrap_or(Value::Null);
    let payload = queue_payload(&message);
    let delivery_id = metadata.get("Id").and_then(Value::as_str).map(str::to_owned);
    let req = match AttestationRequest::from_value(&payload, app.service.settings().limits) {
        Ok(r) => r,
        Err(e) => {
            // Acknowledged: a malformed message would fail forever.
            let rejection = json!({"error_type": "InvalidRequest", "message": e.to_string(), "trigger": "azure-queue", "delivery_id": delivery_id});
            return reply(
                json!({RESULT_BINDING: rejection.to_string()}),
                vec![format!("request refused: {e}")],
                Value::Null,
            );
        }
    };
    let invocation = Invocation {
        trigger: "azure-queue".into(),
        delivery_id,
        ..Default::default()
    };
    match app.service.run(req, invocation, None).await {
        Ok(Handled::Ran(result)) => {
            let log = format!(
                "{}: {:?} {}",
                result.correlation_id,
                result.status,
                json!(result.summary)
            );
            reply(
                json!({RESULT_BINDING: serde_json::to_string(&*result).unwrap_or_default()}),
                vec![log],
                Value::Null,
            )
        }
        Ok(Handled::Repeat { delivery_id }) => reply(
            json!({}),
            vec![format!("repeat delivery {delivery_id}; skipped")],
            Value::Null,
        ),
        Err(e) if e.is_retryable() => fail(&e),
        Err(e) => {
            let rejection = json!({"error_type": e.error_type(), "message": e.to_string(), "trigger": "azure-queue"});
            reply(
                json!({RESULT_BINDING: rejection.to_string()}),
                vec![e.to_string()],
                Value::Null,
            )
        }
    }
}

async fn http(app: &AzureApp, data: &Value) -> Response {
    let req = data.get("req").cloned().unwrap_or(Value::Null);
    let answer =
        |status: u16, body: Value| reply(json!({HTTP_BINDING: http_answer(status, body)}), vec![], Value::Null);
    if !req
        .get("Method")
        .and_then(Value::as_str)
        .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
    {
        return answer(405, json!({"error": "method_not_allowed"}));
    }
    let body = req.get("Body").and_then(Value::as_str).unwrap_or_default().to_owned();
    if body.len() > MAX_BODY {
        return answer(413, json!({"error": "payload_too_large"}));
    }
    if let Some(secrets) = &app.webhook_secrets {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let headers = req.get("Headers").cloned().unwrap_or(Value::Null);
        if let Err(e) = webhook::verify(header(&headers, SIGNATURE_HEADER), body.as_bytes(), secrets, now) {
            tracing::warn!(reason = %e, "webhook refused");
            return answer(401, json!({"error": "unauthorized"}));
        }
    }
    let req = match app.service.parse(body.as_bytes()) {
        Ok(r) => r,
        Err(e) => return answer(400, json!({"error": "invalid_request", "message": e.to_string()})),
    };
    let invocation = Invocation {
        trigger: "azure-http".into(),
        ..Default::default()
    };
    match app.service.run(req, invocation, None).await {
        Ok(Handled::Ran(result)) => {
            let doc = serde_json::to_value(&*result).unwrap_or(Value::Null);
            reply(
                json!({HTTP_BINDING: http_answer(200, doc.clone()), RESULT_BINDING: doc.to_string()}),
                vec![],
                Value::Null,
            )
        }
        Ok(Handled::Repeat { delivery_id }) => answer(200, json!({"repeat": true, "delivery_id": delivery_id})),
        Err(e) => answer(
            if e.is_retryable() { 503 } else { 500 },
            json!({"error": e.error_type(), "message": e.to_string()}),
        ),
    }
}

async fn sweep(app: &AzureApp) -> Response {
    let payload = json!({
        "device_filter": app.sweep.filter.to_string(),
        "validate_device_exists": true,
        "ignore_partial_failures": true,
        "timeouts": {"invoke": format!("{}ms", app.sweep.timeout.as_millis())},
    });
    let req = match AttestationRequest::from_value(&payload, app.service.settings().limits) {
        Ok(r) => r,
        Err(e) => return fail(&ServiceError::Configuration(e.to_string())),
    };
    let invocation = Invocation {
        trigger: "azure-timer".into(),
        ..Default::default()
    };
    match app.service.run(req, invocation, None).await {
        Ok(Handled::Ran(result)) => reply(
            json!({RESULT_BINDING: serde_json::to_string(&*result).unwrap_or_default()}),
            vec![format!("sweep {}: {}", result.correlation_id, json!(result.summary))],
            Value::Null,
        ),
        Ok(Handled::Repeat { .. }) => reply(json!({}), vec![], Value::Null),
        Err(e) => fail(&e),
    }
}

/// Builds the handler from app settings.
pub fn build_app(get: impl Fn(&str) -> Option<String>) -> Result<AzureApp, String> {
    let settings = Settings::from_env(&get).map_err(|e| e.0)?;
    let sweep = SweepSettings::from_env(&get)?;
    let webhook_secrets = get("ATTEST_WEBHOOK_SECRETS").map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect::<Vec<_>>()
    });
    let service = AttestService::new(settings, Arc::new(EnvCredentials), None, None, Duration::from_secs(300));
    Ok(AzureApp::new(service, webhook_secrets.filter(|v| !v.is_empty()), sweep))
}

/// Serves the custom-handler protocol on `FUNCTIONS_CUSTOMHANDLER_PORT`.
pub fn main() -> std::process::ExitCode {
    super::cli::init_logging();
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(port) = env("FUNCTIONS_CUSTOMHANDLER_PORT").and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("FUNCTIONS_CUSTOMHANDLER_PORT is not a port number");
        return std::process::ExitCode::from(2);
    };
    let app = match build_app(env) {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("configuration refused: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        // The host only reaches the handler on the local interface.
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot listen on 127.0.0.1:{port}: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        tracing::info!(port, "custom handler listening");
        match axum::serve(listener, router(app)).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("the handler stopped: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_messages_arrive_in_three_shapes() {
        let payload = json!({"managed_device_ids": ["12345678-1234-1234-1234-123456789abc"]});
        let once = Value::String(payload.to_string());
        let twice = Value::String(once.to_string());
        for shape in [payload.clone(), once, twice] {
            assert_eq!(queue_payload(&shape), payload);
        }
        assert_eq!(queue_payload(&json!("not json")), json!("not json"));
    }

    #[test]
    fn headers_are_found_in_either_shape() {
        let h = json!({"X-Intune-Attest-Signature": ["t=1,v1=00"], "content-type": "application/json"});
        assert_eq!(header(&h, SIGNATURE_HEADER), Some("t=1,v1=00"));
        assert_eq!(header(&h, "Content-Type"), Some("application/json"));
    }
}
