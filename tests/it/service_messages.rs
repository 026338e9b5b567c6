//! The service's own work queue messages (continuations, checks, webhook
//! hand-offs) on the Lambda front door, against the simulator and moto: a
//! part that tries no device is handed on later each time and its run ends
//! after a bounded number of such parts; a message the service did not seal
//! claims no part, no check and no caller, whatever trigger it arrives as;
//! and even a sealed one is held to its run's schedule. Each case writes a
//! row of the fault matrix's service-message part.

use std::time::{Duration, SystemTime};

use intune_attest::service::seal::{self, Kind, Stamp};
use serde_json::{Value, json};

use intune_attest::core::lease::BudgetRules;
use intune_attest::state::budget::{DynamoBudget, SharedBudget};

use crate::common::{WINDOW, payload_of, sim_config};
use crate::lambda_handler::{AppOptions, ctx, sqs_event, world};
use crate::verify::{stand_in, with_stand_in};

/// Writes a row of the service-message part of the fault matrix.
fn record(case: &str, devices: usize, lost: usize, duplicated: usize, parts: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../service-messages");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!(
        "{}.row",
        case.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    let _ = std::fs::write(
        file,
        format!("| {case} | {devices} | {lost} | {duplicated} | {parts} |\n"),
    );
}

fn of_type<'a>(events: &'a [Value], detail_type: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["detail-type"] == detail_type).collect()
}

#[tokio::test]
async fn a_part_that_tries_no_device_is_handed_on_later_each_time_and_the_run_ends() {
    // Every instance is paused by a 429 another one saw, for longer than
    // the parts below take: no part can try a device.
    let w = world(sim_config()).await;
    let table = w.aws.state_table("attest-state-stalled").await;
    let budget = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let key = format!("budget#{}#{}#writes", graph_sim::TENANT_ID, graph_sim::CLIENT_ID);
    budget
        .throttled(
            &key,
            BudgetRules::new(190, WINDOW),
            SystemTime::now() + Duration::from_secs(60),
        )
        .await
        .unwrap();
    let queue = stand_in(&w);
    // A pause the deployment honours: one longer than its longest
    // Retry-After is cut to it when read.
    let app = w.app(AppOptions {
        work_queue: Some(queue.clone()),
        state_table: Some(table),
        extra_env: vec![("ATTEST_MAX_RETRY_AFTER", "60s")],
        ..Default::default()
    });
    let ids = w.windows(4);
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false, "correlation_id": "stalled-run"});
    let mut body = payload.to_string();
    let mut delays = Vec::new();
    let mut parts = 0;
    loop {
        parts += 1;
        assert!(parts <= 4 + 6 + 1, "the run did not end");
        // The host gives six seconds a part.
        let out = app
            .handle(sqs_event(&[(&format!("m-{parts}"), body.clone())]), ctx("p", 6))
            .await
            .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}));
        let sent = queue.sent.lock().unwrap().clone();
        if sent.len() < parts {
            break;
        }
        let (next, delay) = sent[parts - 1].clone();
        assert_eq!(payload_of(&next)["part"], parts + 1);
        delays.push(delay.as_secs());
        body = next;
    }
    // Each part that tried nothing waited twice as long as the one before
    // (SQS delays at most 15 minutes), and the seventh did not hand on.
    assert_eq!(delays, [30, 60, 120, 240, 480, 900]);
    assert_eq!(parts, 7);
    let events = w.events().await;
    let results = of_type(&events, "Device Attestation Result");
    assert_eq!(results.len(), 7, "one result a part");
    let last = results.iter().find(|e| e["detail"]["invocation"]["part"] == 7).unwrap();
    assert_eq!(last["detail"]["summary"]["not_attempted"], 4, "{}", last["detail"]);
    assert_eq!(last["detail"]["summary"]["requested"], 4);
    assert!(last["detail"]["warnings"].to_string().contains("tried no device"));
    let ledger = w.sim.ledger_counts();
    assert!(ledger.is_empty());
    record(
        "a part that tries no device, again and again",
        4,
        0,
        0,
        "7 (bound 4 + 6)",
    );
}

#[tokio::test]
async fn a_message_the_service_did_not_seal_claims_no_part_check_or_caller() {
    let w = world(sim_config()).await;
    let (queue, app) = with_stand_in(&w);
    let ids = w.windows(4);
    let part = json!({"managed_device_ids": ids, "part": 9, "correlation_id": "incident-4711"});
    let check = json!({"managed_device_ids": ids, "verify": {"after": "1s", "until": "24h"},
                       "correlation_id": "incident-4711",
                       "check": {"number": 9999, "due_at": "2026-01-01T00:00:00.000Z", "until_at": "9999-12-31T00:00:00.000Z"}});
    // Sealed, but with a key that is not this deployment's.
    let foreign = seal::seal_with(
        b"another deployment's key, 32 byte",
        &Stamp::new(Kind::Continuation, SystemTime::now()),
        &json!({"managed_device_ids": ids, "part": 2}).to_string(),
    )
    .unwrap();
    let out = app
        .handle(
            sqs_event(&[
                ("f-1", part.to_string()),
                ("f-2", check.to_string()),
                ("f-3", foreign.clone()),
            ]),
            ctx("f", 60),
        )
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}), "each refused once, not retried");
    // The same shapes by direct invoke: refused the same way.
    for forged in [part.clone(), check.clone(), serde_json::from_str(&foreign).unwrap()] {
        let err = app.handle(forged, ctx("d", 60)).await.unwrap_err();
        assert_eq!(err.error_type, "InvalidRequest");
    }
    assert_eq!(w.sim.stats().http_requests, 0, "nothing reached Graph");
    assert!(queue.sent.lock().unwrap().is_empty(), "nothing was queued");
    let events = w.events().await;
    assert!(of_type(&events, "Device Attestation Verdict").is_empty());
    assert!(of_type(&events, "Device Attestation Result").is_empty());
    let rejected = of_type(&events, "Device Attestation Request Rejected");
    assert_eq!(rejected.len(), 3);
    let said = |e: &&Value| e["detail"]["message"].as_str().unwrap_or_default().to_owned();
    let messages: Vec<String> = rejected.iter().map(said).collect();
    assert!(messages.iter().any(|m| m.contains("part")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("check")), "{messages:?}");
    assert!(
        messages.iter().any(|m| m.contains("seal does not verify")),
        "{messages:?}"
    );
    record("forged continuation, check and seal", 12, 0, 0, "0 (refused once)");
}

#[tokio::test]
async fn a_check_sealed_with_the_deployments_own_key_is_still_held_to_its_runs_schedule() {
    let w = world(sim_config()).await;
    let table = w.aws.state_table("attest-state-seal").await;
    let app = w.app(AppOptions {
        queue: true,
        state_table: Some(table.clone()),
        ..Default::default()
    });
    let ids = w.windows(3);
    let run = json!({"managed_device_ids": ids, "validate_device_exists": false,
                     "verify": {"after": "1s", "until": "1m"}, "correlation_id": "sealed-run"});
    app.handle(run, ctx("r-1", 60)).await.unwrap();
    // The check is held back by its delay (a second).
    let mut queued = Vec::new();
    for _ in 0..100 {
        queued.extend(w.aws.drain(&w.work_queue).await);
        if !queued.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(queued.len(), 1);
    let sealed: Value = serde_json::from_str(&queued[0]).unwrap();
    let stamp: Stamp = serde_json::from_str(sealed["service_message"]["stamp"].as_str().unwrap()).unwrap();
    assert_eq!(stamp.kind, Kind::Check);

    // Whoever can read the state table holds the key (docs/security.md);
    // even so, a check past its run's longest schedule is refused.
    let item = w
        .aws
        .dynamodb
        .get_item()
        .table_name(&table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(seal::KEY_ITEM.into()))
        .key("sk", aws_sdk_dynamodb::types::AttributeValue::S("state".into()))
        .send()
        .await
        .unwrap();
    let key = hex::decode(item.item().unwrap()["value"].as_s().unwrap()).unwrap();
    let mut forever = payload_of(&queued[0]);
    forever["check"]["until_at"] = "9999-12-31T00:00:00.000Z".into();
    forever["check"]["due_at"] = "2026-01-01T00:00:00.000Z".into();
    let forged = seal::seal_with(&key, &stamp, &forever.to_string()).unwrap();
    let out = app
        .handle(sqs_event(&[("s-forever", forged)]), ctx("s", 60))
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let events = w.events().await;
    assert!(of_type(&events, "Device Attestation Verdict").is_empty());
    let rejected = of_type(&events, "Device Attestation Request Rejected");
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0]["detail"]["message"]
            .as_str()
            .unwrap()
            .contains("longest schedule"),
        "{}",
        rejected[0]["detail"]
    );
    // The check the service queued itself runs (it is due now).
    let out = app
        .handle(sqs_event(&[("s-real", queued[0].clone())]), ctx("s", 60))
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let events = w.events().await;
    assert_eq!(of_type(&events, "Device Attestation Verdict").len(), 1);
    record(
        "check sealed with the key, past its schedule",
        3,
        0,
        0,
        "1 (the real check)",
    );
}

#[tokio::test]
async fn a_webhook_handed_to_the_queue_keeps_the_iam_caller_a_forged_message_cannot_claim() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions {
        queue: true,
        ..Default::default()
    });
    let arn = "arn:aws:sts::123456789012:assumed-role/responder/alice";
    let ids = w.windows(2);
    let event = crate::lambda_handler::http_event(
        &json!({"managed_device_ids": ids, "validate_device_exists": false}).to_string(),
        json!({}),
        Some(arn),
    );
    let out = app.handle(event, ctx("w-1", 60)).await.unwrap();
    assert_eq!(out["statusCode"], 202, "{out}");
    let queued = w.aws.drain(&w.work_queue).await;
    assert_eq!(queued.len(), 1);
    let out = app
        .handle(sqs_event(&[("h-1", queued[0].clone())]), ctx("h", 60))
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let events = w.events().await;
    let result = of_type(&events, "Device Attestation Result")[0];
    assert_eq!(result["detail"]["invocation"]["caller"], arn);
    assert_eq!(result["detail"]["invocation"]["trigger"], "sqs");
    assert_eq!(w.sim.ledger_counts().len(), 2);
}
