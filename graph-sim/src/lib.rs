//! A Microsoft Graph beta simulator for the Intune calls intune-attest
//! makes, served over real HTTP on 127.0.0.1.
//!
//! It follows the real contract: the client-credentials token endpoint
//! (secrets, certificate assertions, and federated credentials: an
//! external issuer's RS256 token matched on issuer, subject and audience),
//! the managed-device GET with
//! `$select`, the list with `$filter`/`$top`/`@odata.nextLink`, both
//! attestation routes (short and `microsoft.graph.`-qualified), and `$batch`
//! with its limits. Users sign in with the device code flow (the
//! `/devicecode` endpoint, polling with `authorization_pending` and
//! `slow_down`, a verification page a test or a person signs in at, and
//! refresh tokens), and act with their own Intune role. Intune's throttling windows apply, time-scaled, with
//! `Retry-After` in every form seen in the wild, and faults can be injected.
//! A ledger records every attestation it accepted, so tests can check the
//! client's result against what "Graph" actually did.

mod device_code;
mod fleet;
pub mod odata;
mod server;
mod throttle;
mod token;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

pub use fleet::{FleetSpec, SimDevice, generate, guid};
pub use throttle::{Limits, Windows};

/// How `Retry-After` is written on 429 answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryAfterForm {
    /// Whole seconds, rounded up (`"2"`).
    Integer,
    /// Decimal seconds (`"1.234"`).
    Decimal,
    /// An HTTP-date, rounded up to the next second.
    HttpDate,
    /// No header at all.
    Missing,
    /// A day (`"86400"`), whatever the real wait.
    Absurd,
    /// Always `"1"`, whatever the real wait.
    AlwaysOne,
    /// Each answer uses the next of Integer, Decimal, HttpDate, Missing.
    Rotate,
}

/// A registered app.
#[derive(Clone, Debug)]
pub struct AppRegistration {
    /// Application (client) ID.
    pub client_id: String,
    /// Its client secret, if it has one.
    pub secret: Option<String>,
    /// Public key PEM and `x5t#S256` of its certificate, if it has one.
    pub certificate: Option<(String, String)>,
    /// Whether it holds the permission to run device actions.
    pub can_write: bool,
    /// Its federated identity credentials: external tokens it accepts
    /// instead of a secret.
    pub federated: Vec<FederatedCredential>,
    /// "Allow public client flows": whether a user may sign in to it with
    /// the device code flow, with no secret (off by default, as in Entra).
    pub public_client: bool,
}

impl Default for AppRegistration {
    fn default() -> Self {
        Self {
            client_id: CLIENT_ID.into(),
            secret: None,
            certificate: None,
            can_write: true,
            federated: Vec::new(),
            public_client: false,
        }
    }
}

/// A user who signs in with the device code flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimUser {
    /// The user's sign-in name.
    pub upn: String,
    /// Whether the user holds an Intune role that allows remote tasks: a
    /// delegated write needs it as well as the app's permission.
    pub intune_role: bool,
}

/// A federated identity credential, as an app registration holds it:
/// Entra matches each exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedCredential {
    /// The external issuer (`iss`).
    pub issuer: String,
    /// The subject (`sub`).
    pub subject: String,
    /// The audience (`aud`), `api://AzureADTokenExchange` in the global cloud.
    pub audience: String,
}

/// An external issuer the directory trusts, with its signing keys.
#[derive(Clone, Debug)]
pub struct TrustedIssuer {
    /// The issuer (`iss`) exactly as its tokens carry it.
    pub issuer: String,
    /// Its RSA public keys (PEM, `PUBLIC KEY`); an assertion verifies
    /// against one of them with RS256.
    pub public_keys_pem: Vec<String>,
}

/// Faults to inject. Rates are probabilities per request (or item).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Latency of every Graph answer: uniform between these, in ms.
    pub latency_ms: (u64, u64),
    /// Probability of a long-tail answer, and its extra latency in ms.
    pub tail: (f64, u64),
    /// A batch item answers 500/502/503/504 without acting.
    pub item_5xx: f64,
    /// The whole batch answers 500/502/503/504 without acting.
    pub batch_5xx: f64,
    /// The whole batch answers 424 without acting.
    pub batch_424: f64,
    /// The whole batch answers 429 (with `Retry-After`) without acting.
    pub batch_429: f64,
    /// The batch acts, then its connection is cut mid-answer.
    pub drop_after_accept: f64,
    /// The request is never answered.
    pub hang: f64,
    /// The batch acts, then answers with a truncated, non-JSON body.
    pub truncate: f64,
    /// The batch acts, then leaves one item out of its answer.
    pub missing_item: f64,
    /// The batch acts, then answers one item twice (the second a 500).
    pub duplicate_item: f64,
    /// The token endpoint answers 503.
    pub token_down: bool,
    /// Extra latency of the token endpoint, in ms.
    pub token_delay_ms: u64,
    /// The token endpoint refuses every client with `invalid_client`.
    pub token_invalid_client: bool,
    /// Graph refuses every token as issued for another cloud (401
    /// `InvalidAuthenticationToken`, "Invalid audience").
    pub invalid_audience: bool,
}

/// The `managedDevice` properties Graph's generated model documentation
/// says `$filter` supports, and `operatingSystem` (in Microsoft's examples).
pub const DOCUMENTED_FILTER_PROPERTIES: [&str; 6] = [
    "deviceName",
    "deviceCategoryDisplayName",
    "jailBroken",
    "enrolledDateTime",
    "lastSyncDateTime",
    "operatingSystem",
];

/// How the device list treats `$filter`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilterSupport {
    /// As users report Graph does: a `$filter` that names a property
    /// outside [`DOCUMENTED_FILTER_PROPERTIES`] is silently ignored (every
    /// device comes back); one on those properties only is applied.
    #[default]
    Documented,
    /// Every `$filter` is applied, whatever it names.
    Strict,
    /// Every `$filter` is silently ignored (the worst a client must survive).
    Ignored,
}

/// Everything about a simulated tenant.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The tenant ID accepted by the token endpoint.
    pub tenant_id: String,
    /// Registered apps.
    pub apps: Vec<AppRegistration>,
    /// External issuers whose tokens federated credentials may accept.
    pub issuers: Vec<TrustedIssuer>,
    /// The fleet.
    pub fleet: FleetSpec,
    /// Throttling limits per window; `None` turns throttling off.
    pub limits: Option<Limits>,
    /// The throttling window (Intune: 20 s; shorten it to run faster).
    pub window: Duration,
    /// Whether throttled requests still count against the window.
    pub count_rejected: bool,
    /// Sliding or fixed windows.
    pub windows: Windows,
    /// `Retry-After` form on 429s.
    pub retry_after: RetryAfterForm,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// The `expires_in` the token endpoint answers instead of the lifetime
    /// (any JSON: tests of token endpoints that answer odd values).
    pub token_expires_in: Option<serde_json::Value>,
    /// The `refresh_in` the token endpoint answers (Entra sends it for
    /// long-lived tokens); none by default.
    pub token_refresh_in: Option<u64>,
    /// The `interval` the device code endpoint asks clients to poll at
    /// (Entra: 5 s); a poll sooner than that is answered `slow_down`.
    pub device_code_interval: Duration,
    /// How long a device code may be used (Entra: 15 minutes).
    pub device_code_lifetime: Duration,
    /// Largest `$top` honoured on lists.
    pub max_page: usize,
    /// How the device list treats `$filter`.
    pub filter_support: FilterSupport,
    /// How long an accepted attestation takes to finish (`pending` for the
    /// first third, then `active`, then `done`, or `failed` / `notSupported`
    /// for devices that cannot attest).
    pub action_delay: Duration,
    /// Serve `deviceIdentityAttestationDetail`, as an older Graph and a docs
    /// page show it. Off by default, as in the current beta schema (the
    /// property is not on `managedDevice`): a `$select` naming it answers
    /// 400 `BadRequest`, and no answer carries it.
    pub serve_attestation_detail: bool,
    /// Report this `actionState` (a value Graph may add later) for every
    /// attestation still in progress, instead of `pending` / `active`.
    pub future_action_state: Option<String>,
    /// The error message of the 400 Graph gives for an action on a device
    /// whose platform cannot take it. Opaque text: tests put markup here to
    /// check that every reader shows it as text.
    pub platform_error_message: String,
    /// Injected faults.
    pub faults: Faults,
    /// Seed for fault and latency randomness.
    pub seed: u64,
}

/// The message Graph gives when an action does not apply to a platform.
pub const PLATFORM_ERROR_MESSAGE: &str = "{\"Message\": \"The action is not supported on this platform.\"}";

/// The default app's client ID.
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The default app's secret.
pub const CLIENT_SECRET: &str = "sim-client-secret-value";
/// The default tenant.
pub const TENANT_ID: &str = "00000000-0000-4000-8000-000000000001";

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            tenant_id: TENANT_ID.into(),
            apps: vec![AppRegistration {
                secret: Some(CLIENT_SECRET.into()),
                ..AppRegistration::default()
            }],
            issuers: Vec::new(),
            fleet: FleetSpec::default(),
            limits: Some(Limits::default()),
            window: Duration::from_secs(20),
            count_rejected: true,
            windows: Windows::Sliding,
            retry_after: RetryAfterForm::Decimal,
            token_lifetime: Duration::from_secs(3599),
            token_expires_in: None,
            token_refresh_in: None,
            device_code_interval: Duration::from_secs(5),
            device_code_lifetime: Duration::from_secs(900),
            max_page: 1000,
            filter_support: FilterSupport::default(),
            action_delay: Duration::from_secs(3),
            serve_attestation_detail: false,
            future_action_state: None,
            platform_error_message: PLATFORM_ERROR_MESSAGE.to_string(),
            faults: Faults::default(),
            seed: 1,
        }
    }
}

/// One accepted attestation.
#[derive(Clone, Debug)]
pub struct LedgerEntry {
    /// The device ID.
    pub device_id: String,
    /// `managed` or `comanaged`, the route it came through.
    pub kind: &'static str,
    /// The client id of the app registration that asked.
    pub app: String,
    /// The user it acted for, with a delegated token.
    pub user: Option<String>,
    /// When it was accepted.
    pub at: Instant,
}

/// Counters of what the simulator saw.
#[derive(Clone, Debug, Default)]
pub struct SimStats {
    /// HTTP requests received (token, batch, direct).
    pub http_requests: u64,
    /// Token requests.
    pub token_requests: u64,
    /// Tokens issued for a federated credential's assertion.
    pub federated_tokens: u64,
    /// Tokens issued for a signed-in user (device code or refresh token).
    pub delegated_tokens: u64,
    /// Token requests that redeemed a refresh token.
    pub refresh_grants: u64,
    /// Device code polls of the token endpoint.
    pub device_code_polls: u64,
    /// Polls answered `slow_down` (sooner than the interval).
    pub slow_downs: u64,
    /// Token requests refused (any reason).
    pub token_refusals: u64,
    /// `$batch` calls.
    pub batches: u64,
    /// Items inside batches.
    pub batch_items: u64,
    /// 429 answers, counting batch items one by one.
    pub throttled: u64,
    /// Write items throttled.
    pub throttled_writes: u64,
    /// Write requests (direct or in batches) received.
    pub writes: u64,
    /// Reads of a single device.
    pub device_reads: u64,
    /// List pages served.
    pub list_pages: u64,
    /// Requests refused for a missing, expired or revoked token.
    pub unauthorized: u64,
}

struct IssuedToken {
    client_id: String,
    user: Option<SimUser>,
    expires: Instant,
    generation: u64,
}

struct State {
    cfg: Mutex<SimConfig>,
    fleet: Vec<SimDevice>,
    by_id: HashMap<String, usize>,
    ledger: Mutex<Vec<LedgerEntry>>,
    stats: Mutex<SimStats>,
    throttle: Mutex<throttle::Throttle>,
    tokens: Mutex<HashMap<String, IssuedToken>>,
    /// Device codes handed out, by device code.
    device_codes: Mutex<HashMap<String, device_code::Pending>>,
    /// Device codes and refresh tokens no longer usable (redeemed,
    /// declined, expired), kept for leak checks.
    redeemed_device_codes: Mutex<Vec<String>>,
    /// Refresh tokens issued to signed-in users.
    refresh_tokens: Mutex<HashMap<String, device_code::Refresh>>,
    token_generation: Mutex<u64>,
    rng: Mutex<fastrand::Rng>,
    rotate: Mutex<usize>,
    base_url: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running simulator. Dropping it stops the server.
pub struct Sim {
    state: Arc<State>,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sim {
    /// Starts a simulator on 127.0.0.1 on a free port (or `port`).
    pub async fn start(cfg: SimConfig) -> std::io::Result<Self> {
        Self::start_on(cfg, 0).await
    }

    /// Starts a simulator on 127.0.0.1:`port`.
    pub async fn start_on(cfg: SimConfig, port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let fleet = generate(&cfg.fleet);
        let by_id = fleet.iter().enumerate().map(|(i, d)| (d.id.clone(), i)).collect();
        let state = Arc::new(State {
            rng: Mutex::new(fastrand::Rng::with_seed(cfg.seed)),
            cfg: Mutex::new(cfg),
            fleet,
            by_id,
            ledger: Mutex::new(Vec::new()),
            stats: Mutex::new(SimStats::default()),
            throttle: Mutex::new(throttle::Throttle::default()),
            tokens: Mutex::new(HashMap::new()),
            device_codes: Mutex::new(HashMap::new()),
            redeemed_device_codes: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            token_generation: Mutex::new(0),
            rotate: Mutex::new(0),
            base_url: format!("http://{addr}"),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let app = server::router(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            state,
            addr,
            stop: Some(stop),
        })
    }

    /// `http://127.0.0.1:PORT`: both the Graph endpoint and the authority.
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fleet.
    pub fn fleet(&self) -> &[SimDevice] {
        &self.state.fleet
    }

    /// Every attestation accepted so far.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        lock(&self.state.ledger).clone()
    }

    /// Accepted attestations per (device, route kind).
    pub fn ledger_counts(&self) -> HashMap<(String, &'static str), usize> {
        let mut counts = HashMap::new();
        for e in lock(&self.state.ledger).iter() {
            *counts.entry((e.device_id.clone(), e.kind)).or_insert(0) += 1;
        }
        counts
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        lock(&self.state.stats).clone()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state.cfg).faults = faults;
    }

    /// Changes the configuration while running.
    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut lock(&self.state.cfg));
    }

    /// Every access token, refresh token and device code issued so far
    /// (for tests that prove none leaks).
    pub fn issued_tokens(&self) -> Vec<String> {
        let mut all: Vec<String> = lock(&self.state.tokens).keys().cloned().collect();
        all.extend(lock(&self.state.refresh_tokens).keys().cloned());
        all.extend(lock(&self.state.device_codes).keys().cloned());
        all.extend(lock(&self.state.redeemed_device_codes).iter().cloned());
        all
    }

    /// `user` signs in with `user_code` at the verification page, as a
    /// person would in a browser; false if no waiting sign-in has it.
    pub fn sign_in(&self, user_code: &str, user: SimUser) -> bool {
        device_code::decide(&self.state, user_code, Some(user))
    }

    /// The user declines the sign-in with `user_code`; false if no waiting
    /// sign-in has it.
    pub fn decline_sign_in(&self, user_code: &str) -> bool {
        device_code::decide(&self.state, user_code, None)
    }

    /// Invalidates every token issued so far (as if they all expired).
    pub fn revoke_tokens(&self) {
        *lock(&self.state.token_generation) += 1;
    }

    /// Environment for intune-attest to talk to this simulator with the
    /// default app's secret.
    pub fn client_env(&self) -> Vec<(String, String)> {
        let cfg = lock(&self.state.cfg);
        let mut env = vec![
            ("GRAPH_ENDPOINT".to_owned(), self.url()),
            ("AZURE_AUTHORITY_HOST".to_owned(), self.url()),
            ("AZURE_TENANT_ID".to_owned(), cfg.tenant_id.clone()),
        ];
        if let Some(app) = cfg.apps.first() {
            env.push(("AZURE_CLIENT_ID".to_owned(), app.client_id.clone()));
            if let Some(s) = &app.secret {
                env.push(("AZURE_CLIENT_SECRET".to_owned(), s.clone()));
            }
        }
        env
    }

    /// Accepted writes per window of `window`, from the first acceptance.
    pub fn writes_per_window(&self, window: Duration) -> Vec<usize> {
        self.writes_per_window_of(window, None)
    }

    /// Accepted writes per consecutive window of `window` from the first,
    /// of one app registration (`Some(client id)`) or of all.
    pub fn writes_per_window_of(&self, window: Duration, app: Option<&str>) -> Vec<usize> {
        let ledger = lock(&self.state.ledger);
        let Some(first) = ledger.iter().map(|e| e.at).min() else {
            return Vec::new();
        };
        let mut counts: Vec<usize> = Vec::new();
        for e in ledger.iter().filter(|e| app.is_none_or(|a| e.app == a)) {
            let slot = (e.at.duration_since(first).as_secs_f64() / window.as_secs_f64()) as usize;
            if counts.len() <= slot {
                counts.resize(slot + 1, 0);
            }
            counts[slot] += 1;
        }
        counts
    }

    /// The most accepted writes seen in any sliding window of `window`.
    pub fn max_writes_in_any_window(&self, window: Duration) -> usize {
        self.max_writes_in_any_window_of(window, None)
    }

    /// The most accepted writes of one app registration (or of all) seen
    /// in any sliding window of `window`.
    pub fn max_writes_in_any_window_of(&self, window: Duration, app: Option<&str>) -> usize {
        let mut times: Vec<Instant> = lock(&self.state.ledger)
            .iter()
            .filter(|e| app.is_none_or(|a| e.app == a))
            .map(|e| e.at)
            .collect();
        times.sort();
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi].duration_since(times[lo]) >= window {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
