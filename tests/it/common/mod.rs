//! Shared test harness: a Graph simulator on 127.0.0.1 and the real engine
//! and Graph client pointed at it through the same settings the binary reads.

#![allow(dead_code)]

pub mod aws;
pub mod azurite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use graph_sim::{Sim, SimConfig};
use intune_attest::config::Settings;
use intune_attest::core::engine::{Engine, EngineConfig, RunError};
use intune_attest::core::outcome::{Outcome, RunResult};
use intune_attest::core::progress::Progress;
use intune_attest::core::request::AttestationRequest;
use intune_attest::credentials::AppCredentials;
use intune_attest::graph::GraphClient;
use serde_json::Value;

/// The throttling window tests run with: Intune's 20 s, twenty times faster.
pub const WINDOW: Duration = Duration::from_secs(1);

pub struct Harness {
    pub sim: Sim,
    pub engine: Engine<GraphClient>,
}

/// A fleet of `size` Windows devices that can all attest.
/// A fleet of Windows devices that all report a TPM (a few of unknown
/// version and some co-managed, as the simulator's defaults have it).
pub fn windows_fleet(size: usize) -> SimConfig {
    let mut cfg = sim_config();
    cfg.fleet = graph_sim::FleetSpec {
        size,
        non_windows: 0.0,
        windows_no_tpm: 0.0,
        ..graph_sim::FleetSpec::default()
    };
    cfg
}

/// A fleet of Windows devices whose TPM is known to be eligible.
pub fn attestable_fleet(size: usize) -> SimConfig {
    let mut cfg = windows_fleet(size);
    cfg.fleet.windows_unknown_tpm = 0.0;
    cfg
}

pub fn sim_config() -> SimConfig {
    SimConfig {
        window: WINDOW,
        faults: graph_sim::Faults {
            latency_ms: (2, 15),
            ..Default::default()
        },
        ..SimConfig::default()
    }
}

/// A simulator configuration whose only app signs in with the test
/// certificate (registered with `thumbprint`, or the real one), and the path
/// of the PEM file the client reads.
pub fn certificate_app(thumbprint: Option<&str>) -> (SimConfig, String) {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let public = std::fs::read_to_string(format!("{fixtures}/test-app-public-key.pem")).unwrap();
    let real = std::fs::read_to_string(format!("{fixtures}/test-app-x5t-s256.txt")).unwrap();
    let mut cfg = sim_config();
    cfg.apps = vec![graph_sim::AppRegistration {
        client_id: graph_sim::CLIENT_ID.into(),
        secret: None,
        certificate: Some((public, thumbprint.unwrap_or(real.trim()).to_owned())),
        ..Default::default()
    }];
    (cfg, format!("{fixtures}/test-app-certificate.pem"))
}

pub fn env_of(sim: &Sim, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = sim.client_env().into_iter().collect();
    env.insert("ATTEST_THROTTLE_WINDOW".into(), format!("{}ms", WINDOW.as_millis()));
    env.insert("ATTEST_MAX_RETRY_AFTER".into(), "2s".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    env
}

pub async fn harness(cfg: SimConfig) -> Harness {
    harness_with(cfg, &[], |_| {}).await
}

pub async fn harness_with(cfg: SimConfig, extra_env: &[(&str, &str)], tune: impl FnOnce(&mut EngineConfig)) -> Harness {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("ATTEST_LOG"))
        .try_init();
    let sim = Sim::start(cfg).await.expect("simulator starts");
    let env = env_of(&sim, extra_env);
    let get = |k: &str| env.get(k).cloned();
    let settings = Settings::from_env(get).expect("settings");
    let creds = AppCredentials::from_env(get).expect("credentials");
    let client = GraphClient::new(settings.endpoints.clone(), creds, settings.client.clone()).expect("client");
    let mut engine_cfg = settings.engine.clone();
    engine_cfg.backoff.base = Duration::from_millis(50);
    engine_cfg.backoff.cap = Duration::from_millis(500);
    engine_cfg.fill_wait = Duration::from_millis(50);
    tune(&mut engine_cfg);
    Harness {
        sim,
        engine: Engine::new(Arc::new(client), engine_cfg),
    }
}

pub fn request(v: Value) -> AttestationRequest {
    AttestationRequest::from_value(&v, Default::default()).expect("valid request")
}

impl Harness {
    pub async fn run(&self, v: Value) -> Result<RunResult, RunError> {
        self.engine.run(request(v), None, Arc::new(Progress::new())).await
    }

    /// IDs of fleet devices matching `pred`.
    pub fn ids(&self, pred: impl Fn(&graph_sim::SimDevice) -> bool) -> Vec<String> {
        self.sim
            .fleet()
            .iter()
            .filter(|d| pred(d))
            .map(|d| d.id.clone())
            .collect()
    }

    /// The central promise, checked after every run: one outcome per
    /// requested device; a device is in the simulator's ledger if and only if
    /// it was initiated, except where an answer was lost, which the result
    /// says; nothing outside the request was touched.
    pub fn assert_ledger_agrees(&self, result: &RunResult) {
        self.assert_ledger_agrees_from(result, 0);
    }

    /// As [`Self::assert_ledger_agrees`], for the ledger entries from `from` on
    /// (the entries of earlier runs left out).
    pub fn assert_ledger_agrees_from(&self, result: &RunResult, from: usize) {
        let mut counts: HashMap<(String, &'static str), usize> = HashMap::new();
        for e in self.sim.ledger().into_iter().skip(from) {
            *counts.entry((e.device_id, e.kind)).or_insert(0) += 1;
        }
        let mut seen = HashSet::new();
        for d in &result.devices {
            let kind = match d.kind {
                intune_attest::core::device::DeviceKind::Managed => "managed",
                intune_attest::core::device::DeviceKind::Comanaged => "comanaged",
            };
            let key = (d.device_id.to_string(), kind);
            assert!(seen.insert(key.clone()), "{key:?} has more than one outcome");
            let n = counts.get(&key).copied().unwrap_or(0);
            if d.outcome == Outcome::Initiated {
                assert!(n >= 1, "{key:?} reported initiated but Graph never accepted it");
                assert!(
                    n as u32 <= 1 + d.lost_answers,
                    "{key:?} accepted {n} times with {} lost answers",
                    d.lost_answers
                );
            } else {
                assert!(
                    n as u32 <= d.lost_answers,
                    "{key:?} is {:?} but Graph accepted it {n} times",
                    d.outcome
                );
            }
        }
        for key in counts.keys() {
            assert!(seen.contains(key), "{key:?} was attested but not requested");
        }
        assert_eq!(result.summary.requested, result.devices.len());
    }
}

pub fn outcomes(result: &RunResult) -> HashMap<Outcome, usize> {
    let mut m = HashMap::new();
    for d in &result.devices {
        *m.entry(d.outcome).or_insert(0) += 1;
    }
    m
}

/// The request a work queue message carries: the payload of a message the
/// service sealed for itself, or the message itself.
pub fn payload_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    match v.get("service_message") {
        Some(_) => serde_json::from_str(v["payload"].as_str().unwrap()).unwrap(),
        None => v,
    }
}
