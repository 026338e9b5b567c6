//! The custom handler's start-up: the service from app settings, the host's
//! time limit, and the HTTP server the Functions host talks to.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::envelope::function_timeout;
use super::{AzureApp, router};
use crate::config::Settings;
use crate::credentials::federation::FederationContext;
use crate::credentials::{EnvCredentials, StaticSecrets, check_federation_settings, checked_webhook_secrets};
use crate::frontdoor::HostError;
use crate::queue::WorkQueue;
use crate::queue::azure::{AzureWorkQueue, MessageEncoding};
use crate::service::{AttestService, SweepSettings, WebhookAuth};
use crate::state::blob::{BlobBudget, BlobStore};

/// Builds the service from app settings. `ATTEST_WEBHOOK_SECRETS`
/// (comma-separated) adds signature checks to the HTTP function's
/// function-key authentication. With the host's storage account
/// (`AzureWebJobsStorage__queueServiceUri` / `__blobServiceUri` /
/// `__accountName`), `ATTEST_WORK_QUEUE` names the work queue and
/// `ATTEST_STATE_CONTAINER` the container of the shared state; without
/// them the state lives in this process and nothing is queued. The queue
/// trigger's message encoding comes from `host.json` in the working
/// directory (the function app's root).
pub fn build_service(get: impl Fn(&str) -> Option<String>) -> Result<AttestService, String> {
    let host_json = std::fs::read_to_string("host.json").ok();
    build_service_with(get, host_json.as_deref())
}

/// [`build_service`] with `host.json`'s text given (`None`: the host's
/// defaults).
pub fn build_service_with(
    get: impl Fn(&str) -> Option<String>,
    host_json: Option<&str>,
) -> Result<AttestService, String> {
    let settings = Settings::from_env(&get).map_err(|e| e.0)?;
    // Settings that select federation are checked now, not at the first
    // request.
    check_federation_settings(&get, &FederationContext::default()).map_err(|e| e.0)?;
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
    let account = crate::azure_storage::StorageAccount::from_env(&get)?;
    let setting = |name: &str| get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let queue = match (setting("ATTEST_WORK_QUEUE"), &account) {
        (Some(name), Some(account)) if account.has_queues() => {
            let encoding = MessageEncoding::from_host(
                setting("AzureFunctionsJobHost__extensions__queues__messageEncoding").as_deref(),
                host_json,
            )?;
            Some(Arc::new(AzureWorkQueue::new(account.queue(&name)?, encoding)) as Arc<dyn WorkQueue>)
        }
        (Some(_), _) => return Err(
            "ATTEST_WORK_QUEUE is set but no AzureWebJobsStorage__queueServiceUri or __accountName names the account"
                .into(),
        ),
        (None, _) => None,
    };
    let mut service = AttestService::new(
        settings,
        Arc::new(EnvCredentials::default()),
        None,
        queue,
        Duration::from_secs(300),
    )
    .with_webhook_auth(auth)
    .with_sweep(sweep);
    match (setting("ATTEST_STATE_CONTAINER"), &account) {
        (Some(name), Some(account)) if account.has_blobs() => {
            service = service
                .with_state_store(Arc::new(BlobStore::new(account.container(&name)?)))
                .with_shared_budget(Arc::new(BlobBudget::new(account.container(&name)?)));
        }
        (Some(_), _) => return Err("ATTEST_STATE_CONTAINER is set but no AzureWebJobsStorage__blobServiceUri or __accountName names the account".into()),
        (None, _) => {
            if setting("ATTEST_WORK_QUEUE").is_some() {
                tracing::warn!(
                    "ATTEST_WORK_QUEUE is set without ATTEST_STATE_CONTAINER: claims and replays stay in this process, so run one instance"
                );
            }
        }
    }
    Ok(service)
}

/// Serves the custom-handler protocol on `FUNCTIONS_CUSTOMHANDLER_PORT`.
pub fn main() -> std::process::ExitCode {
    let style = crate::telemetry::LogStyle {
        ansi: false,
        timestamps: true,
        level: None,
    };
    crate::telemetry::init(std::io::stderr, style);
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    crate::frontdoor::host(async move {
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
