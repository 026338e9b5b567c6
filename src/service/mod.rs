//! The application service shared by every hosted front door (AWS Lambda,
//! Azure Functions). A front door decodes its envelope into a [`Delivery`]
//! (or a [`WebhookRequest`], or a schedule tick) and encodes the
//! [`Disposition`] the service returns; everything else lives here once:
//! queue disposition (acknowledge, report, return for retry), webhook
//! admission, sweeps, continuation of untried devices, repeat detection and
//! publication. The service keeps one Graph client and the tenant's pacing
//! budget across warm invocations. It knows the ports, not AWS or Azure.

mod budgeted;
mod checks;
mod claims;
mod continuation;
mod run;
pub mod seal;
pub mod signature;
pub mod sweep;
mod tenants;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Settings;
use crate::core::engine::RunError;
use crate::core::gateway::GatewayError;
use crate::core::outcome::RunResult;
use crate::core::request::{AttestationRequest, InvalidRequest};
use crate::credentials::CredentialSource;
use crate::queue::WorkQueue;
use crate::results::{Rejection, ResultSink};
use crate::state::{MemoryStore, StateStore};

pub use budgeted::{BudgetKey, BudgetedGateway};
pub use checks::{Deferral, bounded_status};
pub use sweep::SweepSettings;
use tenants::{Gateway, Tenant};
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
    /// The stamp of a message the service sealed for itself, once its seal
    /// verified.
    stamp: Option<seal::Stamp>,
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
            stamp: None,
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
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A document the service produced could not be encoded as JSON; the
    /// delivery is returned for retry rather than answered with `null`.
    #[error(transparent)]
    Unencodable(#[from] crate::core::encode::EncodeError),
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
            ServiceError::Unencodable(_) => "ResultDeliveryFailed",
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
            RunError::Configuration(m) => ServiceError::Configuration(m),
        }
    }
}

/// Whether a sealed message's stamp says what its request is: a check is
/// a check, a later part a continuation (or a check of one), and a check's
/// times lie within the schedule the run could have had.
fn seal_fits(stamp: &seal::Stamp, req: &AttestationRequest) -> Result<(), String> {
    use seal::Kind;
    match (stamp.kind, &req.check) {
        (Kind::Check, None) => return Err("a check stamp on a request that is not a check".into()),
        (Kind::Check, Some(ticket)) => {
            let latest = stamp.run_started() + crate::core::verify::MAX_UNTIL + seal::CLOCK_SKEW;
            if ticket.until_at > latest || ticket.due_at > ticket.until_at {
                return Err(format!(
                    "a check due {} until {}, past its run's longest schedule",
                    crate::core::duration::rfc3339(ticket.due_at),
                    crate::core::duration::rfc3339(ticket.until_at)
                ));
            }
        }
        (_, Some(_)) => return Err("a check in a message not stamped as one".into()),
        (Kind::HandOff | Kind::SweepChunk, None) if req.part != 1 => {
            return Err(format!("part {} in a message that starts a run", req.part));
        }
        _ => {}
    }
    if stamp.stalled > continuation::MAX_STALLED_PARTS {
        return Err(format!("{} stalled parts", stamp.stalled));
    }
    Ok(())
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
    /// Seals the messages the service queues for itself.
    sealer: seal::Sealer,
}

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
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::default());
        Self {
            own: Tenant::new(credentials, &settings),
            tenants: std::collections::HashMap::new(),
            settings,
            sink,
            queue,
            gate: webhook::Gate::new(WebhookAuth::default()),
            sweep: SweepSettings::from_env(|_| None).unwrap_or_else(|e| unreachable!("{e}")),
            credential_ttl,
            sealer: seal::Sealer::new(store.clone()),
            store,
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
        self.sealer = seal::Sealer::new(store.clone());
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
    pub async fn deliver(&self, mut delivery: Delivery) -> Disposition {
        let trigger = delivery.trigger;
        let outcome = match self.admit_payload(&mut delivery).await {
            Ok(req) if req.check.is_some() => self.check(req, &delivery).await,
            Ok(req) if req.read_status => self.read_status(req, &delivery).await,
            Ok(req) if trigger.is_webhook() && self.queue.is_some() => self.hand_off(req, &delivery).await,
            Ok(req) => self.run(req, &delivery).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(d) => d,
            Err(e) => self.refuse(e, &delivery).await,
        }
    }

    /// Parses a delivered payload. A queued message may be as large as the
    /// queue accepts (the same limit the service produces to). Only a
    /// message the service sealed for itself, arriving on a queue, may
    /// carry `part` or `check` or name its caller: anything else gets what
    /// a caller gets, whatever trigger its shape claims.
    async fn admit_payload(&self, delivery: &mut Delivery) -> Result<AttestationRequest, ServiceError> {
        let refused = |field: &str, value: String, expected: &str| {
            Err(ServiceError::InvalidRequest(InvalidRequest::single(
                field, &value, expected,
            )))
        };
        if delivery.trigger.is_queue() {
            let limit = match &self.queue {
                Some(q) => q.max_message_bytes().await.unwrap_or(MAX_QUEUE_MESSAGE),
                None => MAX_QUEUE_MESSAGE,
            };
            if delivery.payload.len() > limit {
                return refused(
                    "(payload)",
                    format!("{} bytes", delivery.payload.len()),
                    &format!("a queue message of at most {limit} bytes"),
                );
            }
        }
        let (mut req, stamp) = if seal::claims_seal(&delivery.payload) {
            if !delivery.trigger.is_queue() {
                return refused(
                    seal::MARK,
                    "a service message".into(),
                    "a request: service messages arrive only on the work queue",
                );
            }
            let (stamp, text) = match self.sealer.open(&delivery.payload).await? {
                Ok(opened) => opened,
                Err(forged) => {
                    return refused(
                        seal::MARK,
                        forged.to_string(),
                        "a message this deployment's service sealed, or a plain request",
                    );
                }
            };
            (self.parse(text.as_bytes())?, Some(stamp))
        } else {
            (self.parse(&delivery.payload)?, None)
        };
        // A tenant the deployment does not know is refused before any call.
        self.tenant(req.tenant.as_deref())?;
        match &stamp {
            None if req.part != 1 => {
                return refused(
                    "part",
                    req.part.to_string(),
                    "no part: the service sets it on the messages it seals for itself",
                );
            }
            None if req.check.is_some() => {
                return refused(
                    "check",
                    "a check".into(),
                    "no check: the service sets it on the messages it seals for itself",
                );
            }
            None => {}
            Some(stamp) => {
                if let Err(why) = seal_fits(stamp, &req) {
                    return refused(seal::MARK, why, "a service message whose stamp matches its request");
                }
                if stamp.kind == seal::Kind::HandOff {
                    delivery.caller = stamp.caller.clone();
                }
                req.named_were_selected = stamp.selected;
            }
        }
        delivery.stamp = stamp;
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
                tracing::warn!(
                    delivery_id = d.delivery_id.as_deref().unwrap_or("-"),
                    "returned to the queue unstarted: too little time left in this invocation"
                );
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
        let delivery_id = delivery.delivery_id.as_deref().unwrap_or("-");
        if e.is_retryable() {
            tracing::error!(delivery_id, error_type = e.error_type(), error = %e, "returned for retry");
            return Disposition::Retry(e);
        }
        let rejection = Rejection {
            error_type: e.error_type().into(),
            message: e.to_string(),
            trigger: delivery.trigger.as_str().into(),
            delivery_id: delivery.delivery_id.clone(),
        };
        tracing::warn!(error_type = %rejection.error_type, message = %rejection.message, delivery_id, "request refused");
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
}
