//! Workload identity federation: instead of a stored secret, the app proves
//! its identity to Entra ID with a short-lived token from an issuer the app
//! registration trusts (a federated identity credential: issuer, subject,
//! audience). Each host has its own issuer, and none needs a secret:
//!
//! - a token file (`AZURE_FEDERATED_TOKEN_FILE`: Kubernetes workload
//!   identity, any CI), read again for every token request;
//! - GitHub Actions' OIDC endpoint (`ATTEST_FEDERATION=github_actions`);
//! - an Azure user-assigned managed identity
//!   (`ATTEST_FEDERATION=managed_identity`);
//! - AWS STS `GetWebIdentityToken` (`ATTEST_FEDERATION=aws`, in
//!   [`super::sts`]).
//!
//! An assertion is fetched fresh for every token request and never kept:
//! it is as secret as a secret, held in a [`SecretString`], and no error
//! or log line carries it or the header that obtains it.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};

use crate::core::BoxFuture;

/// The setting that selects an issuer other than a token file.
pub const FEDERATION_SETTING: &str = "ATTEST_FEDERATION";
/// The token file setting (azure-identity's name).
pub const TOKEN_FILE_SETTING: &str = "AZURE_FEDERATED_TOKEN_FILE";
/// The user-assigned identity whose token is the assertion on Azure.
pub const MANAGED_IDENTITY_SETTING: &str = "ATTEST_MANAGED_IDENTITY_CLIENT_ID";

/// The least time an assertion must still be valid for to be sent: the
/// token request's round trip, with room to spare.
pub const MIN_ASSERTION_LIFETIME: Duration = Duration::from_secs(10);

/// How long an issuer may take to answer.
const ISSUER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no assertion could be had. Messages name the setting or the issuer,
/// never an assertion, a header value or a URL's query.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// A setting is missing or wrong, or the issuer refused for a reason
    /// only a change to the deployment can cure.
    #[error("{setting}: {what}")]
    Configuration {
        /// The setting (or settings) to look at.
        setting: &'static str,
        /// What is wrong.
        what: String,
    },
    /// The token file could not be read.
    #[error("{TOKEN_FILE_SETTING}: cannot read the token file")]
    TokenFile {
        /// The file system's reason (it names no path).
        #[source]
        source: std::io::Error,
    },
    /// The issuer could not be reached or gave an unusable answer; another
    /// attempt may succeed.
    #[error("{issuer}: {what}")]
    Unavailable {
        /// The issuer, by the setting that selects it.
        issuer: &'static str,
        /// What went wrong.
        what: String,
    },
}

impl FederationError {
    /// Whether only a change to the deployment can cure it.
    pub fn is_configuration(&self) -> bool {
        !matches!(self, FederationError::Unavailable { .. })
    }
}

/// An external token to present as the client assertion.
pub struct Assertion {
    /// The JWT.
    pub jwt: SecretString,
    /// When it expires (its `exp` claim).
    pub expires_at: SystemTime,
}

impl fmt::Debug for Assertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Assertion")
            .field("jwt", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl Assertion {
    /// An assertion from an issuer's token: it must be a JWT whose `exp`
    /// is at least [`MIN_ASSERTION_LIFETIME`] away, or it is not sent.
    pub fn checked(jwt: String, issuer: &'static str, now: SystemTime) -> Result<Self, FederationError> {
        let jwt = SecretString::from(jwt.trim().to_owned());
        let exp = jwt_expiry(jwt.expose_secret()).ok_or_else(|| FederationError::Unavailable {
            issuer,
            what: "the token is not a JWT with an exp claim".into(),
        })?;
        let expires_at = UNIX_EPOCH + Duration::from_secs(exp);
        if expires_at < now + MIN_ASSERTION_LIFETIME {
            let ago = now.duration_since(expires_at).map(|d| d.as_secs()).unwrap_or(0);
            return Err(FederationError::Unavailable {
                issuer,
                what: if ago > 0 {
                    format!("the token expired {ago} s ago; it is not sent (is it still being rotated?)")
                } else {
                    "the token expires within seconds; it is not sent".into()
                },
            });
        }
        Ok(Self { jwt, expires_at })
    }
}

/// The `exp` claim of a JWT, read without verifying it (the issuer's
/// signature is Entra's to check).
fn jwt_expiry(jwt: &str) -> Option<u64> {
    let mut parts = jwt.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match claims.get("exp")? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        _ => None,
    }
}

/// Where assertions come from.
pub trait AssertionSource: Send + Sync {
    /// A fresh assertion for `audience` (the cloud's token exchange
    /// audience, such as `api://AzureADTokenExchange`).
    fn assertion<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<Assertion, FederationError>>;
    /// The issuer, by the setting that selects it (for messages).
    fn describe(&self) -> &'static str;
}

/// What the federated sources may share with the host: its STS client on
/// AWS (else one is built from the environment on first use).
#[derive(Clone, Default)]
pub struct FederationContext {
    /// The STS client for [`super::sts::AwsWebIdentity`].
    pub sts: Option<aws_sdk_sts::Client>,
}

impl fmt::Debug for FederationContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationContext")
            .field("sts", &self.sts.is_some())
            .finish()
    }
}

/// Which issuer a deployment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FederationKind {
    /// GitHub Actions' OIDC endpoint.
    GitHubActions,
    /// An Azure user-assigned managed identity.
    ManagedIdentity,
    /// AWS STS `GetWebIdentityToken`.
    Aws,
}

impl FederationKind {
    /// Parses `ATTEST_FEDERATION` or a stored document's `federation`.
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "github_actions" => Some(Self::GitHubActions),
            "managed_identity" => Some(Self::ManagedIdentity),
            "aws" => Some(Self::Aws),
            _ => None,
        }
    }

    /// The accepted values, for messages.
    pub const VALUES: &'static str = "github_actions, managed_identity or aws";
}

/// The assertion source a deployment's settings select: `ATTEST_FEDERATION`
/// (`kind`), or the token file when it is unset. A missing or malformed
/// setting is a [`FederationError::Configuration`] naming it.
pub fn from_settings(
    kind: Option<FederationKind>,
    get: &dyn Fn(&str) -> Option<String>,
    ctx: &FederationContext,
) -> Result<Arc<dyn AssertionSource>, FederationError> {
    let need = |name: &'static str, why: &str| {
        get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| FederationError::Configuration {
                setting: name,
                what: format!("is not set ({why})"),
            })
    };
    Ok(match kind {
        None => Arc::new(TokenFile {
            path: PathBuf::from(need(TOKEN_FILE_SETTING, "the path of the federated token file")?),
        }),
        Some(FederationKind::GitHubActions) => {
            let why = "ATTEST_FEDERATION=github_actions needs the workflow's permission id-token: write";
            let url = need("ACTIONS_ID_TOKEN_REQUEST_URL", why)?;
            let url = issuer_url("ACTIONS_ID_TOKEN_REQUEST_URL", &url)?;
            let token = SecretString::from(need("ACTIONS_ID_TOKEN_REQUEST_TOKEN", why)?);
            Arc::new(GitHubActions {
                http: http_client()?,
                url,
                token,
            })
        }
        Some(FederationKind::ManagedIdentity) => {
            let endpoint = need(
                "IDENTITY_ENDPOINT",
                "ATTEST_FEDERATION=managed_identity needs an identity assigned to the function app",
            )?;
            let endpoint = issuer_url("IDENTITY_ENDPOINT", &endpoint)?;
            let header = SecretString::from(need(
                "IDENTITY_HEADER",
                "ATTEST_FEDERATION=managed_identity needs an identity assigned to the function app",
            )?);
            let client_id = need(
                MANAGED_IDENTITY_SETTING,
                "the client id of the user-assigned identity the app registration trusts",
            )?;
            if !is_guid(&client_id) {
                return Err(FederationError::Configuration {
                    setting: MANAGED_IDENTITY_SETTING,
                    what: "must be the user-assigned identity's client id (a GUID)".into(),
                });
            }
            Arc::new(ManagedIdentity {
                http: http_client()?,
                endpoint,
                header,
                client_id,
            })
        }
        Some(FederationKind::Aws) => Arc::new(super::sts::AwsWebIdentity::new(ctx.sts.clone())),
    })
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

/// An issuer URL: https, or http on the loopback interface or a link-local
/// address only (where hosts serve their identity endpoints).
fn issuer_url(setting: &'static str, raw: &str) -> Result<url::Url, FederationError> {
    let bad = |what: &str| FederationError::Configuration {
        setting,
        what: what.to_owned(),
    };
    let url = url::Url::parse(raw).map_err(|_| bad("is not a URL"))?;
    // The Functions host serves its identity endpoint on the loopback
    // interface; some hosts use a link-local address.
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
        return Err(bad(
            "must use https (http only on the loopback interface or a link-local address)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    Ok(url)
}

fn http_client() -> Result<reqwest::Client, FederationError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(ISSUER_TIMEOUT)
        .user_agent(concat!("intune-attest/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|_| FederationError::Configuration {
            setting: FEDERATION_SETTING,
            what: "cannot build an HTTP client".into(),
        })
}

/// A transport failure in words that carry no URL.
fn transport(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the answer was cut off or unreadable"
    } else {
        "the request could not be sent"
    }
}

/// Sends an issuer request and reads a JSON answer: 4xx is a configuration
/// error naming `setting`, anything else that fails may pass later.
async fn issuer_json(
    request: reqwest::RequestBuilder,
    issuer: &'static str,
    setting: &'static str,
) -> Result<serde_json::Value, FederationError> {
    let unavailable = |what: String| FederationError::Unavailable { issuer, what };
    let resp = request.send().await.map_err(|e| unavailable(transport(&e).into()))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| unavailable(transport(&e).into()))?;
    if status.is_client_error() && status.as_u16() != 429 && status.as_u16() != 408 {
        return Err(FederationError::Configuration {
            setting,
            what: format!("the issuer refused the request (HTTP {})", status.as_u16()),
        });
    }
    if !status.is_success() {
        return Err(unavailable(format!("HTTP {}", status.as_u16())));
    }
    serde_json::from_slice(&body).map_err(|_| unavailable("the answer is not JSON".into()))
}

fn string_field(v: &serde_json::Value, name: &str, issuer: &'static str) -> Result<String, FederationError> {
    v.get(name)
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| FederationError::Unavailable {
            issuer,
            what: format!("the answer has no {name}"),
        })
}

/// A token file another process keeps fresh (Kubernetes projects a service
/// account token; a CI step can write one). Read again for every request.
pub struct TokenFile {
    path: PathBuf,
}

impl AssertionSource for TokenFile {
    fn assertion<'a>(&'a self, _audience: &'a str) -> BoxFuture<'a, Result<Assertion, FederationError>> {
        Box::pin(async move {
            let text = tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|source| FederationError::TokenFile { source })?;
            Assertion::checked(text, TOKEN_FILE_SETTING, SystemTime::now())
        })
    }

    fn describe(&self) -> &'static str {
        TOKEN_FILE_SETTING
    }
}

/// GitHub Actions' OIDC token endpoint, available to a job with
/// `permissions: id-token: write`.
pub struct GitHubActions {
    http: reqwest::Client,
    url: url::Url,
    token: SecretString,
}

impl AssertionSource for GitHubActions {
    fn assertion<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<Assertion, FederationError>> {
        Box::pin(async move {
            const ISSUER: &str = "ATTEST_FEDERATION=github_actions";
            let mut url = self.url.clone();
            url.query_pairs_mut().append_pair("audience", audience);
            let request = self.http.get(url).bearer_auth(self.token.expose_secret());
            let answer = issuer_json(request, ISSUER, "ACTIONS_ID_TOKEN_REQUEST_TOKEN").await?;
            Assertion::checked(string_field(&answer, "value", ISSUER)?, ISSUER, SystemTime::now())
        })
    }

    fn describe(&self) -> &'static str {
        "ATTEST_FEDERATION=github_actions"
    }
}

/// The Functions host's identity endpoint, for a user-assigned identity
/// (Entra accepts only those as a federated credential).
pub struct ManagedIdentity {
    http: reqwest::Client,
    endpoint: url::Url,
    header: SecretString,
    client_id: String,
}

impl AssertionSource for ManagedIdentity {
    fn assertion<'a>(&'a self, audience: &'a str) -> BoxFuture<'a, Result<Assertion, FederationError>> {
        Box::pin(async move {
            const ISSUER: &str = "ATTEST_FEDERATION=managed_identity";
            let mut url = self.endpoint.clone();
            url.query_pairs_mut()
                .append_pair("api-version", "2019-08-01")
                .append_pair("resource", audience)
                .append_pair("client_id", &self.client_id);
            let request = self
                .http
                .get(url)
                .header("X-IDENTITY-HEADER", self.header.expose_secret());
            let answer = issuer_json(request, ISSUER, MANAGED_IDENTITY_SETTING).await?;
            Assertion::checked(
                string_field(&answer, "access_token", ISSUER)?,
                ISSUER,
                SystemTime::now(),
            )
        })
    }

    fn describe(&self) -> &'static str {
        "ATTEST_FEDERATION=managed_identity"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(exp: u64) -> String {
        let enc = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.c2ln",
            enc(serde_json::json!({"alg": "RS256"})),
            enc(serde_json::json!({"exp": exp, "sub": "s"}))
        )
    }

    #[test]
    fn an_expired_or_unreadable_assertion_is_never_accepted() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ok = Assertion::checked(jwt(1_000_300), "test", now).unwrap();
        assert_eq!(ok.expires_at, UNIX_EPOCH + Duration::from_secs(1_000_300));
        let shown = format!("{ok:?}");
        assert!(!shown.contains("c2ln"), "{shown}");
        let expired = Assertion::checked(jwt(999_000), "test", now).unwrap_err();
        assert!(expired.to_string().contains("expired 1000 s ago"), "{expired}");
        assert!(!expired.is_configuration());
        assert!(Assertion::checked(jwt(1_000_005), "test", now).is_err());
        let garbage = Assertion::checked("not-a-jwt".into(), "test", now).unwrap_err();
        assert!(!garbage.to_string().contains("not-a-jwt"), "{garbage}");
    }

    #[test]
    fn missing_settings_are_named() {
        let ctx = FederationContext::default();
        let none = |_: &str| None;
        let err = from_settings(None, &none, &ctx).err().unwrap();
        assert!(err.to_string().starts_with(TOKEN_FILE_SETTING), "{err}");
        assert!(err.is_configuration());
        let err = from_settings(Some(FederationKind::GitHubActions), &none, &ctx)
            .err()
            .unwrap();
        assert!(err.to_string().contains("ACTIONS_ID_TOKEN_REQUEST_URL"), "{err}");
        let mi = |k: &str| match k {
            "IDENTITY_ENDPOINT" => Some("http://127.0.0.1:1/msi/token".to_owned()),
            "IDENTITY_HEADER" => Some("h".to_owned()),
            _ => None,
        };
        let err = from_settings(Some(FederationKind::ManagedIdentity), &mi, &ctx)
            .err()
            .unwrap();
        assert!(err.to_string().starts_with(MANAGED_IDENTITY_SETTING), "{err}");
        let plain = |k: &str| match k {
            "ACTIONS_ID_TOKEN_REQUEST_URL" => Some("http://example.com/token?x=1".to_owned()),
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN" => Some("t".to_owned()),
            _ => None,
        };
        let err = from_settings(Some(FederationKind::GitHubActions), &plain, &ctx)
            .err()
            .unwrap();
        assert!(err.to_string().contains("https"), "{err}");
        assert_eq!(FederationKind::parse(" AWS "), Some(FederationKind::Aws));
        assert_eq!(FederationKind::parse("oidc"), None);
    }
}
