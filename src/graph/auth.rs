//! OAuth2 client credentials against Entra ID: a client secret, a
//! certificate-signed JWT assertion, or a federated credential's external
//! token (fetched fresh for each request, never kept); or, for a person
//! signed in with the device code flow, the refresh token grant. Tokens are
//! refreshed ahead of expiry (at Entra's `refresh_in`, else a share of the
//! lifetime) by one caller at a time while the others keep using the
//! still-valid token; a refresh that fails leaves that token serving until
//! it expires. A token Graph refuses is dropped. The cached token never
//! leaves this module except as a redacting [`SecretString`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::core::backoff::Backoff;
use crate::credentials::federation::FederationError;
use crate::credentials::{AppCredentials, ClientCertificate, ClientCredential, error_chain};

use super::endpoints::Endpoints;

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Entra ID refused the credentials (`invalid_client`, unknown tenant...).
    #[error("the token endpoint refused the credentials: {0}")]
    Refused(String),
    /// The token endpoint could not be reached or kept failing.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
    /// A deployment setting is missing or wrong (a federated credential's
    /// issuer that is not set up): no retry can help.
    #[error("{0}")]
    Configuration(String),
}

impl AuthError {
    fn from_federation(e: &FederationError) -> Self {
        let text = error_chain(e);
        if e.is_configuration() {
            AuthError::Configuration(text)
        } else {
            AuthError::Unavailable(text)
        }
    }
}

#[derive(Clone)]
struct Cached {
    token: SecretString,
    /// When a caller should fetch the next token (ahead of expiry).
    refresh_at: Instant,
    /// When the token stops being sent (a margin before it expires).
    valid_until: Instant,
    generation: u64,
}

/// How long after a failed refresh-ahead the next is tried (never later
/// than halfway to the token's end).
const REFRESH_RETRY: Duration = Duration::from_secs(10);

/// A bearer token and the cache generation it came from.
pub struct Token {
    /// The access token.
    pub secret: SecretString,
    /// Pass back to [`TokenProvider::invalidate`] when Graph refuses it.
    pub generation: u64,
}

#[derive(Deserialize)]
pub(super) struct TokenResponse {
    #[serde(default)]
    access_token: Option<String>,
    /// With a user's sign-in and `offline_access`: the token that gets
    /// the next access token.
    #[serde(default)]
    pub(super) refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_in: Option<serde_json::Value>,
}

/// The lifetime assumed when the token endpoint gives none (Entra's usual
/// `expires_in`).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3599);
/// The longest lifetime believed: Entra's access tokens live at most a day,
/// and a larger figure (up to `u64::MAX` seconds) must not overflow a clock.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A lifetime field (`expires_in`, `refresh_in`) in whole seconds: a number
/// or, from some endpoints, a numeric string; clamped to 1 s..[`MAX_LIFETIME`].
fn lifetime_field(name: &str, v: &serde_json::Value) -> Result<Duration, AuthError> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(t) => t.trim().parse::<u64>().ok(),
        _ => None,
    };
    let Some(secs) = secs else {
        let shown: String = v.to_string().chars().take(24).collect();
        return Err(AuthError::Unavailable(format!(
            "the token endpoint answered {name} {shown}, which is not a whole number of seconds"
        )));
    };
    Ok(Duration::from_secs(secs).clamp(Duration::from_secs(1), MAX_LIFETIME))
}

impl TokenResponse {
    /// The token, its lifetime, and when Entra asks for a refresh
    /// (`refresh_in`), from a successful answer.
    pub(super) fn into_parts(self) -> Result<(SecretString, Duration, Option<Duration>), AuthError> {
        let token = self
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Unavailable("the token endpoint answered without an access_token".into()))?;
        let lifetime = match &self.expires_in {
            Some(v) => lifetime_field("expires_in", v)?,
            None => DEFAULT_LIFETIME,
        };
        // A refresh hint that cannot be read is ignored: the lifetime serves.
        let refresh_in = match &self.refresh_in {
            Some(v) => match lifetime_field("refresh_in", v) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "refresh_in ignored");
                    None
                }
            },
            None => None,
        };
        Ok((SecretString::from(token), lifetime, refresh_in))
    }
}

#[derive(Deserialize, Default)]
pub(super) struct TokenError {
    #[serde(default)]
    pub(super) error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
    #[serde(default)]
    error_codes: Vec<u64>,
}

impl TokenError {
    /// What the token endpoint said, in terms that are safe to repeat: the
    /// OAuth `error` code when it has the standard shape, the AADSTS numbers,
    /// and a fixed description. The endpoint's own text is never echoed (a
    /// misconfigured or hostile endpoint may echo the posted form, secret
    /// included).
    pub(super) fn describe(&self, status: u16) -> String {
        let code = self
            .error
            .as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 40 && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
        let meaning = match code {
            Some("invalid_client") => "the app's credentials were refused",
            Some("unauthorized_client") => "the app is not allowed to use this grant in this tenant",
            Some("invalid_request") => "the token request was refused as malformed",
            Some("invalid_scope") => "the Graph scope was refused",
            Some("invalid_grant") => "the grant was refused",
            Some("authorization_declined") => "the sign-in was declined",
            Some("expired_token") => "the sign-in code expired before the sign-in finished: run again",
            Some("bad_verification_code") => "the sign-in code was not recognised",
            Some("temporarily_unavailable") => "Entra ID is temporarily unavailable",
            _ => "the token endpoint refused the request",
        };
        let mut numbers: Vec<u64> = self.error_codes.iter().copied().take(4).collect();
        if numbers.is_empty()
            && let Some(d) = &self.error_description
            && let Some(rest) = d.strip_prefix("AADSTS")
        {
            numbers.extend(
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse::<u64>().ok()),
            );
        }
        let aadsts: Vec<String> = numbers.iter().map(|n| format!("AADSTS{n}")).collect();
        let advice = numbers.iter().find_map(|n| aadsts_advice(*n));
        format!(
            "HTTP {status}{}: {meaning}{}{}",
            code.map(|c| format!(" {c}")).unwrap_or_default(),
            if aadsts.is_empty() {
                String::new()
            } else {
                format!(" ({})", aadsts.join(", "))
            },
            advice.map(|a| format!(": {a}")).unwrap_or_default()
        )
    }
}

/// What the common AADSTS codes mean for whoever set this up, and what to
/// do (Microsoft's error reference, in the words of this product's
/// settings).
pub fn aadsts_advice(code: u64) -> Option<&'static str> {
    Some(match code {
        7000215 => {
            "the client secret is not valid; usually the secret's ID was pasted instead of its Value (copy the Value column of Certificates & secrets into AZURE_CLIENT_SECRET)"
        }
        7000222 => "the client secret has expired; create a new one on the app registration",
        700016 => {
            "the application was not found in the tenant: check AZURE_CLIENT_ID and AZURE_TENANT_ID, and that the app is registered or consented there"
        }
        90002 => {
            "the tenant was not found: check AZURE_TENANT_ID (a tenant id or a verified domain) and the cloud (ATTEST_CLOUD)"
        }
        900023 => "AZURE_TENANT_ID is neither a tenant id nor a domain name",
        7000112 => "the application is disabled in this tenant",
        7000218 => {
            "the app registration does not allow public client flows: turn on \"Allow public client flows\" under its Authentication settings for --device-code, or sign in with a secret or federation"
        }
        65001 => {
            "the delegated permissions have no consent: an administrator grants admin consent to them on the app registration (docs/security.md)"
        }
        50076 | 50079 => "the sign-in needs multi-factor authentication: finish it in the browser",
        700027 => {
            "the client assertion's signature does not verify: the certificate is not one uploaded to the app registration"
        }
        700024 => {
            "the client assertion is outside its valid time: check the machine's clock, or the federated token has expired"
        }
        70021 => {
            "no federated credential matches the assertion: add one to the app registration with its issuer, subject and audience (docs/security.md)"
        }
        500011 => "the Graph resource was not found in the tenant: check the cloud (ATTEST_CLOUD, GRAPH_ENDPOINT)",
        _ => return None,
    })
}

/// Loads the credentials again (after Entra ID refused the current ones, as
/// happens when a secret was rotated).
pub type Reloader = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<AppCredentials, String>> + Send>>
        + Send
        + Sync,
>;

/// How often refused credentials may be reloaded.
const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Obtains and caches app-only tokens for Graph.
pub struct TokenProvider {
    http: reqwest::Client,
    endpoints: Endpoints,
    scope: String,
    creds: std::sync::RwLock<Arc<AppCredentials>>,
    reloader: Option<Reloader>,
    last_reload: std::sync::Mutex<Option<Instant>>,
    cache: std::sync::Mutex<Option<Cached>>,
    /// Held by the one caller fetching a token.
    refreshing: Mutex<()>,
    generation: AtomicU64,
    requests: Arc<AtomicU64>,
    timeout: Duration,
    backoff: Backoff,
}

impl TokenProvider {
    /// A provider for `creds` against `endpoints`; `requests` counts HTTP calls.
    pub fn new(
        http: reqwest::Client,
        endpoints: &Endpoints,
        creds: AppCredentials,
        requests: Arc<AtomicU64>,
        timeout: Duration,
        backoff: Backoff,
    ) -> Self {
        Self {
            http,
            endpoints: endpoints.clone(),
            scope: endpoints.scope(),
            creds: std::sync::RwLock::new(Arc::new(creds)),
            reloader: None,
            last_reload: std::sync::Mutex::new(None),
            cache: std::sync::Mutex::new(None),
            refreshing: Mutex::new(()),
            generation: AtomicU64::new(0),
            requests,
            timeout,
            backoff,
        }
    }

    /// Lets the provider load the credentials again when Entra ID refuses them.
    pub fn set_reloader(&mut self, reloader: Reloader) {
        self.reloader = Some(reloader);
    }

    fn creds(&self) -> Arc<AppCredentials> {
        self.creds.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn may_reload(&self) -> bool {
        let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
        let ok = self.reloader.is_some() && last.is_none_or(|at| at.elapsed() >= RELOAD_INTERVAL);
        if ok {
            *last = Some(Instant::now());
        }
        ok
    }

    fn cached(&self) -> Option<Cached> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A valid token: the cached one until its refresh time; then one
    /// caller fetches the next while the others keep the cached token as
    /// long as it is valid; without a valid token, callers wait for one.
    pub async fn token(&self, deadline: Instant) -> Result<Token, AuthError> {
        if let Some(c) = self.cached() {
            let now = Instant::now();
            if now < c.refresh_at {
                return Ok(c.into());
            }
            if now < c.valid_until {
                // Someone else is refreshing: the current token serves.
                let Ok(_refreshing) = self.refreshing.try_lock() else {
                    return Ok(c.into());
                };
                if let Some(fresh) = self.cached().filter(|f| Instant::now() < f.refresh_at) {
                    return Ok(fresh.into());
                }
                return match self.fetch_and_store(deadline.min(c.valid_until)).await {
                    Ok(t) => Ok(t),
                    Err(e) => {
                        tracing::warn!(error = %e, "token refresh failed; the current token serves until it expires");
                        self.postpone_refresh(c.generation);
                        Ok(c.into())
                    }
                };
            }
        }
        let _refreshing = self.refreshing.lock().await;
        if let Some(c) = self.cached().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.into());
        }
        self.fetch_and_store(deadline).await
    }

    /// After a failed refresh-ahead, tries again a little later (while the
    /// token is valid), not on every call.
    fn postpone_refresh(&self, generation: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.as_mut().filter(|c| c.generation == generation) {
            let now = Instant::now();
            let half_left = c.valid_until.saturating_duration_since(now) / 2;
            c.refresh_at = now + REFRESH_RETRY.min(half_left);
        }
    }

    /// Fetches a token (loading the credentials again once if Entra ID
    /// refuses them) and caches it. Called with `refreshing` held.
    async fn fetch_and_store(&self, deadline: Instant) -> Result<Token, AuthError> {
        let (token, lifetime, refresh_in) = match self.fetch(deadline).await {
            Err(AuthError::Refused(why)) if self.may_reload() => {
                tracing::warn!(reason = %why, "credentials refused; loading them again");
                let reload = self.reloader.as_ref().map(|r| r());
                let fresh = match reload {
                    Some(f) => f
                        .await
                        .map_err(|e| AuthError::Refused(format!("{why}; reloading failed: {e}")))?,
                    None => return Err(AuthError::Refused(why)),
                };
                *self.creds.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                self.fetch(deadline).await?
            }
            other => other?,
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let cached = Cached {
            token,
            refresh_at: now + refresh_after(lifetime, refresh_in),
            valid_until: now + valid_for(lifetime),
            generation,
        };
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = Some(cached.clone());
        Ok(cached.into())
    }

    /// Drops the cached token if it is still the one of `generation`.
    pub async fn invalidate(&self, generation: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.as_ref().is_some_and(|c| c.generation == generation) {
            *cache = None;
        }
    }

    async fn fetch(&self, deadline: Instant) -> Result<(SecretString, Duration, Option<Duration>), AuthError> {
        let mut last = String::from("no attempt made before the deadline");
        for attempt in 0..self.backoff.attempts {
            if attempt > 0 && !self.backoff.wait(attempt, Some(deadline)).await {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let creds = self.creds();
            // A user's sign-in brought its first token with it.
            if let ClientCredential::Delegated(session) = &creds.credential
                && let Some((token, lifetime)) = session.take_first()
            {
                return Ok((token, lifetime, None));
            }
            let token_url = self.endpoints.token_url(&creds.tenant_id);
            let form = match self.form(&creds, &token_url).await {
                Ok(f) => f,
                // An issuer that may answer on a later attempt: a fresh
                // assertion is asked for then.
                Err(AuthError::Unavailable(why)) => {
                    last = why;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .post(&token_url)
                .timeout(self.timeout.min(left))
                .form(&form)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = describe_transport(&e);
                    continue;
                }
            };
            let status = resp.status();
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last = describe_transport(&e);
                    continue;
                }
            };
            if status.is_success() {
                let mut parsed: TokenResponse = serde_json::from_slice(&body)
                    .map_err(|_| AuthError::Unavailable("the token endpoint's answer is not a JSON object".into()))?;
                if let ClientCredential::Delegated(session) = &creds.credential
                    && let Some(next) = parsed.refresh_token.take().filter(|t| !t.is_empty())
                {
                    session.rotate(SecretString::from(next));
                }
                return parsed.into_parts();
            }
            let err: TokenError = serde_json::from_slice(&body).unwrap_or_default();
            let what = err.describe(status.as_u16());
            if status.as_u16() == 429 || status.is_server_error() {
                last = what;
                continue;
            }
            return Err(AuthError::Refused(what));
        }
        Err(AuthError::Unavailable(last))
    }

    /// The token request's form. A federated credential's assertion is
    /// fetched here, for this request only.
    async fn form(&self, creds: &AppCredentials, token_url: &str) -> Result<Vec<(&'static str, String)>, AuthError> {
        if let ClientCredential::Delegated(session) = &creds.credential {
            // The user's next token, from the refresh token (no secret).
            let refresh = session.refresh_token().ok_or_else(|| {
                AuthError::Refused(
                    "the signed-in user's token has expired and Entra ID gave no refresh token: run again with --device-code"
                        .into(),
                )
            })?;
            return Ok(vec![
                ("grant_type", "refresh_token".to_owned()),
                ("client_id", creds.client_id.clone()),
                ("refresh_token", refresh.expose_secret().to_owned()),
                ("scope", super::device_code::scope(&self.endpoints)),
            ]);
        }
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", creds.client_id.clone()),
            ("scope", self.scope.clone()),
        ];
        match &creds.credential {
            ClientCredential::Secret(s) => form.push(("client_secret", s.expose_secret().to_owned())),
            ClientCredential::Certificate(cert) => {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", assertion(cert, &creds.client_id, token_url)?));
            }
            ClientCredential::Federated(source) => {
                let audience = self.endpoints.federation_audience();
                let external = source
                    .assertion(audience)
                    .await
                    .map_err(|e| AuthError::from_federation(&e))?;
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
                ));
                form.push(("client_assertion", external.jwt.expose_secret().to_owned()));
            }
            // Its form is the refresh token grant, above.
            ClientCredential::Delegated(_) => {}
        }
        Ok(form)
    }
}

/// How long a token serves before it is fetched again: its lifetime less a
/// fifth (at most five minutes), or Entra's `refresh_in` when that is sooner.
fn refresh_after(lifetime: Duration, refresh_in: Option<Duration>) -> Duration {
    let ahead = lifetime - (lifetime / 5).min(Duration::from_secs(300));
    refresh_in.map_or(ahead, |r| r.min(ahead))
}

/// How long a token is sent at all: its lifetime less a tenth (at most 30
/// s), so a call never carries a token that expires on the way.
fn valid_for(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(Duration::from_secs(30))
}

impl From<Cached> for Token {
    fn from(c: Cached) -> Self {
        Token {
            secret: c.token,
            generation: c.generation,
        }
    }
}

/// A client assertion JWT for `client_id` at `token_url`.
fn assertion(cert: &ClientCertificate, client_id: &str, token_url: &str) -> Result<String, AuthError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        aud: &'a str,
        iss: &'a str,
        sub: &'a str,
        jti: String,
        nbf: u64,
        iat: u64,
        exp: u64,
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::PS256);
    header.typ = Some("JWT".into());
    header.x5t_s256 = Some(cert.thumbprint_s256.clone());
    let claims = Claims {
        aud: token_url,
        iss: client_id,
        sub: client_id,
        jti: uuid::Uuid::new_v4().to_string(),
        nbf: now,
        iat: now,
        exp: now + 600,
    };
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(cert.private_key_pem.expose_secret().as_bytes())
        .map_err(|_| AuthError::Refused("the certificate's private key cannot sign".into()))?;
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|_| AuthError::Refused("the client assertion could not be signed".into()))
}

/// Describes a transport error by its host (from deployment config) and
/// cause, without the rest of its URL (a path may carry a tenant) or any
/// header: `login.microsoftonline.com: could not connect (DNS lookup
/// failed)`.
pub fn describe_transport(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off or unreadable"
    } else if e.is_request() {
        "the request could not be sent"
    } else {
        "transport error"
    };
    let host = e.url().and_then(|u| u.host_str()).map(str::to_owned);
    let cause = transport_cause(e);
    match (host, cause) {
        (Some(h), Some(c)) => format!("{h}: {what} ({c})"),
        (Some(h), None) => format!("{h}: {what}"),
        (None, Some(c)) => format!("{what} ({c})"),
        (None, None) => what.to_owned(),
    }
}

/// The cause under a transport error, in fixed words: refused, reset,
/// DNS, TLS (the certificate), or a timeout.
fn transport_cause(e: &reqwest::Error) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        // An I/O error may wrap another (its own `source` skips it).
        let mut io = s.downcast_ref::<std::io::Error>();
        while let Some(inner) = io
            .and_then(|e| e.get_ref())
            .and_then(|e| e.downcast_ref::<std::io::Error>())
        {
            io = Some(inner);
        }
        if let Some(io) = io {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Some("connection refused"),
                std::io::ErrorKind::ConnectionReset => return Some("connection reset"),
                std::io::ErrorKind::TimedOut => return Some("timed out"),
                // What rustls reports for a handshake it cannot complete.
                std::io::ErrorKind::InvalidData => return Some("TLS handshake failed: check the host's certificate"),
                _ => {}
            }
        }
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("dns error") || text.contains("failed to lookup") || text.contains("name or service") {
            return Some("DNS lookup failed");
        }
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return Some("TLS handshake failed: check the host's certificate");
        }
        if text.contains("connection refused") {
            return Some("connection refused");
        }
        source = s.source();
    }
    e.is_timeout().then_some("timed out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_aadsts_codes_say_what_to_do() {
        let said = |code: u64| {
            TokenError {
                error: Some("invalid_client".into()),
                error_description: None,
                error_codes: vec![code],
            }
            .describe(401)
        };
        assert!(said(7000215).contains("the secret's ID was pasted instead of its Value"));
        assert!(said(700016).contains("application was not found in the tenant"));
        assert!(said(90002).contains("the tenant was not found"));
        assert!(said(7000218).contains("Allow public client flows"));
        assert!(said(65001).contains("admin consent"));
        for code in [7000222, 900023, 7000112, 700027, 700024, 70021, 500011, 50076, 50079] {
            assert!(aadsts_advice(code).is_some(), "{code}");
            assert!(said(code).contains(&format!("AADSTS{code}: ")) || said(code).contains(&format!("(AADSTS{code})")));
        }
        assert!(aadsts_advice(12345).is_none());
    }

    #[tokio::test]
    async fn a_transport_failure_names_the_host_and_its_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/tenant-secret/oauth2/v2.0/token",
            closed.local_addr().unwrap()
        );
        drop(closed);
        let e = reqwest::Client::new().get(&url).send().await.unwrap_err();
        let said = describe_transport(&e);
        assert_eq!(said, "127.0.0.1: could not connect (connection refused)");
        assert!(!said.contains("tenant-secret"), "no path");
        // A TLS client meeting a server that does not speak TLS.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = plain.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let e = reqwest::Client::new()
            .get(format!("https://{addr}/"))
            .send()
            .await
            .unwrap_err();
        assert!(describe_transport(&e).contains("TLS"), "{}", describe_transport(&e));
    }

    fn parts(body: &str) -> Result<(Duration, Option<Duration>), AuthError> {
        let parsed: TokenResponse = serde_json::from_str(body).unwrap();
        parsed.into_parts().map(|(_, l, r)| (l, r))
    }

    #[test]
    fn a_token_lifetime_is_clamped_and_a_malformed_one_is_named() {
        let huge = parts(r#"{"access_token": "t", "expires_in": 18446744073709551615}"#).unwrap();
        assert_eq!(huge, (MAX_LIFETIME, None));
        // The refresh time of a clamped lifetime is a valid instant.
        let _ = Instant::now() + refresh_after(huge.0, huge.1);
        assert_eq!(
            parts(r#"{"access_token": "t", "expires_in": "3599"}"#).unwrap().0,
            Duration::from_secs(3599)
        );
        assert_eq!(
            parts(r#"{"access_token": "t", "expires_in": 0}"#).unwrap().0,
            Duration::from_secs(1)
        );
        assert_eq!(parts(r#"{"access_token": "t"}"#).unwrap().0, DEFAULT_LIFETIME);
        assert_eq!(
            parts(r#"{"access_token": "t", "expires_in": 3599, "refresh_in": 1799}"#).unwrap(),
            (Duration::from_secs(3599), Some(Duration::from_secs(1799)))
        );
        for bad in ["-5", "12.5", "\"soon\""] {
            let err = parts(&format!(r#"{{"access_token": "t", "expires_in": {bad}}}"#)).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("expires_in") && text.contains("whole number"), "{text}");
        }
        let none = parts(r#"{"expires_in": 3599}"#).unwrap_err();
        assert!(none.to_string().contains("without an access_token"));
    }

    #[test]
    fn a_token_is_refreshed_at_refresh_in_or_ahead_of_expiry() {
        assert_eq!(
            refresh_after(Duration::from_secs(3599), Some(Duration::from_secs(1800))),
            Duration::from_secs(1800)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(3599), None),
            Duration::from_secs(3299)
        );
        assert_eq!(refresh_after(Duration::from_secs(100), None), Duration::from_secs(80));
        // The refresh comes before the token stops being sent.
        for secs in [1, 2, 10, 100, 299, 3599, 86_400] {
            let l = Duration::from_secs(secs);
            assert!(refresh_after(l, None) <= valid_for(l), "{secs}");
            assert!(valid_for(l) < l || secs == 0);
        }
    }

    #[test]
    fn token_errors_keep_the_code_and_aadsts_number_and_never_the_endpoint_text() {
        let echoed: TokenError = serde_json::from_str(
            r#"{"error": "invalid_client", "error_description": "AADSTS7000215: client_secret=hunter2\nforged line",
                "error_codes": [7000215]}"#,
        )
        .unwrap();
        let text = echoed.describe(401);
        assert!(
            text.starts_with("HTTP 401 invalid_client: the app's credentials were refused (AADSTS7000215): "),
            "{text}"
        );
        let odd: TokenError =
            serde_json::from_str(r#"{"error": "Weird <b>code</b>", "error_description": "AADSTS50034 no such user"}"#)
                .unwrap();
        assert_eq!(
            odd.describe(400),
            "HTTP 400: the token endpoint refused the request (AADSTS50034)"
        );
        assert_eq!(
            TokenError::default().describe(500),
            "HTTP 500: the token endpoint refused the request"
        );
    }
}
