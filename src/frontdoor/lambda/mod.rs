//! The AWS Lambda front door (`provided.al2023`). One function serves four
//! triggers, recognised by explicit keys, each answered in its own
//! convention:
//!
//! - **direct invoke** (Step Functions, `aws lambda invoke`, EventBridge
//!   Scheduler input): the payload; returns the result document, or a Lambda
//!   error with a stable `errorType` (see [`ServiceError::error_type`] and
//!   `AttestationFailed`);
//! - **SQS**: each message body is a payload; answers `batchItemFailures`
//!   with the messages to retry;
//! - **function URL** (HTTP API v2): an authenticated webhook;
//! - **EventBridge schedule rule**: a sweep of the devices `SWEEP_FILTER`
//!   selects, queued in chunks when a work queue is configured.

mod events;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lambda_runtime::{Diagnostic, LambdaEvent, service_fn};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Settings;
use crate::core::duration::parse_go_duration;
use crate::core::filter::DeviceFilter;
use crate::core::outcome::{Invocation, RunResult};
use crate::core::request::AttestationRequest;
use crate::service::{
    AttestService, BoxFuture, CredentialSource, Handled, RecentSet, Rejection, ResultSink, ServiceError, WorkQueue,
};

pub use events::{Trigger, classify};

use super::webhook::{self, SIGNATURE_HEADER};

/// Largest webhook body accepted, before anything is parsed.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;
/// Largest SQS message body accepted (SQS's own limit).
pub const MAX_SQS_BODY: usize = 256 * 1024;
/// Time an SQS record needs left to be started; later records are returned
/// to the queue.
const MIN_TIME_FOR_A_RECORD: Duration = Duration::from_secs(5);

/// Where the webhook signing secrets come from.
pub trait WebhookSecrets: Send + Sync {
    /// The current secrets.
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SecretString>, String>>;
}

/// Webhook signing secrets in Secrets Manager, cached for a few minutes.
pub struct SecretsManagerWebhookSecrets {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ttl: Duration,
    cache: Mutex<Option<(Vec<SecretString>, Instant)>>,
}

impl SecretsManagerWebhookSecrets {
    /// Reads `secret_id`, caching it for `ttl`.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        Self {
            client,
            secret_id,
            ttl,
            cache: Mutex::new(None),
        }
    }
}

impl WebhookSecrets for SecretsManagerWebhookSecrets {
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SecretString>, String>> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some((s, _)) = cache.as_ref().filter(|(_, at)| at.elapsed() < self.ttl) {
                return Ok(s.clone());
            }
            let s = crate::aws::secrets::webhook_secrets(&self.client, &self.secret_id)
                .await
                .map_err(|e| e.0)?;
            *cache = Some((s.clone(), Instant::now()));
            Ok(s)
        })
    }
}

/// Sweep settings for schedule rules.
#[derive(Debug, Clone)]
pub struct SweepSettings {
    /// `SWEEP_FILTER` (default `operatingSystem eq 'Windows'`).
    pub filter: DeviceFilter,
    /// `SWEEP_CHUNK_SIZE`: devices per queued chunk (default 3000, about
    /// five minutes at the Intune ceiling).
    pub chunk_size: usize,
    /// `SWEEP_TIMEOUT`: `timeouts.invoke` of the sweep's runs (default 15m).
    pub timeout: Duration,
}

impl SweepSettings {
    /// Reads the sweep settings.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let text = get("SWEEP_FILTER").unwrap_or_else(|| "operatingSystem eq 'Windows'".into());
        let filter = DeviceFilter::parse(&text).map_err(|e| format!("SWEEP_FILTER: {e}"))?;
        let chunk_size = match get("SWEEP_CHUNK_SIZE") {
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("SWEEP_CHUNK_SIZE: {v:?} is not a positive number"))?,
            None => 3000,
        };
        let timeout = match get("SWEEP_TIMEOUT") {
            Some(v) => parse_go_duration(&v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("SWEEP_TIMEOUT: {v:?} is not a Go duration"))?,
            None => Duration::from_secs(15 * 60),
        };
        Ok(Self {
            filter,
            chunk_size,
            timeout,
        })
    }
}

/// What one invocation needs to know about itself.
#[derive(Debug, Clone)]
pub struct InvocationContext {
    /// Lambda's request id.
    pub request_id: String,
    /// Lambda's deadline.
    pub deadline: Option<Instant>,
}

/// The Lambda application: the service plus the front door's own state.
pub struct LambdaApp {
    service: AttestService,
    webhook_secrets: Option<Arc<dyn WebhookSecrets>>,
    replays: std::sync::Mutex<RecentSet>,
    sweep: SweepSettings,
    function_name: String,
    emit_metrics: bool,
}

fn diagnostic(error_type: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        error_type: error_type.to_owned(),
        error_message: message.into(),
    }
}

fn from_service(e: &ServiceError) -> Diagnostic {
    diagnostic(e.error_type(), e.to_string())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn http(status: u16, body: Value) -> Value {
    json!({"statusCode": status, "headers": {"content-type": "application/json"}, "body": body.to_string()})
}

impl LambdaApp {
    /// An application over its parts.
    pub fn new(
        service: AttestService,
        webhook_secrets: Option<Arc<dyn WebhookSecrets>>,
        sweep: SweepSettings,
        function_name: String,
        emit_metrics: bool,
    ) -> Self {
        Self {
            service,
            webhook_secrets,
            replays: std::sync::Mutex::new(RecentSet::new(10_000)),
            sweep,
            function_name,
            emit_metrics,
        }
    }

    /// Handles one event, whatever its trigger.
    pub async fn handle(&self, event: Value, ctx: InvocationContext) -> Result<Value, Diagnostic> {
        match classify(&event) {
            Trigger::Sqs(records) => Ok(self.sqs(records, &ctx).await),
            Trigger::Http => Ok(self.webhook(&event, &ctx).await),
            Trigger::ScheduleRule => self.schedule(&event, &ctx).await,
            Trigger::Direct => self.direct(&event, &ctx).await,
        }
    }

    fn observe(&self, result: &RunResult) {
        if self.emit_metrics {
            println!("{}", super::metrics::emf_line(result, &self.function_name));
        }
    }

    async fn direct(&self, event: &Value, ctx: &InvocationContext) -> Result<Value, Diagnostic> {
        let req = AttestationRequest::from_value(event, self.service.settings().limits)
            .map_err(|e| diagnostic("InvalidRequest", e.to_string()))?;
        let invocation = Invocation {
            trigger: "direct".into(),
            delivery_id: Some(ctx.request_id.clone()),
            ..Default::default()
        };
        match self
            .service
            .run(req, invocation, ctx.deadline)
            .await
            .map_err(|e| from_service(&e))?
        {
            Handled::Repeat { delivery_id } => Ok(json!({"repeat": true, "delivery_id": delivery_id})),
            Handled::Ran(result) => {
                self.observe(&result);
                if result.failed {
                    return Err(diagnostic(
                        "AttestationFailed",
                        json!({"correlation_id": result.correlation_id, "status": result.status, "summary": result.summary})
                            .to_string(),
                    ));
                }
                Ok(serde_json::to_value(&*result).unwrap_or(Value::Null))
            }
        }
    }

    async fn sqs(&self, records: &[Value], ctx: &InvocationContext) -> Value {
        let mut failures: Vec<String> = Vec::new();
        let mut out_of_time = false;
        for record in records {
            let id = record
                .get("messageId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if id.is_empty() {
                // Without an id a failure cannot be reported; nothing else to do.
                tracing::error!("an SQS record without messageId");
                continue;
            }
            out_of_time |= ctx
                .deadline
                .is_some_and(|d| d.saturating_duration_since(Instant::now()) < MIN_TIME_FOR_A_RECORD);
            if out_of_time {
                failures.push(id);
                continue;
            }
            let body = record.get("body").and_then(Value::as_str).unwrap_or_default();
            let parsed = if body.len() > MAX_SQS_BODY {
                Err(ServiceError::InvalidRequest(format!(
                    "the message body is {} bytes; at most {MAX_SQS_BODY}",
                    body.len()
                )))
            } else {
                self.service.parse(body.as_bytes())
            };
            let req = match parsed {
                Ok(r) => r,
                Err(e) => {
                    // A malformed message would fail forever: report it once and acknowledge it.
                    if !self.reject_message(&e, &id).await {
                        failures.push(id);
                    }
                    continue;
                }
            };
            let invocation = Invocation {
                trigger: "sqs".into(),
                delivery_id: Some(id.clone()),
                ..Default::default()
            };
            match self.service.run(req, invocation, ctx.deadline).await {
                Ok(Handled::Ran(result)) => self.observe(&result),
                Ok(Handled::Repeat { .. }) => {}
                Err(e) if e.is_retryable() || matches!(e, ServiceError::Configuration(_)) => {
                    tracing::error!(message_id = %id, error_type = e.error_type(), error = %e, "message returned for retry");
                    failures.push(id);
                }
                Err(e) => {
                    if !self.reject_message(&e, &id).await {
                        failures.push(id);
                    }
                }
            }
        }
        json!({"batchItemFailures": failures.into_iter().map(|id| json!({"itemIdentifier": id})).collect::<Vec<_>>()})
    }

    /// Reports a message that will never succeed, so it can be acknowledged;
    /// false when the report itself failed (the message is then retried).
    async fn reject_message(&self, e: &ServiceError, message_id: &str) -> bool {
        let rejection = Rejection {
            error_type: e.error_type().into(),
            message: e.to_string(),
            trigger: "sqs".into(),
            delivery_id: Some(message_id.to_owned()),
        };
        self.service.reject(rejection).await.is_ok()
    }

    async fn webhook(&self, event: &Value, ctx: &InvocationContext) -> Value {
        let method = event
            .pointer("/requestContext/http/method")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !method.eq_ignore_ascii_case("POST") {
            return http(405, json!({"error": "method_not_allowed"}));
        }
        let raw = event.get("body").and_then(Value::as_str).unwrap_or_default();
        if raw.len() > MAX_WEBHOOK_BODY * 4 / 3 + 4 {
            return http(413, json!({"error": "payload_too_large"}));
        }
        let body: Vec<u8> = if event.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
            match base64::engine::general_purpose::STANDARD.decode(raw) {
                Ok(b) => b,
                Err(_) => {
                    return http(
                        400,
                        json!({"error": "invalid_request", "message": "the body is not valid base64"}),
                    );
                }
            }
        } else {
            raw.as_bytes().to_vec()
        };
        if body.len() > MAX_WEBHOOK_BODY {
            return http(413, json!({"error": "payload_too_large"}));
        }
        let caller = event
            .pointer("/requestContext/authorizer/iam/userArn")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match &self.webhook_secrets {
            // AuthType AWS_IAM: the function URL authenticated the caller.
            _ if caller.is_some() => {}
            Some(source) => {
                let secrets = match source.secrets().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "webhook secrets unavailable");
                        return http(503, json!({"error": "unavailable"}));
                    }
                };
                let header = event
                    .get("headers")
                    .and_then(|h| h.get(SIGNATURE_HEADER))
                    .and_then(Value::as_str);
                let verified = webhook::verify(header, &body, &secrets, now_unix()).and_then(|v| {
                    let key = format!("{}:{}", v.timestamp, v.signature);
                    let mut replays = self.replays.lock().unwrap_or_else(|p| p.into_inner());
                    if replays.contains(&key) {
                        return Err(webhook::SignatureError::Replayed);
                    }
                    replays.insert(&key);
                    Ok(v)
                });
                if let Err(e) = verified {
                    tracing::warn!(reason = %e, "webhook refused");
                    return http(401, json!({"error": "unauthorized"}));
                }
            }
            None => {
                tracing::warn!("webhook refused: no signing secret configured and no IAM caller");
                return http(401, json!({"error": "unauthorized"}));
            }
        }
        let mut payload: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return http(
                    400,
                    json!({"error": "invalid_request", "message": format!("the body is not JSON: {e}")}),
                );
            }
        };
        let req = match AttestationRequest::from_value(&payload, self.service.settings().limits) {
            Ok(r) => r,
            Err(e) => return http(400, json!({"error": "invalid_request", "message": e.to_string()})),
        };
        if self.service.has_queue() {
            let correlation_id = req
                .correlation_id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            payload["correlation_id"] = json!(correlation_id);
            return match self.service.enqueue(payload.to_string(), &correlation_id).await {
                Ok(()) => http(202, json!({"accepted": true, "correlation_id": correlation_id})),
                Err(e) => http(503, json!({"error": e.error_type(), "message": e.to_string()})),
            };
        }
        let invocation = Invocation {
            trigger: "webhook".into(),
            delivery_id: Some(ctx.request_id.clone()),
            caller,
            part: 1,
        };
        match self.service.run(req, invocation, ctx.deadline).await {
            Ok(Handled::Ran(result)) => {
                self.observe(&result);
                http(200, serde_json::to_value(&*result).unwrap_or(Value::Null))
            }
            Ok(Handled::Repeat { delivery_id }) => http(200, json!({"repeat": true, "delivery_id": delivery_id})),
            Err(e) => {
                let status = if e.is_retryable() { 503 } else { 500 };
                http(status, json!({"error": e.error_type(), "message": e.to_string()}))
            }
        }
    }

    async fn schedule(&self, event: &Value, ctx: &InvocationContext) -> Result<Value, Diagnostic> {
        let event_id = event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or(&ctx.request_id)
            .to_owned();
        let correlation_id = format!(
            "sweep-{}",
            event_id
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(100)
                .collect::<String>()
        );
        let payload = json!({
            "device_filter": self.sweep.filter.to_string(),
            "validate_device_exists": true,
            "ignore_partial_failures": true,
            "timeouts": {"invoke": format!("{}ms", self.sweep.timeout.as_millis())},
            "correlation_id": correlation_id,
        });
        let req = AttestationRequest::from_value(&payload, self.service.settings().limits)
            .map_err(|e| diagnostic("ConfigurationError", e.to_string()))?;
        if self.service.has_queue() {
            if self.service.seen(&event_id) {
                return Ok(json!({"repeat": true, "delivery_id": event_id}));
            }
            let deadline = ctx.deadline.unwrap_or_else(|| Instant::now() + self.sweep.timeout);
            let dispatch = self
                .service
                .dispatch_sweep(
                    &self.sweep.filter,
                    &req,
                    &correlation_id,
                    self.sweep.chunk_size,
                    deadline,
                )
                .await
                .map_err(|e| from_service(&e))?;
            return Ok(serde_json::to_value(dispatch).unwrap_or(Value::Null));
        }
        let invocation = Invocation {
            trigger: "schedule".into(),
            delivery_id: Some(event_id),
            ..Default::default()
        };
        match self
            .service
            .run(req, invocation, ctx.deadline)
            .await
            .map_err(|e| from_service(&e))?
        {
            Handled::Ran(result) => {
                self.observe(&result);
                Ok(json!({"correlation_id": result.correlation_id, "status": result.status, "summary": result.summary}))
            }
            Handled::Repeat { delivery_id } => Ok(json!({"repeat": true, "delivery_id": delivery_id})),
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .map(|l| l.to_ascii_lowercase());
    let filter = EnvFilter::try_from_env("ATTEST_LOG")
        .ok()
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time();
    if std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init();
    } else {
        builder.with_ansi(false).init();
    }
}

async fn build_app() -> Result<LambdaApp, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let settings = Settings::from_env(env).map_err(|e| e.0)?;
    let aws = aws_config::load_from_env().await;
    let secrets_client = aws_sdk_secretsmanager::Client::new(&aws);
    let credentials: Arc<dyn CredentialSource> = match env("SECRET_ID") {
        Some(id) => Arc::new(crate::aws::secrets::SecretsManagerCredentials::new(
            secrets_client.clone(),
            id,
        )),
        None => Arc::new(crate::credentials::EnvCredentials),
    };
    let sink: Option<Arc<dyn ResultSink>> = env("EVENT_BUS_NAME").map(|bus| {
        Arc::new(crate::aws::eventbridge::EventBridgeSink::new(
            aws_sdk_eventbridge::Client::new(&aws),
            bus,
        )) as Arc<dyn ResultSink>
    });
    let queue: Option<Arc<dyn WorkQueue>> = env("WORK_QUEUE_URL").map(|url| {
        Arc::new(crate::aws::sqs::SqsWorkQueue::new(aws_sdk_sqs::Client::new(&aws), url)) as Arc<dyn WorkQueue>
    });
    let ttl = match env("SECRET_TTL") {
        Some(v) => parse_go_duration(&v).map_err(|_| format!("SECRET_TTL: {v:?} is not a Go duration"))?,
        None => Duration::from_secs(300),
    };
    let webhook_secrets: Option<Arc<dyn WebhookSecrets>> = env("WEBHOOK_SECRET_ID").map(|id| {
        Arc::new(SecretsManagerWebhookSecrets::new(secrets_client.clone(), id, ttl)) as Arc<dyn WebhookSecrets>
    });
    let sweep = SweepSettings::from_env(env)?;
    let service = AttestService::new(settings, credentials, sink, queue, ttl);
    let function_name = env("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "intune-attest".into());
    let metrics = env("ATTEST_METRICS").is_none_or(|v| v != "off");
    Ok(LambdaApp::new(service, webhook_secrets, sweep, function_name, metrics))
}

/// Runs the Lambda runtime loop until the process is stopped.
pub fn main() -> std::process::ExitCode {
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    runtime.block_on(async {
        let app = match build_app().await {
            Ok(a) => Arc::new(a),
            Err(e) => {
                tracing::error!(error = %e, "configuration refused");
                return std::process::ExitCode::from(2);
            }
        };
        let handler = service_fn(move |event: LambdaEvent<Value>| {
            let app = app.clone();
            async move {
                let (payload, context) = event.into_parts();
                let remaining = Duration::from_millis(context.deadline)
                    .checked_sub(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
                    .unwrap_or_default();
                let ctx = InvocationContext {
                    request_id: context.request_id.clone(),
                    deadline: Some(Instant::now() + remaining),
                };
                let span = tracing::info_span!("invocation", request_id = %context.request_id);
                tracing::Instrument::instrument(app.handle(payload, ctx), span).await
            }
        });
        match lambda_runtime::run(handler).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "the Lambda runtime loop ended");
                std::process::ExitCode::FAILURE
            }
        }
    })
}
