//! The application service shared by the hosted front doors (AWS Lambda,
//! Azure Functions): it loads credentials from a [`CredentialSource`], keeps
//! one Graph client and the tenant's pacing budget across warm invocations,
//! runs the engine, hands devices the deadline left untried to the next part
//! of the run through a [`WorkQueue`], and publishes the result through a
//! [`ResultSink`]. It knows the ports, not AWS or Azure.

mod recent;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Settings;
use crate::core::device::DeviceKind;
use crate::core::engine::{Engine, Pacers, RunError};
use crate::core::filter::DeviceFilter;
use crate::core::gateway::{DeviceGateway, GatewayError};
use crate::core::outcome::{Invocation, Outcome, RunResult};
use crate::core::progress::Progress;
use crate::core::request::AttestationRequest;
use crate::credentials::{AppCredentials, CredentialsError};
use crate::graph::auth::Reloader;
use crate::graph::{Cloud, GraphClient};

pub use recent::RecentSet;

/// A boxed future, so the ports can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Credentials as loaded from a store.
pub struct Loaded {
    /// The credentials.
    pub creds: AppCredentials,
    /// The cloud the credentials name, if any.
    pub cloud: Option<Cloud>,
    /// The store's version of the secret, to notice rotations.
    pub version: Option<String>,
}

/// Where the Entra ID app credentials come from.
pub trait CredentialSource: Send + Sync {
    /// Loads the credentials.
    fn load(&self) -> BoxFuture<'_, Result<Loaded, CredentialsError>>;
    /// A name for messages (the secret's ID), never a value.
    fn name(&self) -> String;
}

/// A delivery failed (result events, queue messages).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

/// A request refused before it ran (a malformed queue message, say),
/// reported once so it is not silently dropped.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// The stable error type (`InvalidRequest`, `SelectionFailed`...).
    pub error_type: String,
    /// What was wrong (bounded, no secrets).
    pub message: String,
    /// The trigger it arrived through.
    pub trigger: String,
    /// The platform's id for the delivery (SQS message id...).
    pub delivery_id: Option<String>,
}

/// Where result documents go (EventBridge, an output binding...).
pub trait ResultSink: Send + Sync {
    /// Publishes one result, split and retried as the sink needs.
    fn publish<'a>(&'a self, result: &'a RunResult) -> BoxFuture<'a, Result<(), DeliveryError>>;
    /// Reports a refused request.
    fn reject<'a>(&'a self, rejection: &'a Rejection) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// A message for the work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkMessage {
    /// The payload (a request document).
    pub body: String,
    /// Identifies the message for deduplication (`{correlation_id}#{part}`).
    pub dedup_id: String,
    /// Groups the messages of one run.
    pub group_id: String,
}

/// The queue that carries continuations and sweep chunks.
pub trait WorkQueue: Send + Sync {
    /// Sends the messages; fails if any could not be sent.
    fn send(&self, messages: Vec<WorkMessage>) -> BoxFuture<'_, Result<(), DeliveryError>>;
}

/// Why the service could not produce a result. Each has a stable name that
/// front doors report (Lambda `errorType`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The payload was refused.
    #[error("{0}")]
    InvalidRequest(String),
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
            ServiceError::Configuration(_) => "ConfigurationError",
        }
    }

    /// Whether trying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::CredentialsUnavailable(_)
                | ServiceError::GraphUnavailable(_)
                | ServiceError::ResultDeliveryFailed(_)
        )
    }
}

/// What handling a request produced.
#[derive(Debug)]
pub enum Handled {
    /// The run happened; its result was published (when a sink is set).
    Ran(Box<RunResult>),
    /// This delivery was already handled to completion by this instance.
    Repeat {
        /// The delivery id seen before.
        delivery_id: String,
    },
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

struct CachedClient {
    client: Arc<GraphClient>,
    version: Option<String>,
    checked_at: Instant,
}

/// The service. One per process.
pub struct AttestService {
    settings: Settings,
    credentials: Arc<dyn CredentialSource>,
    sink: Option<Arc<dyn ResultSink>>,
    queue: Option<Arc<dyn WorkQueue>>,
    pacers: Pacers,
    client: Mutex<Option<CachedClient>>,
    credential_ttl: Duration,
    completed: std::sync::Mutex<RecentSet>,
}

impl AttestService {
    /// A service over the given ports. Credentials are re-read after
    /// `credential_ttl` (a rotation is picked up then, or at once when Entra
    /// ID refuses the cached ones).
    pub fn new(
        settings: Settings,
        credentials: Arc<dyn CredentialSource>,
        sink: Option<Arc<dyn ResultSink>>,
        queue: Option<Arc<dyn WorkQueue>>,
        credential_ttl: Duration,
    ) -> Self {
        Self {
            pacers: Pacers::new(&settings.engine),
            settings,
            credentials,
            sink,
            queue,
            client: Mutex::new(None),
            credential_ttl,
            completed: std::sync::Mutex::new(RecentSet::new(10_000)),
        }
    }

    /// The deployment settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether a work queue is configured.
    pub fn has_queue(&self) -> bool {
        self.queue.is_some()
    }

    /// Puts a payload on the work queue as it is (a webhook handing its run
    /// to the queue consumers).
    pub async fn enqueue(&self, body: String, correlation_id: &str) -> Result<(), ServiceError> {
        let Some(queue) = &self.queue else {
            return Err(ServiceError::Configuration("no work queue is configured".into()));
        };
        let message = WorkMessage {
            body,
            dedup_id: format!("{correlation_id}#1"),
            group_id: correlation_id.to_owned(),
        };
        queue
            .send(vec![message])
            .await
            .map_err(|e| ServiceError::ResultDeliveryFailed(format!("not queued: {e}")))
    }

    /// Reports a refused request through the sink, if there is one.
    pub async fn reject(&self, rejection: Rejection) -> Result<(), ServiceError> {
        tracing::warn!(error_type = %rejection.error_type, message = %rejection.message, delivery_id = ?rejection.delivery_id, "request refused");
        match &self.sink {
            Some(sink) => sink
                .reject(&rejection)
                .await
                .map_err(|e| ServiceError::ResultDeliveryFailed(e.0)),
            None => Ok(()),
        }
    }

    /// Parses and validates a payload against the deployment's limits.
    pub fn parse(&self, bytes: &[u8]) -> Result<AttestationRequest, ServiceError> {
        AttestationRequest::from_slice(bytes, self.settings.limits)
            .map_err(|e| ServiceError::InvalidRequest(e.to_string()))
    }

    async fn graph_client(&self, fresh: bool) -> Result<Arc<GraphClient>, ServiceError> {
        let mut cached = self.client.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| !fresh && c.checked_at.elapsed() < self.credential_ttl)
        {
            return Ok(c.client.clone());
        }
        let loaded = self
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
        let source = self.credentials.clone();
        let reloader: Reloader = Arc::new(move || {
            let source = source.clone();
            Box::pin(async move { source.load().await.map(|l| l.creds).map_err(|e| e.0) })
        });
        let client = GraphClient::new(endpoints, loaded.creds, self.settings.client.clone())
            .map_err(|e| ServiceError::Configuration(format!("cannot build the HTTP client: {e}")))?
            .with_reloader(reloader);
        let client = Arc::new(client);
        *cached = Some(CachedClient {
            client: client.clone(),
            version: loaded.version,
            checked_at: Instant::now(),
        });
        Ok(client)
    }

    fn engine(&self, client: Arc<GraphClient>) -> Engine<GraphClient> {
        Engine::with_pacers(client, self.settings.engine.clone(), self.pacers.clone())
    }

    fn map_run_error(&self, e: RunError) -> ServiceError {
        match e {
            RunError::Credentials(m) => {
                ServiceError::CredentialsUnavailable(format!("{} (credentials from {})", m, self.credentials.name()))
            }
            RunError::Unavailable(m) => ServiceError::GraphUnavailable(m),
            RunError::Selection(m) => ServiceError::SelectionFailed(m),
        }
    }

    /// Whether a delivery id was already handled to completion here.
    pub fn seen(&self, delivery_id: &str) -> bool {
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(delivery_id)
    }

    fn remember(&self, delivery_id: &str) {
        self.completed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(delivery_id);
    }

    /// Runs one request to the end: engine, continuation, publication.
    /// Every log line of the run carries its correlation id.
    pub async fn run(
        &self,
        mut req: AttestationRequest,
        invocation: Invocation,
        deadline: Option<Instant>,
    ) -> Result<Handled, ServiceError> {
        let correlation_id = req
            .correlation_id
            .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
            .clone();
        let span = tracing::info_span!("run", correlation_id = %correlation_id, part = req.part);
        tracing::Instrument::instrument(self.run_in_span(req, invocation, deadline), span).await
    }

    async fn run_in_span(
        &self,
        req: AttestationRequest,
        invocation: Invocation,
        deadline: Option<Instant>,
    ) -> Result<Handled, ServiceError> {
        let repeat_key = invocation.delivery_id.clone();
        if let Some(key) = repeat_key.as_deref().filter(|k| self.seen(k)) {
            tracing::info!(delivery_id = key, "repeat delivery of a completed run; skipped");
            return Ok(Handled::Repeat {
                delivery_id: key.to_owned(),
            });
        }
        let ignore = req.ignore_partial_failures;
        let mut client = self.graph_client(false).await?;
        let mut refreshed = false;
        let mut result = loop {
            let engine = self.engine(client.clone());
            match engine.run(req.clone(), deadline, Arc::new(Progress::new())).await {
                Ok(r) => break r,
                Err(RunError::Credentials(m)) if !refreshed => {
                    // A rotated secret: read it again once before giving up.
                    tracing::warn!(reason = %m, "credentials refused; reading them again");
                    refreshed = true;
                    client = self.graph_client(true).await?;
                }
                Err(e) => return Err(self.map_run_error(e)),
            }
        };
        result.invocation = Some(Invocation {
            part: req.part,
            ..invocation
        });
        if !req.dry_run {
            self.continue_untried(&req, &mut result).await;
        }
        result.refresh(ignore);
        if let Some(sink) = &self.sink {
            sink.publish(&result).await.map_err(|e| {
                ServiceError::ResultDeliveryFailed(format!(
                    "the result of {} was not delivered: {e}",
                    result.correlation_id
                ))
            })?;
        }
        if let Some(key) = repeat_key {
            self.remember(&key);
        }
        Ok(Handled::Ran(Box::new(result)))
    }

    /// Hands devices the deadline left untried to the next part of the run.
    async fn continue_untried(&self, req: &AttestationRequest, result: &mut RunResult) {
        let Some(queue) = &self.queue else {
            return;
        };
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
        let ids = |kind: DeviceKind| -> Vec<String> {
            untried
                .iter()
                .map(|&i| &result.devices[i])
                .filter(|d| d.kind == kind)
                .map(|d| d.device_id.to_string())
                .collect()
        };
        let part = req.part + 1;
        let body = json!({
            "managed_device_ids": ids(DeviceKind::Managed),
            "comanaged_device_ids": ids(DeviceKind::Comanaged),
            "validate_device_exists": req.validate_device_exists,
            "ignore_partial_failures": req.ignore_partial_failures,
            "timeouts": {"invoke": format!("{}ms", req.timeout.as_millis())},
            "correlation_id": result.correlation_id,
            "part": part,
        });
        let message = WorkMessage {
            body: body.to_string(),
            dedup_id: format!("{}#{part}", result.correlation_id),
            group_id: result.correlation_id.clone(),
        };
        match queue.send(vec![message]).await {
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

    /// Selects devices with `filter` and queues them in chunks of
    /// `chunk_size`, each a request of its own (part 1, 2, ...).
    pub async fn dispatch_sweep(
        &self,
        filter: &DeviceFilter,
        template: &AttestationRequest,
        correlation_id: &str,
        chunk_size: usize,
        deadline: Instant,
    ) -> Result<SweepDispatch, ServiceError> {
        let Some(queue) = &self.queue else {
            return Err(ServiceError::Configuration(
                "a sweep needs WORK_QUEUE_URL to dispatch chunks".into(),
            ));
        };
        let client = self.graph_client(false).await?;
        let limit = self.settings.limits.max_devices.saturating_mul(100);
        let ids = client
            .list_devices(filter, limit, deadline)
            .await
            .map_err(|e| match e {
                GatewayError::Credentials(m) => ServiceError::CredentialsUnavailable(m),
                GatewayError::Unavailable(m) => ServiceError::GraphUnavailable(m),
                other => ServiceError::SelectionFailed(other.to_string()),
            })?;
        let chunk_size = chunk_size.clamp(1, self.settings.limits.max_devices);
        let messages: Vec<WorkMessage> = ids
            .chunks(chunk_size)
            .enumerate()
            .map(|(i, chunk)| {
                let part = i + 1;
                let body = json!({
                    "managed_device_ids": chunk.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                    "validate_device_exists": template.validate_device_exists,
                    "ignore_partial_failures": template.ignore_partial_failures,
                    "timeouts": {"invoke": format!("{}ms", template.timeout.as_millis())},
                    "correlation_id": format!("{correlation_id}-c{part}"),
                });
                WorkMessage {
                    body: body.to_string(),
                    dedup_id: format!("{correlation_id}#chunk{part}"),
                    group_id: format!("{correlation_id}-c{part}"),
                }
            })
            .collect();
        let chunks = messages.len();
        queue
            .send(messages)
            .await
            .map_err(|e| ServiceError::ResultDeliveryFailed(format!("sweep chunks not queued: {e}")))?;
        tracing::info!(devices = ids.len(), chunks, "sweep dispatched");
        Ok(SweepDispatch {
            correlation_id: correlation_id.to_owned(),
            devices: ids.len(),
            chunks,
        })
    }
}
