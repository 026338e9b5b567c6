//! AWS Secrets Manager: the app credentials (`SECRET_ID`) and the webhook
//! signing secrets (`WEBHOOK_SECRET_ID`).

use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::federation::FederationContext;
use super::{CredentialSource, CredentialsError, Loaded, WebhookSecrets, parse_stored};
use crate::core::BoxFuture;

/// Reads one secret's string value and version.
async fn read(client: &aws_sdk_secretsmanager::Client, id: &str) -> Result<(String, Option<String>), CredentialsError> {
    let out = client.get_secret_value().secret_id(id).send().await.map_err(|e| {
        let detail = e
            .as_service_error()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "the secret store did not answer".into());
        CredentialsError::new(format!("secret {id}: {}", crate::core::text::bounded(&detail, 200)))
    })?;
    let text = out.secret_string().ok_or_else(|| {
        CredentialsError::new(format!(
            "secret {id}: has no string value (binary secrets are not supported)"
        ))
    })?;
    Ok((text.to_owned(), out.version_id().map(str::to_owned)))
}

/// App credentials stored as JSON in Secrets Manager.
pub struct SecretsManagerCredentials {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    federation: FederationContext,
}

impl SecretsManagerCredentials {
    /// A source reading `secret_id`.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String) -> Self {
        Self {
            client,
            secret_id,
            federation: FederationContext::default(),
        }
    }

    /// Gives documents that name federation the host's STS client.
    pub fn with_federation(mut self, federation: FederationContext) -> Self {
        self.federation = federation;
        self
    }
}

impl CredentialSource for SecretsManagerCredentials {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, CredentialsError>> {
        Box::pin(async move {
            let (text, version) = read(&self.client, &self.secret_id).await?;
            let (creds, cloud) = parse_stored(&text, &format!("secret {}", self.secret_id), &self.federation)?;
            Ok(Loaded { creds, cloud, version })
        })
    }

    fn name(&self) -> String {
        format!("secret {}", self.secret_id)
    }
}

/// Reads webhook signing secrets: `{"secrets": ["new", "old"]}`,
/// `{"secret": "..."}`, or the plain string. Several are accepted at once so
/// a secret can be rotated without refusing callers.
pub async fn webhook_secrets(
    client: &aws_sdk_secretsmanager::Client,
    id: &str,
) -> Result<Vec<SecretString>, CredentialsError> {
    let (text, _) = read(client, id).await?;
    super::checked_webhook_secrets(
        parse_webhook_secrets(&text).unwrap_or_default(),
        &format!("secret {id}"),
    )
}

/// Parses the forms [`webhook_secrets`] accepts.
pub fn parse_webhook_secrets(text: &str) -> Option<Vec<SecretString>> {
    let secrets: Vec<String> = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => match (o.get("secrets"), o.get("secret")) {
            (Some(serde_json::Value::Array(a)), _) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            (_, Some(serde_json::Value::String(s))) => vec![s.clone()],
            _ => Vec::new(),
        },
        _ => vec![text.trim().to_owned()],
    };
    let secrets: Vec<SecretString> = secrets
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(SecretString::from)
        .collect();
    (!secrets.is_empty()).then_some(secrets)
}

/// Webhook signing secrets in Secrets Manager, cached for a few minutes.
pub struct SecretsManagerWebhookSecrets {
    client: aws_sdk_secretsmanager::Client,
    secret_id: String,
    ttl: Duration,
    cache: Mutex<Option<(Vec<SecretString>, Instant)>>,
}

impl SecretsManagerWebhookSecrets {
    /// Reads `secret_id`, caching it for `ttl`.
    pub fn new(client: aws_sdk_secretsmanager::Client, secret_id: String, ttl: Duration) -> Self {
        Self {
            client,
            secret_id,
            ttl,
            cache: Mutex::new(None),
        }
    }
}

impl WebhookSecrets for SecretsManagerWebhookSecrets {
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SecretString>, String>> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some((s, _)) = cache.as_ref().filter(|(_, at)| at.elapsed() < self.ttl) {
                return Ok(s.clone());
            }
            let s = webhook_secrets(&self.client, &self.secret_id).await.map_err(|e| e.0)?;
            *cache = Some((s.clone(), Instant::now()));
            Ok(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn webhook_secret_forms() {
        let all = |t: &str| {
            parse_webhook_secrets(t).map(|v| v.iter().map(|s| s.expose_secret().to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(all(r#"{"secrets": ["a", "b"]}"#), Some(vec!["a".into(), "b".into()]));
        assert_eq!(all(r#"{"secret": "a"}"#), Some(vec!["a".into()]));
        assert_eq!(all("plain\n"), Some(vec!["plain".into()]));
        assert_eq!(all(r#"{"other": 1}"#), None);
        assert_eq!(all(""), None);
    }
}
