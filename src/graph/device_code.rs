//! A person's sign-in with the device authorization grant (RFC 8628, as
//! Entra ID serves it): the app registration's client id as a public
//! client, no secret. The `/devicecode` endpoint gives a user code to
//! enter at a verification page; the token endpoint is polled at the
//! interval it asks (longer after `slow_down`) until the user has signed
//! in, declined, or the code expired. The tokens act for the user, with
//! the delegated permissions the app holds and the user's own Intune role;
//! they stay in memory for the run ([`DelegatedSession`]).

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use tokio::time::Instant;

use super::auth::{AuthError, TokenError, TokenResponse, describe_transport};
use super::endpoints::Endpoints;
use crate::core::text::bounded;
use crate::credentials::delegated::DelegatedSession;

/// The device code grant type.
const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The poll interval when the endpoint gives none (Entra's: 5 s).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The longest interval believed, and the most a `slow_down` adds.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// How long a code lives when the endpoint says nothing (Entra's: 15 min),
/// and the longest believed.
const DEFAULT_EXPIRY: Duration = Duration::from_secs(900);
const MAX_EXPIRY: Duration = Duration::from_secs(3600);

/// The delegated scope asked for: the app's consented Graph permissions,
/// and `offline_access` for a refresh token, so a run outlives one token.
pub fn scope(endpoints: &Endpoints) -> String {
    format!("{} offline_access", endpoints.scope())
}

/// What the user is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Entra's instruction (the page and the code), as text safe to print.
    pub message: String,
    /// Where to sign in.
    pub verification_uri: String,
    /// The code to enter there.
    pub user_code: String,
    /// How long the code may be used.
    pub expires_in: Duration,
}

#[derive(Deserialize)]
struct Authorization {
    #[serde(default)]
    device_code: String,
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    verification_uri: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

/// Signs a person in: asks for a code, lets `show` tell them where to
/// enter it, and polls until they have. Each request is bounded by
/// `timeout`; the whole by the code's lifetime.
pub async fn sign_in(
    http: &reqwest::Client,
    endpoints: &Endpoints,
    tenant_id: &str,
    client_id: &str,
    timeout: Duration,
    show: impl FnOnce(&Prompt),
) -> Result<DelegatedSession, AuthError> {
    let url = endpoints.device_code_url(tenant_id);
    let resp = http
        .post(&url)
        .timeout(timeout)
        .form(&[("client_id", client_id), ("scope", &scope(endpoints))])
        .send()
        .await
        .map_err(|e| AuthError::Unavailable(describe_transport(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| AuthError::Unavailable(describe_transport(&e)))?;
    if !status.is_success() {
        let what = serde_json::from_slice::<TokenError>(&body)
            .unwrap_or_default()
            .describe(status.as_u16());
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            AuthError::Unavailable(what)
        } else {
            AuthError::Refused(what)
        });
    }
    let auth: Authorization = serde_json::from_slice(&body)
        .map_err(|_| AuthError::Unavailable("the device code endpoint's answer is not a JSON object".into()))?;
    if auth.device_code.is_empty() || auth.user_code.is_empty() {
        return Err(AuthError::Unavailable(
            "the device code endpoint answered without a device_code or user_code".into(),
        ));
    }
    let expires_in = auth
        .expires_in
        .map_or(DEFAULT_EXPIRY, Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_EXPIRY);
    let mut interval = auth
        .interval
        .map_or(DEFAULT_INTERVAL, Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_INTERVAL);
    let user_code = bounded(&auth.user_code, 40);
    let verification_uri = bounded(&auth.verification_uri, 200);
    let message = auth.message.as_deref().map_or_else(
        || format!("To sign in, open {verification_uri} and enter the code {user_code}."),
        |m| bounded(m, 400),
    );
    show(&Prompt {
        message,
        verification_uri,
        user_code,
        expires_in,
    });
    let ends = Instant::now() + expires_in;
    let device_code = SecretString::from(auth.device_code);
    let token_url = endpoints.token_url(tenant_id);
    // After a transport failure or a 5xx the wait doubles (RFC 8628 3.5).
    let backed_off = |interval: Duration| (interval * 2).min(MAX_INTERVAL);
    let mut wait = interval;
    loop {
        // A last poll just before the code ends, not a sleep past it.
        let left = ends.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(left.saturating_sub(Duration::from_millis(200)))).await;
        wait = interval;
        if Instant::now() >= ends {
            return Err(AuthError::Refused(
                "the sign-in code expired before the sign-in finished: run again".into(),
            ));
        }
        let sent = http
            .post(&token_url)
            .timeout(timeout)
            .form(&[
                ("grant_type", GRANT),
                ("client_id", client_id),
                ("device_code", secrecy::ExposeSecret::expose_secret(&device_code)),
            ])
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                // The user may still be signing in: poll again.
                tracing::debug!(cause = %describe_transport(&e), "device code poll failed; polling again");
                wait = backed_off(interval);
                continue;
            }
        };
        let status = resp.status();
        let Ok(body) = resp.bytes().await else {
            wait = backed_off(interval);
            continue;
        };
        if status.is_success() {
            let mut parsed: TokenResponse = serde_json::from_slice(&body)
                .map_err(|_| AuthError::Unavailable("the token endpoint's answer is not a JSON object".into()))?;
            let refresh = parsed
                .refresh_token
                .take()
                .filter(|t| !t.is_empty())
                .map(SecretString::from);
            let (token, lifetime, _) = parsed.into_parts()?;
            return Ok(DelegatedSession::new(token, lifetime, refresh));
        }
        let err: TokenError = serde_json::from_slice(&body).unwrap_or_default();
        match err.error.as_deref() {
            Some("authorization_pending") => {}
            Some("slow_down") => interval = (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL),
            _ if status.is_server_error() || status.as_u16() == 429 => wait = backed_off(interval),
            _ => return Err(AuthError::Refused(err.describe(status.as_u16()))),
        }
    }
}
