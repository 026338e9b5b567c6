//! The application service shared by every hosted front door (AWS Lambda,
//! Azure Functions). A front door decodes its envelope into a [`Delivery`]
//! (or a [`WebhookRequest`], or a schedule tick) and encodes the
//! [`Disposition`] the service returns; everything else lives here once:
//! queue disposition (acknowledge, report, return for retry), webhook
//! admission, sweeps, continuation of untried devices, repeat detection and
//! publication. The service keeps one Graph client and the tenant's pacing
//! budget across warm invocations. It knows the ports, not AWS or Azure.

mod budgeted;
pub mod signature;
pub mod sweep;
mod verify;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Settings;
use crate::core::engine::{Engine, Pacers, RunError};
use crate::core::gateway::{DeviceGateway, GatewayError};
use crate::core::outcome::{Invocation, Outcome, RunResult};
use crate::core::progress::Progress;
use crate::core::request::{AttestationRequest, InvalidRequest};
use crate::credentials::CredentialSource;
use crate::graph::GraphClient;
use crate::graph::auth::Reloader;
use crate::queue::{WorkMessage, WorkQueue};
use crate::results::{Rejection, ResultSink};
use crate::state::{Claim, MemoryStore, StateStore};

pub use budgeted::{BudgetKey, BudgetedGateway};
pub use sweep::SweepSettings;
pub use verify::{Deferral, bounded_status};
pub use webhook::{HttpAnswer, WebhookAuth, WebhookRequest};

/// The largest message any SQS queue accepts (1 MiB): the bound on a queued
/// payload when the work queue's own limit is unknown.
pub const MAX_QUEUE_MESSAGE: usize = 1024 * 1024;
/// The message limit assumed for producing when the work queue's own could
/// not be read (SQS's classic default).
pub const DEFAULT_QUEUE_MESSAGE: usize = 256 * 1024;
/// Time a queued delivery needs left to be started; later ones in the same
/// batch are returned to the queue.
pub const MIN_TIME_FOR_A_DELIVERY: Duration = Duration::from_secs(5);

/// What delivered a request. Its name is written into the result's
/// `invocation.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A direct Lambda invoke (Step Functions, `aws lambda invoke`).
    Direct,
    /// An SQS message.
    Sqs,
    /// A function URL webhook.
    Webhook,
    /// An EventBridge schedule rule.
    Schedule,
    /// An Azure Storage queue message.
    AzureQueue,
    /// An Azure HTTP function call.
    AzureHttp,
    /// An Azure timer.
    AzureTimer,
}

impl Trigger {
    /// The name used in results and rejections.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Direct => "direct",
            Trigger::Sqs => "sqs",
            Trigger::Webhook => "webhook",
            Trigger::Schedule => "schedule",
            Trigger::AzureQueue => "azure-queue",
            Trigger::AzureHttp => "azure-http",
            Trigger::AzureTimer => "azure-timer",
        }
    }

    /// Whether the delivery is an HTTP call (answered at once; handed to the
    /// work queue when there is one).
    pub fn is_webhook(self) -> bool {
        matches!(self, Trigger::Webhook | Trigger::AzureHttp)
    }

    /// Whether the delivery came from a queue: nobody waits for its answer,
    /// so a refusal is reported through the result sink and acknowledged.
    pub fn is_queue(self) -> bool {
        matches!(self, Trigger::Sqs | Trigger::AzureQueue)
    }
}

/// One request as a front door received it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// What delivered it.
    pub trigger: Trigger,
    /// The payload's raw bytes.
    pub payload: Vec<u8>,
    /// The platform's id for this delivery (SQS message id, request id...),
    /// used to recognise repeats.
    pub delivery_id: Option<String>,
    /// The authenticated caller, if the platform named one.
    pub caller: Option<String>,
    /// The host's hard deadline.
    pub deadline: Option<Instant>,
}

impl Delivery {
    /// A delivery of `payload` by `trigger`.
    pub fn new(trigger: Trigger, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            trigger,
            payload: payload.into(),
            delivery_id: None,
            caller: None,
            deadline: None,
        }
    }

    /// Sets the delivery id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.delivery_id = Some(id.into());
        self
    }

    /// Sets the deadline.
    pub fn deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }
}

/// Why the service could not produce a result. Each has a stable name that
/// front doors report (Lambda `errorType`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The payload was refused.
    #[error(transparent)]
    InvalidRequest(#[from] InvalidRequest),
    /// The credentials could not be loaded or were refused.
    #[error("{0}")]
    CredentialsUnavailable(String),
    /// Graph or the token endpoint could not be reached.
    #[error("{0}")]
    GraphUnavailable(String),
    /// Selecting devices by filter failed.
    #[error("{0}")]
    SelectionFailed(String),
    /// The result or a continuation could not be delivered.
    #[error("{0}")]
    ResultDeliveryFailed(String),
    /// Another instance is handling the same delivery.
    #[error("{0}")]
    InProgress(String),
    /// The shared state store could not be reached.
    #[error(transparent)]
    StateUnavailable(#[from] crate::state::StoreError),
    /// A deployment setting is wrong.
    #[error("{0}")]
    Configuration(String),
}

impl ServiceError {
    /// The stable error type name.
    pub fn error_type(&self) -> &'static str {
        match self {
            ServiceError::InvalidRequest(_) => "InvalidRequest",
            ServiceError::CredentialsUnavailable(_) => "CredentialsUnavailable",
            ServiceError::GraphUnavailable(_) => "GraphUnavailable",
            ServiceError::SelectionFailed(_) => "SelectionFailed",
            ServiceError::ResultDeliveryFailed(_) => "ResultDeliveryFailed",
            ServiceError::InProgress(_) => "DeliveryInProgress",
            ServiceError::StateUnavailable(_) => "StateUnavailable",
            ServiceError::Configuration(_) => "ConfigurationError",
        }
    }

    /// Whether the same request may succeed later (after a fix to the
    /// deployment, for a configuration error): such a delivery is returned
    /// for retry rather than refused.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ServiceError::InvalidRequest(_) | ServiceError::SelectionFailed(_))
    }
}

impl From<GatewayError> for ServiceError {
    fn from(e: GatewayError) -> Self {
        RunError::from(e).into()
    }
}

impl From<RunError> for ServiceError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Credentials(m) => ServiceError::CredentialsUnavailable(m),
            RunError::Unavailable(m) => ServiceError::GraphUnavailable(m),
            RunError::Selection(m) => ServiceError::SelectionFailed(m),
        }
    }
}

/// What became of a delivery; the front door encodes it in its envelope.
#[derive(Debug)]
pub enum Disposition {
    /// The run happened; its result was published (when a sink is set).
    Ran(Box<RunResult>),
    /// A repeat of a delivery already handled to completion; nothing ran.
    Repeat {
        /// The delivery id seen before.
        delivery_id: String,
    },
    /// Handed to the work queue to run there (a webhook's request).
    Accepted {
        /// The correlation id the run will carry.
        correlation_id: String,
        /// Messages it was queued as (more than one when it is larger than
        /// the queue's message limit).
        parts: usize,
    },
    /// A repeat of a delivery whose run finished but whose result could not
    /// be published: the kept result document was published now, nothing
    /// ran.
    Republished(Box<serde_json::Value>),
    /// A sweep queued in chunks.
    Dispatched(SweepDispatch),
    /// A follow-up check ran: its verdict (published when a sink is set).
    Checked(Box<crate::core::verify::Verdict>),
    /// A follow-up check was not due yet and was sent on.
    Deferred(Deferral),
    /// `read_status`: the devices' attestation status, read now.
    Status(Box<crate::core::status::StatusDocument>),
    /// Refused for good and reported: acknowledge it.
    Rejected(Rejection),
    /// May pass later: return it for retry.
    Retry(ServiceError),
}

/// A sweep handed to the work queue in chunks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SweepDispatch {
    /// The correlation id shared by the chunks.
    pub correlation_id: String,
    /// Devices selected.
    pub devices: usize,
    /// Messages sent, one per chunk.
    pub chunks: usize,
}

/// Graph, behind the shared budget when there is one.
type Gateway = BudgetedGateway<GraphClient>;

struct CachedClient {
    client: Arc<Gateway>,
    version: Option<String>,
    checked_at: Instant,
}

/// The service. One per process.
pub struct AttestService {
    settings: Settings,
    /// The deployment's own tenant (requests that name none).
    own: Tenant,
    /// Further tenants, by the names payloads use.
    tenants: std::collections::HashMap<String, Tenant>,
    sink: Option<Arc<dyn ResultSink>>,
    queue: Option<Arc<dyn WorkQueue>>,
    gate: webhook::Gate,
    sweep: SweepSettings,
    credential_ttl: Duration,
    store: Arc<dyn StateStore>,
    budget: Option<Arc<dyn crate::state::budget::SharedBudget>>,
    /// Names this instance in the claims it holds.
    instance: String,
}

/// One tenant's state: where its credentials come from, its warm Graph
/// client, and its own pacing (one tenant's 429s never slow another).
struct Tenant {
    credentials: Arc<dyn CredentialSource>,
    client: Mutex<Option<CachedClient>>,
    pacers: Pacers,
}

impl Tenant {
    fn new(credentials: Arc<dyn CredentialSource>, settings: &Settings) -> Self {
        Self {
            credentials,
            client: Mutex::new(None),
            pacers: Pacers::new(&settings.engine),
        }
    }
}

/// How long a claim outlives the host's deadline: a claim whose instance died
/// is taken over after it, and never while its run may still be going.
const CLAIM_MARGIN: Duration = Duration::from_secs(60);
/// A claim's lease when the host gives no deadline (Lambda's longest run).
const LEASE_WITHOUT_DEADLINE: Duration = Duration::from_secs(15 * 60);

impl AttestService {
    /// A service over the given ports. Credentials are re-read after
    /// `credential_ttl` (a rotation is picked up then, or at once when Entra
    /// ID refuses the cached ones). Webhooks admit nobody and
    /// sweeps use the default filter until set otherwise.
    pub fn new(
        settings: Settings,
        credentials: Arc<dyn CredentialSource>,
        sink: Option<Arc<dyn ResultSink>>,
        queue: Option<Arc<dyn WorkQueue>>,
        credential_ttl: Duration,
    ) -> Self {
        Self {
            own: Tenant::new(credentials, &settings),
            tenants: std::collections::HashMap::new(),
            settings,
            sink,
            queue,
            gate: webhook::Gate::new(WebhookAuth::default()),
            sweep: SweepSettings::from_env(|_| None).unwrap_or_else(|e| unreachable!("{e}")),
            credential_ttl,
            store: Arc::new(MemoryStore::default()),
            budget: None,
            instance: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// Adds tenants a payload may name (`tenant`), each with its own
    /// credentials (a secret named in configuration, never in a payload),
    /// Graph client and budget.
    pub fn with_tenants(mut self, tenants: Vec<(String, Arc<dyn CredentialSource>)>) -> Self {
        for (name, credentials) in tenants {
            let tenant = Tenant::new(credentials, &self.settings);
            self.tenants.insert(name, tenant);
        }
        self
    }

    /// The tenant a request names, or the deployment's own.
    fn tenant(&self, name: Option<&str>) -> Result<&Tenant, ServiceError> {
        match name {
            None => Ok(&self.own),
            Some(n) => self.tenants.get(n).ok_or_else(|| {
                let mut known: Vec<&str> = self.tenants.keys().map(String::as_str).collect();
                known.sort_unstable();
                ServiceError::InvalidRequest(InvalidRequest::single(
                    "tenant",
                    &format!("{n:?}"),
                    &if known.is_empty() {
                        "no tenant field: this deployment attests in its own tenant only".to_owned()
                    } else {
                        format!("one of the configured tenants: {}", known.join(", "))
                    },
                ))
            }),
        }
    }

    /// Paces every call by `budget`, shared by every instance of the
    /// deployment (one per app registration and tenant), on top of this
    /// instance's own pacer.
    pub fn with_shared_budget(mut self, budget: Arc<dyn crate::state::budget::SharedBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Keeps claims, kept results and webhook replays in `store` (shared by
    /// every instance) instead of in this process.
    pub fn with_state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = store;
        self
    }

    /// Authenticates webhook callers with `auth`.
    pub fn with_webhook_auth(mut self, auth: WebhookAuth) -> Self {
        self.gate = webhook::Gate::new(auth);
        self
    }

    /// Sweeps with `sweep`.
    pub fn with_sweep(mut self, sweep: SweepSettings) -> Self {
        self.sweep = sweep;
        self
    }

    /// The deployment settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Parses and validates a payload against the deployment's limits.
    pub fn parse(&self, bytes: &[u8]) -> Result<AttestationRequest, ServiceError> {
        Ok(AttestationRequest::from_slice(bytes, self.settings.limits)?)
    }

    /// Handles one delivered request to its disposition: refused (and
    /// reported, for queue triggers), handed to the queue (webhooks, when
    /// one is configured), recognised as a repeat, or run.
    pub async fn deliver(&self, delivery: Delivery) -> Disposition {
        let trigger = delivery.trigger;
        let outcome = match self.admit_payload(&delivery).await {
            Ok(req) if req.check.is_some() => self.check(req, &delivery).await,
            Ok(req) if req.read_status => self.read_status(req, &delivery).await,
            Ok(req) if trigger.is_webhook() && self.queue.is_some() => self.hand_off(req, delivery.deadline).await,
            Ok(req) => self.run(req, &delivery).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(d) => d,
            Err(e) => self.refuse(e, &delivery).await,
        }
    }

    /// Parses a delivered payload. A queued message may be as large as the
    /// queue accepts (the same limit the service produces to), and only a
    /// queued message may carry `part`: continuation metadata is the
    /// service's own, never a caller's.
    async fn admit_payload(&self, delivery: &Delivery) -> Result<AttestationRequest, ServiceError> {
        let refused = |value: String, expected: String| {
            Err(ServiceError::InvalidRequest(InvalidRequest::single(
                "(payload)",
                &value,
                &expected,
            )))
        };
        if delivery.trigger.is_queue() {
            let limit = match &self.queue {
                Some(q) => q.max_message_bytes().await.unwrap_or(MAX_QUEUE_MESSAGE),
                None => MAX_QUEUE_MESSAGE,
            };
            if delivery.payload.len() > limit {
                return refused(
                    format!("{} bytes", delivery.payload.len()),
                    format!("a queue message of at most {limit} bytes"),
                );
            }
        }
        let req = self.parse(&delivery.payload)?;
        // A tenant the deployment does not know is refused before any call.
        self.tenant(req.tenant.as_deref())?;
        if req.part != 1 && !delivery.trigger.is_queue() {
            return Err(ServiceError::InvalidRequest(InvalidRequest::single(
                "part",
                &req.part.to_string(),
                "no part: the service sets it on the messages it queues itself",
            )));
        }
        Ok(req)
    }

    /// Delivers a queue batch in order, returning for retry what the time
    /// left cannot start (before the host's deadline cuts a run short).
    pub async fn deliver_batch(&self, deliveries: Vec<Delivery>) -> Vec<Disposition> {
        let mut out = Vec::with_capacity(deliveries.len());
        let mut out_of_time = false;
        for d in deliveries {
            out_of_time |= d
                .deadline
                .is_some_and(|at| at.saturating_duration_since(Instant::now()) < MIN_TIME_FOR_A_DELIVERY);
            out.push(if out_of_time {
                Disposition::Retry(ServiceError::GraphUnavailable(
                    "not started: too little time left in this invocation".into(),
                ))
            } else {
                self.deliver(d).await
            });
        }
        out
    }

    /// The disposition of a delivery that failed: returned for retry when it
    /// may pass later, else refused, reported when nobody waits for the
    /// answer (and returned for retry if even the report fails).
    async fn refuse(&self, e: ServiceError, delivery: &Delivery) -> Disposition {
        if e.is_retryable() {
            tracing::error!(delivery_id = ?delivery.delivery_id, error_type = e.error_type(), error = %e, "returned for retry");
            return Disposition::Retry(e);
        }
        let rejection = Rejection {
            error_type: e.error_type().into(),
            message: e.to_string(),
            trigger: delivery.trigger.as_str().into(),
            delivery_id: delivery.delivery_id.clone(),
        };
        tracing::warn!(error_type = %rejection.error_type, message = %rejection.message, delivery_id = ?rejection.delivery_id, "request refused");
        if delivery.trigger.is_queue()
            && let Some(sink) = &self.sink
            && let Err(report) = sink.reject(&rejection, delivery.deadline).await
        {
            return Disposition::Retry(ServiceError::ResultDeliveryFailed(format!(
                "a refused request could not be reported: {report}"
            )));
        }
        Disposition::Rejected(rejection)
    }

    /// Hands a webhook's request to the queue consumers, in as many
    /// messages as the queue's size limit needs.
    async fn hand_off(
        &self,
        mut req: AttestationRequest,
        deadline: Option<Instant>,
    ) -> Result<Disposition, ServiceError> {
        let correlation_id = req
            .correlation_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let messages = self
            .messages_for(&req, req.devices.clone(), &correlation_id, req.part)
            .await?;
        let parts = messages.len();
        self.send(messages, deadline).await?;
        Ok(Disposition::Accepted { correlation_id, parts })
    }

    /// The work messages that carry `template` for `devices`: split so
    /// that every body fits the work queue's message limit, each device in
    /// exactly one message. A filter travels only in the first.
    async fn messages_for(
        &self,
        template: &AttestationRequest,
        devices: Vec<crate::core::device::DeviceRef>,
        correlation_id: &str,
        part: u32,
    ) -> Result<Vec<WorkMessage>, ServiceError> {
        let limit = match &self.queue {
            Some(q) => q.max_message_bytes().await.unwrap_or(DEFAULT_QUEUE_MESSAGE),
            None => DEFAULT_QUEUE_MESSAGE,
        };
        let mut first = template.for_devices(Vec::new(), correlation_id.to_owned(), part);
        first.device_filter = template.device_filter.clone();
        let empty = first.to_payload().to_json().len();
        // A device ID costs its 36 characters, two quotes and a comma; a
        // list's key costs up to 30 bytes more.
        let budget = limit.saturating_sub(empty + 64);
        let per_message = (budget / 39).max(1);
        if budget < 39 {
            return Err(ServiceError::Configuration(format!(
                "the work queue's message limit ({limit} bytes) cannot hold a request"
            )));
        }
        let mut messages = Vec::new();
        let mut chunks = devices.chunks(per_message).peekable();
        if chunks.peek().is_none() {
            messages.push(WorkMessage::new(first.to_payload().to_json(), correlation_id));
        }
        for (i, chunk) in chunks.enumerate() {
            let mut req = template.for_devices(chunk.to_vec(), correlation_id.to_owned(), part);
            if i == 0 {
                req.device_filter = template.device_filter.clone();
            }
            messages.push(WorkMessage::new(req.to_payload().to_json(), correlation_id));
        }
        Ok(messages)
    }

    async fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> Result<(), ServiceError> {
        let Some(queue) = &self.queue else {
            return Err(ServiceError::Configuration("no work queue is configured".into()));
        };
        queue
            .send(messages, deadline)
            .await
            .map_err(|e| ServiceError::ResultDeliveryFailed(format!("not queued: {e}")))
    }

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
        };
        let disposition = self.deliver(delivery).await;
        let accepted = !matches!(disposition, Disposition::Retry(_));
        self.gate
            .settle(admitted.replay_key.as_deref(), accepted, self.store.as_ref())
            .await;
        match disposition {
            Disposition::Ran(result) => {
                let body = result.bounded_document(webhook::MAX_ANSWER_BYTES, webhook::FULL_RESULT_AT);
                (HttpAnswer::new(200, body), Some(result))
            }
            Disposition::Republished(doc) => (
                HttpAnswer::new(
                    200,
                    crate::core::outcome::bounded_document(&doc, webhook::MAX_ANSWER_BYTES, webhook::FULL_RESULT_AT),
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
            Disposition::Status(doc) => (
                HttpAnswer::new(200, bounded_status(&doc, webhook::MAX_ANSWER_BYTES)),
                None,
            ),
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

    /// A schedule tick: a sweep of the devices the sweep filter selects,
    /// queued in chunks when a work queue is configured, else run here.
    /// `event_id` names the tick, so a repeated tick is recognised.
    pub async fn sweep(&self, trigger: Trigger, event_id: &str, deadline: Option<Instant>) -> Disposition {
        let correlation_id = sweep::correlation_id(event_id);
        let req = self.sweep.request(Some(correlation_id.clone()));
        let delivery = Delivery {
            trigger,
            payload: Vec::new(),
            delivery_id: Some(event_id.to_owned()),
            caller: None,
            deadline,
        };
        let outcome = if self.queue.is_some() {
            let key = format!("sweep#{correlation_id}");
            match self.claim(&key, deadline).await {
                Ok(None) => {}
                Ok(Some(done)) => return done,
                Err(e) => return self.refuse(e, &delivery).await,
            }
            let deadline = deadline.unwrap_or_else(|| Instant::now() + self.sweep.timeout);
            let dispatched = self.dispatch_sweep(&req, &correlation_id, deadline).await;
            if dispatched.is_err() {
                // Given back, so the schedule's retry dispatches it.
                let _ = self.store.release(&key, &self.instance).await;
            }
            dispatched
        } else {
            self.run(req, &delivery).await
        };
        match outcome {
            Ok(d) => d,
            Err(e) => self.refuse(e, &delivery).await,
        }
    }

    async fn graph_client(&self, tenant: &Tenant, fresh: bool) -> Result<Arc<Gateway>, ServiceError> {
        let mut cached = tenant.client.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| !fresh && c.checked_at.elapsed() < self.credential_ttl)
        {
            return Ok(c.client.clone());
        }
        let loaded = tenant
            .credentials
            .load()
            .await
            .map_err(|e| ServiceError::CredentialsUnavailable(e.0))?;
        if let Some(c) = cached
            .as_mut()
            .filter(|c| !fresh && c.version.is_some() && c.version == loaded.version)
        {
            c.checked_at = Instant::now();
            return Ok(c.client.clone());
        }
        let endpoints = self
            .settings
            .endpoints_for(loaded.cloud)
            .map_err(|e| ServiceError::Configuration(e.0))?;
        let source = tenant.credentials.clone();
        let reloader: Reloader = Arc::new(move || {
            let source = source.clone();
            Box::pin(async move { source.load().await.map(|l| l.creds).map_err(|e| e.0) })
        });
        // One budget per app registration and tenant.
        let app = format!("{}#{}", loaded.creds.tenant_id, loaded.creds.client_id);
        let client = GraphClient::new(endpoints, loaded.creds, self.settings.client.clone())
            .map_err(|e| ServiceError::Configuration(format!("cannot build the HTTP client: {e}")))?
            .with_reloader(reloader);
        let client = Arc::new(match &self.budget {
            Some(budget) => {
                let key = |kind: &str, cfg: &crate::core::pacer::PacerConfig| BudgetKey {
                    key: format!("budget#{app}#{kind}"),
                    rules: crate::state::budget::BudgetRules::new(cfg.budget, cfg.window),
                };
                BudgetedGateway::shared(
                    Arc::new(client),
                    budget.clone(),
                    key("writes", &self.settings.engine.writes),
                    key("reads", &self.settings.engine.reads),
                )
            }
            None => BudgetedGateway::alone(Arc::new(client)),
        });
        *cached = Some(CachedClient {
            client: client.clone(),
            version: loaded.version,
            checked_at: Instant::now(),
        });
        Ok(client)
    }

    fn engine(&self, tenant: &Tenant, client: Arc<Gateway>) -> Engine<Gateway> {
        Engine::with_pacers(client, self.settings.engine.clone(), tenant.pacers.clone())
    }

    fn map_run_error(&self, tenant: &Tenant, e: RunError) -> ServiceError {
        match e {
            RunError::Credentials(m) => {
                ServiceError::CredentialsUnavailable(format!("{} (credentials from {})", m, tenant.credentials.name()))
            }
            other => other.into(),
        }
    }

    /// When a claim taken now runs out.
    fn lease_until(&self, deadline: Option<Instant>) -> std::time::SystemTime {
        let left = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(LEASE_WITHOUT_DEADLINE);
        std::time::SystemTime::now() + left + CLAIM_MARGIN
    }

    /// Claims `key` for this instance: `Ok(None)` to go ahead, or the
    /// disposition of a delivery that must not run here (done before, or
    /// held by another instance).
    async fn claim(&self, key: &str, deadline: Option<Instant>) -> Result<Option<Disposition>, ServiceError> {
        let found = self
            .store
            .claim(key, &self.instance, self.lease_until(deadline))
            .await?;
        self.on_claim(key, found, deadline).await
    }

    async fn on_claim(
        &self,
        key: &str,
        found: Claim,
        deadline: Option<Instant>,
    ) -> Result<Option<Disposition>, ServiceError> {
        match found {
            Claim::Claimed => Ok(None),
            Claim::HeldElsewhere => Err(ServiceError::InProgress(format!(
                "{key} is being handled by another instance"
            ))),
            Claim::Done { undelivered: None } => {
                tracing::info!(key, "repeat of a completed delivery; skipped");
                Ok(Some(Disposition::Repeat {
                    delivery_id: key.split_once('#').map_or(key, |(_, id)| id).to_owned(),
                }))
            }
            Claim::Done {
                undelivered: Some(kept),
            } => {
                tracing::info!(
                    key,
                    "repeat of a run whose result was not delivered; publishing the kept result"
                );
                let doc: serde_json::Value = serde_json::from_str(&kept).map_err(|_| {
                    ServiceError::StateUnavailable(crate::state::StoreError(format!(
                        "{key}: the kept result is unreadable"
                    )))
                })?;
                self.publish(&doc, deadline).await?;
                self.finished(key, None).await;
                Ok(Some(Disposition::Republished(Box::new(doc))))
            }
        }
    }

    /// Gives a claim back after a run that failed, so a retry runs at once;
    /// a failure is logged (the claim then runs out with its lease).
    async fn give_back(&self, key: Option<&str>) {
        if let Some(key) = key
            && let Err(e) = self.store.release(key, &self.instance).await
        {
            tracing::warn!(error = %e, "a claim could not be given back; it runs out with its lease");
        }
    }

    /// Marks a claimed key done. A failure is logged, not raised: the run
    /// is over, and a repeat would at worst run again (the action is
    /// idempotent).
    async fn finished(&self, key: &str, undelivered: Option<&str>) {
        if let Err(e) = self.store.finish(key, &self.instance, undelivered).await {
            tracing::warn!(key, error = %e, "a finished delivery could not be recorded");
        }
    }

    async fn publish(&self, doc: &serde_json::Value, deadline: Option<Instant>) -> Result<(), ServiceError> {
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        sink.publish(doc, deadline).await.map_err(|e| {
            ServiceError::ResultDeliveryFailed(format!(
                "the result of {} was not delivered: {e}",
                doc["correlation_id"].as_str().unwrap_or("a run")
            ))
        })
    }

    /// Runs one request to the end: claim, engine, continuation,
    /// publication. Every log line of the run carries its correlation id.
    async fn run(&self, mut req: AttestationRequest, delivery: &Delivery) -> Result<Disposition, ServiceError> {
        // A run the caller named is also recognised by what it asks for (a
        // Step Functions retry arrives with a new request id).
        let request_key = req.correlation_id.is_some().then(|| {
            use sha2::{Digest, Sha256};
            format!(
                "request#{}",
                hex::encode(Sha256::digest(req.to_payload().to_json().as_bytes()))
            )
        });
        let correlation_id = req
            .correlation_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let span = tracing::info_span!("run", correlation_id = %correlation_id, part = req.part);
        tracing::Instrument::instrument(self.claimed_run(req, delivery, request_key), span).await
    }

    /// A run under its delivery's claim: a repeat is acknowledged or its
    /// kept result republished, a delivery another instance holds is
    /// returned for retry, and a run that fails gives its claim back.
    async fn claimed_run(
        &self,
        req: AttestationRequest,
        delivery: &Delivery,
        request_key: Option<String>,
    ) -> Result<Disposition, ServiceError> {
        let key = delivery.delivery_id.as_ref().map(|d| format!("delivery#{d}"));
        if let Some(key) = &key
            && let Some(done) = self.claim(key, delivery.deadline).await?
        {
            return Ok(done);
        }
        if let Some(rk) = &request_key {
            // Only a kept result counts for a request key: the same request
            // sent again later is a new run.
            match self
                .store
                .claim(rk, &self.instance, self.lease_until(delivery.deadline))
                .await
            {
                Ok(kept @ Claim::Done { undelivered: Some(_) }) => {
                    if let Some(republished) = self.on_claim(rk, kept, delivery.deadline).await? {
                        if let Some(key) = &key {
                            self.finished(key, None).await;
                        }
                        return Ok(republished);
                    }
                }
                Ok(Claim::Claimed) => {
                    let _ = self.store.release(rk, &self.instance).await;
                }
                _ => {}
            }
        }
        let ran = self.run_to_result(req, delivery).await;
        let result = match ran {
            Ok(r) => r,
            Err(e) => {
                self.give_back(key.as_deref()).await;
                return Err(e);
            }
        };
        let doc = serde_json::to_value(&result).unwrap_or_default();
        match self.publish(&doc, delivery.deadline).await {
            Ok(()) => {
                if let Some(key) = &key {
                    self.finished(key, None).await;
                }
                Ok(Disposition::Ran(Box::new(result)))
            }
            Err(e) => {
                // Kept, so the redelivery publishes it instead of running the
                // devices again.
                let kept = doc.to_string();
                for k in key.iter().chain(request_key.iter()) {
                    self.finished(k, Some(&kept)).await;
                }
                Err(e)
            }
        }
    }

    /// Runs the engine (reading rotated credentials again once), then hands
    /// untried devices to the next part.
    async fn run_to_result(&self, req: AttestationRequest, delivery: &Delivery) -> Result<RunResult, ServiceError> {
        let started = std::time::SystemTime::now();
        let ignore = req.ignore_partial_failures;
        let tenant = self.tenant(req.tenant.as_deref())?;
        let mut client = self.graph_client(tenant, false).await?;
        let mut refreshed = false;
        let mut result = loop {
            let engine = self.engine(tenant, client.clone());
            match engine
                .run(req.clone(), delivery.deadline, Arc::new(Progress::new()))
                .await
            {
                Ok(r) => break r,
                Err(RunError::Credentials(m)) if !refreshed => {
                    // A rotated secret: read it again once before giving up.
                    tracing::warn!(reason = %m, "credentials refused; reading them again");
                    refreshed = true;
                    client = self.graph_client(tenant, true).await?;
                }
                Err(e) => return Err(self.map_run_error(tenant, e)),
            }
        };
        result.invocation = Some(Invocation {
            trigger: delivery.trigger.as_str().into(),
            delivery_id: delivery.delivery_id.clone(),
            caller: delivery.caller.clone(),
            part: req.part,
        });
        if !req.dry_run {
            self.continue_untried(&req, &mut result, delivery.deadline).await;
            self.schedule_verification(&req, &mut result, started, delivery.deadline)
                .await;
        }
        result.refresh(ignore);
        Ok(result)
    }

    /// Hands devices the deadline left untried to the next part of the run.
    async fn continue_untried(&self, req: &AttestationRequest, result: &mut RunResult, deadline: Option<Instant>) {
        if self.queue.is_none() {
            return;
        }
        let untried: Vec<usize> = result
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.outcome == Outcome::NotAttempted && d.attempts == 0)
            .map(|(i, _)| i)
            .collect();
        if untried.is_empty() {
            return;
        }
        let part = req.part + 1;
        let devices = untried.iter().map(|&i| result.devices[i].device_ref()).collect();
        let next = req.for_devices(Vec::new(), result.correlation_id.clone(), part);
        let messages = self.messages_for(&next, devices, &result.correlation_id, part).await;
        let sent = match messages {
            Ok(m) => self.send(m, deadline).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                for &i in &untried {
                    let d = &mut result.devices[i];
                    d.outcome = Outcome::Continued;
                    d.reason = Some(format!("handed on to part {part} of this run"));
                }
                result.warnings.push(format!(
                    "{} device(s) handed on to part {part} of this run",
                    untried.len()
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "the continuation could not be queued");
                result.warnings.push(format!(
                    "{} untried device(s) could not be handed on to part {part} ({e}); they are reported not_attempted",
                    untried.len()
                ));
            }
        }
    }

    /// Selects the sweep's devices and queues them in chunks, each a
    /// request of its own.
    async fn dispatch_sweep(
        &self,
        template: &AttestationRequest,
        correlation_id: &str,
        deadline: Instant,
    ) -> Result<Disposition, ServiceError> {
        let client = self.graph_client(&self.own, false).await?;
        let limit = self.settings.limits.max_devices.saturating_mul(100);
        let listing = client
            .list_devices(&self.sweep.filter, limit, deadline)
            .await
            .map_err(|e| match e {
                e @ (GatewayError::Credentials(_) | GatewayError::Unavailable(_)) => ServiceError::from(e),
                other => ServiceError::SelectionFailed(other.to_string()),
            })?;
        for warning in listing.warnings() {
            tracing::warn!(correlation_id, "sweep: {warning}");
        }
        let ids = listing.devices;
        let chunk_size = self.sweep.chunk_size.clamp(1, self.settings.limits.max_devices);
        // The chunks name their devices; none carries the sweep's filter.
        let template = template.for_devices(Vec::new(), correlation_id.to_owned(), 1);
        let mut messages = Vec::new();
        for (i, chunk) in ids.chunks(chunk_size).enumerate() {
            let devices = chunk
                .iter()
                .map(|&id| crate::core::device::DeviceRef {
                    id,
                    kind: crate::core::device::DeviceKind::Managed,
                })
                .collect();
            let chunk_id = format!("{correlation_id}-c{}", i + 1);
            messages.extend(self.messages_for(&template, devices, &chunk_id, 1).await?);
        }
        let chunks = messages.len();
        self.send(messages, Some(deadline))
            .await
            .map_err(|e| ServiceError::ResultDeliveryFailed(format!("sweep chunks {e}")))?;
        self.finished(&format!("sweep#{correlation_id}"), None).await;
        tracing::info!(devices = ids.len(), chunks, "sweep dispatched");
        Ok(Disposition::Dispatched(SweepDispatch {
            correlation_id: correlation_id.to_owned(),
            devices: ids.len(),
            chunks,
        }))
    }
}
