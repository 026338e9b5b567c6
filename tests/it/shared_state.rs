//! Several instances, one DynamoDB state table (moto): a delivery runs once
//! whichever instances it reaches, a claim whose instance died runs out, a
//! kept result is republished by another instance, and a webhook signature
//! used at one instance is refused at the others.

use std::time::{Duration, SystemTime};

use intune_attest::state::dynamodb::DynamoStore;
use intune_attest::state::{Claim, StateStore};
use secrecy::SecretString;
use serde_json::json;

use crate::common::attestable_fleet;
use crate::lambda_handler::{AppOptions, World, ctx, http_event, now, sqs_event, world};

fn shared(table: &str) -> AppOptions {
    AppOptions {
        state_table: Some(table.to_owned()),
        ..Default::default()
    }
}

fn each_once(w: &World, n: usize) {
    let ledger = w.sim.ledger_counts();
    assert_eq!(ledger.len(), n, "every device initiated");
    assert!(ledger.values().all(|&c| c == 1), "a device initiated twice: {ledger:?}");
}

#[tokio::test]
async fn a_repeat_reaching_another_instance_is_acknowledged_without_a_graph_call() {
    let w = world(attestable_fleet(20)).await;
    let table = w.aws.state_table("state-repeat").await;
    let (a, b) = (w.app(shared(&table)), w.app(shared(&table)));
    let body = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false}).to_string();
    let first = a
        .handle(sqs_event(&[("m-1", body.clone())]), ctx("a-1", 60))
        .await
        .unwrap();
    assert_eq!(first, json!({"batchItemFailures": []}));
    let requests = w.sim.stats().http_requests;
    let again = b.handle(sqs_event(&[("m-1", body)]), ctx("b-1", 60)).await.unwrap();
    assert_eq!(again, json!({"batchItemFailures": []}));
    assert_eq!(w.sim.stats().http_requests, requests, "instance B called Graph");
    each_once(&w, 20);
}

#[tokio::test]
async fn the_same_delivery_at_two_instances_at_once_runs_once() {
    let w = world(attestable_fleet(200)).await;
    let table = w.aws.state_table("state-race").await;
    let mk = || {
        w.app(AppOptions {
            extra_env: vec![("ATTEST_WRITE_BUDGET", "100")],
            ..shared(&table)
        })
    };
    let (a, b) = (mk(), mk());
    let body = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false}).to_string();
    let (ra, rb) = tokio::join!(
        a.handle(sqs_event(&[("m-2", body.clone())]), ctx("a-2", 60)),
        b.handle(sqs_event(&[("m-2", body)]), ctx("b-2", 60)),
    );
    let answers = [ra.unwrap(), rb.unwrap()];
    let returned = answers
        .iter()
        .filter(|a| **a == json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]}))
        .count();
    let ran = answers
        .iter()
        .filter(|a| **a == json!({"batchItemFailures": []}))
        .count();
    assert_eq!((ran, returned), (1, 1), "{answers:?}");
    each_once(&w, 200);
}

#[tokio::test]
async fn a_claim_left_by_a_dead_instance_runs_out_and_the_delivery_then_runs_once() {
    let w = world(attestable_fleet(10)).await;
    let table = w.aws.state_table("state-dead").await;
    // An instance claimed the message for two seconds and died.
    let store = DynamoStore::new(w.aws.dynamodb.clone(), table.clone());
    let lease = SystemTime::now() + Duration::from_secs(2);
    assert_eq!(
        store.claim("delivery#m-3", "dead", lease).await.unwrap(),
        Claim::Claimed
    );
    let a = w.app(shared(&table));
    let body = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false}).to_string();
    let held = a
        .handle(sqs_event(&[("m-3", body.clone())]), ctx("a-3", 60))
        .await
        .unwrap();
    assert_eq!(
        held,
        json!({"batchItemFailures": [{"itemIdentifier": "m-3"}]}),
        "held: returned, not run"
    );
    assert!(w.sim.ledger_counts().is_empty());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let ran = a.handle(sqs_event(&[("m-3", body)]), ctx("a-4", 60)).await.unwrap();
    assert_eq!(ran, json!({"batchItemFailures": []}));
    each_once(&w, 10);
}

#[tokio::test]
async fn a_kept_result_is_republished_by_another_instance() {
    let w = world(attestable_fleet(30)).await;
    let table = w.aws.state_table("state-kept").await;
    let a = w.app(AppOptions {
        bus: "kept-bus",
        ..shared(&table)
    });
    let body = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false}).to_string();
    let first = a
        .handle(sqs_event(&[("m-4", body.clone())]), ctx("a-5", 60))
        .await
        .unwrap();
    assert_eq!(first, json!({"batchItemFailures": [{"itemIdentifier": "m-4"}]}));
    let events = w.aws.bus_into_queue("kept-bus").await;
    let b = w.app(AppOptions {
        bus: "kept-bus",
        ..shared(&table)
    });
    let again = b.handle(sqs_event(&[("m-4", body)]), ctx("b-5", 60)).await.unwrap();
    assert_eq!(again, json!({"batchItemFailures": []}));
    each_once(&w, 30);
    let published: Vec<serde_json::Value> = w
        .aws
        .drain(&events)
        .await
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(
        published
            .iter()
            .any(|e| e["detail-type"] == "Device Attestation Result" && e["detail"]["summary"]["initiated"] == 30),
        "the kept result was published: {} event(s)",
        published.len()
    );
}

#[tokio::test]
async fn a_webhook_signature_used_at_one_instance_is_refused_at_another() {
    let w = world(attestable_fleet(5)).await;
    let table = w.aws.state_table("state-replay").await;
    let secret = "whsec-0123456789abcdefghijklmnopqrstuvwxyz";
    let mk = || {
        w.app(AppOptions {
            webhook: Some(vec![secret]),
            ..shared(&table)
        })
    };
    let (a, b) = (mk(), mk());
    let body = json!({"managed_device_ids": w.all_ids()}).to_string();
    let sig = intune_attest::service::signature::sign(&SecretString::from(secret.to_string()), now(), body.as_bytes());
    let event = http_event(&body, json!({"x-intune-attest-signature": sig}), None);
    let first = a.handle(event.clone(), ctx("h-a", 60)).await.unwrap();
    assert_eq!(first["statusCode"], 200, "{first}");
    let replay = b.handle(event, ctx("h-b", 60)).await.unwrap();
    assert_eq!(replay["statusCode"], 401, "{replay}");
    each_once(&w, 5);
}

#[tokio::test]
async fn a_kept_result_larger_than_an_item_reads_back_whole() {
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("state-chunks").await;
    let store = DynamoStore::new(w.aws.dynamodb.clone(), table);
    let later = SystemTime::now() + Duration::from_secs(60);
    assert_eq!(store.claim("delivery#big", "a", later).await.unwrap(), Claim::Claimed);
    // About 1 MB with multi-byte characters, past DynamoDB's 400 KB item.
    let kept = format!("{{\"x\": \"{}\"}}", "é…".repeat(200_000));
    store.finish("delivery#big", "a", Some(&kept)).await.unwrap();
    assert_eq!(
        store.claim("delivery#big", "b", later).await.unwrap(),
        Claim::Done {
            undelivered: Some(kept)
        }
    );
    // A released claim can be taken at once; a used key is refused.
    assert_eq!(store.claim("delivery#r", "a", later).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store.claim("delivery#r", "b", later).await.unwrap(),
        Claim::HeldElsewhere
    );
    store.release("delivery#r", "a").await.unwrap();
    assert_eq!(store.claim("delivery#r", "b", later).await.unwrap(), Claim::Claimed);
    assert!(store.first_use("replay#1:ab", later).await.unwrap());
    assert!(!store.first_use("replay#1:ab", later).await.unwrap());
    store.forget("replay#1:ab").await.unwrap();
    assert!(store.first_use("replay#1:ab", later).await.unwrap());
}

#[tokio::test]
async fn a_cancelled_run_gives_its_claim_back_so_another_instance_runs_the_retry_at_once() {
    let w = world(attestable_fleet(400)).await;
    let table = w.aws.state_table("state-cancel").await;
    let (a, b) = (w.app(shared(&table)), w.app(shared(&table)));
    let body = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false}).to_string();
    // Instance A's host gives up on it mid-run (400 devices take two
    // windows): its future is dropped.
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        a.handle(sqs_event(&[("m-cancel", body.clone())]), ctx("a-c", 60)),
    )
    .await;
    assert!(cut.is_err(), "the run was cut short");
    // The claim goes back in a task of its own: the retry at B runs at once
    // instead of waiting for A's lease (the deadline plus a minute).
    let mut answer = json!(null);
    for _ in 0..50 {
        answer = b
            .handle(sqs_event(&[("m-cancel", body.clone())]), ctx("b-c", 60))
            .await
            .unwrap();
        if answer == json!({"batchItemFailures": []}) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        answer,
        json!({"batchItemFailures": []}),
        "the retry was refused as in progress"
    );
    let ledger = w.sim.ledger_counts();
    assert_eq!(ledger.len(), 400, "every device initiated");
}

/// Writes an item to the state table as anyone with write access could.
async fn forge(w: &World, table: &str, pk: &str, sk: &str, attrs: &[(&str, aws_sdk_dynamodb::types::AttributeValue)]) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let mut put = w
        .aws
        .dynamodb
        .put_item()
        .table_name(table)
        .item("pk", AttributeValue::S(pk.into()))
        .item("sk", AttributeValue::S(sk.into()));
    for (k, v) in attrs {
        put = put.item(*k, v.clone());
    }
    put.send().await.unwrap();
}

#[tokio::test]
async fn a_forged_kept_result_for_a_predictable_request_is_not_published_and_the_request_runs() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use sha2::{Digest, Sha256};
    let w = world(attestable_fleet(12)).await;
    let table = w.aws.state_table("state-forged-kept").await;
    let ids = w.all_ids();
    let body = json!({"managed_device_ids": &ids[..10], "validate_device_exists": false,
                      "correlation_id": "incident-7"})
    .to_string();
    // The request's key is a digest of its caller (none, from a queue) and
    // its payload: anyone can work it out.
    let req =
        intune_attest::core::request::AttestationRequest::from_slice(body.as_bytes(), Default::default()).unwrap();
    let mut digest = Sha256::new();
    digest.update(b"\n");
    digest.update(req.to_payload().to_json().unwrap().as_bytes());
    let key = format!("request#{}", hex::encode(digest.finalize()));
    // A "succeeded" document for two devices the request never named.
    let forged = json!({"schema_version": "1", "correlation_id": "incident-7", "status": "succeeded",
        "failed": false, "dry_run": false, "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
        "summary": {"requested": 2, "initiated": 2}, "warnings": [], "stats": {},
        "devices": [{"device_id": ids[10], "kind": "managed", "outcome": "initiated"},
                    {"device_id": ids[11], "kind": "managed", "outcome": "initiated"}]});
    let expires = AttributeValue::N((now() + 3600).to_string());
    forge(
        &w,
        &table,
        &key,
        "state",
        &[
            ("state", AttributeValue::S("done".into())),
            ("owner", AttributeValue::S("forger".into())),
            ("chunks", AttributeValue::N("1".into())),
            ("expires_at", expires.clone()),
        ],
    )
    .await;
    forge(
        &w,
        &table,
        &key,
        "result#0000",
        &[("data", AttributeValue::S(forged.to_string())), ("expires_at", expires)],
    )
    .await;
    let app = w.app(AppOptions {
        bus: "forged-bus",
        ..shared(&table)
    });
    let events = w.aws.bus_into_queue("forged-bus").await;
    let answer = app
        .handle(sqs_event(&[("m-forged", body)]), ctx("f-1", 60))
        .await
        .unwrap();
    assert_eq!(answer, json!({"batchItemFailures": []}));
    // The request ran its own ten devices; nothing was said of the others.
    let ledger = w.sim.ledger_counts();
    assert_eq!(ledger.len(), 10, "the request's devices ran: {ledger:?}");
    let published: Vec<serde_json::Value> = w
        .aws
        .drain(&events)
        .await
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let results: Vec<&serde_json::Value> = published
        .iter()
        .filter(|e| e["detail-type"] == "Device Attestation Result")
        .collect();
    assert_eq!(results.len(), 1, "{published:?}");
    assert_eq!(results[0]["detail"]["summary"]["initiated"], 10);
    assert!(
        !results[0].to_string().contains(&ids[10]),
        "the forged document was published"
    );
}

#[tokio::test]
async fn a_kept_results_part_count_is_bounded_and_only_its_own_parts_are_read() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("state-kept-parts").await;
    let store = DynamoStore::new(w.aws.dynamodb.clone(), table.clone());
    let later = SystemTime::now() + Duration::from_secs(60);
    let expires = AttributeValue::N((now() + 3600).to_string());
    let done = |chunks: &str| {
        vec![
            ("state", AttributeValue::S("done".into())),
            ("owner", AttributeValue::S("a".into())),
            ("chunks", AttributeValue::N(chunks.into())),
            ("expires_at", expires.clone()),
        ]
    };
    // One part, and more `result#` items beside it that are not its parts.
    forge(&w, &table, "delivery#parts", "state", &done("1")).await;
    forge(
        &w,
        &table,
        "delivery#parts",
        "result#0000",
        &[("data", AttributeValue::S("{\"kept\": 1}".into()))],
    )
    .await;
    let filler = "x".repeat(300 * 1024);
    for i in 1..4 {
        forge(
            &w,
            &table,
            "delivery#parts",
            &format!("result#{i:04}"),
            &[("data", AttributeValue::S(filler.clone()))],
        )
        .await;
    }
    assert_eq!(
        store.claim("delivery#parts", "b", later).await.unwrap(),
        Claim::Done {
            undelivered: Some("{\"kept\": 1}".into())
        }
    );
    // A count no result needs is refused before a part is read.
    forge(&w, &table, "delivery#many", "state", &done("1000000")).await;
    let err = store.claim("delivery#many", "b", later).await.unwrap_err();
    assert!(err.to_string().contains("part count"), "{err}");
}
