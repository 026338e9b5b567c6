//! Entra ID app credentials and where they come from: the
//! [`CredentialSource`] port, the azure-identity environment variables
//! ([`EnvCredentials`]) and AWS Secrets Manager ([`secrets_manager`]). Secret material is
//! held in [`secrecy`] wrappers: it never prints through `Debug` and is
//! zeroed when dropped.

pub mod secrets_manager;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::core::BoxFuture;

/// Why credentials could not be loaded. Messages name the source and the
/// missing or malformed field, never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CredentialsError(pub String);

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
        return Err(CredentialsError(format!("{source}: holds no webhook signing secret")));
    }
    if let Some(i) = secrets
        .iter()
        .position(|s| s.expose_secret().len() < MIN_WEBHOOK_SECRET_BYTES)
    {
        return Err(CredentialsError(format!(
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
}

impl fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCredential::Secret(_) => f.write_str("Secret([redacted])"),
            ClientCredential::Certificate(c) => {
                write!(f, "Certificate(x5t#S256={})", c.thumbprint_s256)
            }
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
        let blocks = pem::parse_many(certificate_pem)
            .map_err(|_| CredentialsError("the certificate is not valid PEM".into()))?;
        let cert = blocks
            .iter()
            .find(|b| b.tag() == "CERTIFICATE")
            .ok_or_else(|| CredentialsError("no CERTIFICATE block in the certificate PEM".into()))?;
        let thumbprint_s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(cert.contents()));
        let keys = pem::parse_many(private_key_pem)
            .map_err(|_| CredentialsError("the private key is not valid PEM".into()))?;
        let key = keys
            .iter()
            .find(|b| b.tag() == "PRIVATE KEY" || b.tag() == "RSA PRIVATE KEY")
            .ok_or_else(|| CredentialsError("no PRIVATE KEY or RSA PRIVATE KEY block in the key PEM".into()))?;
        let private_key_pem = SecretString::from(pem::encode(key));
        // Check the key is usable now rather than at the first token request.
        jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes())
            .map_err(|_| CredentialsError("the private key is not an RSA key jsonwebtoken can sign with".into()))?;
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

fn is_tenant(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl AppCredentials {
    /// Reads azure-identity's environment variables: `AZURE_TENANT_ID`,
    /// `AZURE_CLIENT_ID`, and `AZURE_CLIENT_SECRET` or
    /// `AZURE_CLIENT_CERTIFICATE_PATH` (a PEM file with the certificate and
    /// its private key).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, CredentialsError> {
        let need = |name: &str| {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| CredentialsError(format!("{name} is not set")))
        };
        let tenant_id = need("AZURE_TENANT_ID")?;
        let client_id = need("AZURE_CLIENT_ID")?;
        let credential = if let Some(secret) = get("AZURE_CLIENT_SECRET").filter(|s| !s.is_empty()) {
            ClientCredential::Secret(SecretString::from(secret))
        } else if let Some(path) = get("AZURE_CLIENT_CERTIFICATE_PATH").filter(|s| !s.is_empty()) {
            let text = std::fs::read_to_string(Path::new(&path)).map_err(|e| {
                CredentialsError(format!(
                    "AZURE_CLIENT_CERTIFICATE_PATH: cannot read {path:?}: {}",
                    e.kind()
                ))
            })?;
            let cert = ClientCertificate::from_pem(&text, &text)
                .map_err(|e| CredentialsError(format!("AZURE_CLIENT_CERTIFICATE_PATH {path:?}: {e}")))?;
            ClientCredential::Certificate(cert)
        } else {
            return Err(CredentialsError(
                "neither AZURE_CLIENT_SECRET nor AZURE_CLIENT_CERTIFICATE_PATH is set".into(),
            ));
        };
        Self::new(tenant_id, client_id, credential)
    }

    /// Checks the identifiers' shape (they go into the token URL and form).
    pub fn new(tenant_id: String, client_id: String, credential: ClientCredential) -> Result<Self, CredentialsError> {
        if !is_tenant(&tenant_id) {
            return Err(CredentialsError("the tenant ID must be a GUID or a domain name".into()));
        }
        if !is_tenant(&client_id) {
            return Err(CredentialsError("the client ID must be a GUID".into()));
        }
        Ok(Self {
            tenant_id,
            client_id,
            credential,
        })
    }
}

/// Credentials from azure-identity's environment variables (read at each
/// load, so a changed environment is picked up).
pub struct EnvCredentials;

impl CredentialSource for EnvCredentials {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, CredentialsError>> {
        Box::pin(async move {
            let creds = AppCredentials::from_env(|k| std::env::var(k).ok())?;
            Ok(Loaded {
                creds,
                cloud: None,
                version: None,
            })
        })
    }

    fn name(&self) -> String {
        "the AZURE_* environment variables".into()
    }
}

/// Credentials as a secret store holds them (the JSON of the secret named
/// by `SECRET_ID`):
///
/// ```json
/// {"tenant_id": "...", "client_id": "...", "client_secret": "...", "cloud": "global"}
/// {"tenant_id": "...", "client_id": "...", "certificate_pem": "-----BEGIN CERTIFICATE-----...",
///  "private_key_pem": "-----BEGIN PRIVATE KEY-----..."}
/// ```
///
/// Other fields are ignored. Errors name the store and the field, never a value.
pub fn parse_stored(json: &str, source: &str) -> Result<(AppCredentials, Option<Cloud>), CredentialsError> {
    #[derive(serde::Deserialize)]
    struct Stored {
        tenant_id: Option<String>,
        client_id: Option<String>,
        client_secret: Option<SecretString>,
        certificate_pem: Option<String>,
        private_key_pem: Option<SecretString>,
        cloud: Option<String>,
    }
    let stored: Stored = serde_json::from_str(json).map_err(|_| {
        CredentialsError(format!(
            "{source}: the secret is not a JSON object of the documented shape"
        ))
    })?;
    let field = |v: Option<String>, name: &str| {
        v.filter(|s| !s.trim().is_empty())
            .ok_or_else(|| CredentialsError(format!("{source}: the secret has no {name}")))
    };
    let tenant_id = field(stored.tenant_id, "tenant_id")?;
    let client_id = field(stored.client_id, "client_id")?;
    let credential = match (stored.client_secret, stored.certificate_pem, stored.private_key_pem) {
        (Some(secret), _, _) if !secret.expose_secret().is_empty() => ClientCredential::Secret(secret),
        (_, Some(cert), Some(key)) => ClientCredential::Certificate(
            ClientCertificate::from_pem(&cert, key.expose_secret())
                .map_err(|e| CredentialsError(format!("{source}: {e}")))?,
        ),
        _ => {
            return Err(CredentialsError(format!(
                "{source}: the secret has neither client_secret nor certificate_pem with private_key_pem"
            )));
        }
    };
    let cloud =
        match stored.cloud.filter(|c| !c.is_empty()) {
            Some(c) => Some(c.parse().map_err(|_| {
                CredentialsError(format!("{source}: cloud {c:?} is not global, usgov, usgovdod or china"))
            })?),
            None => None,
        };
    let creds = AppCredentials::new(tenant_id, client_id, credential)
        .map_err(|e| CredentialsError(format!("{source}: {e}")))?;
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
        let (c, cloud) = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "client_secret": "s3cr3t-value", "cloud": "usgov", "note": "x"}"#,
            "secret app/intune",
        )
        .unwrap();
        assert_eq!(c.client_id, "c");
        assert_eq!(cloud, Some(Cloud::UsGov));
        let err = parse_stored(
            r#"{"tenant_id": "t", "client_secret": "s3cr3t-value"}"#,
            "secret app/intune",
        )
        .unwrap_err();
        assert_eq!(err.0, "secret app/intune: the secret has no client_id");
        let err = parse_stored(r#"{"tenant_id": "t", "client_id": "c"}"#, "secret x").unwrap_err();
        assert!(err.0.contains("neither client_secret"), "{err}");
        let err = parse_stored("s3cr3t-value", "secret x").unwrap_err();
        assert!(!err.0.contains("s3cr3t"), "{err}");
        let err = parse_stored(
            r#"{"tenant_id": "t", "client_id": "c", "client_secret": "s", "cloud": "mars"}"#,
            "secret x",
        )
        .unwrap_err();
        assert!(err.0.contains("mars"), "{err}");
    }

    #[test]
    fn missing_settings_are_named() {
        let err = AppCredentials::from_env(|k| (k == "AZURE_TENANT_ID").then(|| "t".to_string())).unwrap_err();
        assert_eq!(err.0, "AZURE_CLIENT_ID is not set");
        let err = AppCredentials::from_env(|k| match k {
            "AZURE_TENANT_ID" | "AZURE_CLIENT_ID" => Some("x".to_string()),
            _ => None,
        })
        .unwrap_err();
        assert!(err.0.contains("AZURE_CLIENT_SECRET"));
        let err = AppCredentials::from_env(|k| match k {
            "AZURE_TENANT_ID" => Some("../evil?".to_string()),
            _ => Some("x".to_string()),
        })
        .unwrap_err();
        assert!(err.0.contains("tenant"));
    }
}
