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
use crate::service::{AttestService, SweepSettings, WebhookAuth};

/// Builds the service from app settings. `ATTEST_WEBHOOK_SECRETS`
/// (comma-separated) adds signature checks to the HTTP function's
/// function-key authentication.
pub fn build_service(get: impl Fn(&str) -> Option<String>) -> Result<AttestService, String> {
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
    Ok(AttestService::new(
        settings,
        Arc::new(EnvCredentials::default()),
        None,
        None,
        Duration::from_secs(300),
    )
    .with_webhook_auth(auth)
    .with_sweep(sweep))
}

/// Serves the custom-handler protocol on `FUNCTIONS_CUSTOMHANDLER_PORT`.
pub fn main() -> std::process::ExitCode {
    let style = crate::telemetry::LogStyle {
        ansi: false,
        timestamps: true,
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
