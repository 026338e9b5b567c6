//! The engine against a scripted fake gateway on tokio's paused clock:
//! time moves only when every task waits, so deadlines, pacing windows and
//! retry delays are exact and the tests take no wall-clock time.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::core::device::DeviceId;
use crate::core::gateway::GatewayStats;
use crate::core::request::RequestLimits;

/// What the fake does with one write call.
#[derive(Clone, Debug)]
enum Plan {
    /// Every item accepted.
    Accept,
    /// The last `n` items answered 429 with this `Retry-After`.
    ThrottleLast(usize, Option<Duration>),
    /// The task running the call dies.
    Panic,
    /// The call never ends.
    Hang,
}

struct Fake {
    latency: Duration,
    plans: Mutex<VecDeque<Plan>>,
    non_windows: Vec<DeviceId>,
    /// (start time, devices) of every write call.
    writes: Mutex<Vec<(Instant, Vec<DeviceId>)>>,
    reads: Mutex<usize>,
    accepted: Mutex<HashMap<DeviceId, usize>>,
    /// A configuration error the gateway reports having met.
    misconfigured: Option<String>,
}

impl Fake {
    fn new(latency: Duration, plans: Vec<Plan>) -> Self {
        Self {
            latency,
            plans: Mutex::new(plans.into()),
            non_windows: Vec::new(),
            writes: Mutex::new(Vec::new()),
            reads: Mutex::new(0),
            accepted: Mutex::new(HashMap::new()),
            misconfigured: None,
        }
    }

    fn writes(&self) -> Vec<(Instant, Vec<DeviceId>)> {
        self.writes.lock().unwrap().clone()
    }
}

impl DeviceGateway for Fake {
    async fn prepare(&self, _deadline: Instant) -> Result<(), GatewayError> {
        Ok(())
    }

    fn configuration_error(&self) -> Option<String> {
        self.misconfigured.clone()
    }

    async fn list_devices(
        &self,
        _filter: &crate::core::filter::DeviceFilter,
        _limit: usize,
        _deadline: Instant,
    ) -> Result<crate::core::gateway::Listing, GatewayError> {
        Ok(crate::core::gateway::Listing::default())
    }

    async fn read_devices(&self, devices: &[DeviceRef], _deadline: Instant) -> Vec<ItemAnswer<DeviceInfo>> {
        *self.reads.lock().unwrap() += 1;
        tokio::time::sleep(self.latency).await;
        devices
            .iter()
            .map(|d| ItemAnswer::Ok {
                value: DeviceInfo {
                    operating_system: Some(
                        if self.non_windows.contains(&d.id) {
                            "iOS"
                        } else {
                            "Windows"
                        }
                        .into(),
                    ),
                    tpm: crate::core::gateway::TpmReport::Present("2.0".into()),
                    ..DeviceInfo::default()
                },
                status: 200,
                request_id: None,
            })
            .collect()
    }

    async fn initiate(&self, devices: &[DeviceRef], _deadline: Instant) -> Vec<ItemAnswer<()>> {
        let plan = self.plans.lock().unwrap().pop_front().unwrap_or(Plan::Accept);
        self.writes
            .lock()
            .unwrap()
            .push((Instant::now(), devices.iter().map(|d| d.id).collect()));
        tokio::time::sleep(self.latency).await;
        if matches!(plan, Plan::Panic) {
            panic!("the call's task dies");
        }
        if matches!(plan, Plan::Hang) {
            std::future::pending::<()>().await;
        }
        let throttled = match plan {
            Plan::ThrottleLast(n, _) => n.min(devices.len()),
            _ => 0,
        };
        let ok = devices.len() - throttled;
        devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if i < ok {
                    *self.accepted.lock().unwrap().entry(d.id).or_default() += 1;
                    ItemAnswer::Ok {
                        value: (),
                        status: 204,
                        request_id: None,
                    }
                } else {
                    let retry_after = match plan {
                        Plan::ThrottleLast(_, ra) => ra,
                        _ => None,
                    };
                    ItemAnswer::Failed(CallFailure::throttled(retry_after))
                }
            })
            .collect()
    }

    fn stats(&self) -> GatewayStats {
        GatewayStats::default()
    }
}

fn ids(n: usize) -> Vec<DeviceId> {
    (0..n)
        .filter_map(|i| DeviceId::parse(&format!("00000000-0000-0000-0000-{i:012x}")))
        .collect()
}

fn request(devices: &[DeviceId], extra: serde_json::Value) -> AttestationRequest {
    let mut v = json!({"managed_device_ids": devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                       "validate_device_exists": false, "timeouts": {"invoke": "1h"}});
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    AttestationRequest::from_value(&v, RequestLimits::default()).unwrap()
}

fn config(budget: u32) -> EngineConfig {
    EngineConfig {
        writes: PacerConfig::new(budget, Duration::from_secs(20)),
        ..EngineConfig::default()
    }
}

async fn run(fake: Fake, cfg: EngineConfig, req: AttestationRequest) -> (Arc<Fake>, RunResult) {
    let fake = Arc::new(fake);
    let engine = Engine::new(fake.clone(), cfg);
    let result = engine.run(req, None, Arc::new(Progress::new())).await.unwrap();
    (fake, result)
}

fn count(result: &RunResult, outcome: Outcome) -> usize {
    result.devices.iter().filter(|d| d.outcome == outcome).count()
}

#[tokio::test(start_paused = true)]
async fn every_device_is_initiated_once_in_batches_of_at_most_twenty_within_the_budget() {
    let devices = ids(450);
    let (fake, result) = run(
        Fake::new(Duration::from_millis(200), vec![]),
        config(190),
        request(&devices, json!({})),
    )
    .await;
    assert_eq!(count(&result, Outcome::Initiated), 450);
    assert!(fake.accepted.lock().unwrap().values().all(|&n| n == 1));
    let writes = fake.writes();
    assert!(writes.iter().all(|(_, b)| b.len() <= MAX_BATCH));
    // No sliding 20 s window holds more writes than the budget.
    for (i, (start, _)) in writes.iter().enumerate() {
        let in_window: usize = writes[i..]
            .iter()
            .take_while(|(t, _)| *t < *start + Duration::from_secs(20))
            .map(|(_, b)| b.len())
            .sum();
        assert!(in_window <= 190, "{in_window} writes in the window from call {i}");
    }
    // The result counts the same writes, window by window from the start.
    let per_window = &result.stats.writes_per_window;
    assert_eq!(
        per_window.iter().sum::<u32>() as usize,
        writes.iter().map(|(_, b)| b.len()).sum::<usize>()
    );
    assert!(
        per_window.len() >= 3,
        "450 writes at 190 a window span three windows: {per_window:?}"
    );
    assert!(per_window.iter().all(|&n| n <= 190), "{per_window:?}");
    assert_eq!(
        (result.stats.write_budget, result.stats.throttle_window_ms),
        (190, 20_000)
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_leaves_untried_devices_not_attempted_and_starts_no_call_after_the_cutoff() {
    let devices = ids(300);
    let start = Instant::now();
    let (fake, result) = run(
        Fake::new(Duration::from_millis(500), vec![]),
        config(100),
        request(&devices, json!({"timeouts": {"invoke": "30s"}})),
    )
    .await;
    let initiated = count(&result, Outcome::Initiated);
    let untried = count(&result, Outcome::NotAttempted);
    assert!(initiated > 0 && untried > 0, "{initiated} initiated, {untried} untried");
    assert_eq!(initiated + untried, 300, "every device has exactly one outcome");
    assert!(
        result
            .devices
            .iter()
            .filter(|d| d.outcome == Outcome::NotAttempted)
            .all(|d| d.attempts == 0)
    );
    let cutoff = start + Duration::from_secs(30);
    assert!(fake.writes().iter().all(|(t, _)| *t < cutoff));
}

#[tokio::test(start_paused = true)]
async fn throttled_leftovers_are_rebatched_with_fresh_devices_after_the_pause() {
    let devices = ids(100);
    let pause = Duration::from_secs(3);
    let (fake, result) = run(
        Fake::new(Duration::from_millis(100), vec![Plan::ThrottleLast(5, Some(pause))]),
        EngineConfig {
            write_concurrency: 1,
            ..config(190)
        },
        request(&devices, json!({})),
    )
    .await;
    assert_eq!(count(&result, Outcome::Initiated), 100);
    let writes = fake.writes();
    let throttled: Vec<DeviceId> = writes[0].1[writes[0].1.len() - 5..].to_vec();
    // The retried five travel with fresh devices in a later batch.
    let (at, batch) = writes
        .iter()
        .find(|(_, b)| b.contains(&throttled[0]) && b != &writes[0].1)
        .unwrap();
    assert!(throttled.iter().all(|d| batch.contains(d)));
    assert!(
        batch.len() > 5,
        "a full batch, not the leftovers alone: {}",
        batch.len()
    );
    // Nothing went out during the pause Graph asked for.
    let throttled_at = writes[0].0 + Duration::from_millis(100);
    assert!(
        writes[1..].iter().all(|(t, _)| *t >= throttled_at + pause),
        "a call went out during the pause"
    );
    assert!(*at >= throttled_at + pause);
    let retried = result.devices.iter().find(|d| d.device_id == throttled[0]).unwrap();
    assert_eq!(retried.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_task_died_gives_back_its_permits_and_its_devices_are_retried() {
    // A budget of one batch per window: if the dead call kept its permits,
    // nothing else could be sent before the deadline.
    let devices = ids(40);
    let (fake, result) = run(
        Fake::new(Duration::from_millis(100), vec![Plan::Panic]),
        EngineConfig {
            write_concurrency: 1,
            ..config(20)
        },
        request(&devices, json!({"timeouts": {"invoke": "2m"}})),
    )
    .await;
    assert_eq!(count(&result, Outcome::Initiated), 40, "{:?}", result.summary);
    let died: Vec<DeviceId> = fake.writes()[0].1.clone();
    for d in result.devices.iter().filter(|d| died.contains(&d.device_id)) {
        assert_eq!(d.lost_answers, 1, "the lost answer is counted");
        assert_eq!(d.attempts, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_gives_back_its_permits_and_ends_its_helper_tasks() {
    // A budget of one batch per window, taken by a call that never ends.
    let cfg = EngineConfig {
        write_concurrency: 1,
        ..config(20)
    };
    let pacers = Pacers::new(&cfg);
    let fake = Arc::new(Fake::new(Duration::from_millis(100), vec![Plan::Hang]));
    let engine = Engine::with_pacers(fake.clone(), cfg, pacers.clone());
    let devices = ids(60);
    let progress = Arc::new(Progress::new());
    let cancelled = tokio::time::timeout(
        Duration::from_secs(5),
        engine.run(request(&devices[..20], json!({})), None, progress.clone()),
    )
    .await;
    assert!(cancelled.is_err(), "the first run was cancelled mid-call");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        Arc::strong_count(&progress),
        1,
        "the run's progress logger ended with it"
    );
    // The next run on the same budget gets the permits back a window later.
    let result = engine
        .run(
            request(&devices[20..], json!({"timeouts": {"invoke": "2m"}})),
            None,
            Arc::new(Progress::new()),
        )
        .await
        .unwrap();
    assert_eq!(count(&result, Outcome::Initiated), 40, "{:?}", result.summary);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_lowers_the_pace_for_the_rest_of_the_run() {
    let devices = ids(400);
    let cfg = EngineConfig {
        write_concurrency: 1,
        ..config(190)
    };
    let pacers = Pacers::new(&cfg);
    let fake = Arc::new(Fake::new(
        Duration::from_millis(100),
        vec![Plan::Accept, Plan::ThrottleLast(20, Some(Duration::from_secs(1)))],
    ));
    let engine = Engine::with_pacers(fake.clone(), cfg, pacers.clone());
    let result = engine
        .run(request(&devices, json!({})), None, Arc::new(Progress::new()))
        .await
        .unwrap();
    assert_eq!(count(&result, Outcome::Initiated), 400);
    let budget = lock(&pacers.write).effective_budget();
    assert!(budget < 190, "the ceiling was cut after the 429: {budget}");
}

#[tokio::test(start_paused = true)]
async fn a_configuration_error_is_the_answer_unless_devices_were_initiated() {
    let devices = ids(30);
    let mut fake = Fake::new(Duration::from_millis(100), vec![]);
    fake.misconfigured = Some("ATTEST_CLOUD: the token is for another cloud".into());
    let (_, result) = run(fake, config(190), request(&devices, json!({}))).await;
    // Initiated devices are reported; the error is a warning beside them.
    assert_eq!(count(&result, Outcome::Initiated), 30);
    assert!(
        result.warnings.iter().any(|w| w.contains("ATTEST_CLOUD")),
        "{:?}",
        result.warnings
    );

    let mut fake = Fake::new(Duration::from_millis(100), vec![]);
    fake.misconfigured = Some("ATTEST_CLOUD: the token is for another cloud".into());
    let engine = Engine::new(Arc::new(fake), config(190));
    let err = engine
        .run(
            request(&devices, json!({"dry_run": true})),
            None,
            Arc::new(Progress::new()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RunError::Configuration(ref m) if m.starts_with("ATTEST_CLOUD")),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_sends_no_write() {
    let devices = ids(30);
    let (fake, result) = run(
        Fake::new(Duration::from_millis(50), vec![]),
        config(190),
        request(&devices, json!({"dry_run": true})),
    )
    .await;
    assert_eq!(count(&result, Outcome::WouldInitiate), 30);
    assert!(fake.writes().is_empty());
    assert!(result.stats.writes_per_window.is_empty());
    assert_eq!(*fake.reads.lock().unwrap(), 0);

    // With validation, devices are read (and non-Windows ones found) but
    // still nothing is written.
    let mut fake = Fake::new(Duration::from_millis(50), vec![]);
    fake.non_windows = devices[..4].to_vec();
    let (fake, result) = run(
        fake,
        config(190),
        request(&devices, json!({"dry_run": true, "validate_device_exists": true})),
    )
    .await;
    assert_eq!(count(&result, Outcome::WouldInitiate), 26);
    assert_eq!(count(&result, Outcome::Unsupported), 4);
    assert!(fake.writes().is_empty());
    assert!(*fake.reads.lock().unwrap() >= 2);
}
