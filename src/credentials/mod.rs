//! Entra ID app credentials and where they come from: the
//! [`CredentialSource`] port, the azure-identity environment variables
//! ([`EnvCredentials`]), AWS Secrets Manager ([`secrets_manager`]), and
//! workload identity federation, which needs no stored secret at all
//! ([`federation`]: a token file, GitHub Actions, an Azure managed
//! identity; [`sts`]: AWS), or a person's own sign-in ([`delegated`]).
//! Secret material is held in [`secrecy`]
//! wrappers: it never prints through `Debug` and is zeroed when dropped.

pub mod delegated;
pub mod federation;
pub mod secrets_manager;
pub mod sts;

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::core::BoxFuture;
use federation::{AssertionSource, FederationContext, FederationError, FederationKind};

/// Why credentials could not be loaded. Messages name the source and the
/// missing or malformed field, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String, pub CredentialsFault);

/// Whose move it is when credentials cannot be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialsFault {
    /// The store or the stored value failed (it may be fixed or reachable
    /// later without touching the deployment).
    Unavailable,
    /// A deployment setting is missing or wrong (`ConfigurationError`).
    Configuration,
}

impl CredentialsError {
    /// A failure of the store or of the stored value.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into(), CredentialsFault::Unavailable)
    }

    /// A deployment setting is missing or wrong.
    pub fn configuration(message: impl Into<String>) -> Self {
        Self(message.into(), CredentialsFault::Configuration)
    }

    /// Whether a deployment setting is at fault.
    pub fn is_configuration(&self) -> bool {
        self.1 == CredentialsFault::Configuration
    }

    /// The same error, said of `source` (a secret's name).
    pub fn within(self, source: &str) -> Self {
        Self(format!("{source}: {}", self.0), self.1)
    }
}

impl From<FederationError> for CredentialsError {
    fn from(e: FederationError) -> Self {
        let text = error_chain(&e);
        if e.is_configuration() {
            Self::configuration(text)
        } else {
            Self::new(text)
        }
    }
}

/// An error and its sources, joined with `: ` (sources carry no secret:
/// I/O reasons and the like).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A national cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    /// Global Azure (and GCC).
    Global,
    /// US Government L4 (GCC High).
    UsGov,
    /// US Government L5 (DoD).
    UsGovDod,
    /// Azure China (21Vianet).
    China,
}

impl Cloud {
    /// The Graph root for this cloud.
    pub fn graph_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::UsGov => "https://graph.microsoft.us",
            Cloud::UsGovDod => "https://dod-graph.microsoft.us",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    /// The Entra ID authority for this cloud.
    pub fn login_host(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::UsGov | Cloud::UsGovDod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The audience a federated credential's external token is issued for
    /// in this cloud.
    pub fn federation_audience(self) -> &'static str {
        match self {
            Cloud::Global => "api://AzureADTokenExchange",
            Cloud::UsGov | Cloud::UsGovDod => "api://AzureADTokenExchangeUSGov",
            Cloud::China => "api://AzureADTokenExchangeChina",
        }
    }
}

impl FromStr for Cloud {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "global" | "public" | "azurepubliccloud" => Ok(Cloud::Global),
            "usgov" | "gcchigh" | "usgovl4" | "azureusgovernment" => Ok(Cloud::UsGov),
            "usgovdod" | "dod" | "usgovl5" => Ok(Cloud::UsGovDod),
            "china" | "azurechinacloud" => Ok(Cloud::China),
            _ => Err(format!(
                "ATTEST_CLOUD: {s:?} is not a cloud; expected global, usgov, usgovdod or china"
            )),
        }
    }
}

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

/// Where the webhook signing secrets come from.
pub trait WebhookSecrets: Send + Sync {
    /// The current secrets (several while one is being rotated).
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SecretString>, String>>;
}

/// The shortest webhook signing secret accepted: an HMAC-SHA256 key should
/// carry at least 256 bits.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 32;

/// Checks signing secrets: at least one, none shorter than
/// [`MIN_WEBHOOK_SECRET_BYTES`]. The error says which rule failed, never a
/// value.
pub fn checked_webhook_secrets(
    secrets: Vec<SecretString>,
    source: &str,
) -> Result<Vec<SecretString>, CredentialsError> {
    if secrets.is_empty() {
        return Err(CredentialsError::new(format!(
            "{source}: holds no webhook signing secret"
        )));
    }
    if let Some(i) = secrets
        .iter()
        .position(|s| s.expose_secret().len() < MIN_WEBHOOK_SECRET_BYTES)
    {
        return Err(CredentialsError::new(format!(
            "{source}: webhook signing secret {} is shorter than {MIN_WEBHOOK_SECRET_BYTES} bytes",
            i + 1
        )));
    }
    Ok(secrets)
}

/// Secrets fixed at start-up (an app setting).
pub struct StaticSecrets(pub Vec<SecretString>);

impl WebhookSecrets for StaticSecrets {
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SecretString>, String>> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
}

/// How the app proves its identity to Entra ID.
pub enum ClientCredential {
    /// A client secret.
    Secret(SecretString),
    /// A certificate: a JWT client assertion signed with its private key.
    Certificate(ClientCertificate),
    /// Workload identity federation: an external issuer's token, fetched
    /// fresh for each token request.
    Federated(Arc<dyn AssertionSource>),
    /// No credential of the app's: a user signed in (the device code flow)
    /// and the tokens act for them.
    Delegated(Arc<delegated::DelegatedSession>),
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret([redacted])"),
            ClientCredential::Certificate(c) => {
                write!(f, "Certificate(x5t#S256={})", c.thumbprint_s256)
            }
            ClientCredential::Federated(s) => write!(f, "Federated({})", s.describe()),
            ClientCredential::Delegated(_) => f.write_str("Delegated([signed-in user])"),
        }
    }
}

/// A certificate credential: the public thumbprint and the private key.
pub struct ClientCertificate {
    /// base64url SHA-256 of the certificate's DER (`x5t#S256`).
    pub thumbprint_s256: String,
    /// The RSA private key, PEM.
    pub private_key_pem: SecretString,
}

impl ClientCertificate {
    /// Builds a certificate credential from a certificate PEM and a private
    /// key PEM (which may be the same text, as in azure-identity's
    /// `AZURE_CLIENT_CERTIFICATE_PATH` files).
    pub fn from_pem(certificate_pem: &str, private_key_pem: &str) -> Result<Self, CredentialsError> {
        let blocks =
            pem::parse_many(certificate_pem).map_err(|_| CredentialsError::new("the certificate is not valid PEM"))?;
        let cert = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| CredentialsError::new("no CERTIFICATE block in the certificate PEM"))?;
        let thumbprint_s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(cert.contents()));
        let keys =
            pem::parse_many(private_key_pem).map_err(|_| CredentialsError::new("the private key is not valid PEM"))?;
        let key = keys
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
            .ok_or_else(|| CredentialsError::new("no PRIVATE KEY or RSA PRIVATE KEY block in the key PEM"))?;
        let private_key_pem = SecretString::from(pem::encode(key));
        // Check the key is usable now rather than at the first token request.
        jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
            .map_err(|_| CredentialsError::new("the private key is not an RSA key jsonwebtoken can sign with"))?;
        Ok(Self {
            thumbprint_s256,
            private_key_pem,
        })
    }
}

/// The app registration's credentials.
#[derive(Debug)]
pub struct AppCredentials {
    /// Directory (tenant) ID.
    pub tenant_id: String,
    /// Application (client) ID.
    pub client_id: String,
    /// Secret or certificate.
    pub credential: ClientCredential,
}

/// `AZURE_TENANT_ID` and `AZURE_CLIENT_ID` where set (not blank), and the
/// names of those that are not.
pub fn identifier_settings(get: impl Fn(&str) -> Option<String>) -> (Option<String>, Option<String>, Vec<String>) {
    let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let (tenant_id, client_id) = (set("AZURE_TENANT_ID"), set("AZURE_CLIENT_ID"));
    let missing = [("AZURE_TENANT_ID", &tenant_id), ("AZURE_CLIENT_ID", &client_id)]
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| (*n).to_owned())
        .collect();
    (tenant_id, client_id, missing)
}

/// Checks a tenant and a client id have the shape they may go into a
/// token URL and form with.
pub fn check_identifiers(tenant_id: &str, client_id: &str) -> Result<(), CredentialsError> {
    if !is_tenant(tenant_id) {
        return Err(CredentialsError::new("the tenant ID must be a GUID or a domain name"));
    }
    if !is_tenant(client_id) {
        return Err(CredentialsError::new("the client ID must be a GUID"));
    }
    Ok(())
}

fn is_tenant(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl AppCredentials {
    /// Reads azure-identity's environment variables: `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, and `AZURE_CLIENT_SECRET` or
    /// `AZURE_CLIENT_CERTIFICATE_PATH` (a PEM file with the certificate and
    /// its private key) or `AZURE_FEDERATED_TOKEN_FILE`; or, with
    /// `ATTEST_FEDERATION`, the issuer it names (and no secret).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CredentialsError> {
        Self::from_env_with(get, &FederationContext::default())
    }

    /// As [`Self::from_env`], with the host's STS client for
    /// `ATTEST_FEDERATION=aws`.
    pub fn from_env_with(
        get: impl Fn(&str) -> Option<String>,
        ctx: &FederationContext,
    ) -> Result<Self, CredentialsError> {
        let get: &dyn Fn(&str) -> Option<String> = &get;
        let set = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let federation = match set(federation::FEDERATION_SETTING) {
            Some(v) => Some(FederationKind::parse(&v).ok_or_else(|| {
                CredentialsError::configuration(format!(
                    "{}: {:?} is not an issuer; expected {}",
                    federation::FEDERATION_SETTING,
                    crate::core::text::bounded(&v, 40),
                    FederationKind::VALUES
                ))
            })?),
            None => None,
        };
        let secret = get("AZURE_CLIENT_SECRET").filter(|s| !s.is_empty());
        let certificate = set("AZURE_CLIENT_CERTIFICATE_PATH");
        // Every setting missing is said at once, not one a run.
        let (tenant_id, client_id, mut missing) = identifier_settings(get);
        let has_credential = federation.is_some()
            || secret.is_some()
            || certificate.is_some()
            || set(federation::TOKEN_FILE_SETTING).is_some();
        if !has_credential {
            missing.push(format!(
                "a credential ({}, or {} with {}, or AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH)",
                federation::TOKEN_FILE_SETTING,
                federation::FEDERATION_SETTING,
                FederationKind::VALUES
            ));
        }
        let (Some(tenant_id), Some(client_id), true) = (tenant_id, client_id, has_credential) else {
            return Err(CredentialsError::configuration(format!(
                "not set: {}",
                missing.join("; ")
            )));
        };
        let credential = if let Some(kind) = federation {
            // A federated deployment holds no secret: one beside it is a
            // mistake to point out, not a fallback.
            for (name, present) in [
                ("AZURE_CLIENT_SECRET", secret.is_some()),
                ("AZURE_CLIENT_CERTIFICATE_PATH", certificate.is_some()),
            ] {
                if present {
                    return Err(CredentialsError::configuration(format!(
                        "{} and {name} are both set; a federated deployment holds no secret: unset {name}",
                        federation::FEDERATION_SETTING
                    )));
                }
            }
            ClientCredential::Federated(federation::from_settings(Some(kind), get, ctx)?)
        } else if let Some(secret) = secret {
            ClientCredential::Secret(SecretString::from(secret))
        } else if let Some(path) = certificate {
            let text = std::fs::read_to_string(Path::new(&path)).map_err(|e| {
                CredentialsError::new(format!(
                    "AZURE_CLIENT_CERTIFICATE_PATH: cannot read {path:?}: {}",
                    e.kind()
                ))
            })?;
            let cert = ClientCertificate::from_pem(&text, &text)
                .map_err(|e| CredentialsError::new(format!("AZURE_CLIENT_CERTIFICATE_PATH {path:?}: {e}")))?;
            ClientCredential::Certificate(cert)
        } else {
            // The token file, the one credential left (`has_credential`).
            ClientCredential::Federated(federation::from_settings(None, get, ctx)?)
        };
        Self::new(tenant_id, client_id, credential)
    }

    /// Checks the identifiers' shape (they go into the token URL and form).
    pub fn new(tenant_id: String, client_id: String, credential: ClientCredential) -> Result<Self, CredentialsError> {
        check_identifiers(&tenant_id, &client_id)?;
        Ok(Self {
            tenant_id,
            client_id,
            credential,
        })
    }
}

/// Checks, at start-up, the settings of a deployment that selects
/// federation (`ATTEST_FEDERATION` or `AZURE_FEDERATED_TOKEN_FILE`): a
/// missing or wrong one is a configuration error naming it before any
/// request. Other deployments are checked when their credentials load.
pub fn check_federation_settings(
    get: impl Fn(&str) -> Option<String>,
    ctx: &FederationContext,
) -> Result<(), CredentialsError> {
    let selects = |k: &str| get(k).is_some_and(|v| !v.trim().is_empty());
    if selects(federation::FEDERATION_SETTING) || selects(federation::TOKEN_FILE_SETTING) {
        AppCredentials::from_env_with(&get, ctx)?;
    }
    Ok(())
}

/// Credentials from azure-identity's environment variables (read at each
/// load, so a changed environment is picked up), or the issuer
/// `ATTEST_FEDERATION` names.
#[derive(Default)]
pub struct EnvCredentials {
    federation: FederationContext,
}

impl EnvCredentials {
    /// With the host's STS client for `ATTEST_FEDERATION=aws`.
    pub fn with_federation(federation: FederationContext) -> Self {
        Self { federation }
    }
}

impl CredentialSource for EnvCredentials {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, CredentialsError>> {
        Box::pin(async move {
            let creds = AppCredentials::from_env_with(|k| std::env::var(k).ok(), &self.federation)?;
            Ok(Loaded {
                creds,
                cloud: None,
                version: None,
            })
        })
    }

    fn name(&self) -> String {
        "the AZURE_* and ATTEST_FEDERATION environment variables".into()
    }
}

/// Credentials as a secret store holds them (the JSON of the secret named
/// by `SECRET_ID`):
///
/// ```json
/// {"tenant_id": "...", "client_id": "...", "federation": "aws", "cloud": "global"}
/// {"tenant_id": "...", "client_id": "...", "client_secret": "...", "cloud": "global"}
/// {"tenant_id": "...", "client_id": "...", "certificate_pem": "-----BEGIN CERTIFICATE-----...",
///  "private_key_pem": "-----BEGIN PRIVATE KEY-----..."}
/// ```
///
/// `federation` names an issuer instead of a secret (`aws`,
/// `github_actions` or `managed_identity`, with the host's own settings),
/// so a document for a further tenant need hold no secret either. Other
/// fields are ignored. Errors name the store and the field, never a value.
pub fn parse_stored(
    json: &str,
    source: &str,
    ctx: &FederationContext,
) -> Result<(AppCredentials, Option<Cloud>), CredentialsError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        tenant_id: Option<String>,
        client_id: Option<String>,
        client_secret: Option<SecretString>,
        certificate_pem: Option<String>,
        private_key_pem: Option<SecretString>,
        federation: Option<String>,
        cloud: Option<String>,
    }
    let stored: Stored = serde_json::from_str(json).map_err(|_| {
        CredentialsError::new(format!(
            "{source}: the secret is not a JSON object of the documented shape"
        ))
    })?;
    let field = |v: Option<String>, name: &str| {
        v.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| CredentialsError::new(format!("{source}: the secret has no {name}")))
    };
    let tenant_id = field(stored.tenant_id, "tenant_id")?;
    let client_id = field(stored.client_id, "client_id")?;
    let has_secret = stored
        .client_secret
        .as_ref()
        .is_some_and(|s| !s.expose_secret().is_empty())
        || stored.private_key_pem.is_some();
    let credential = match (
        stored.federation.filter(|f| !f.trim().is_empty()),
        stored.client_secret,
        stored.certificate_pem,
        stored.private_key_pem,
    ) {
        (Some(_), ..) if has_secret => {
            return Err(CredentialsError::configuration(format!(
                "{source}: the secret names federation and also holds a client secret or key; \
                 a federated tenant holds no secret"
            )));
        }
        (Some(f), ..) => {
            let kind = FederationKind::parse(&f).ok_or_else(|| {
                CredentialsError::configuration(format!(
                    "{source}: federation {:?} is not {}",
                    crate::core::text::bounded(&f, 40),
                    FederationKind::VALUES
                ))
            })?;
            let host = |k: &str| std::env::var(k).ok();
            ClientCredential::Federated(
                federation::from_settings(Some(kind), &host, ctx)
                    .map_err(|e| CredentialsError::from(e).within(source))?,
            )
        }
        (None, Some(secret), _, _) if !secret.expose_secret().is_empty() => ClientCredential::Secret(secret),
        (None, _, Some(cert), Some(key)) => ClientCredential::Certificate(
            ClientCertificate::from_pem(&cert, key.expose_secret())
                .map_err(|e| CredentialsError::new(format!("{source}: {e}")))?,
        ),
        _ => {
            return Err(CredentialsError::new(format!(
                "{source}: the secret has neither client_secret, certificate_pem with private_key_pem, nor federation"
            )));
        }
    };
    let cloud = match stored.cloud.filter(|c| !c.is_empty()) {
        Some(c) => Some(c.parse().map_err(|_| {
            CredentialsError::new(format!("{source}: cloud {c:?} is not global, usgov, usgovdod or china"))
        })?),
        None => None,
    };
    let creds = AppCredentials::new(tenant_id, client_id, credential)
        .map_err(|e| CredentialsError::new(format!("{source}: {e}")))?;
    Ok((creds, cloud))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn debug_never_shows_the_secret() {
        let env: HashMap<&str, &str> = [
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555"),
            ("AZURE_CLIENT_SECRET", "super-secret-value"),
        ]
        .into();
        let c = AppCredentials::from_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("super-secret-value"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn stored_secrets_are_parsed_and_their_errors_name_the_field_only() {
        let ctx = FederationContext::default();
        let (c, cloud) = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "client_secret": "s3cr3t-value", "cloud": "usgov", "note": "x"}"#,
            "secret app/intune",
            &ctx,
        )
        .unwrap();
        assert_eq!(c.client_id, "c");
        assert_eq!(cloud, Some(Cloud::UsGov));
        let err = parse_stored(
            r#"{"tenant_id": "t", "client_secret": "s3cr3t-value"}"#,
            "secret app/intune",
            &ctx,
        )
        .unwrap_err();
        assert_eq!(err.0, "secret app/intune: the secret has no client_id");
        let err = parse_stored(r#"{"tenant_id": "t", "client_id": "c"}"#, "secret x", &ctx).unwrap_err();
        assert!(err.0.contains("neither client_secret"), "{err}");
        let err = parse_stored("s3cr3t-value", "secret x", &ctx).unwrap_err();
        assert!(!err.0.contains("s3cr3t"), "{err}");
        let err = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "client_secret": "s", "cloud": "mars"}"#,
            "secret x",
            &ctx,
        )
        .unwrap_err();
        assert!(err.0.contains("mars"), "{err}");
    }

    #[test]
    fn a_stored_document_may_name_federation_instead_of_a_secret() {
        let ctx = FederationContext::default();
        let (c, _) = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "federation": "aws"}"#,
            "secret tenants/b",
            &ctx,
        )
        .unwrap();
        assert_eq!(format!("{:?}", c.credential), "Federated(ATTEST_FEDERATION=aws)");
        let err = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "federation": "aws", "client_secret": "s3cr3t-value"}"#,
            "secret tenants/b",
            &ctx,
        )
        .unwrap_err();
        assert!(err.is_configuration() && err.0.contains("holds no secret"), "{err}");
        assert!(!err.0.contains("s3cr3t"));
        let err = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "federation": "oidc"}"#,
            "secret tenants/b",
            &ctx,
        )
        .unwrap_err();
        assert!(err.is_configuration() && err.0.contains("federation \"oidc\""), "{err}");
    }

    #[test]
    fn federation_settings_are_checked_and_named() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
        };
        let err = AppCredentials::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("ATTEST_FEDERATION", "kerberos"),
        ]))
        .unwrap_err();
        assert!(
            err.is_configuration() && err.0.starts_with("ATTEST_FEDERATION"),
            "{err}"
        );
        let err = AppCredentials::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("ATTEST_FEDERATION", "aws"),
            ("AZURE_CLIENT_SECRET", "s3cr3t-value"),
        ]))
        .unwrap_err();
        assert!(
            err.0.contains("unset AZURE_CLIENT_SECRET") && !err.0.contains("s3cr3t"),
            "{err}"
        );
        let err = AppCredentials::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("ATTEST_FEDERATION", "managed_identity"),
        ]))
        .unwrap_err();
        assert!(
            err.is_configuration() && err.0.starts_with("IDENTITY_ENDPOINT"),
            "{err}"
        );
        let ok = AppCredentials::from_env(env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ]))
        .unwrap();
        assert_eq!(format!("{:?}", ok.credential), "Federated(AZURE_FEDERATED_TOKEN_FILE)");
        assert_eq!(Cloud::UsGovDod.federation_audience(), "api://AzureADTokenExchangeUSGov");
    }

    #[test]
    fn missing_settings_are_named() {
        let err = AppCredentials::from_env(|k| (k == "AZURE_TENANT_ID").then(|| "t".to_string())).unwrap_err();
        assert!(
            err.0.starts_with("not set: AZURE_CLIENT_ID; a credential ("),
            "{}",
            err.0
        );
        // Nothing set: every setting named in one message.
        let err = AppCredentials::from_env(|_| None).unwrap_err();
        assert!(
            err.0
                .starts_with("not set: AZURE_TENANT_ID; AZURE_CLIENT_ID; a credential"),
            "{}",
            err.0
        );
        let err = AppCredentials::from_env(|k| match k {
            "AZURE_TENANT_ID" | "AZURE_CLIENT_ID" => Some("x".to_string()),
            _ => None,
        })
        .unwrap_err();
        assert!(err.0.contains("AZURE_CLIENT_SECRET"));
        let err = AppCredentials::from_env(|k| match k {
            "AZURE_TENANT_ID" => Some("../evil?".to_string()),
            "ATTEST_FEDERATION" => None,
            _ => Some("x".to_string()),
        })
        .unwrap_err();
        assert!(err.0.contains("tenant"));
    }
}
