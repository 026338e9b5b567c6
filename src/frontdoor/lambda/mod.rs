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
mod setup;

pub use setup::main;

use lambda_runtime::Diagnostic;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::core::outcome::{RunResult, bounded_document};
use crate::service::{AttestService, Delivery, Disposition, ServiceError, Trigger, WebhookRequest};

pub use events::{EventShape, classify};

use crate::service::signature::SIGNATURE_HEADER;

/// The largest synchronous answer sent: Lambda refuses responses over 6 MB
/// (after the work is done), so larger results are answered in brief.
pub const MAX_SYNC_RESPONSE: usize = 5 * 1024 * 1024;
/// Where a brief answer says the full result is.
/// The largest `read_status` answer: Step Functions keeps at most 256 KB
/// of a task's output.
pub const MAX_STATUS_ANSWER: usize = 240 * 1024;
const FULL_RESULT_AT: &str = "the Device Attestation Result events on EVENT_BUS_NAME (every device, in parts)";

/// What one invocation needs to know about itself.
#[derive(Debug, Clone)]
pub struct InvocationContext {
    /// Lambda's request id.
    pub request_id: String,
    /// Lambda's deadline.
    pub deadline: Option<Instant>,
}

/// The Lambda application: the service plus how results are observed.
pub struct LambdaApp {
    service: AttestService,
    function_name: String,
    emit_metrics: bool,
}

/// A service error as Lambda reports it: the stable `errorType`.
impl From<&ServiceError> for Diagnostic {
    fn from(e: &ServiceError) -> Self {
        diagnostic(e.error_type(), e.to_string())
    }
}

fn diagnostic(error_type: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        error_type: error_type.to_owned(),
        error_message: message.into(),
    }
}

fn brief(doc: &Value) -> Value {
    json!({"correlation_id": doc["correlation_id"], "status": doc["status"], "summary": doc["summary"]})
}

impl LambdaApp {
    /// An application over the service.
    pub fn new(service: AttestService, function_name: String, emit_metrics: bool) -> Self {
        Self {
            service,
            function_name,
            emit_metrics,
        }
    }

    /// Handles one event as the runtime delivered it (JSON text).
    pub async fn handle_raw(&self, raw: &str, ctx: InvocationContext) -> Result<Value, Diagnostic> {
        match serde_json::from_str::<Value>(raw) {
            Ok(event) => self.handle(event, ctx).await,
            Err(e) => Err(diagnostic(
                "InvalidRequest",
                format!(
                    "invalid request: (payload): the event is not JSON this function can read ({})",
                    crate::core::text::bounded(&e.to_string(), 120)
                ),
            )),
        }
    }

    /// Handles one event, whatever its trigger.
    pub async fn handle(&self, event: Value, ctx: InvocationContext) -> Result<Value, Diagnostic> {
        match classify(&event) {
            EventShape::Sqs(records) => Ok(self.sqs(records, &ctx).await),
            EventShape::Http => Ok(self.webhook(&event, &ctx).await),
            EventShape::ScheduleRule => {
                let id = event.get("id").and_then(Value::as_str).unwrap_or(&ctx.request_id);
                let d = self.service.sweep(Trigger::Schedule, id, ctx.deadline).await;
                self.answer(d, brief)
            }
            EventShape::Direct => {
                let payload = match crate::core::encode::to_string(&event) {
                    Ok(text) => text.into_bytes(),
                    Err(e) => return Err((&ServiceError::from(e)).into()),
                };
                let delivery = Delivery::new(Trigger::Direct, payload)
                    .id(ctx.request_id.clone())
                    .deadline(ctx.deadline);
                let d = self.service.deliver(delivery).await;
                self.answer(d, |doc| bounded_document(doc, MAX_SYNC_RESPONSE, FULL_RESULT_AT))
            }
        }
    }

    fn observe(&self, result: &RunResult) {
        if self.emit_metrics {
            println!("{}", super::metrics::emf_line(result, &self.function_name));
        }
    }

    /// A disposition as a synchronous invoke's answer: a failed run is the
    /// `AttestationFailed` error (so Step Functions can branch on it).
    fn answer(&self, d: Disposition, shape: impl Fn(&Value) -> Value) -> Result<Value, Diagnostic> {
        let doc = match d {
            Disposition::Ran(result) => {
                self.observe(&result);
                crate::core::encode::to_value(&*result).map_err(|e| Diagnostic::from(&ServiceError::from(e)))?
            }
            Disposition::Republished(doc) => *doc,
            Disposition::Repeat { delivery_id } => return Ok(json!({"repeat": true, "delivery_id": delivery_id})),
            Disposition::Accepted { correlation_id, parts } => {
                return Ok(json!({"accepted": true, "correlation_id": correlation_id, "parts": parts}));
            }
            Disposition::Dispatched(d) => return Ok(json!(d)),
            Disposition::Checked(v) => return Ok(v.brief()),
            Disposition::Deferred(d) => return Ok(json!(d)),
            Disposition::Status(doc) => {
                return crate::service::bounded_status(&doc, MAX_STATUS_ANSWER)
                    .map_err(|e| Diagnostic::from(&ServiceError::from(e)));
            }
            Disposition::Rejected(r) => return Err(diagnostic(&r.error_type, r.message)),
            Disposition::Retry(e) => return Err((&e).into()),
        };
        if doc["failed"] == Value::Bool(true) {
            return Err(diagnostic("AttestationFailed", brief(&doc).to_string()));
        }
        Ok(shape(&doc))
    }

    async fn sqs(&self, records: &[Value], ctx: &InvocationContext) -> Value {
        let mut ids = Vec::with_capacity(records.len());
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let Some(id) = record
                .get("messageId")
                .and_then(Value::as_str)
                .filter(|id| !id.is_empty())
            else {
                // Without an id a failure cannot be reported; nothing else to do.
                tracing::error!("an SQS record without messageId");
                continue;
            };
            let body = record.get("body").and_then(Value::as_str).unwrap_or_default();
            ids.push(id.to_owned());
            deliveries.push(Delivery::new(Trigger::Sqs, body).id(id).deadline(ctx.deadline));
        }
        let mut failures = Vec::new();
        for (id, d) in ids.into_iter().zip(self.service.deliver_batch(deliveries).await) {
            match d {
                Disposition::Ran(result) => self.observe(&result),
                Disposition::Retry(_) => failures.push(json!({"itemIdentifier": id})),
                _ => {}
            }
        }
        json!({"batchItemFailures": failures})
    }

    async fn webhook(&self, event: &Value, ctx: &InvocationContext) -> Value {
        let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
        let req = WebhookRequest {
            method: text("/requestContext/http/method").unwrap_or_default(),
            body: text("/body").unwrap_or_default(),
            base64: event.get("isBase64Encoded").and_then(Value::as_bool) == Some(true),
            signature: text(&format!("/headers/{SIGNATURE_HEADER}")),
            iam_caller: text("/requestContext/authorizer/iam/userArn"),
            request_id: Some(ctx.request_id.clone()),
            deadline: ctx.deadline,
        };
        let (answer, result) = self.service.webhook(req, Trigger::Webhook).await;
        if let Some(result) = result {
            self.observe(&result);
        }
        json!({"statusCode": answer.status, "headers": {"content-type": "application/json"}, "body": answer.body.to_string()})
    }
}
