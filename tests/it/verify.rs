//! `verify` on the Lambda front door, against the simulator and moto: the
//! follow-up checks travel as delayed SQS messages, each check publishes a
//! `Device Attestation Verdict` covering every initiated device once, and
//! the checks stop when every action is over or the schedule ends. SQS's
//! 15-minute delay limit is enforced by a stand-in in front of moto, which
//! does not enforce it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use intune_attest::core::BoxFuture;
use intune_attest::queue::sqs::SqsWorkQueue;
use intune_attest::queue::{WorkMessage, WorkQueue};
use intune_attest::results::DeliveryError;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::common::{payload_of, sim_config};
use crate::lambda_handler::{AppOptions, World, ctx, sqs_event, world};
use graph_sim::SimConfig;
use intune_attest::frontdoor::lambda::LambdaApp;

/// SQS in front of moto, refusing what SQS refuses (a delay over 15
/// minutes) and recording each message's body and delay.
pub(crate) struct DelayLimited {
    inner: SqsWorkQueue,
    pub(crate) sent: Mutex<Vec<(String, Duration)>>,
}

impl WorkQueue for DelayLimited {
    fn max_message_bytes(&self) -> BoxFuture<'_, Option<usize>> {
        self.inner.max_message_bytes()
    }

    fn max_delay(&self) -> Option<Duration> {
        self.inner.max_delay()
    }

    fn send(&self, messages: Vec<WorkMessage>, deadline: Option<Instant>) -> BoxFuture<'_, Result<(), DeliveryError>> {
        Box::pin(async move {
            if let Some(m) = messages.iter().find(|m| m.delay > Duration::from_secs(900)) {
                return Err(DeliveryError(format!(
                    "InvalidParameterValue: DelaySeconds {} is over 900",
                    m.delay.as_secs()
                )));
            }
            self.sent
                .lock()
                .unwrap()
                .extend(messages.iter().map(|m| (m.body.clone(), m.delay)));
            self.inner.send(messages, deadline).await
        })
    }
}

pub(crate) fn stand_in(w: &World) -> Arc<DelayLimited> {
    Arc::new(DelayLimited {
        inner: SqsWorkQueue::new(w.aws.sqs.clone(), w.work_queue.clone()),
        sent: Mutex::new(Vec::new()),
    })
}

/// A function whose work queue is SQS behind the stand-in.
pub(crate) fn with_stand_in(w: &World) -> (Arc<DelayLimited>, LambdaApp) {
    let queue = stand_in(w);
    let app = w.app(AppOptions {
        work_queue: Some(queue.clone()),
        ..Default::default()
    });
    (queue, app)
}

/// A fleet with virtual machines and TPM 1.2 devices, which Intune reports
/// as not supported and failed.
fn fleet() -> SimConfig {
    let mut cfg = sim_config();
    cfg.fleet = graph_sim::FleetSpec {
        size: 200,
        virtual_machines: 0.1,
        tpm_1_2: 0.1,
        ..graph_sim::FleetSpec::default()
    };
    cfg
}

/// Fleet devices of every kind that Intune reports on differently: 25
/// that attest, 2 virtual machines, 2 with TPM 1.2.
fn mixed(w: &World) -> Vec<String> {
    let fleet = w.sim.fleet();
    let mut ids: Vec<String> = fleet
        .iter()
        .filter(|d| d.is_windows() && d.tpm.is_some_and(|t| t.starts_with('2')) && d.model != "Virtual Machine")
        .take(25)
        .map(|d| d.id.clone())
        .collect();
    ids.extend(
        fleet
            .iter()
            .filter(|d| d.model == "Virtual Machine")
            .take(2)
            .map(|d| d.id.clone()),
    );
    ids.extend(
        fleet
            .iter()
            .filter(|d| d.is_windows() && d.tpm.is_some_and(|t| t.starts_with("1.")))
            .take(2)
            .map(|d| d.id.clone()),
    );
    ids
}

/// The verdict events of one check: the summary entry and every device
/// listed across its device entries.
fn verdicts(events: &[Value]) -> HashMap<u64, (Value, Vec<String>)> {
    let mut out: HashMap<u64, (Value, Vec<String>)> = HashMap::new();
    for (number, (summary, devices)) in verdict_documents(events) {
        let ids = devices
            .iter()
            .map(|d| d["device_id"].as_str().unwrap().to_owned())
            .collect();
        out.insert(number, (summary, ids));
    }
    out
}

/// Per check: the summary entry's detail, and the devices of its device
/// entries.
fn verdict_documents(events: &[Value]) -> HashMap<u64, (Value, Vec<Value>)> {
    let mut out: HashMap<u64, (Value, Vec<Value>)> = HashMap::new();
    for e in events {
        let detail = &e["detail"];
        let number = detail["check"]["number"].as_u64().unwrap_or(0);
        match e["detail-type"].as_str() {
            Some("Device Attestation Verdict") => out.entry(number).or_default().0 = detail.clone(),
            Some("Device Attestation Verdict Devices") => out
                .entry(number)
                .or_default()
                .1
                .extend(detail["devices"].as_array().unwrap().iter().cloned()),
            _ => {}
        }
    }
    out
}

/// The verdict document put back together from its events follows
/// `schema/verdict.schema.json`.
fn assert_valid_verdicts(events: &[Value]) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/verdict.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
    for (n, (mut doc, devices)) in verdict_documents(events) {
        let obj = doc.as_object_mut().unwrap();
        obj.remove("event_part");
        obj.remove("event_parts");
        obj.insert("devices".into(), Value::Array(devices));
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "check {n}: {errors:?}");
    }
}

/// Waits for the next message on the work queue (none arrive before
/// their delay) and returns its body, or `None` after `wait`.
async fn next_message(w: &World, wait: Duration) -> Option<String> {
    let until = std::time::Instant::now() + wait;
    loop {
        let mut got = w.aws.drain(&w.work_queue).await;
        assert!(got.len() <= 1, "{got:?}");
        if let Some(body) = got.pop() {
            return Some(body);
        }
        if std::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn checks_follow_the_initiated_devices_until_every_action_is_over() {
    let mut cfg = fleet();
    cfg.action_delay = Duration::from_millis(2500);
    let w = world(cfg).await;
    let (queue, app) = with_stand_in(&w);
    let mut ids = mixed(&w);
    ids.push("00000000-dead-4bad-8bad-000000000001".into());
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false,
                         "verify": {"after": "2s", "until": "30s"}, "correlation_id": "verify-run"});
    let started = std::time::Instant::now();
    let result = app.handle(payload, ctx("v-1", 60)).await.unwrap_err();
    // One device does not exist: the run failed for the caller, and the
    // other 29 are checked.
    assert_eq!(result.error_type, "AttestationFailed");
    let results = w.events().await;
    let run = results
        .iter()
        .find(|e| e["detail-type"] == "Device Attestation Result")
        .unwrap();
    let arranged = &run["detail"]["verification"];
    assert_eq!(arranged["scheduled"], true, "{arranged}");
    assert_eq!(arranged["devices"], 29);

    // The first check is held back by its delay.
    let sent = queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(
        (Duration::from_millis(1500)..=Duration::from_secs(2)).contains(&sent[0].1),
        "the first check waits `after`: {:?}",
        sent[0].1
    );
    assert_eq!(payload_of(&sent[0].0)["check"]["number"], 1);
    assert_eq!(
        payload_of(&sent[0].0)["managed_device_ids"].as_array().unwrap().len(),
        29
    );
    let mut checks = 0;
    let mut bodies = Vec::new();
    while let Some(body) = next_message(&w, Duration::from_secs(6)).await {
        assert!(
            started.elapsed() >= Duration::from_millis(1900) * (checks + 1),
            "check {} arrived before its delay: {:?}",
            checks + 1,
            started.elapsed()
        );
        checks += 1;
        let out = app
            .handle(sqs_event(&[(&format!("check-{checks}"), body.clone())]), ctx("c", 60))
            .await
            .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}));
        bodies.push(body);
        assert!(checks < 6, "checks went on after every action was over");
    }
    // 2.5 s of attesting: the first check (at 2 s) finds devices still
    // active, the second (at 4 s) finds every action over.
    assert_eq!(checks, 2);
    let events = w.events().await;
    assert_valid_verdicts(&events);
    let by_check = verdicts(&events);
    assert_eq!(by_check.len(), 2);
    for (n, (summary, devices)) in &by_check {
        let mut unique = devices.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            (devices.len(), unique.len()),
            (29, 29),
            "check {n} covers each device once"
        );
        assert_eq!(summary["correlation_id"], "verify-run");
        assert_eq!(summary["schema_version"], "1");
        assert!(summary.get("devices").is_none(), "the summary entry lists no device");
    }
    let first = &by_check[&1].0;
    assert_eq!(first["check"]["last"], false);
    assert!(
        first["summary"]["action_states"]["active"].as_u64().unwrap_or(0) > 0,
        "{first}"
    );
    let last = &by_check[&2].0;
    assert_eq!(last["check"]["last"], true);
    assert_eq!(last["check"]["next_check_at"], Value::Null);
    let states = &last["summary"]["action_states"];
    assert_eq!(states["done"], 25, "{states}");
    assert_eq!(states["not_supported"], 2, "{states}");
    assert_eq!(states["failed"], 2, "{states}");
    // The attestation detail is not selected unless a deployment opts in.
    assert_eq!(last["summary"]["attestation_statuses"], json!({"null": 29}));
    // A check delivered again is a repeat: no second verdict.
    let again = app
        .handle(sqs_event(&[("check-2", bodies[1].clone())]), ctx("c", 60))
        .await
        .unwrap();
    assert_eq!(again, json!({"batchItemFailures": []}));
    assert!(verdicts(&w.events().await).is_empty());
}

#[tokio::test]
async fn checks_end_with_the_schedule_and_go_on_without_the_attestation_status() {
    let mut cfg = fleet();
    // Longer than the schedule: the actions are still going when it ends.
    cfg.action_delay = Duration::from_secs(60);
    let w = world(cfg).await;
    // Opted in, and Graph (as the current beta schema has it) refuses the
    // property.
    let app = w.app(AppOptions {
        work_queue: Some(stand_in(&w)),
        extra_env: vec![("ATTEST_ATTESTATION_DETAIL", "true")],
        ..Default::default()
    });
    let ids = mixed(&w);
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false,
                         "verify": {"after": "1s", "until": "3s"}, "correlation_id": "verify-ends"});
    app.handle(payload, ctx("v-2", 60)).await.unwrap();
    let mut checks = 0;
    while let Some(body) = next_message(&w, Duration::from_secs(4)).await {
        checks += 1;
        app.handle(sqs_event(&[(&format!("end-{checks}"), body)]), ctx("c", 60))
            .await
            .unwrap();
        assert!(checks < 6, "checks went on past the schedule");
    }
    let events = w.events().await;
    assert_valid_verdicts(&events);
    let by_check = verdicts(&events);
    assert!((2..=4).contains(&checks), "{checks} checks in a 3 s schedule every 1 s");
    assert_eq!(by_check.len(), checks as usize);
    let last = &by_check[&(checks as u64)].0;
    assert_eq!(last["check"]["last"], true, "the schedule's end is the last check");
    let states = &last["summary"]["action_states"];
    assert_eq!(
        states["pending"].as_u64().unwrap_or(0) + states["active"].as_u64().unwrap_or(0),
        ids.len() as u64,
        "still attesting when the schedule ended: {last}"
    );
    for (n, (summary, devices)) in &by_check {
        assert_eq!(devices.len(), ids.len(), "check {n}");
        // Graph refused the attestation detail: no status, and at most one
        // warning (none once the run has stopped asking).
        assert_eq!(
            summary["summary"]["attestation_statuses"],
            json!({"null": ids.len()}),
            "check {n}"
        );
        assert!(
            summary["warnings"].as_array().unwrap().len() <= 1,
            "check {n}: {summary}"
        );
    }
    assert_eq!(
        by_check[&1].0["warnings"].as_array().unwrap().len(),
        1,
        "the first check says so"
    );
}

#[tokio::test]
async fn a_check_due_after_the_queues_longest_delay_hops_until_it_is_due() {
    let w = world(fleet()).await;
    let (queue, app) = with_stand_in(&w);
    let ids = mixed(&w);
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false,
                         "verify": {"after": "40m", "until": "2h"}, "correlation_id": "verify-hops"});
    let result = app.handle(payload, ctx("v-3", 60)).await.unwrap();
    let due = humantime::parse_rfc3339(result["verification"]["first_check_at"].as_str().unwrap()).unwrap();
    let wait = due.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(wait > Duration::from_secs(39 * 60), "{wait:?}");
    // SQS holds a message at most 15 minutes: the first hop is that long.
    let first = queue.sent.lock().unwrap()[0].clone();
    assert_eq!(first.1, Duration::from_secs(900));
    // Delivered after its 15 minutes, long before it is due, it is sent
    // on unchanged, again for 15 minutes, and no status is read.
    let reads_before = w.sim.stats().device_reads;
    let out = app
        .handle(sqs_event(&[("hop-1", first.0.clone())]), ctx("h", 60))
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let sent = queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    // Sealed again, saying the same.
    assert_eq!(
        (payload_of(&sent[1].0), sent[1].1),
        (payload_of(&first.0), Duration::from_secs(900))
    );
    assert_eq!(w.sim.stats().device_reads, reads_before);
    assert!(verdicts(&w.events().await).is_empty());
}

#[tokio::test]
async fn a_check_from_a_caller_is_refused_and_a_fifo_queue_says_why_nothing_was_scheduled() {
    let w = world(fleet()).await;
    let app = w.app(AppOptions {
        queue: true,
        ..Default::default()
    });
    let ids = mixed(&w);
    let check = json!({"managed_device_ids": ids, "verify": {"after": "1s", "until": "2s"},
                       "check": {"number": 1, "due_at": "2026-01-01T00:00:00.000Z", "until_at": "2026-01-01T00:00:01.000Z"}});
    let err = app.handle(check, ctx("x", 60)).await.unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");
    assert!(err.error_message.contains("check"), "{}", err.error_message);

    // Never contacted: a FIFO queue cannot delay one message.
    let fifo = format!("{}.fifo", w.work_queue);
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some(fifo),
        ..Default::default()
    });
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false,
                         "verify": {"after": "1s", "until": "2s"}});
    let result = app.handle(payload, ctx("v-4", 60)).await.unwrap();
    let arranged = &result["verification"];
    assert_eq!(arranged["scheduled"], false);
    assert!(arranged["reason"].as_str().unwrap().contains("FIFO"), "{arranged}");
    assert!(result["warnings"].to_string().contains("intune-attest status"));
}

#[tokio::test]
async fn read_status_answers_a_direct_invoke_with_the_status_and_writes_nothing() {
    let mut cfg = fleet();
    cfg.action_delay = Duration::from_millis(300);
    let w = world(cfg).await;
    let app = w.app(AppOptions {
        queue: true,
        ..Default::default()
    });
    let ids = mixed(&w);
    app.handle(
        json!({"managed_device_ids": ids, "validate_device_exists": false, "correlation_id": "playbook"}),
        ctx("run", 60),
    )
    .await
    .unwrap();
    let writes = w.sim.stats().writes;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let doc = app
        .handle(
            json!({"managed_device_ids": ids, "read_status": true, "correlation_id": "playbook"}),
            ctx("status", 60),
        )
        .await
        .unwrap();
    assert_eq!(w.sim.stats().writes, writes, "read_status initiates nothing");
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/status.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        doc["summary"]["action_states"],
        json!({"done": 25, "not_supported": 2, "failed": 2})
    );

    // A queue message cannot ask: nobody would read the answer.
    let out = app
        .handle(
            sqs_event(&[(
                "rs-1",
                json!({"managed_device_ids": ids, "read_status": true}).to_string(),
            )]),
            ctx("q", 60),
        )
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let rejected: Vec<Value> = w
        .events()
        .await
        .into_iter()
        .filter(|e| e["detail-type"] == "Device Attestation Request Rejected")
        .collect();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0]["detail"]["message"]
            .as_str()
            .unwrap()
            .contains("read_status")
    );
}

#[tokio::test]
async fn a_status_answer_stays_under_what_step_functions_keeps() {
    let mut cfg = sim_config();
    cfg.fleet.size = 2000;
    let w = world(cfg).await;
    let app = w.app(AppOptions::default());
    let doc = app
        .handle(
            json!({"device_filter": "operatingSystem eq 'Windows'", "read_status": true}),
            ctx("big", 60),
        )
        .await
        .unwrap();
    let size = doc.to_string().len();
    assert!(size <= 240 * 1024, "{size} bytes");
    let devices = doc["summary"]["devices"].as_u64().unwrap();
    assert!(devices > 1500, "{devices}");
    let truncated = &doc["truncated"];
    assert_eq!(
        truncated["devices_listed"].as_u64().unwrap() + truncated["devices_omitted"].as_u64().unwrap(),
        devices
    );
    assert_eq!(
        doc["devices"].as_array().unwrap().len() as u64,
        truncated["devices_listed"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn the_interval_between_checks_grows_with_the_number_of_devices() {
    let w = world(fleet()).await;
    let queue = stand_in(&w);
    // 40 reads a (one-second) window: a quarter of it is 10 reads a
    // second, so 29 devices are checked no closer than 2.9 s apart.
    let app = w.app(AppOptions {
        work_queue: Some(queue.clone()),
        extra_env: vec![("ATTEST_READ_BUDGET", "40")],
        ..Default::default()
    });
    let ids = mixed(&w);
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false,
                         "verify": {"after": "1s", "until": "30s"}, "correlation_id": "verify-floor"});
    let result = app.handle(payload, ctx("v-f", 60)).await.unwrap();
    assert_eq!(result["verification"]["devices"], 29, "{result}");
    let warned = result["warnings"].as_array().unwrap();
    assert!(
        warned
            .iter()
            .any(|w| w.as_str().unwrap().contains("verify.after raised from 1s to 2s 900ms")),
        "{warned:?}"
    );
    let sent = queue.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert!(
        (Duration::from_millis(2400)..=Duration::from_millis(2900)).contains(&sent[0].1),
        "the first check waits the floor, not `after`: {:?}",
        sent[0].1
    );
    // The check carries the interval in force, for every check after it.
    assert_ne!(payload_of(&sent[0].0)["verify"]["after"], "1s", "{}", sent[0].0);
}
