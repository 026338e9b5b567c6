//! The Graph client: sends `$batch` calls and list pages with a bearer
//! token, and maps every answer onto the engine's terms.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::{StatusCode, Url};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::core::backoff::Backoff;
use crate::core::device::{DeviceId, DeviceRef};
use crate::core::filter::{DeviceFilter, Listed};
use crate::core::gateway::{
    CallFailure, DeviceGateway, DeviceInfo, FailureKind, GatewayError, GatewayStats, ItemAnswer, Listing, TpmReport,
};
use crate::core::status::{ActionState, AttestationStatus, StatusGateway, StatusReport};
use crate::core::text::bounded;
use crate::credentials::AppCredentials;

use super::auth::{AuthError, TokenProvider, describe_transport};
use super::endpoints::Endpoints;
use super::retry_after::parse_retry_after;
use super::wire::{BatchItemRequest, BatchRequest, BatchResponse, GraphError, parse_error};

/// Transport settings of the client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest wait for one HTTP answer.
    pub request_timeout: Duration,
    /// `$top` for list pages.
    pub page_size: u32,
    /// Retry delays and attempts per list page before selection gives up.
    pub page_backoff: Backoff,
    /// Retry delays and attempts of the token request.
    pub token_backoff: Backoff,
    /// Whether status reads select `deviceIdentityAttestationDetail`
    /// (`ATTEST_ATTESTATION_DETAIL`; off by default: the current beta
    /// schema no longer has it on `managedDevice`).
    pub attestation_detail: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            page_size: 999,
            page_backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(32), 6),
            token_backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(2), 4),
            attestation_detail: false,
        }
    }
}

/// A Graph client bound to one app registration.
pub struct GraphClient {
    http: reqwest::Client,
    endpoints: Endpoints,
    beta: String,
    tokens: TokenProvider,
    cfg: ClientConfig,
    requests: Arc<AtomicU64>,
    throttled: AtomicU64,
    detail_refused: std::sync::atomic::AtomicBool,
    /// Set when a deployment setting proved wrong (Graph refused a token
    /// as issued for another cloud, a federated issuer is not set up): no
    /// further call is sent, and the run ends with a configuration error.
    misconfigured: std::sync::OnceLock<String>,
}

/// A raw item answer: status, headers and body, or a transport failure.
struct RawItem {
    status: u16,
    retry_after: Option<String>,
    request_id: Option<String>,
    body: Option<Value>,
}

/// The HTTP client every Graph and token request goes through: no
/// redirects followed (a bearer token never follows one elsewhere), the
/// product's user agent, rustls.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("intune-attest/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(16)
        .build()
}

impl GraphClient {
    /// Builds a client. Redirects are never followed, so the bearer token
    /// cannot be carried to another host.
    pub fn new(endpoints: Endpoints, creds: AppCredentials, cfg: ClientConfig) -> Result<Self, reqwest::Error> {
        let http = http_client()?;
        let requests = Arc::new(AtomicU64::new(0));
        let tokens = TokenProvider::new(
            http.clone(),
            &endpoints,
            creds,
            requests.clone(),
            cfg.request_timeout,
            cfg.token_backoff,
        );
        Ok(Self {
            beta: format!("{}/beta", endpoints.graph_root()),
            http,
            endpoints,
            tokens,
            cfg,
            requests,
            throttled: AtomicU64::new(0),
            detail_refused: std::sync::atomic::AtomicBool::new(false),
            misconfigured: std::sync::OnceLock::new(),
        })
    }

    fn failure(
        &self,
        status: u16,
        err: GraphError,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        outer: bool,
    ) -> CallFailure {
        let kind = match status {
            429 => FailureKind::Throttled,
            424 if outer => FailureKind::Throttled,
            401 | 408 | 424 => FailureKind::Transient,
            404 => FailureKind::NotFound,
            403 => FailureKind::Forbidden,
            s if s >= 500 => FailureKind::Transient,
            _ => FailureKind::Rejected,
        };
        if status == 429 {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        CallFailure {
            kind,
            status: Some(status),
            code: err.code,
            message: err.message,
            request_id: err.request_id.or(request_id),
            retry_after,
        }
    }

    fn auth_failure(&self, e: AuthError) -> CallFailure {
        let kind = match e {
            AuthError::Refused(_) => FailureKind::Rejected,
            AuthError::Configuration(ref m) => {
                let _ = self.misconfigured.set(m.clone());
                FailureKind::Rejected
            }
            AuthError::Unavailable(_) => FailureKind::Transient,
        };
        CallFailure::without_answer(kind, e.to_string())
    }

    /// Whether an answer is Graph refusing the token as issued for another
    /// cloud (401 `InvalidAuthenticationToken`, "Invalid audience"); if so,
    /// remembers it.
    fn audience_refused(&self, status: u16, body: Option<&Value>) -> bool {
        if status != 401 {
            return false;
        }
        let err = parse_error(body);
        let refused = err.code.as_deref() == Some("InvalidAuthenticationToken")
            && err
                .message
                .as_deref()
                .is_some_and(|m| m.to_ascii_lowercase().contains("invalid audience"));
        if refused {
            let _ = self.misconfigured.set(format!(
                "Graph refused the token as issued for another cloud (401 InvalidAuthenticationToken, \
                 Invalid audience): ATTEST_CLOUD, GRAPH_ENDPOINT and AZURE_AUTHORITY_HOST (or the stored \
                 credentials' cloud) must name one cloud; Graph is {} and the authority {}",
                self.endpoints.graph_root(),
                self.endpoints.login.as_str().trim_end_matches('/')
            ));
        }
        refused
    }

    fn audience_failure(&self) -> Option<CallFailure> {
        self.misconfigured
            .get()
            .map(|m| CallFailure::without_answer(FailureKind::Rejected, m.clone()))
    }

    /// Lets the client load its credentials again when Entra ID refuses
    /// them (a rotated secret), at most every 30 seconds.
    pub fn with_reloader(mut self, reloader: super::auth::Reloader) -> Self {
        self.tokens.set_reloader(reloader);
        self
    }

    /// Sends one `$batch` call and returns one answer per request, in order.
    async fn batch(&self, items: Vec<(&'static str, String)>, deadline: Instant) -> Vec<Result<RawItem, CallFailure>> {
        let n = items.len();
        let all = |f: CallFailure| (0..n).map(|_| Err(f.clone())).collect::<Vec<_>>();
        let body = BatchRequest {
            requests: items
                .into_iter()
                .enumerate()
                .map(|(i, (method, url))| {
                    let post = method == "POST";
                    BatchItemRequest {
                        id: (i + 1).to_string(),
                        method,
                        url,
                        headers: post.then(|| HashMap::from([("Content-Type", "application/json")])),
                        body: post.then(|| json!({})),
                    }
                })
                .collect(),
        };
        let url = format!("{}/$batch", self.beta);
        for auth_try in 0..2 {
            if let Some(f) = self.audience_failure() {
                return all(f);
            }
            let token = match self.tokens.token(deadline).await {
                Ok(t) => t,
                Err(e) => return all(self.auth_failure(e)),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return all(CallFailure::without_answer(
                    FailureKind::Transient,
                    "the deadline came before the call was sent",
                ));
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .post(&url)
                .timeout(self.cfg.request_timeout.min(left))
                .bearer_auth(token.secret.expose_secret())
                .json(&body)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let kind = if e.is_connect() {
                        FailureKind::Transient
                    } else {
                        FailureKind::AnswerLost
                    };
                    return all(CallFailure::without_answer(kind, describe_transport(&e)));
                }
            };
            let status = resp.status();
            let retry_after = header(&resp, "retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
            let request_id = header(&resp, "request-id");
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    return all(CallFailure::without_answer(
                        FailureKind::AnswerLost,
                        describe_transport(&e),
                    ));
                }
            };
            if status == StatusCode::UNAUTHORIZED {
                let body = serde_json::from_slice::<Value>(&bytes).ok();
                if self.audience_refused(401, body.as_ref())
                    && let Some(f) = self.audience_failure()
                {
                    return all(f);
                }
                if auth_try == 0 {
                    self.tokens.invalidate(token.generation).await;
                    continue;
                }
            }
            if status != StatusCode::OK {
                let err = parse_error(serde_json::from_slice::<Value>(&bytes).ok().as_ref());
                return all(self.failure(status.as_u16(), err, retry_after, request_id, true));
            }
            let Ok(parsed) = serde_json::from_slice::<BatchResponse>(&bytes) else {
                return all(CallFailure::without_answer(
                    FailureKind::AnswerLost,
                    "the batch answer was not valid JSON",
                ));
            };
            let mut by_id: HashMap<String, RawItem> = HashMap::with_capacity(n);
            let mut refused_token = false;
            for item in parsed.responses {
                refused_token |= item.status == 401;
                if self.audience_refused(item.status, item.body.as_ref())
                    && let Some(f) = self.audience_failure()
                {
                    return all(f);
                }
                let raw = RawItem {
                    status: item.status,
                    retry_after: item.header("retry-after"),
                    // Items rarely carry their own request-id; the batch's
                    // identifies the call for Microsoft support.
                    request_id: item.header("request-id").or_else(|| request_id.clone()),
                    body: item.body,
                };
                // An id answered twice keeps its first answer.
                by_id.entry(item.id.to_ascii_lowercase()).or_insert(raw);
            }
            if refused_token {
                self.tokens.invalidate(token.generation).await;
            }
            return (1..=n)
                .map(|i| {
                    by_id.remove(&i.to_string()).ok_or_else(|| {
                        CallFailure::without_answer(
                            FailureKind::AnswerLost,
                            "the batch answer had no entry for this request",
                        )
                    })
                })
                .collect();
        }
        all(CallFailure::without_answer(
            FailureKind::Transient,
            "Graph refused a freshly issued token (HTTP 401)",
        ))
    }

    /// A batch of GETs, each 2xx body read with `parse`.
    async fn reads<T>(
        &self,
        items: Vec<(&'static str, String)>,
        deadline: Instant,
        parse: fn(Option<&Value>) -> T,
    ) -> Vec<ItemAnswer<T>> {
        self.batch(items, deadline)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(raw) if (200..300).contains(&raw.status) => ItemAnswer::Ok {
                    value: parse(raw.body.as_ref()),
                    status: raw.status,
                    request_id: raw.request_id,
                },
                Ok(raw) => ItemAnswer::Failed(self.item_failure(raw)),
                Err(f) => ItemAnswer::Failed(f),
            })
            .collect()
    }

    fn item_failure(&self, raw: RawItem) -> CallFailure {
        let retry_after = raw
            .retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let err = parse_error(raw.body.as_ref());
        self.failure(raw.status, err, retry_after, raw.request_id, false)
    }

    async fn get_page(&self, url: &Url, deadline: Instant) -> Result<Value, GatewayError> {
        let mut last = String::new();
        let mut auth_retried = false;
        let mut attempt = 0;
        while self.cfg.page_backoff.allows(attempt) {
            attempt += 1;
            if let Some(m) = self.misconfigured.get() {
                return Err(GatewayError::Configuration(m.clone()));
            }
            let token = self.tokens.token(deadline).await.map_err(gateway_error)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .http
                .get(url.clone())
                .timeout(self.cfg.request_timeout.min(left))
                .bearer_auth(token.secret.expose_secret())
                .send()
                .await;
            let mut wait = self.cfg.page_backoff.delay(attempt);
            match sent {
                Err(e) => last = describe_transport(&e),
                Ok(resp) => {
                    let status = resp.status();
                    if let Some(ra) =
                        header(&resp, "retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()))
                    {
                        wait = ra;
                    }
                    let request_id = header(&resp, "request-id");
                    let body = resp.bytes().await;
                    match (status, body) {
                        (StatusCode::OK, Ok(b)) => match serde_json::from_slice::<Value>(&b) {
                            Ok(v) => return Ok(v),
                            Err(_) => last = "a device list page was not valid JSON".into(),
                        },
                        (StatusCode::UNAUTHORIZED, Ok(b))
                            if self.audience_refused(401, serde_json::from_slice::<Value>(&b).ok().as_ref()) =>
                        {
                            return Err(GatewayError::Configuration(
                                self.misconfigured.get().cloned().unwrap_or_default(),
                            ));
                        }
                        (StatusCode::UNAUTHORIZED, _) if !auth_retried => {
                            auth_retried = true;
                            attempt -= 1;
                            self.tokens.invalidate(token.generation).await;
                            continue;
                        }
                        (s, body) => {
                            let err = parse_error(
                                body.ok()
                                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                                    .as_ref(),
                            );
                            let f = self.failure(s.as_u16(), err, None, request_id, true);
                            let what = format!(
                                "listing devices: HTTP {}{}{}",
                                s.as_u16(),
                                f.code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
                                f.request_id
                                    .as_deref()
                                    .map(|r| format!(" (request-id {r})"))
                                    .unwrap_or_default()
                            );
                            if !f.kind.is_retryable() {
                                return Err(GatewayError::Refused(what));
                            }
                            last = what;
                        }
                    }
                }
            }
            if !Backoff::sleep_within(wait, Some(deadline)).await {
                break;
            }
        }
        Err(GatewayError::Unavailable(if last.is_empty() {
            "listing devices: deadline reached".into()
        } else {
            last
        }))
    }
}

fn gateway_error(e: AuthError) -> GatewayError {
    match e {
        AuthError::Refused(m) => GatewayError::Credentials(m),
        AuthError::Unavailable(m) => GatewayError::Unavailable(m),
        AuthError::Configuration(m) => GatewayError::Configuration(m),
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn device_info(body: Option<&Value>) -> DeviceInfo {
    let text = |name: &str| {
        body.and_then(|b| b.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let tpm = match body
        .and_then(|b| b.get("hardwareInformation"))
        .and_then(|h| h.get("tpmSpecificationVersion"))
    {
        Some(Value::String(s)) if s.trim().is_empty() => TpmReport::Empty,
        Some(Value::String(s)) => TpmReport::Present(s.clone()),
        _ => TpmReport::Unknown,
    };
    let hardware = body.and_then(|b| b.get("hardwareInformation"));
    DeviceInfo {
        device_name: text("deviceName").map(|n| bounded(&n, 256)),
        operating_system: text("operatingSystem"),
        os_version: text("osVersion"),
        model: text("model"),
        manufacturer: text("manufacturer"),
        device_type: text("deviceType"),
        tpm,
        management_agent: text("managementAgent"),
        sku_family: text("skuFamily"),
        os_edition: hardware
            .and_then(|h| h.get("operatingSystemEdition"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| bounded(s, 64)),
        os_product_type: hardware
            .and_then(|h| h.get("operatingSystemProductType"))
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n != 0),
    }
}

/// A listed property's value as text, for the client-side filter check
/// (`None` when absent or null).
fn listed_value(item: &Value, name: &str) -> Option<String> {
    match item.get(name)? {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn status_report(body: Option<&Value>) -> StatusReport {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(|s| bounded(s, 64));
    let action = body
        .and_then(|b| b.get("deviceActionResults"))
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .filter(|r| {
                    r.get("actionName")
                        .and_then(Value::as_str)
                        .is_some_and(|n| n.eq_ignore_ascii_case("initiateDeviceAttestation"))
                })
                .max_by_key(|r| text(r, "startDateTime"))
        })
        .map(|r| {
            (
                ActionState::from_graph(r.get("actionState").and_then(Value::as_str).unwrap_or_default()),
                text(r, "startDateTime"),
                text(r, "lastUpdatedDateTime"),
            )
        });
    let attestation = body
        .and_then(|b| b.get("deviceIdentityAttestationDetail"))
        .and_then(|d| d.get("deviceIdentityAttestationStatus"))
        .and_then(Value::as_str)
        .map(AttestationStatus::from_graph);
    StatusReport {
        device_name: body
            .and_then(|b| b.get("deviceName"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| bounded(s, 256)),
        action,
        attestation,
    }
}

impl StatusGateway for GraphClient {
    async fn read_status(
        &self,
        devices: &[DeviceRef],
        detail: bool,
        deadline: Instant,
    ) -> Vec<ItemAnswer<StatusReport>> {
        let select = if detail {
            "id,deviceName,deviceActionResults,deviceIdentityAttestationDetail"
        } else {
            "id,deviceName,deviceActionResults"
        };
        let items = devices
            .iter()
            .map(|d| {
                (
                    "GET",
                    format!("/deviceManagement/managedDevices/{}?$select={select}", d.id),
                )
            })
            .collect();
        self.reads(items, deadline, status_report).await
    }

    fn detail_wanted(&self) -> bool {
        self.cfg.attestation_detail && !self.detail_refused.load(Ordering::Relaxed)
    }

    fn detail_refused(&self) {
        self.detail_refused.store(true, Ordering::Relaxed);
    }
}

impl DeviceGateway for GraphClient {
    async fn prepare(&self, deadline: Instant) -> Result<(), GatewayError> {
        if let Some(m) = self.misconfigured.get() {
            return Err(GatewayError::Configuration(m.clone()));
        }
        self.tokens.token(deadline).await.map(|_| ()).map_err(gateway_error)
    }

    fn configuration_error(&self) -> Option<String> {
        self.misconfigured.get().cloned()
    }

    async fn list_devices(
        &self,
        filter: &DeviceFilter,
        limit: usize,
        deadline: Instant,
    ) -> Result<Listing, GatewayError> {
        let mut url = Url::parse(&format!("{}/deviceManagement/managedDevices", self.beta))
            .map_err(|e| GatewayError::Refused(format!("bad Graph URL: {e}")))?;
        let mut select = vec!["id", "deviceName", "operatingSystem"];
        for p in filter.properties() {
            if !select.contains(&p) {
                select.push(p);
            }
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(sent) = filter.graph_filter() {
                query.append_pair("$filter", &sent);
            }
            query
                .append_pair("$select", &select.join(","))
                .append_pair("$top", &self.cfg.page_size.to_string());
        }
        let mut listing = Listing::default();
        let mut next = Some(url);
        while let Some(page_url) = next.take() {
            let page = self.get_page(&page_url, deadline).await?;
            for item in page.get("value").and_then(Value::as_array).into_iter().flatten() {
                let Some(id) = item.get("id").and_then(Value::as_str).and_then(DeviceId::parse) else {
                    tracing::warn!("a listed device had no GUID id; skipped");
                    continue;
                };
                match filter.classify(&|name| listed_value(item, name)) {
                    Listed::Matches => listing.devices.push(id),
                    Listed::NotAppliedByGraph => listing.not_applied_by_graph += 1,
                    Listed::LeftOutByClient => listing.left_out_by_client += 1,
                }
                if listing.devices.len() > limit {
                    return Err(GatewayError::TooManyDevices { limit });
                }
            }
            if let Some(link) = page.get("@odata.nextLink").and_then(Value::as_str) {
                let link =
                    Url::parse(link).map_err(|_| GatewayError::Refused("@odata.nextLink is not a URL".into()))?;
                if !self.endpoints.is_graph_origin(&link) {
                    return Err(GatewayError::Refused(
                        "@odata.nextLink points outside the configured Graph endpoint".into(),
                    ));
                }
                next = Some(link);
            }
        }
        Ok(listing)
    }

    async fn read_devices(&self, devices: &[DeviceRef], deadline: Instant) -> Vec<ItemAnswer<DeviceInfo>> {
        let items = devices.iter().map(|d| ("GET", d.read_path())).collect();
        self.reads(items, deadline, device_info).await
    }

    async fn initiate(&self, devices: &[DeviceRef], deadline: Instant) -> Vec<ItemAnswer<()>> {
        let items = devices.iter().map(|d| ("POST", d.action_path())).collect();
        self.batch(items, deadline)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(raw) if (200..300).contains(&raw.status) => ItemAnswer::Ok {
                    value: (),
                    status: raw.status,
                    request_id: raw.request_id.or_else(|| parse_error(raw.body.as_ref()).request_id),
                },
                Ok(raw) => ItemAnswer::Failed(self.item_failure(raw)),
                Err(f) => ItemAnswer::Failed(f),
            })
            .collect()
    }

    fn stats(&self) -> GatewayStats {
        GatewayStats {
            http_requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
        }
    }
}
