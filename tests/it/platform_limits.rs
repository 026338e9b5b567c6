//! The platforms' size limits and the hardening findings, against moto and
//! the simulator. moto enforces none of AWS's size limits, so each test
//! checks the limit itself on what reached the stand-in (message sizes read
//! back from the queue, response sizes), and every test counts devices:
//! none lost, none initiated twice.

use std::collections::HashMap;

use graph_sim::{FleetSpec, SimConfig};
use intune_attest::service::signature as webhook;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::common::sim_config;
use crate::lambda_handler::{AppOptions, World, ctx, http_event, now, sqs_event, world};

fn fleet(size: usize) -> SimConfig {
    let mut cfg = sim_config();
    cfg.fleet = FleetSpec {
        size,
        non_windows: 0.0,
        windows_no_tpm: 0.0,
        windows_unknown_tpm: 0.0,
        ..FleetSpec::default()
    };
    cfg
}

fn all_ids(w: &World) -> Vec<String> {
    w.sim.fleet().iter().map(|d| d.id.clone()).collect()
}

/// Every device named in the messages, with how often.
fn named(messages: &[String]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in messages {
        let v: Value = serde_json::from_str(m).unwrap();
        for id in v["managed_device_ids"].as_array().into_iter().flatten() {
            *out.entry(id.as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test]
async fn a_continuation_larger_than_the_queue_accepts_is_split_and_every_part_runs() {
    let w = world(fleet(1500)).await;
    // A queue made with a small limit: the function must learn it.
    let small = w.aws.queue_with_limit("attest-small", 8192).await;
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some(small.clone()),
        extra_env: vec![("ATTEST_WRITE_BUDGET", "60")],
        ..Default::default()
    });
    let payload =
        json!({"managed_device_ids": all_ids(&w), "validate_device_exists": false, "correlation_id": "split-run"});
    let first = app.handle(payload, ctx("big-1", 3)).await.unwrap();
    let continued = first["summary"]["continued"].as_u64().unwrap() as usize;
    assert!(continued > 400, "{}", first["summary"]);

    let messages = w.aws.drain(&small).await;
    assert!(messages.len() >= 2, "{} message(s)", messages.len());
    assert!(
        messages.iter().all(|m| m.len() <= 8192),
        "a message over the queue's limit"
    );
    let carried = named(&messages);
    assert_eq!(carried.len(), continued, "every continued device is carried");
    assert!(carried.values().all(|&n| n == 1), "each in exactly one message");

    // The consumer accepts every part the producer wrote.
    for (i, m) in messages.iter().enumerate() {
        let out = app
            .handle(
                sqs_event(&[(&format!("part-{i}"), m.clone())]),
                ctx(&format!("c-{i}"), 60),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}));
    }
    let ledger = w.sim.ledger_counts();
    assert_eq!(ledger.len(), 1500, "every device initiated across the parts");
    assert!(ledger.values().all(|&n| n == 1), "none twice");
}

#[tokio::test]
async fn a_result_that_could_not_be_delivered_is_republished_not_rerun() {
    let w = world(fleet(40)).await;
    let app = w.app(AppOptions {
        bus: "late-bus",
        ..Default::default()
    });
    let body = json!({"managed_device_ids": all_ids(&w), "validate_device_exists": false}).to_string();
    let first = app
        .handle(sqs_event(&[("m-1", body.clone())]), ctx("d-1", 60))
        .await
        .unwrap();
    assert_eq!(first, json!({"batchItemFailures": [{"itemIdentifier": "m-1"}]}));
    assert_eq!(w.sim.ledger_counts().len(), 40);

    // The bus exists now; the same message comes back.
    let events = w.aws.bus_into_queue("late-bus").await;
    let again = app.handle(sqs_event(&[("m-1", body)]), ctx("d-2", 60)).await.unwrap();
    assert_eq!(again, json!({"batchItemFailures": []}));
    let ledger = w.sim.ledger_counts();
    assert!(ledger.values().all(|&n| n == 1), "the redelivery ran the devices again");
    let published: Vec<Value> = w
        .aws
        .drain(&events)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let summaries: Vec<&Value> = published
        .iter()
        .filter(|e| e["detail-type"] == "Device Attestation Result")
        .collect();
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0]["detail"]["summary"]["initiated"], 40);

    // A Step Functions retry arrives with a new request id: a run the caller
    // named is recognised by its request.
    let w = world(fleet(10)).await;
    let app = w.app(AppOptions {
        bus: "late-bus-2",
        ..Default::default()
    });
    let payload = json!({"managed_device_ids": all_ids(&w), "validate_device_exists": false, "correlation_id": "ir-7"});
    let err = app.handle(payload.clone(), ctx("sfn-1", 60)).await.unwrap_err();
    assert_eq!(err.error_type, "ResultDeliveryFailed");
    w.aws.bus_into_queue("late-bus-2").await;
    let out = app.handle(payload, ctx("sfn-2", 60)).await.unwrap();
    assert_eq!(out["summary"]["initiated"], 10);
    assert!(w.sim.ledger_counts().values().all(|&n| n == 1));
}

#[tokio::test]
async fn a_webhook_larger_than_one_queue_message_is_carried_in_parts() {
    let w = world(fleet(10)).await;
    // The template's queue: 256 KiB messages.
    let queue = w.aws.queue_with_limit("attest-256k", 262_144).await;
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some(queue.clone()),
        webhook: Some(vec!["whsec-0123456789abcdefghijklmnopqrstuvwxyz"]),
        ..Default::default()
    });
    // 9,000 IDs: about 350 KB, more than the queue's 256 KiB.
    let ids: Vec<String> = (0..9000).map(|i| format!("00000000-0000-4000-8000-{i:012x}")).collect();
    let body = json!({"managed_device_ids": ids, "dry_run": true, "validate_device_exists": false}).to_string();
    assert!(body.len() > 262_144);
    let sig = webhook::sign(
        &SecretString::from("whsec-0123456789abcdefghijklmnopqrstuvwxyz".to_string()),
        now(),
        body.as_bytes(),
    );
    let out = app
        .handle(
            http_event(&body, json!({"x-intune-attest-signature": sig}), None),
            ctx("h-1", 60),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 202, "{out}");
    let answer: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert!(answer["parts"].as_u64().unwrap() >= 2, "{answer}");
    let messages = w.aws.drain(&queue).await;
    assert_eq!(messages.len() as u64, answer["parts"].as_u64().unwrap());
    assert!(messages.iter().all(|m| m.len() <= 262_144));
    let carried = named(&messages);
    assert_eq!(carried.len(), 9000);
    assert!(carried.values().all(|&n| n == 1));
    for (i, m) in messages.iter().enumerate() {
        let out = app
            .handle(
                sqs_event(&[(&format!("w-{i}"), m.clone())]),
                ctx(&format!("wc-{i}"), 60),
            )
            .await
            .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}), "the consumer accepts every part");
    }
}

#[tokio::test]
async fn a_direct_answer_stays_under_lambdas_response_limit() {
    let w = world(fleet(10)).await;
    let app = w.app(AppOptions::default());
    let ids: Vec<String> = (0..50_000)
        .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
        .collect();
    let out = app
        .handle(
            json!({"managed_device_ids": ids, "dry_run": true, "validate_device_exists": false}),
            ctx("huge-1", 120),
        )
        .await
        .unwrap();
    let size = out.to_string().len();
    assert!(size <= 6 * 1000 * 1000, "{size} bytes");
    assert_eq!(out["summary"]["requested"], 50_000);
    assert_eq!(out["summary"]["would_initiate"], 50_000);
    assert_eq!(out["truncated"]["devices_omitted"], 50_000, "no failure to list");
    assert!(out["truncated"]["full_result"].as_str().unwrap().contains("events"));
    // The full result went out as events: every device in exactly one part.
    let mut seen = HashMap::new();
    for e in w.events().await {
        for d in e["detail"]["devices"].as_array().into_iter().flatten() {
            *seen.entry(d["device_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), 50_000);
    assert!(seen.values().all(|&n| n == 1));
}

#[tokio::test]
async fn a_webhook_answered_503_can_be_retried_and_its_body_names_no_internals() {
    let w = world(fleet(5)).await;
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some("http://127.0.0.1:1/123456789012/no-such-queue".into()),
        webhook: Some(vec!["whsec-0123456789abcdefghijklmnopqrstuvwxyz"]),
        ..Default::default()
    });
    let body = json!({"managed_device_ids": all_ids(&w)}).to_string();
    let sig = webhook::sign(
        &SecretString::from("whsec-0123456789abcdefghijklmnopqrstuvwxyz".to_string()),
        now(),
        body.as_bytes(),
    );
    let event = http_event(&body, json!({"x-intune-attest-signature": sig}), None);
    for attempt in 0..2 {
        let out = app
            .handle(event.clone(), ctx(&format!("q-{attempt}"), 60))
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 503, "attempt {attempt}: {out}");
        let answer: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
        assert_eq!(answer["error"], "ResultDeliveryFailed");
        assert_eq!(answer["request_id"], format!("q-{attempt}"));
        assert_eq!(
            answer.as_object().unwrap().len(),
            2,
            "a code and a request id, nothing else: {answer}"
        );
    }
}

#[tokio::test]
async fn webhook_auth_edges_fail_closed() {
    let w = world(fleet(5)).await;
    let body = json!({"managed_device_ids": all_ids(&w)}).to_string();
    // An empty userArn is no caller: a signature is still needed.
    let signed_app = w.app(AppOptions {
        webhook: Some(vec!["whsec-0123456789abcdefghijklmnopqrstuvwxyz"]),
        ..Default::default()
    });
    let out = signed_app
        .handle(http_event(&body, json!({}), Some("")), ctx("e-1", 60))
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 401);
    // An IAM context is not trusted where the URL is not IAM.
    let untrusted = w.app(AppOptions {
        no_iam: true,
        ..Default::default()
    });
    let out = untrusted
        .handle(
            http_event(&body, json!({}), Some("arn:aws:iam::1:user/forged")),
            ctx("e-2", 60),
        )
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 401, "{out}");
    let app = w.app(AppOptions::default());
    // `part` is the service's own: a caller cannot set it.
    let err = app
        .handle(json!({"managed_device_ids": all_ids(&w), "part": 7}), ctx("e-3", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");
    assert!(err.error_message.contains("part"), "{}", err.error_message);
    assert!(w.sim.ledger_counts().is_empty(), "no call reached Graph");
}
