//! The attestation engine: selects devices, validates them, sends the
//! attestation in paced batches, retries what can be retried, and gives every
//! device exactly one outcome before the deadline.
//!
//! Work flows through two stages that run concurrently: a read stage
//! (validation GETs) that feeds a write stage (`initiateDeviceAttestation`).
//! Each stage keeps its own queue of ready and delayed items, forms `$batch`
//! calls of up to 20, asks its [`Pacer`] before each call, and bounds the
//! calls in flight. Retries go back into the queue of the same stage.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backoff::Backoff;
use super::device::DeviceRef;
use super::eligibility::{self, Eligibility, ReasonCode};
use super::gateway::{CallFailure, DeviceGateway, DeviceInfo, FailureKind, GatewayError, ItemAnswer};
use super::outcome::{DeviceResult, Outcome, RunOptions, RunRecord, RunResult, RunStats, Timeouts};
use super::pacer::{Pacer, PacerConfig, Permit};
use super::progress::Progress;
use super::request::AttestationRequest;
use stage::{Joined, Launch, StageState, recv_or_pending};

pub use super::gateway::MAX_BATCH;

/// The hint given with every `forbidden` outcome.
pub const FORBIDDEN_HINT: &str = "the app registration lacks a Graph permission: grant \
DeviceManagementManagedDevices.PrivilegedOperations.All (needed by Intune device actions) as well as the documented \
DeviceManagementConfiguration.Read.All and DeviceManagementManagedDevices.Read.All, with admin consent; \
signed in as a user (--device-code), the user also needs an Intune role that allows remote tasks";

/// Tuning of the engine. The defaults follow Intune's documented limits.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Pacing of `initiateDeviceAttestation` calls (Intune per app: 200 / 20 s).
    pub writes: PacerConfig,
    /// Pacing of validation reads (Intune per app: 2,000 / 20 s for all calls).
    pub reads: PacerConfig,
    /// Write batches in flight at once.
    pub write_concurrency: usize,
    /// Read batches in flight at once.
    pub read_concurrency: usize,
    /// Retry delays when Graph gives no `Retry-After`, and attempts per
    /// device and stage before giving up.
    pub backoff: Backoff,
    /// Longest `Retry-After` honoured as given; longer ones are cut to this.
    pub max_retry_after: Duration,
    /// How long a partial batch waits for more devices before it goes.
    pub fill_wait: Duration,
    /// Time kept free at the end of the run to assemble and emit the result.
    pub finish_reserve: Duration,
    /// How often progress is logged.
    pub progress_interval: Duration,
    /// Most devices one run may hold, including filter selections.
    pub max_devices: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let window = Duration::from_secs(20);
        Self {
            writes: PacerConfig::new(190, window),
            reads: PacerConfig::new(1000, window),
            write_concurrency: 2,
            read_concurrency: 4,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30), 6),
            max_retry_after: Duration::from_secs(60),
            fill_wait: Duration::from_millis(500),
            finish_reserve: Duration::from_secs(2),
            progress_interval: Duration::from_secs(5),
            max_devices: super::request::DEFAULT_MAX_DEVICES,
        }
    }
}

/// Why a run could not produce per-device outcomes at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The credentials were refused.
    #[error("{0}")]
    Credentials(String),
    /// Graph could not be reached to authorise or select.
    #[error("{0}")]
    Unavailable(String),
    /// Selecting devices by filter failed or selected too many.
    #[error("device_filter: {0}")]
    Selection(String),
    /// A deployment setting is wrong; the message names it.
    #[error("{0}")]
    Configuration(String),
}

impl From<GatewayError> for RunError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Credentials(m) => RunError::Credentials(format!("credentials refused: {m}")),
            GatewayError::Unavailable(m) => RunError::Unavailable(format!("Graph unavailable: {m}")),
            GatewayError::Configuration(m) => RunError::Configuration(m),
            e @ (GatewayError::Refused(_) | GatewayError::TooManyDevices { .. }) => RunError::Selection(e.to_string()),
        }
    }
}

/// The pacing state of one app registration. Clone it to share the budget
/// between engines (a new Graph client after a credential rotation, say).
#[derive(Clone)]
pub struct Pacers {
    write: Arc<Mutex<Pacer>>,
    read: Arc<Mutex<Pacer>>,
}

impl Pacers {
    /// How status reads draw on these pacers' read budget, with `cfg`'s
    /// retry policy.
    pub fn read_policy(&self, cfg: &EngineConfig) -> super::status::ReadPolicy {
        super::status::ReadPolicy {
            pacer: self.read.clone(),
            backoff: cfg.backoff,
            max_retry_after: cfg.max_retry_after,
        }
    }

    /// Fresh pacers for `cfg`.
    pub fn new(cfg: &EngineConfig) -> Self {
        let now = Instant::now();
        Self {
            write: Arc::new(Mutex::new(Pacer::new(cfg.writes, now))),
            read: Arc::new(Mutex::new(Pacer::new(cfg.reads, now))),
        }
    }
}

/// The engine. Keep its pacers for the life of the process: they carry the
/// tenant's budget across runs (warm invocations share it).
pub struct Engine<G> {
    gateway: Arc<G>,
    cfg: EngineConfig,
    write_pacer: Arc<Mutex<Pacer>>,
    read_pacer: Arc<Mutex<Pacer>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stage {
    Read,
    Write,
}

#[derive(Debug)]
struct Work {
    idx: usize,
    dev: DeviceRef,
    attempts: u32,
    lost: u32,
    stage_attempts: u32,
    last: Option<CallFailure>,
    /// What validation found worth saying (`tpm_unknown`, or why the device
    /// cannot attest).
    code: Option<(ReasonCode, String)>,
    /// Graph's `deviceName`, once the validation read found the device.
    name: Option<String>,
}

enum Reply {
    Read(ItemAnswer<DeviceInfo>),
    Write(ItemAnswer<()>),
}

impl Reply {
    /// Whether an HTTP answer came back for this item.
    fn answered(&self) -> bool {
        match self {
            Reply::Read(a) => a.answered(),
            Reply::Write(a) => a.answered(),
        }
    }
}

struct Delayed {
    at: Instant,
    seq: u64,
    work: Work,
}

impl PartialEq for Delayed {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Delayed {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// State shared by the stages of one run.
struct Run {
    results: Mutex<Vec<Option<DeviceResult>>>,
    progress: Arc<Progress>,
    cutoff: Instant,
    dry_run: bool,
    /// Writes sent per throttle window since `start` (the report's chart).
    writes: WriteWindows,
}

/// Writes sent, counted per throttle window from the start of the run.
struct WriteWindows {
    start: Instant,
    window: Duration,
    counts: Mutex<Vec<u32>>,
}

impl WriteWindows {
    fn new(start: Instant, window: Duration) -> Self {
        Self {
            start,
            window: window.max(Duration::from_millis(1)),
            counts: Mutex::new(Vec::new()),
        }
    }

    /// Counts `n` writes sent at `at`.
    fn record(&self, at: Instant, n: u32) {
        let idx = (at.saturating_duration_since(self.start).as_nanos() / self.window.as_nanos()) as usize;
        let mut counts = lock(&self.counts);
        if counts.len() <= idx {
            counts.resize(idx + 1, 0);
        }
        counts[idx] += n;
    }

    fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.counts))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Run {
    fn finish(&self, w: &Work, outcome: Outcome, reason: Option<String>, answer: Option<(u16, Option<String>)>) {
        let mut r = DeviceResult::new(w.dev.id, w.dev.kind, outcome);
        r.device_name = w.name.clone();
        r.reason = reason;
        r.reason_code = match outcome {
            Outcome::NotFound => Some(ReasonCode::NotFound),
            Outcome::Initiated | Outcome::WouldInitiate | Outcome::Unsupported => w.code.as_ref().map(|(c, _)| *c),
            _ => None,
        };
        if r.reason.is_none() && r.reason_code.is_some() {
            r.reason = w.code.as_ref().map(|(_, why)| why.clone());
        }
        r.attempts = w.attempts;
        r.lost_answers = w.lost;
        if let Some(f) = &w.last {
            r.http_status = f.status;
            r.error_code = f.code.clone();
            r.message = f.message.clone();
            r.request_id = f.request_id.clone();
        }
        if let Some((status, request_id)) = answer {
            r.http_status = Some(status);
            r.error_code = None;
            r.message = None;
            r.request_id = request_id;
        }
        let mut results = lock(&self.results);
        if let Some(slot) = results.get_mut(w.idx)
            && slot.is_none()
        {
            *slot = Some(r);
            self.progress.record(outcome == Outcome::Initiated);
        }
    }

    /// Every device's outcome, in request order; a device that never got
    /// one (its stage never reached it) was not attempted.
    fn outcomes(&self, devices: &[DeviceRef]) -> Vec<DeviceResult> {
        lock(&self.results)
            .iter()
            .zip(devices)
            .map(|(slot, dev)| {
                slot.clone().unwrap_or_else(|| {
                    let mut r = DeviceResult::new(dev.id, dev.kind, Outcome::NotAttempted);
                    r.reason = Some("the deadline came before this device was tried".into());
                    r
                })
            })
            .collect()
    }

    /// The outcome of an item that will not be tried again.
    fn give_up(&self, w: &Work) {
        match &w.last {
            None => self.finish(
                w,
                Outcome::NotAttempted,
                Some(if self.progress.is_stopping() {
                    "the run was interrupted before this device was tried".into()
                } else {
                    "the deadline came before this device was tried".into()
                }),
                None,
            ),
            Some(f) if f.kind == FailureKind::Throttled => self.finish(
                w,
                Outcome::Throttled,
                Some("Graph kept throttling until the retries or the deadline ran out".into()),
                None,
            ),
            Some(f) if f.kind == FailureKind::AnswerLost => self.finish(
                w,
                Outcome::Failed,
                Some("no answer came from Graph; the request may still have been accepted".into()),
                None,
            ),
            Some(_) => self.finish(
                w,
                Outcome::Failed,
                Some("Graph kept failing until the retries or the deadline ran out".into()),
                None,
            ),
        }
    }
}

impl<G: DeviceGateway> Engine<G> {
    /// An engine over `gateway` with fresh pacers.
    pub fn new(gateway: Arc<G>, cfg: EngineConfig) -> Self {
        let pacers = Pacers::new(&cfg);
        Self::with_pacers(gateway, cfg, pacers)
    }

    /// An engine over `gateway` that shares `pacers` with other engines.
    pub fn with_pacers(gateway: Arc<G>, cfg: EngineConfig, pacers: Pacers) -> Self {
        Self {
            write_pacer: pacers.write,
            read_pacer: pacers.read,
            gateway,
            cfg,
        }
    }

    /// The gateway.
    pub fn gateway(&self) -> &Arc<G> {
        &self.gateway
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Runs one request. `platform_deadline` is the host's hard deadline
    /// (Lambda's), which caps `timeouts.invoke`.
    pub async fn run(
        &self,
        req: AttestationRequest,
        platform_deadline: Option<Instant>,
        progress: Arc<Progress>,
    ) -> Result<RunResult, RunError> {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let stats_before = self.gateway.stats();
        let correlation_id = req
            .correlation_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let cutoff = self.cutoff(&req, start, platform_deadline);
        let mut warnings = req.warnings.clone();

        let needs_graph = req.device_filter.is_some() || req.validate_device_exists || !req.dry_run;
        if needs_graph {
            self.gateway.prepare(cutoff).await?;
        }
        let devices = self.select_devices(&req, cutoff, &mut warnings).await?;

        progress.set_total(devices.len());
        let run = Run {
            results: Mutex::new(vec![None; devices.len()]),
            progress: progress.clone(),
            cutoff,
            dry_run: req.dry_run,
            writes: WriteWindows::new(start, self.cfg.writes.window),
        };
        // Ends with the run, however the run ends (a dropped future too).
        let ticker = AbortOnDrop(spawn_progress_log(
            progress,
            self.cfg.progress_interval,
            correlation_id.clone(),
        ));
        self.drive(&req, &run, &devices).await;
        drop(ticker);
        if run.progress.is_stopping() {
            warnings.push(
                "the run was interrupted: no call was started after the stop, and devices not tried are not_attempted"
                    .into(),
            );
        }
        let misconfigured = self.gateway.configuration_error();
        if let Some(m) = &misconfigured {
            warnings.push(format!("the run stopped on a configuration error: {m}"));
        }

        let stats_after = self.gateway.stats();
        let result = RunResult::new(RunRecord {
            correlation_id,
            dry_run: req.dry_run,
            ignore_partial_failures: req.ignore_partial_failures,
            started_at: super::duration::rfc3339(started_at),
            finished_at: super::duration::rfc3339(SystemTime::now()),
            warnings,
            stats: RunStats {
                http_requests: stats_after.http_requests - stats_before.http_requests,
                throttled_responses: stats_after.throttled - stats_before.throttled,
                duration_ms: start.elapsed().as_millis() as u64,
                throttle_window_ms: self.cfg.writes.window.as_millis() as u64,
                write_budget: self.cfg.writes.budget,
                writes_per_window: run.writes.take(),
            },
            options: Some(RunOptions {
                ignore_partial_failures: req.ignore_partial_failures,
                validate_device_exists: req.validate_device_exists,
                timeouts: Timeouts {
                    invoke: super::duration::format_go_duration(req.timeout),
                },
                device_filter: req.device_filter.as_ref().map(ToString::to_string),
                tenant: req.tenant.clone(),
                verify: req.verify.map(Into::into),
            }),
            devices: {
                // Those past the named ones came from the filter.
                let named = if req.named_were_selected { 0 } else { req.devices.len() };
                let mut outcomes = run.outcomes(&devices);
                for d in outcomes.iter_mut().skip(named) {
                    d.selected = true;
                }
                outcomes
            },
        });
        // A deployment error that left nothing initiated is the run's
        // answer; once devices were initiated, the result says what
        // happened to each, with the error among its warnings.
        if let Some(m) = misconfigured
            && result.summary.initiated == 0
        {
            return Err(RunError::Configuration(m));
        }
        log_finished(&result);
        Ok(result)
    }

    /// When the last call may start: the request's timeout or the host's
    /// deadline, less a reserve for assembling and emitting the result.
    fn cutoff(&self, req: &AttestationRequest, start: Instant, platform_deadline: Option<Instant>) -> Instant {
        let mut deadline = start + req.timeout;
        if let Some(p) = platform_deadline {
            deadline = deadline.min(p);
        }
        let reserve = self.cfg.finish_reserve.min(req.timeout / 10);
        deadline.checked_sub(reserve).unwrap_or(deadline).max(start)
    }

    /// The named devices, then those the filter selects (named ones not
    /// twice).
    async fn select_devices(
        &self,
        req: &AttestationRequest,
        cutoff: Instant,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<DeviceRef>, RunError> {
        let Some(filter) = &req.device_filter else {
            return Ok(req.devices.clone());
        };
        let limit = self.cfg.max_devices.saturating_sub(req.devices.len());
        let listing = self.gateway.list_devices(filter, limit, cutoff).await?;
        for warning in listing.warnings() {
            tracing::warn!(filter = %filter, "{warning}");
            warnings.push(warning);
        }
        if listing.devices.is_empty() {
            tracing::warn!(filter = %filter, "device_filter matched no device");
            warnings.push(format!(
                "device_filter matched no device ({filter}); nothing was selected by it"
            ));
        }
        let (devices, overlap) = super::device::with_selected(&req.devices, listing.devices);
        if overlap > 0 {
            warnings.push(format!(
                "{overlap} device(s) selected by device_filter were also listed in managed_device_ids"
            ));
        }
        tracing::info!(selected = devices.len() - req.devices.len(), filter = %filter, "devices selected by filter");
        Ok(devices)
    }

    /// Drives every device through the stages the request needs: reads
    /// feeding writes when validating, writes alone otherwise, neither for a
    /// dry run without validation.
    async fn drive(&self, req: &AttestationRequest, run: &Run, devices: &[DeviceRef]) {
        let works: VecDeque<Work> = devices
            .iter()
            .enumerate()
            .map(|(idx, dev)| Work {
                idx,
                dev: *dev,
                attempts: 0,
                lost: 0,
                stage_attempts: 0,
                last: None,
                code: None,
                name: None,
            })
            .collect();
        if req.dry_run && !req.validate_device_exists {
            for w in &works {
                run.finish(w, Outcome::WouldInitiate, None, None);
            }
        } else if req.validate_device_exists {
            let (tx, rx) = mpsc::unbounded_channel();
            let reads = self.stage(StageState::new(Stage::Read, works, None, Some(tx)), run);
            let writes = async {
                if !req.dry_run {
                    self.stage(StageState::new(Stage::Write, VecDeque::new(), Some(rx), None), run)
                        .await;
                }
            };
            tokio::join!(reads, writes);
        } else {
            self.stage(StageState::new(Stage::Write, works, None, None), run).await;
        }
    }

    fn pacer(&self, stage: Stage) -> &Arc<Mutex<Pacer>> {
        match stage {
            Stage::Read => &self.read_pacer,
            Stage::Write => &self.write_pacer,
        }
    }

    /// One stage: drives its queue until it is empty or the cutoff comes,
    /// then settles what is left.
    async fn stage(&self, mut st: StageState, run: &Run) {
        loop {
            let now = Instant::now();
            st.drain_input();
            st.promote_due(now);
            if now >= run.cutoff || st.is_done() || run.progress.is_stopping() {
                break;
            }
            let wake = match self.launch(&mut st, run, now) {
                Launch::Sent => continue,
                Launch::WaitUntil(at) => at,
            };
            tokio::select! {
                joined = st.inflight.join_next_with_id(), if !st.inflight.is_empty() => {
                    if let Some(joined) = joined {
                        self.settle_call(&mut st, run, joined);
                    }
                }
                received = recv_or_pending(&mut st.input) => {
                    match received {
                        Some(w) => st.pending.push_back(w),
                        None => st.input = None,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = run.progress.stopped() => {}
            }
        }

        // Past the cutoff: let the calls in flight finish (their timeouts end
        // at the cutoff), then settle everything left.
        while let Some(joined) = st.inflight.join_next_with_id().await {
            self.settle_call(&mut st, run, joined);
        }
        st.give_up_all(run).await;
    }

    /// Sends one batch if a slot, a full enough batch and the pacer allow
    /// it; otherwise says when to look again.
    fn launch(&self, st: &mut StageState, run: &Run, now: Instant) -> Launch {
        let mut wake = st.next_due().unwrap_or(run.cutoff).min(run.cutoff);
        let pacer = self.pacer(st.stage);
        let concurrency = match st.stage {
            Stage::Read => self.cfg.read_concurrency,
            Stage::Write => self.cfg.write_concurrency,
        }
        .max(1);
        if st.pending.is_empty() {
            st.waiting_since = None;
            return Launch::WaitUntil(wake);
        }
        if st.inflight.len() >= concurrency {
            return Launch::WaitUntil(wake);
        }
        // A call whose answer cannot come back before the cutoff would end
        // as an answer lost (the device reported failed, perhaps attested):
        // leave its devices untried instead, for the next part of the run.
        if now + lock(pacer).mean_rtt() * 2 >= run.cutoff {
            return Launch::WaitUntil(run.cutoff);
        }
        let size = lock(pacer).batch_size(MAX_BATCH);
        let since = *st.waiting_since.get_or_insert(now);
        let fill_deadline = since + self.cfg.fill_wait;
        if st.pending.len() < size && st.input.is_some() && now < fill_deadline {
            return Launch::WaitUntil(wake.min(fill_deadline));
        }
        let n = size.min(st.pending.len());
        let grant = match lock(pacer).try_acquire(n as u32, now) {
            Ok(grant) => grant,
            Err(at) => {
                wake = wake.min(at);
                return Launch::WaitUntil(wake);
            }
        };
        let mut batch: Vec<Work> = st.pending.drain(..n).collect();
        for w in &mut batch {
            w.attempts += 1;
            w.stage_attempts += 1;
        }
        let refs: Vec<DeviceRef> = batch.iter().map(|w| w.dev).collect();
        if st.stage == Stage::Write {
            run.writes.record(now, n as u32);
        }
        st.seq += 1;
        let id = st.seq;
        st.batches.insert(id, batch);
        let gateway = self.gateway.clone();
        let cutoff = run.cutoff;
        let stage = st.stage;
        // Moved into the task: the permits go back when the task ends,
        // panics, or is aborted with a cancelled run.
        let permit = Permit::new(pacer.clone(), grant);
        let handle = st.inflight.spawn(async move {
            let replies: Vec<Reply> = match stage {
                Stage::Read => gateway
                    .read_devices(&refs, cutoff)
                    .await
                    .into_iter()
                    .map(Reply::Read)
                    .collect(),
                Stage::Write => gateway
                    .initiate(&refs, cutoff)
                    .await
                    .into_iter()
                    .map(Reply::Write)
                    .collect(),
            };
            let answered = replies.iter().any(Reply::answered);
            permit.complete(Instant::now(), answered);
            (id, replies)
        });
        st.task_ids.insert(handle.id(), id);
        st.waiting_since = None;
        Launch::Sent
    }

    /// Settles a finished call. A call whose task died returns no replies
    /// (its items are then treated as answers lost); its permits went back
    /// when the task's [`Permit`] was dropped.
    fn settle_call(&self, st: &mut StageState, run: &Run, joined: Joined) {
        let (batch, replies) = match joined {
            Ok((_, (id, replies))) => match st.batches.remove(&id) {
                Some(batch) => (batch, replies),
                None => return,
            },
            Err(e) => {
                let Some(batch) = st.task_ids.get(&e.id()).and_then(|id| st.batches.remove(id)) else {
                    return;
                };
                (batch, Vec::new())
            }
        };
        self.settle(st, run, batch, replies);
    }

    /// Applies the answers of one batch: final outcomes, forwards to the next
    /// stage, or retries.
    fn settle(&self, st: &mut StageState, run: &Run, batch: Vec<Work>, replies: Vec<Reply>) {
        let stage = st.stage;
        let now = Instant::now();
        let mut replies = replies.into_iter();
        let mut throttle_pause: Option<Duration> = None;
        let mut accepted = 0u32;
        for mut w in batch {
            let reply = replies.next().unwrap_or_else(|| {
                let f = CallFailure::without_answer(
                    FailureKind::AnswerLost,
                    "the batch call ended without an answer for this device",
                );
                match stage {
                    Stage::Read => Reply::Read(ItemAnswer::Failed(f)),
                    Stage::Write => Reply::Write(ItemAnswer::Failed(f)),
                }
            });
            let failure = match reply {
                Reply::Write(ItemAnswer::Ok { status, request_id, .. }) => {
                    accepted += 1;
                    w.last = None;
                    run.finish(&w, Outcome::Initiated, None, Some((status, request_id)));
                    continue;
                }
                Reply::Read(ItemAnswer::Ok { value, .. }) => {
                    accepted += 1;
                    w.last = None;
                    w.name = value.device_name.clone();
                    let eligibility = eligibility::check(&value);
                    if let Eligibility::Ineligible(code, why) = eligibility {
                        w.code = Some((code, why));
                        run.finish(&w, Outcome::Unsupported, None, None);
                        continue;
                    }
                    if let Eligibility::Unconfirmed(code, why) = eligibility {
                        w.code = Some((code, why));
                    }
                    if run.dry_run {
                        run.finish(&w, Outcome::WouldInitiate, None, None);
                    } else {
                        w.stage_attempts = 0;
                        st.promote(w, run);
                    }
                    continue;
                }
                Reply::Read(ItemAnswer::Failed(f)) | Reply::Write(ItemAnswer::Failed(f)) => f,
            };
            if failure.kind == FailureKind::NotSent {
                // Never sent: not an attempt, and its time has run out.
                w.attempts = w.attempts.saturating_sub(1);
                w.stage_attempts = w.stage_attempts.saturating_sub(1);
                run.give_up(&w);
                continue;
            }
            if failure.kind == FailureKind::AnswerLost && stage == Stage::Write {
                w.lost += 1;
            }
            let kind = failure.kind;
            let retry_after = failure.retry_after;
            w.last = Some(failure);
            match kind {
                FailureKind::NotFound => run.finish(&w, Outcome::NotFound, None, None),
                FailureKind::Forbidden => run.finish(&w, Outcome::Forbidden, Some(FORBIDDEN_HINT.into()), None),
                FailureKind::Rejected | FailureKind::NotSent => run.finish(&w, Outcome::Failed, None, None),
                FailureKind::Throttled | FailureKind::Transient | FailureKind::AnswerLost => {
                    let delay = match (kind, retry_after) {
                        (_, Some(ra)) => ra.min(self.cfg.max_retry_after),
                        (FailureKind::Throttled, None) => {
                            self.cfg.backoff.delay(w.stage_attempts).max(self.cfg.backoff.base)
                        }
                        _ => self.cfg.backoff.delay(w.stage_attempts),
                    };
                    if kind == FailureKind::Throttled {
                        throttle_pause = Some(throttle_pause.map_or(delay, |p| p.max(delay)));
                    }
                    let at = now + delay;
                    if !self.cfg.backoff.allows(w.stage_attempts) || at >= run.cutoff {
                        run.give_up(&w);
                    } else {
                        st.delay(w, at);
                    }
                }
            }
        }
        let pacer = self.pacer(stage);
        lock(pacer).on_accepted(now, accepted);
        if let Some(pause) = throttle_pause {
            let mut p = lock(pacer);
            p.on_throttled(now, pause);
            tracing::warn!(stage = ?stage, pause_ms = pause.as_millis() as u64, budget = p.effective_budget(), "throttled by Graph; pausing and lowering the pace");
        }
    }
}

fn log_finished(result: &RunResult) {
    let s = &result.summary;
    tracing::info!(
        correlation_id = %result.correlation_id,
        status = result.status.as_str(),
        requested = s.requested,
        initiated = s.initiated,
        not_found = s.not_found,
        unsupported = s.unsupported,
        forbidden = s.forbidden,
        failed = s.failed,
        throttled = s.throttled,
        not_attempted = s.not_attempted,
        http_requests = result.stats.http_requests,
        throttled_responses = result.stats.throttled_responses,
        duration_ms = result.stats.duration_ms,
        "run finished"
    );
}

/// A task that lives no longer than its owner: aborted on drop.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn_progress_log(progress: Arc<Progress>, every: Duration, correlation_id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = progress.snapshot();
            tracing::info!(
                correlation_id = %correlation_id,
                done = s.done,
                total = s.total,
                initiated = s.initiated,
                rate_per_s = (s.rate * 10.0).round() / 10.0,
                eta_s = s.eta.map(|d| d.as_secs()),
                "progress"
            );
        }
    })
}

mod stage;
#[cfg(test)]
mod tests;
