//! The platforms' size limits and the hardening findings, against moto and
//! the simulator. moto enforces none of AWS's size limits, so each test
//! checks the limit itself on what reached the stand-in (message sizes read
//! back from the queue, response sizes), and every test counts devices:
//! none lost, none initiated twice.

use std::collections::HashMap;

use intune_attest::service::signature as webhook;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::common::{attestable_fleet, payload_of};
use crate::lambda_handler::{AppOptions, World, ctx, http_event, now, sqs_event, world};

/// Writes one row of the "platform limits" part of the fault matrix:
/// devices requested, devices without exactly one final outcome (lost), and
/// devices Graph accepted more than once (duplicated).
fn record(limit: &str, devices: usize, lost: usize, duplicated: usize) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../platform-limits");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!(
        "{}.row",
        limit.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    let _ = std::fs::write(file, format!("| {limit} | {devices} | {lost} | {duplicated} |\n"));
}

/// Lost and duplicated devices from the simulator's ledger.
fn ledger_faults(w: &World, expected: usize) -> (usize, usize) {
    let ledger = w.sim.ledger_counts();
    let lost = expected.saturating_sub(ledger.len());
    let duplicated = ledger.values().filter(|&&n| n > 1).count();
    (lost, duplicated)
}

/// Every device named in the messages, with how often.
fn named(messages: &[String]) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for m in messages {
        let v = payload_of(m);
        for id in v["managed_device_ids"].as_array().into_iter().flatten() {
            *out.entry(id.as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    out
}

#[tokio::test]
async fn a_continuation_larger_than_the_queue_accepts_is_split_and_every_part_runs() {
    let w = world(attestable_fleet(1500)).await;
    // A queue made with a small limit: the function must learn it.
    let small = w.aws.queue_with_limit("attest-small", 8192).await;
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some(small.clone()),
        extra_env: vec![("ATTEST_WRITE_BUDGET", "60")],
        ..Default::default()
    });
    let payload =
        json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false, "correlation_id": "split-run"});
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
    let (lost, duplicated) = ledger_faults(&w, 1500);
    record("continuation over the queue's message limit", 1500, lost, duplicated);
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "every device initiated across the parts, none twice"
    );
}

#[tokio::test]
async fn a_result_that_could_not_be_delivered_is_republished_not_rerun() {
    let w = world(attestable_fleet(40)).await;
    let app = w.app(AppOptions {
        bus: "late-bus",
        ..Default::default()
    });
    let body = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false}).to_string();
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
    let (lost, duplicated) = ledger_faults(&w, 40);
    record("result delivery failing, then succeeding", 40, lost, duplicated);
    assert_eq!((lost, duplicated), (0, 0), "the redelivery ran the devices again");
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
    let w = world(attestable_fleet(10)).await;
    let app = w.app(AppOptions {
        bus: "late-bus-2",
        ..Default::default()
    });
    let payload = json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false, "correlation_id": "ir-7"});
    let err = app.handle(payload.clone(), ctx("sfn-1", 60)).await.unwrap_err();
    assert_eq!(err.error_type, "ResultDeliveryFailed");
    w.aws.bus_into_queue("late-bus-2").await;
    let out = app.handle(payload, ctx("sfn-2", 60)).await.unwrap();
    assert_eq!(out["summary"]["initiated"], 10);
    assert!(w.sim.ledger_counts().values().all(|&n| n == 1));
}

#[tokio::test]
async fn a_webhook_larger_than_one_queue_message_is_carried_in_parts() {
    let w = world(attestable_fleet(10)).await;
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
    let duplicated = carried.values().filter(|&&n| n > 1).count();
    record(
        "webhook larger than a queue message",
        9000,
        9000 - carried.len(),
        duplicated,
    );
    assert_eq!(carried.len(), 9000);
    assert_eq!(duplicated, 0);
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
    let w = world(attestable_fleet(10)).await;
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
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    record(
        "6 MB synchronous response (50,000 devices)",
        50_000,
        50_000 - seen.len(),
        duplicated,
    );
    assert_eq!(seen.len(), 50_000);
    assert_eq!(duplicated, 0);
}

/// EventBridge as AWS enforces it (moto does not): ten entries and 256 KB in
/// all per call, or the whole call is refused.
struct EnforcingPutEvents(std::sync::Mutex<Vec<String>>);

impl intune_attest::results::eventbridge::PutEvents for EnforcingPutEvents {
    fn put<'a>(
        &'a self,
        _bus: &'a str,
        entries: &'a [intune_attest::results::eventbridge::Entry],
    ) -> intune_attest::core::BoxFuture<'a, Result<Vec<Option<String>>, String>> {
        Box::pin(async move {
            let total: usize = entries.iter().map(|e| e.size()).sum();
            if entries.len() > 10 || total > 262_144 {
                return Err(format!("ValidationException: {total} bytes in one call"));
            }
            self.0.lock().unwrap().extend(entries.iter().map(|e| e.detail.clone()));
            Ok(vec![None; entries.len()])
        })
    }
}

#[tokio::test]
async fn a_result_over_256_kb_reaches_an_enforcing_event_bus_whole() {
    use intune_attest::results::ResultSink;
    let h = crate::common::harness_with(attestable_fleet(1500), &[], |_| {}).await;
    let ids: Vec<String> = h.sim.fleet().iter().map(|d| d.id.clone()).collect();
    let result = h
        .run(json!({"managed_device_ids": ids, "dry_run": true, "validate_device_exists": false}))
        .await
        .unwrap();
    assert!(serde_json::to_string(&result).unwrap().len() > 262_144);
    let sink = intune_attest::results::eventbridge::EventBridgeSink::new(
        EnforcingPutEvents(std::sync::Mutex::new(Vec::new())),
        "bus".into(),
    );
    sink.publish(&serde_json::to_value(&result).unwrap(), None)
        .await
        .unwrap();
    // Read back what the stand-in accepted.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let accepted = sink.transport().0.lock().unwrap().clone();
    for detail in accepted {
        let v: Value = serde_json::from_str(&detail).unwrap();
        for d in v["devices"].as_array().into_iter().flatten() {
            *seen.entry(d["device_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    record("PutEvents over 256 KB", 1500, 1500 - seen.len(), duplicated);
    assert_eq!((seen.len(), duplicated), (1500, 0));
}

/// A fleet run through SQS continuation end to end, at the simulator's time
/// scale (20 s windows last 1 s): a direct invoke hands what its deadline
/// leaves to the work queue, and every queued part runs until none is left.
/// Returns the figures it prints.
async fn continuation_run(devices: usize, invocation_secs: u64) -> String {
    let w = world(attestable_fleet(devices)).await;
    let app = w.app(AppOptions {
        queue: true,
        ..Default::default()
    });
    let started = std::time::Instant::now();
    let payload =
        json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false, "correlation_id": "fleet-run"});
    app.handle(payload, ctx("part-1", invocation_secs)).await.unwrap();
    let (mut invocations, mut messages) = (1, 0);
    loop {
        let queued = w.aws.drain(&w.work_queue).await;
        if queued.is_empty() {
            break;
        }
        for m in queued {
            messages += 1;
            invocations += 1;
            let out = app
                .handle(
                    sqs_event(&[(&format!("m-{messages}"), m)]),
                    ctx(&format!("i-{invocations}"), invocation_secs),
                )
                .await
                .unwrap();
            assert_eq!(out, json!({"batchItemFailures": []}));
        }
    }
    let wall = started.elapsed();
    let (lost, duplicated) = ledger_faults(&w, devices);
    // The result events: every device has exactly one final outcome.
    let mut finals: HashMap<String, usize> = HashMap::new();
    for e in w.events().await {
        for d in e["detail"]["devices"].as_array().into_iter().flatten() {
            if d["outcome"] != "continued" {
                *finals.entry(d["device_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
            }
        }
    }
    let stats = w.sim.stats();
    let per_window = w.sim.writes_per_window(crate::common::WINDOW);
    let full: Vec<usize> = per_window.iter().copied().filter(|&n| n > 0).collect();
    // The first and last windows are partial.
    let inner = if full.len() > 2 {
        &full[1..full.len() - 1]
    } else {
        &full[..]
    };
    let mean = inner.iter().sum::<usize>() as f64 / inner.len().max(1) as f64;
    let figures = format!(
        "| {devices} | {invocations} | {messages} | {:.1} s | {mean:.1} | {} | {} | {lost} | {duplicated} | {} |",
        wall.as_secs_f64(),
        w.sim.max_writes_in_any_window(crate::common::WINDOW),
        stats.throttled,
        finals.len(),
    );
    println!(
        "| devices | invocations | queued parts | wall (x20 time) | writes per window (mean of full windows) | most in any sliding window | 429s | lost | duplicated | devices with one final outcome in the events |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!("{figures}");
    assert_eq!((lost, duplicated), (0, 0), "{figures}");
    assert_eq!(finals.len(), devices, "{figures}");
    assert!(finals.values().all(|&n| n == 1), "{figures}");
    figures
}

#[tokio::test]
async fn a_fleet_runs_to_the_end_through_sqs_continuation() {
    continuation_run(2_000, 8).await;
}

/// The 50,000-device run of BENCHMARKS.md (about five minutes):
/// `cargo test --release --test it -- --ignored --nocapture fifty_thousand`.
#[tokio::test]
#[ignore = "a five-minute benchmark run; see BENCHMARKS.md"]
async fn fifty_thousand_devices_through_sqs_continuation() {
    continuation_run(50_000, 45).await;
}

#[tokio::test]
async fn a_webhook_answered_503_can_be_retried_and_its_body_names_no_internals() {
    let w = world(attestable_fleet(5)).await;
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some("http://127.0.0.1:1/123456789012/no-such-queue".into()),
        webhook: Some(vec!["whsec-0123456789abcdefghijklmnopqrstuvwxyz"]),
        ..Default::default()
    });
    let body = json!({"managed_device_ids": w.all_ids()}).to_string();
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
    let w = world(attestable_fleet(5)).await;
    let body = json!({"managed_device_ids": w.all_ids()}).to_string();
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
    // `part` is the service's own: a caller cannot set it.
    let app = w.app(AppOptions::default());
    let err = app
        .handle(json!({"managed_device_ids": w.all_ids(), "part": 7}), ctx("e-3", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");
    assert!(err.error_message.contains("part"), "{}", err.error_message);
    assert!(w.sim.ledger_counts().is_empty(), "no call reached Graph");
}
