//! How the CLI signs in: with the app's credentials from the environment
//! (a secret, a certificate or federation), or with `--device-code` as the
//! responder themself (the device code flow, no secret: the app
//! registration's client id as a public client, the tokens in memory for
//! the run only).

use std::process::ExitCode;

use crate::config::Settings;
use crate::core::text::bounded;
use crate::credentials::{AppCredentials, ClientCredential};
use crate::graph::auth::AuthError;
use crate::graph::device_code;

/// The sign-in flags of the commands that call Graph.
#[derive(clap::Args, Debug, Default)]
pub struct SignIn {
    /// Sign in as yourself in a browser (the device code flow) instead of
    /// with the app's secret: needs AZURE_TENANT_ID and AZURE_CLIENT_ID of
    /// an app registration that allows public client flows; the token is
    /// kept for this run only.
    #[arg(long)]
    pub device_code: bool,
}

/// The credentials to run with, or the exit code of a failed sign-in (its
/// cause already on standard error): 2 for settings or a sign-in Entra ID
/// refused, 1 when Entra ID could not be reached.
pub async fn credentials(
    sign_in: &SignIn,
    settings: &Settings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AppCredentials, ExitCode> {
    let fail = |code: u8, e: &dyn std::fmt::Display| {
        eprintln!("error: {}", bounded(&e.to_string(), 4000));
        ExitCode::from(code)
    };
    if !sign_in.device_code {
        return AppCredentials::from_env(env).map_err(|e| fail(2, &e));
    }
    let (tenant, client, missing) = crate::credentials::identifier_settings(&env);
    let (Some(tenant), Some(client)) = (tenant, client) else {
        return Err(fail(
            2,
            &format!(
                "--device-code: not set: {} (the tenant, and the app registration that allows public client flows)",
                missing.join("; ")
            ),
        ));
    };
    // The identifiers' shape is checked before they go into a URL.
    crate::credentials::check_identifiers(&tenant, &client).map_err(|e| fail(2, &e))?;
    let http = crate::graph::client::http_client().map_err(|e| fail(2, &e))?;
    let session = device_code::sign_in(
        &http,
        &settings.endpoints,
        &tenant,
        &client,
        settings.client.request_timeout,
        |prompt| {
            eprintln!(
                "{} (the code expires in {} minutes)",
                prompt.message,
                prompt.expires_in.as_secs().div_ceil(60)
            );
        },
    )
    .await
    .map_err(|e| match e {
        AuthError::Unavailable(_) => fail(1, &e),
        AuthError::Refused(_) | AuthError::Configuration(_) => fail(2, &e),
    })?;
    eprintln!("signed in: Graph calls act for you, with your Intune role; the token is kept for this run only");
    AppCredentials::new(
        tenant,
        client,
        ClientCredential::Delegated(std::sync::Arc::new(session)),
    )
    .map_err(|e| fail(2, &e))
}
