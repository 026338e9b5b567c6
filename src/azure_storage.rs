//! The Azure Storage account the Azure adapters (the work queue's
//! `queue::azure` and the shared state's `state::blob`) share: its service URLs from the identity-based
//! connection settings the Functions host itself reads
//! (`AzureWebJobsStorage__queueServiceUri`, `__blobServiceUri`, or
//! `__accountName` for the public cloud), how requests are authenticated
//! (a SAS carried in a service URL is used as is; otherwise the function
//! app's managed identity, the user-assigned one named by
//! `AzureWebJobsStorage__clientId` when set), and storage errors described
//! without the URL's query string, so a SAS never reaches a log line or an
//! error.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, Url};

/// The setting prefix the Functions host reads its own storage account from.
pub const SETTING_PREFIX: &str = "AzureWebJobsStorage__";

/// A storage service call failed. The description never holds a URL's
/// query string (a SAS).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what}")]
pub struct StorageFault {
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// The service's error code (`BlobAlreadyExists`, `ConditionNotMet`...).
    pub code: Option<String>,
    what: String,
}

impl StorageFault {
    /// The fault of an SDK call, redacted.
    pub fn from_sdk(e: &azure_core::Error) -> Self {
        match e.kind() {
            azure_core::error::ErrorKind::HttpResponse { status, error_code, .. } => {
                let status = u16::from(*status);
                let code = error_code.clone().map(|c| redacted(&c));
                Self {
                    status: Some(status),
                    what: format!(
                        "storage answered HTTP {status}{}",
                        code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
                    ),
                    code,
                }
            }
            kind => Self {
                status: None,
                code: None,
                what: format!(
                    "storage did not answer ({kind}: {})",
                    crate::core::text::bounded(&redacted(&e.to_string()), 200)
                ),
            },
        }
    }

    /// The fault's description, for an error message.
    pub fn what(&self) -> &str {
        &self.what
    }
}

/// `text` with the query string of every URL in it left out, and any
/// SAS signature parameter masked.
pub fn redacted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(q) = rest.find('?') {
        let (before, after) = rest.split_at(q);
        out.push_str(before);
        // The query runs to the next space, quote or bracket.
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ']'))
            .unwrap_or(after.len());
        if after[..end].contains('=') {
            out.push_str("?(query redacted)");
        } else {
            out.push_str(&after[..end]);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    // A signature outside a URL, too.
    while let Some(i) = out.find("sig=") {
        let end = out[i..]
            .find(|c: char| c == '&' || c.is_whitespace())
            .map_or(out.len(), |e| i + e);
        out.replace_range(i..end, "sig(redacted)");
    }
    out
}

/// The account: its queue and blob service URLs and the credential for
/// the URLs that carry no SAS.
#[derive(Clone)]
pub struct StorageAccount {
    queue_service: Option<Url>,
    blob_service: Option<Url>,
    credential: Option<Arc<dyn TokenCredential>>,
}

impl std::fmt::Debug for StorageAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |u: &Option<Url>| u.as_ref().map(|u| redacted(u.as_str()));
        f.debug_struct("StorageAccount")
            .field("queue_service", &show(&self.queue_service))
            .field("blob_service", &show(&self.blob_service))
            .field("managed_identity", &self.credential.is_some())
            .finish()
    }
}

fn service_url(setting: &str, value: &str) -> Result<Url, String> {
    let url = Url::parse(value.trim()).map_err(|e| {
        format!(
            "{setting}: {:?} is not a URL ({e})",
            crate::core::text::bounded(&redacted(value), 120)
        )
    })?;
    if url.cannot_be_a_base() || !matches!(url.scheme(), "https" | "http") {
        return Err(format!(
            "{setting}: {} is not an http(s) service URL",
            redacted(url.as_str())
        ));
    }
    Ok(url)
}

impl StorageAccount {
    /// The account from the host's settings; `None` when none names it
    /// (local runs keep their state in process). The managed identity is
    /// used only for service URLs without a SAS (it needs https).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let setting = |name: &str| get(&format!("{SETTING_PREFIX}{name}")).filter(|v| !v.trim().is_empty());
        let account = setting("accountName");
        let uri = |service: &str| -> Result<Option<Url>, String> {
            let name = format!("{service}ServiceUri");
            match (setting(&name), &account) {
                (Some(v), _) => service_url(&format!("{SETTING_PREFIX}{name}"), &v).map(Some),
                (None, Some(a)) => {
                    if a.is_empty() || !a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
                        return Err(format!(
                            "{SETTING_PREFIX}accountName: {a:?} is not a storage account name (lower-case letters and digits)"
                        ));
                    }
                    service_url(&name, &format!("https://{a}.{service}.core.windows.net")).map(Some)
                }
                (None, None) => Ok(None),
            }
        };
        let (queue_service, blob_service) = (uri("queue")?, uri("blob")?);
        if queue_service.is_none() && blob_service.is_none() {
            return Ok(None);
        }
        let needs_identity = [&queue_service, &blob_service]
            .into_iter()
            .flatten()
            .any(|u| u.query().is_none_or(str::is_empty));
        let credential = if needs_identity {
            if let Some(kind) = setting("credential")
                && kind != "managedidentity"
            {
                return Err(format!(
                    "{SETTING_PREFIX}credential: {kind:?} is not supported (managedidentity, or a SAS in the service URI)"
                ));
            }
            let options = azure_identity::ManagedIdentityCredentialOptions {
                user_assigned_id: setting("clientId").map(azure_identity::UserAssignedId::ClientId),
                ..Default::default()
            };
            let credential = azure_identity::ManagedIdentityCredential::new(Some(options))
                .map_err(|e| format!("the managed identity is unusable: {}", StorageFault::from_sdk(&e)))?;
            Some(credential as Arc<dyn TokenCredential>)
        } else {
            None
        };
        Ok(Some(Self {
            queue_service,
            blob_service,
            credential,
        }))
    }

    /// An account at explicit service URLs with an explicit credential
    /// (`None`: the URLs carry a SAS).
    pub fn new(
        queue_service: Option<Url>,
        blob_service: Option<Url>,
        credential: Option<Arc<dyn TokenCredential>>,
    ) -> Self {
        Self {
            queue_service,
            blob_service,
            credential,
        }
    }

    /// Whether the account names a queue service.
    pub fn has_queues(&self) -> bool {
        self.queue_service.is_some()
    }

    /// Whether the account names a blob service.
    pub fn has_blobs(&self) -> bool {
        self.blob_service.is_some()
    }

    /// `service` with `name` appended to its path, its query (a SAS) kept.
    fn resource(service: &Url, name: &str) -> Result<Url, String> {
        let mut url = service.clone();
        url.path_segments_mut()
            .map_err(|()| format!("{} is not a base URL", redacted(service.as_str())))?
            .pop_if_empty()
            .push(name);
        Ok(url)
    }

    /// The credential for `url`: none when it carries a SAS.
    fn credential_for(&self, url: &Url) -> Option<Arc<dyn TokenCredential>> {
        match url.query() {
            Some(q) if !q.is_empty() => None,
            _ => self.credential.clone(),
        }
    }

    /// A client of the queue `name`.
    pub fn queue(&self, name: &str) -> Result<azure_storage_queue::QueueClient, String> {
        let service = self.queue_service.as_ref().ok_or("no queue service is configured")?;
        let url = Self::resource(service, name)?;
        let options = azure_storage_queue::QueueClientOptions {
            client_options: client_options(),
            ..Default::default()
        };
        azure_storage_queue::QueueClient::new(url.clone(), self.credential_for(&url), Some(options))
            .map_err(|e| format!("queue {name}: {}", StorageFault::from_sdk(&e)))
    }

    /// A client of the blob container `name`.
    pub fn container(&self, name: &str) -> Result<azure_storage_blob::BlobContainerClient, String> {
        let service = self.blob_service.as_ref().ok_or("no blob service is configured")?;
        let url = Self::resource(service, name)?;
        let options = azure_storage_blob::BlobContainerClientOptions {
            client_options: client_options(),
            ..Default::default()
        };
        azure_storage_blob::BlobContainerClient::new(url.clone(), self.credential_for(&url), Some(options))
            .map_err(|e| format!("container {name}: {}", StorageFault::from_sdk(&e)))
    }
}

/// The SDK retries a failed call itself (throttling, 5xx, connection
/// errors): a few attempts inside a few seconds, so an unreachable account
/// fails the delivery for the host's retry instead of holding it.
fn client_options() -> ClientOptions {
    ClientOptions {
        retry: RetryOptions::exponential(ExponentialRetryOptions {
            initial_delay: azure_core::time::Duration::milliseconds(200),
            max_retries: 3,
            max_total_elapsed: azure_core::time::Duration::seconds(8),
            max_delay: azure_core::time::Duration::seconds(2),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_left_out_of_descriptions() {
        let text = "error sending request for url (http://127.0.0.1:1/devstoreaccount1/q?sv=2021&sig=abc%3D) x";
        let out = redacted(text);
        assert!(!out.contains("sig=abc"), "{out}");
        assert!(
            out.contains("http://127.0.0.1:1/devstoreaccount1/q?(query redacted)) x"),
            "{out}"
        );
        assert_eq!(redacted("what? nothing"), "what? nothing");
        assert!(!redacted("x sig=secret&y=1").contains("secret"));
    }

    #[test]
    fn the_account_follows_the_hosts_settings() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
        };
        assert!(StorageAccount::from_env(env(&[])).unwrap().is_none());
        let sas = StorageAccount::from_env(env(&[(
            "AzureWebJobsStorage__queueServiceUri",
            "http://127.0.0.1:10001/devstoreaccount1?sv=1&sig=x",
        )]))
        .unwrap()
        .unwrap();
        assert!(sas.has_queues() && !sas.has_blobs() && sas.credential.is_none());
        let q = sas.queue("work").unwrap();
        assert_eq!(q.url().path(), "/devstoreaccount1/work");
        assert_eq!(q.url().query(), Some("sv=1&sig=x"));
        assert!(!format!("{sas:?}").contains("sig=x"));
        let named = StorageAccount::from_env(env(&[("AzureWebJobsStorage__accountName", "attest01")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            named.blob_service.as_ref().map(Url::as_str),
            Some("https://attest01.blob.core.windows.net/")
        );
        assert!(named.credential.is_some());
        assert!(StorageAccount::from_env(env(&[("AzureWebJobsStorage__accountName", "Bad Name")])).is_err());
        assert!(StorageAccount::from_env(env(&[("AzureWebJobsStorage__blobServiceUri", "not a url")])).is_err());
    }
}
