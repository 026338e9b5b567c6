//! Tenants: where each one's credentials come from, its warm Graph client
//! (behind the shared budget when there is one) and its own pacing.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{AttestService, BudgetKey, BudgetedGateway, ServiceError};
use crate::config::Settings;
use crate::core::engine::{Engine, Pacers, RunError};
use crate::core::request::InvalidRequest;
use crate::credentials::CredentialSource;
use crate::graph::GraphClient;
use crate::graph::auth::Reloader;

/// Graph, behind the shared budget when there is one.
pub(crate) type Gateway = BudgetedGateway<GraphClient>;

pub(super) struct CachedClient {
    client: Arc<Gateway>,
    version: Option<String>,
    checked_at: Instant,
}

/// One tenant's state: where its credentials come from, its warm Graph
/// client, and its own pacing (one tenant's 429s never slow another).
pub(super) struct Tenant {
    pub(super) credentials: Arc<dyn CredentialSource>,
    pub(super) client: Mutex<Option<CachedClient>>,
    pub(super) pacers: Pacers,
}

impl Tenant {
    pub(super) fn new(credentials: Arc<dyn CredentialSource>, settings: &Settings) -> Self {
        Self {
            credentials,
            client: Mutex::new(None),
            pacers: Pacers::new(&settings.engine),
        }
    }
}

impl AttestService {
    /// The tenant a request names, or the deployment's own.
    pub(super) fn tenant(&self, name: Option<&str>) -> Result<&Tenant, ServiceError> {
        match name {
            None => Ok(&self.own),
            Some(n) => self.tenants.get(n).ok_or_else(|| {
                // The names configured are not the caller's to learn: an
                // unknown name is told only that it is unknown.
                ServiceError::InvalidRequest(InvalidRequest::single(
                    "tenant",
                    &format!("{n:?}"),
                    if self.tenants.is_empty() {
                        "no tenant field: this deployment attests in its own tenant only"
                    } else {
                        "the name of a tenant this deployment is configured for (its configuration lists them)"
                    },
                ))
            }),
        }
    }

    pub(super) async fn graph_client(&self, tenant: &Tenant, fresh: bool) -> Result<Arc<Gateway>, ServiceError> {
        let mut cached = tenant.client.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| !fresh && c.checked_at.elapsed() < self.credential_ttl)
        {
            return Ok(c.client.clone());
        }
        let loaded = tenant.credentials.load().await.map_err(|e| {
            if e.is_configuration() {
                ServiceError::Configuration(e.0)
            } else {
                ServiceError::CredentialsUnavailable(e.0)
            }
        })?;
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
                    rules: crate::state::budget::BudgetRules::new(cfg.budget, cfg.window)
                        .with_max_pause(self.settings.engine.max_retry_after),
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

    pub(super) fn engine(&self, tenant: &Tenant, client: Arc<Gateway>) -> Engine<Gateway> {
        Engine::with_pacers(client, self.settings.engine.clone(), tenant.pacers.clone())
    }

    pub(super) fn map_run_error(&self, tenant: &Tenant, e: RunError) -> ServiceError {
        match e {
            RunError::Credentials(m) => {
                ServiceError::CredentialsUnavailable(format!("{} (credentials from {})", m, tenant.credentials.name()))
            }
            other => other.into(),
        }
    }
}
