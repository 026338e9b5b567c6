//! The Azure host on Azure Storage (Azurite): the blob-backed state and
//! budget, and the work queue, shared by several handler instances (the
//! built binary, driven with the Functions host's request shapes). The
//! test plays the host's queue trigger: it takes a message, posts it to a
//! handler with its id, and deletes it when the invocation succeeds.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use graph_sim::Sim;
use intune_attest::queue::azure::{AzureWorkQueue, MessageEncoding};
use intune_attest::queue::{WorkMessage, WorkQueue};
use intune_attest::state::blob::{BlobBudget, BlobStore};
use intune_attest::state::budget::{Acquired, Ask, BudgetRules, SharedBudget};
use intune_attest::state::{Claim, StateStore, StoreError};
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::azure_handler::{Handler, post, start};
use crate::common::azurite::{self, Azurite};
use crate::common::{WINDOW, attestable_fleet};

const BUDGET: usize = 190;
const SECRET: &str = "whsec-a-0123456789abcdefghijklmnopqrst";

fn ids(sim: &Sim) -> Vec<String> {
    sim.fleet().iter().map(|d| d.id.clone()).collect()
}

async fn handlers(sim: &Sim, n: usize, storage: &[(String, String)], extra: &[(&str, &str)]) -> Vec<Handler> {
    let mut env: Vec<(&str, &str)> = storage.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend_from_slice(extra);
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(start(sim, &env).await);
    }
    out
}

fn queue_envelope(message: &str, id: &str) -> Value {
    // The host passes the id JSON-quoted inside its string.
    json!({"Data": {"message": message}, "Metadata": {"Id": format!("\"{id}\""), "DequeueCount": "1"}})
}

fn result_of(out: &Value) -> Option<Value> {
    out["Outputs"]["result"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
}

#[tokio::test]
async fn blob_claims_race_to_one_winner_expire_and_finish_with_their_result() {
    let azurite = Azurite::start().await;
    let container = azurite.create_container("state").await;
    let store = std::sync::Arc::new(BlobStore::new(container));
    let later = SystemTime::now() + Duration::from_secs(60);
    // Twenty instances claim one delivery at once: exactly one wins.
    let claims = join_all((0..20).map(|i| {
        let store = store.clone();
        async move { store.claim("delivery#m-1", &format!("owner-{i}"), later).await.unwrap() }
    }))
    .await;
    assert_eq!(claims.iter().filter(|c| **c == Claim::Claimed).count(), 1, "{claims:?}");
    assert!(
        claims
            .iter()
            .all(|c| matches!(c, Claim::Claimed | Claim::HeldElsewhere))
    );
    let winner = (0..20)
        .position(|i| claims[i] == Claim::Claimed)
        .map(|i| format!("owner-{i}"))
        .unwrap();
    // A kept result comes back to whoever claims after the finish.
    let big = "r".repeat(600 * 1024);
    store.finish("delivery#m-1", &winner, Some(&big)).await.unwrap();
    assert_eq!(
        store.claim("delivery#m-1", "late", later).await.unwrap(),
        Claim::Done { undelivered: Some(big) }
    );
    // A claim whose lease ran out (its instance died) is taken over once.
    let past = SystemTime::now() - Duration::from_secs(1);
    assert_eq!(store.claim("delivery#m-2", "dead", past).await.unwrap(), Claim::Claimed);
    assert_eq!(store.claim("delivery#m-2", "b", later).await.unwrap(), Claim::Claimed);
    assert_eq!(
        store.claim("delivery#m-2", "c", later).await.unwrap(),
        Claim::HeldElsewhere
    );
    // Only the owner gives a claim back; then it runs again.
    store.release("delivery#m-2", "c").await.unwrap();
    assert_eq!(
        store.claim("delivery#m-2", "c", later).await.unwrap(),
        Claim::HeldElsewhere
    );
    store.release("delivery#m-2", "b").await.unwrap();
    assert_eq!(store.claim("delivery#m-2", "c", later).await.unwrap(), Claim::Claimed);
    // A used key is refused until it expires or is forgotten.
    assert!(store.first_use("replay#1:a", later).await.unwrap());
    assert!(!store.first_use("replay#1:a", later).await.unwrap());
    store.forget("replay#1:a").await.unwrap();
    assert!(store.first_use("replay#1:a", later).await.unwrap());
    assert!(
        store
            .first_use("replay#1:b", past - Duration::from_secs(2))
            .await
            .unwrap()
    );
    assert!(
        store.first_use("replay#1:b", later).await.unwrap(),
        "an expired key is free"
    );
}

#[tokio::test]
async fn an_unreachable_or_missing_store_fails_without_naming_the_sas() {
    let azurite = Azurite::start().await;
    // A container that does not exist is not an empty state.
    let missing = BlobStore::new(azurite.account().container("absent").unwrap());
    let later = SystemTime::now() + Duration::from_secs(60);
    let err = missing.claim("delivery#x", "a", later).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    // An account nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/devstoreaccount1?{}", Azurite::sas());
    let get = |k: &str| (k == "AzureWebJobsStorage__blobServiceUri").then(|| url.clone());
    let account = intune_attest::azure_storage::StorageAccount::from_env(get)
        .unwrap()
        .unwrap();
    let down = BlobStore::new(account.container("state").unwrap());
    let err = down.claim("delivery#x", "a", later).await.unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(" / {s} / {s:?}"));
        source = s.source();
    }
    assert!(!text.contains("sig="), "{text}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{text}");
}

#[tokio::test]
async fn a_delayed_message_stays_invisible_until_it_is_due_and_arrives_base64() {
    let azurite = Azurite::start().await;
    let q = azurite.create_queue("work").await;
    let queue = AzureWorkQueue::new(azurite.account().queue("work").unwrap(), MessageEncoding::Base64);
    assert_eq!(queue.max_delay(), Some(Duration::from_secs(7 * 24 * 3600)));
    let limit = queue.max_message_bytes().await.unwrap();
    assert_eq!(limit, 48 * 1024, "64 KB as stored, after base64");
    let due = WorkMessage::new("{\"check\": \"later\"}".into(), "run-1").delayed(Duration::from_secs(2));
    let now = WorkMessage::new("{\"at\": \"once\"}".into(), "run-1");
    queue.send(vec![due, now], None).await.unwrap();
    let first = azurite::receive(&q, 32, Duration::from_secs(30)).await;
    assert_eq!(first.len(), 1, "only the undelayed message is visible");
    assert_eq!(first[0].payload, "{\"at\": \"once\"}");
    azurite::delete(&q, &first[0]).await;
    let mut later = Vec::new();
    for _ in 0..100 {
        later = azurite::receive(&q, 32, Duration::from_secs(30)).await;
        if !later.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].payload, "{\"check\": \"later\"}");
    // A body over the limit as stored is refused, not sent cut short.
    let huge = WorkMessage::new("x".repeat(limit + 1), "run-2");
    assert!(queue.send(vec![huge], None).await.is_err());
    assert_eq!(
        azurite::approximate_count(&q).await,
        1,
        "only the delivered check is left"
    );
}

#[tokio::test]
async fn a_repeat_delivery_at_another_instance_runs_once() {
    let azurite = Azurite::start().await;
    let storage = azurite.settings("work", "state").await;
    let sim = Sim::start(attestable_fleet(20)).await.unwrap();
    let hs = handlers(&sim, 2, &storage, &[]).await;
    let message = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false}).to_string();
    // Delivered to both instances at once, then once more to the first.
    let answers = join_all(
        hs.iter()
            .map(|h| post(h, "attest-queue", queue_envelope(&message, "m-1"))),
    )
    .await;
    let again = post(&hs[0], "attest-queue", queue_envelope(&message, "m-1")).await;
    let ran = answers
        .iter()
        .chain([&again])
        .filter(|(_, out)| result_of(out).is_some_and(|r| r["summary"]["initiated"] == 20))
        .count();
    assert_eq!(ran, 1, "{answers:?} {again:?}");
    let counts = sim.ledger_counts();
    assert_eq!(counts.len(), 20);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test]
async fn a_webhook_replayed_at_another_instance_is_refused() {
    let azurite = Azurite::start().await;
    let storage = azurite.settings("work", "state").await;
    let sim = Sim::start(attestable_fleet(5)).await.unwrap();
    let hs = handlers(&sim, 2, &storage, &[]).await;
    let body = json!({"managed_device_ids": ids(&sim)}).to_string();
    let t = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = intune_attest::service::signature::sign(&SecretString::from(SECRET.to_string()), t, body.as_bytes());
    let request = json!({"Data": {"req": {"Url": "https://fn.example/api/attest-http", "Method": "POST", "Query": {},
        "Headers": {"X-Intune-Attest-Signature": [sig]}, "Params": {}, "Body": body}}, "Metadata": {}});
    let (_, first) = post(&hs[0], "attest-http", request.clone()).await;
    assert_eq!(
        first["Outputs"]["res"]["statusCode"], 202,
        "handed to the queue: {first}"
    );
    let (_, replay) = post(&hs[1], "attest-http", request).await;
    assert_eq!(replay["Outputs"]["res"]["statusCode"], 401, "{replay}");
    let q = azurite.account().queue("work").unwrap();
    assert_eq!(azurite::approximate_count(&q).await, 1, "one hand-off, no second");
}

/// Plays the queue trigger over `handlers` in turn until the queue is
/// empty: returns every result document published and the deliveries.
async fn drain_through(handlers: &[Handler], q: &azure_storage_queue::QueueClient) -> (Vec<Value>, usize) {
    let (mut results, mut deliveries, mut idle) = (Vec::new(), 0usize, 0);
    while idle < 30 {
        let got = azurite::receive(q, 4, Duration::from_secs(2)).await;
        if got.is_empty() {
            idle += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        idle = 0;
        let runs = got.iter().enumerate().map(|(i, m)| {
            let h = &handlers[(deliveries + i) % handlers.len()];
            post(h, "attest-queue", queue_envelope(&m.payload, &m.id))
        });
        let answers = join_all(runs).await;
        for (m, (status, out)) in got.iter().zip(answers) {
            deliveries += 1;
            if status == 200 {
                results.extend(result_of(&out));
                azurite::delete(q, m).await;
            }
        }
    }
    (results, deliveries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_continued_through_the_queue_ends_every_device_with_one_outcome() {
    let azurite = Azurite::start().await;
    let storage = azurite.settings("work", "state").await;
    let sim = Sim::start(attestable_fleet(900)).await.unwrap();
    // A short host timeout: each part runs about 3 s, so the run takes
    // several parts across two instances.
    let hs = handlers(
        &sim,
        2,
        &storage,
        &[
            ("AzureFunctionsJobHost__functionTimeout", "00:00:04"),
            ("ATTEST_WRITE_BUDGET", "100"),
        ],
    )
    .await;
    let all = ids(&sim);
    let message = json!({"managed_device_ids": all, "validate_device_exists": false, "timeouts": {"invoke": "10m"}});
    let q = azurite.account().queue("work").unwrap();
    // The first part as a producer would queue it.
    let queue = AzureWorkQueue::new(azurite.account().queue("work").unwrap(), MessageEncoding::Base64);
    queue
        .send(vec![WorkMessage::new(message.to_string(), "run")], None)
        .await
        .unwrap();
    let (results, deliveries) = drain_through(&hs, &q).await;
    assert!(results.len() >= 2, "the run took several parts: {}", results.len());
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for r in &results {
        for d in r["devices"].as_array().into_iter().flatten() {
            if d["outcome"] != "continued" {
                *outcomes
                    .entry(d["device_id"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
        }
    }
    assert_eq!(
        outcomes.len(),
        900,
        "{} results over {deliveries} deliveries",
        results.len()
    );
    assert!(outcomes.values().all(|&n| n == 1));
    let counts = sim.ledger_counts();
    assert_eq!(counts.len(), 900);
    assert!(counts.values().all(|&n| n == 1), "a device initiated twice");
    assert_eq!(azurite::approximate_count(&q).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_the_blob_budget_never_exceed_it_in_any_window() {
    let azurite = Azurite::start().await;
    for instances in [2usize, 4] {
        let storage = azurite
            .settings(&format!("work{instances}"), &format!("state{instances}"))
            .await;
        let sim = Sim::start(attestable_fleet(instances * 300)).await.unwrap();
        let hs = handlers(&sim, instances, &storage, &[]).await;
        let all = ids(&sim);
        let runs = hs.iter().enumerate().map(|(i, h)| {
            let mine = &all[i * 300..(i + 1) * 300];
            let message =
                json!({"managed_device_ids": mine, "validate_device_exists": false, "timeouts": {"invoke": "10m"}});
            post(
                h,
                "attest-queue",
                queue_envelope(&message.to_string(), &format!("b-{instances}-{i}")),
            )
        });
        for (status, out) in join_all(runs).await {
            assert_eq!(status, 200, "{out}");
            assert_eq!(result_of(&out).unwrap()["summary"]["initiated"], 300, "{out}");
        }
        let most = sim.max_writes_in_any_window(WINDOW);
        assert!(most <= BUDGET, "{instances} instances: {most} writes in one window");
        assert_eq!(sim.stats().throttled_writes, 0, "{instances} instances were throttled");
        let ledger = sim.ledger_counts();
        assert_eq!(ledger.len(), instances * 300);
        assert!(ledger.values().all(|&n| n == 1));
    }
}

#[tokio::test]
async fn the_blob_budget_grants_no_more_than_the_budget_to_racing_instances() {
    let azurite = Azurite::start().await;
    let container = azurite.create_container("budget").await;
    let budgets: Vec<_> = (0..3)
        .map(|_| std::sync::Arc::new(BlobBudget::new(azurite.account().container("budget").unwrap())))
        .collect();
    let _ = container;
    let rules = BudgetRules::new(40, Duration::from_secs(20));
    let ask = || Ask {
        n: 10,
        hold: Duration::from_secs(21),
        not_before: SystemTime::now(),
        latest_start: SystemTime::now() + Duration::from_millis(200),
        spare: false,
    };
    // Twelve asks of ten against a budget of forty, all at once.
    let asks = budgets
        .iter()
        .flat_map(|b| (0..4).map(move |_| b.clone()))
        .map(|b| async move { b.acquire("budget#t#c#writes", ask(), rules).await.unwrap() });
    let granted = join_all(asks)
        .await
        .into_iter()
        .filter(|a| matches!(a, Acquired::Granted(_)))
        .count();
    assert_eq!(granted, 4, "forty permits serve four asks of ten now");
    let requests: u64 = budgets.iter().map(|b| b.requests()).sum();
    assert!(requests > 0);
}

#[tokio::test]
async fn a_verify_check_waits_on_the_queue_until_due_then_publishes_its_verdict() {
    let azurite = Azurite::start().await;
    let storage = azurite.settings("work", "state").await;
    let sim = Sim::start(attestable_fleet(6)).await.unwrap();
    let hs = handlers(&sim, 2, &storage, &[]).await;
    let message = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false,
        "verify": {"after": "2s", "until": "2s"}, "correlation_id": "azure-verify"});
    let (status, out) = post(&hs[0], "attest-queue", queue_envelope(&message.to_string(), "v-1")).await;
    assert_eq!(status, 200, "{out}");
    let result = result_of(&out).unwrap();
    assert_eq!(result["verification"]["scheduled"], true, "{result}");
    let q = azurite.account().queue("work").unwrap();
    // Queued, but not visible before it is due.
    assert_eq!(azurite::approximate_count(&q).await, 1);
    assert!(azurite::receive(&q, 32, Duration::from_secs(30)).await.is_empty());
    let mut due = Vec::new();
    for _ in 0..100 {
        due = azurite::receive(&q, 32, Duration::from_secs(30)).await;
        if !due.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(due.len(), 1);
    let check = crate::common::payload_of(&due[0].payload);
    assert_eq!(check["check"]["number"], 1, "{check}");
    // Delivered to the other instance: the verdict goes to the result binding.
    let (status, out) = post(&hs[1], "attest-queue", queue_envelope(&due[0].payload, &due[0].id)).await;
    assert_eq!(status, 200, "{out}");
    azurite::delete(&q, &due[0]).await;
    let verdict = result_of(&out).unwrap();
    assert_eq!(verdict["correlation_id"], "azure-verify", "{verdict}");
    assert_eq!(verdict["check"]["number"], 1);
    assert_eq!(verdict["check"]["last"], true);
    assert_eq!(verdict["devices"].as_array().map(Vec::len), Some(6), "{verdict}");
    assert_eq!(azurite::approximate_count(&q).await, 0, "the last check queues nothing");
}

/// App credentials from the simulator's settings (the handler's own source
/// reads the process environment).
struct SimCredentials(HashMap<String, String>);

impl intune_attest::credentials::CredentialSource for SimCredentials {
    fn load(
        &self,
    ) -> intune_attest::core::BoxFuture<
        '_,
        Result<intune_attest::credentials::Loaded, intune_attest::credentials::CredentialsError>,
    > {
        Box::pin(async move {
            Ok(intune_attest::credentials::Loaded {
                creds: intune_attest::credentials::AppCredentials::from_env(|k| self.0.get(k).cloned())?,
                cloud: None,
                version: None,
            })
        })
    }

    fn name(&self) -> String {
        "the simulator's app".into()
    }
}

/// `instances` handler instances in this process on one blob container,
/// each attesting its own `per_instance` devices: the mean writes per full
/// window, the most in any sliding window, 429s, and storage requests
/// (budget and state) per device.
async fn azure_shared_run(azurite: &Azurite, instances: usize, per_instance: usize) -> (f64, usize, u64, f64) {
    use intune_attest::frontdoor::azure::{AzureApp, router};
    use std::sync::Arc;
    let container = format!("bench{instances}");
    azurite.create_container(&container).await;
    let sim = Sim::start(attestable_fleet(instances * per_instance)).await.unwrap();
    let env = crate::common::env_of(&sim, &[]);
    let mut urls = Vec::new();
    let mut counted = Vec::new();
    for _ in 0..instances {
        let store = Arc::new(BlobStore::new(azurite.account().container(&container).unwrap()));
        let budget = Arc::new(BlobBudget::new(azurite.account().container(&container).unwrap()));
        let settings = intune_attest::config::Settings::from_env(|k| env.get(k).cloned()).unwrap();
        let service = intune_attest::service::AttestService::new(
            settings,
            Arc::new(SimCredentials(env.clone())),
            None,
            None,
            Duration::from_secs(300),
        )
        .with_state_store(store.clone())
        .with_shared_budget(budget.clone());
        let app = Arc::new(AzureApp::new(service, None));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(listener, router(app)).await });
        counted.push((store, budget));
    }
    let all = ids(&sim);
    let client = reqwest::Client::new();
    let runs = urls.iter().enumerate().map(|(i, url)| {
        let mine = &all[i * per_instance..(i + 1) * per_instance];
        let message =
            json!({"managed_device_ids": mine, "validate_device_exists": false, "timeouts": {"invoke": "10m"}});
        let envelope = queue_envelope(&message.to_string(), &format!("bench-{instances}-{i}"));
        let client = client.clone();
        async move {
            let out: Value = client
                .post(format!("{url}/attest-queue"))
                .json(&envelope)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            out
        }
    });
    for out in join_all(runs).await {
        assert_eq!(result_of(&out).unwrap()["summary"]["initiated"], per_instance, "{out}");
    }
    let windows: Vec<usize> = sim.writes_per_window(WINDOW).into_iter().filter(|&n| n > 0).collect();
    let inner = if windows.len() > 2 {
        &windows[1..windows.len() - 1]
    } else {
        &windows[..]
    };
    let mean = inner.iter().sum::<usize>() as f64 / inner.len().max(1) as f64;
    let requests: u64 = counted.iter().map(|(s, b)| s.requests() + b.requests()).sum();
    (
        mean,
        sim.max_writes_in_any_window(WINDOW),
        sim.stats().throttled_writes,
        requests as f64 / (instances * per_instance) as f64,
    )
}

/// `cargo test --test it -- --ignored --nocapture azure_shared_budget_scenario`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark run of a minute or two; see BENCHMARKS.md"]
async fn azure_shared_budget_scenario() {
    let azurite = Azurite::start().await;
    println!(
        "| Azure instances (blob store) | writes per window (mean of full windows) | % of the budget | most in any sliding window | 429s | storage requests per device |"
    );
    println!("|---|---|---|---|---|---|");
    for instances in [1, 4] {
        let (mean, most, throttled, per_device) = azure_shared_run(&azurite, instances, 4000 / instances).await;
        println!(
            "| {instances} | {mean:.1} | {:.1}% | {most} | {throttled} | {per_device:.3} |",
            mean * 100.0 / BUDGET as f64
        );
        assert!(most <= BUDGET);
        assert_eq!(throttled, 0);
    }
}

#[tokio::test]
async fn storage_that_cannot_be_reached_returns_the_message_and_no_log_line_holds_the_sas() {
    let sim = Sim::start(attestable_fleet(3)).await.unwrap();
    // An account nobody listens on, reached with a SAS.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let service = format!("http://127.0.0.1:{port}/devstoreaccount1?{}", Azurite::sas());
    let signature = Azurite::sas().split("sig=").nth(1).unwrap().to_owned();
    let handler_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intune-attest"))
        .env_clear()
        .envs(crate::common::env_of(&sim, &[]))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", handler_port.to_string())
        .env("AzureWebJobsStorage__queueServiceUri", &service)
        .env("AzureWebJobsStorage__blobServiceUri", &service)
        .env("ATTEST_WORK_QUEUE", "work")
        .env("ATTEST_STATE_CONTAINER", "state")
        .env("ATTEST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{handler_port}");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", handler_port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let message = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false}).to_string();
    let resp = reqwest::Client::new()
        .post(format!("{url}/attest-queue"))
        .json(&queue_envelope(&message, "unreachable-1"))
        .send()
        .await
        .unwrap();
    // The invocation fails, so the host retries the message: nothing ran
    // without its claim, and nothing was dropped.
    assert_eq!(resp.status().as_u16(), 500);
    let body: Value = resp.json().await.unwrap();
    assert!(sim.ledger().is_empty(), "no device runs without its claim");
    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let logs = format!(
        "{}{}{body}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(logs.contains("state store"), "{logs}");
    // The SDK's own request log masks the signature (`sig=REDACTED`); the
    // signature itself, encoded or not, is nowhere.
    let decoded: String = url::form_urlencoded::parse(format!("s={signature}").as_bytes())
        .map(|(_, v)| v.into_owned())
        .collect();
    for secret in [signature.as_str(), decoded.as_str()] {
        assert!(!logs.contains(secret), "a log line holds the SAS: {logs}");
    }
}

/// Each device's final outcomes (not `continued`) across `results`, and
/// what the simulator's ledger says: (lost, duplicated) against `wanted`.
fn lost_and_duplicated(sim: &Sim, wanted: &[String], results: &[Value]) -> (usize, usize) {
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    for r in results {
        for d in r["devices"].as_array().into_iter().flatten() {
            if d["outcome"] != "continued" {
                *outcomes
                    .entry(d["device_id"].as_str().unwrap_or_default().to_owned())
                    .or_default() += 1;
            }
        }
    }
    let lost = wanted.iter().filter(|id| !outcomes.contains_key(*id)).count();
    let ledger = sim.ledger_counts();
    let duplicated = outcomes.values().filter(|&&n| n > 1).count() + ledger.values().filter(|&&n| n > 1).count();
    (lost, duplicated)
}

/// The Azure rows of the fault matrix: storage unreachable, a claim lost
/// to a dead instance, a request over 64 KB, a continuation whose queueing
/// fails. Written to `target/fault-matrix-azure.md` (printed by
/// `scripts/test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_faults_lose_nothing_and_repeat_nothing() {
    let mut table = String::from("| Azure fault | devices | lost | duplicated |\n|---|---|---|---|\n");
    let mut row = |fault: &str, devices: usize, (lost, dup): (usize, usize)| {
        table.push_str(&format!("| {fault} | {devices} | {lost} | {dup} |\n"));
        assert_eq!((lost, dup), (0, 0), "{fault}");
    };

    // Storage unreachable: the invocation fails and the host's retry runs
    // once the account answers again.
    let (blob_port, queue_port) = (
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    let sim = Sim::start(attestable_fleet(40)).await.unwrap();
    let sas = Azurite::sas();
    let storage = vec![
        (
            "AzureWebJobsStorage__queueServiceUri".to_owned(),
            format!("http://127.0.0.1:{queue_port}/devstoreaccount1?{sas}"),
        ),
        (
            "AzureWebJobsStorage__blobServiceUri".to_owned(),
            format!("http://127.0.0.1:{blob_port}/devstoreaccount1?{sas}"),
        ),
        ("ATTEST_WORK_QUEUE".to_owned(), "work".to_owned()),
        ("ATTEST_STATE_CONTAINER".to_owned(), "state".to_owned()),
    ];
    let hs = handlers(&sim, 1, &storage, &[]).await;
    let message = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false}).to_string();
    let (status, _) = post(&hs[0], "attest-queue", queue_envelope(&message, "down-1")).await;
    assert_eq!(status, 500, "returned for retry");
    let azurite = Azurite::start_on(blob_port, queue_port).await;
    azurite.create_queue("work").await;
    azurite.create_container("state").await;
    let (status, out) = post(&hs[0], "attest-queue", queue_envelope(&message, "down-1")).await;
    assert_eq!(status, 200, "{out}");
    row(
        "storage unreachable, then back",
        40,
        lost_and_duplicated(&sim, &ids(&sim), &result_of(&out).into_iter().collect::<Vec<_>>()),
    );
    drop(hs);

    // A claim held by an instance that died: it runs out, and the retry runs once.
    let sim = Sim::start(attestable_fleet(40)).await.unwrap();
    let storage = azurite.settings("work2", "state2").await;
    let hs = handlers(&sim, 2, &storage, &[]).await;
    let store = BlobStore::new(azurite.account().container("state2").unwrap());
    // The dead instance's claim on the delivery (the key the service uses).
    let key = "delivery#dead-1";
    assert_eq!(
        store
            .claim(key, "dead", SystemTime::now() + Duration::from_millis(300))
            .await
            .unwrap(),
        Claim::Claimed
    );
    let message = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false}).to_string();
    let (status, held) = post(&hs[0], "attest-queue", queue_envelope(&message, "dead-1")).await;
    assert_eq!(status, 500, "held by the other instance, so returned for retry: {held}");
    assert!(sim.ledger().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, out) = post(&hs[1], "attest-queue", queue_envelope(&message, "dead-1")).await;
    assert_eq!(status, 200, "{out}");
    let results: Vec<Value> = result_of(&out).into_iter().collect();
    row(
        "a claim lost to a dead instance",
        40,
        lost_and_duplicated(&sim, &ids(&sim), &results),
    );
    drop(hs);

    // A webhook request over 64 KB: handed to the queue in parts that fit.
    let sim = Sim::start(attestable_fleet(2000)).await.unwrap();
    let storage = azurite.settings("work3", "state3").await;
    let hs = handlers(&sim, 2, &storage, &[]).await;
    let body = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false}).to_string();
    assert!(body.len() > 64 * 1024);
    let t = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = intune_attest::service::signature::sign(&SecretString::from(SECRET.to_string()), t, body.as_bytes());
    let request = json!({"Data": {"req": {"Url": "https://fn.example/api/attest-http", "Method": "POST", "Query": {},
        "Headers": {"X-Intune-Attest-Signature": [sig]}, "Params": {}, "Body": body}}, "Metadata": {}});
    let (_, accepted) = post(&hs[0], "attest-http", request).await;
    assert_eq!(accepted["Outputs"]["res"]["statusCode"], 202, "{accepted}");
    let q = azurite.account().queue("work3").unwrap();
    assert!(azurite::approximate_count(&q).await >= 2, "split to fit");
    let (results, _) = drain_through(&hs, &q).await;
    row(
        "a request over 64 KB",
        2000,
        lost_and_duplicated(&sim, &ids(&sim), &results),
    );
    drop(hs);

    // A continuation whose queueing fails (the queue is gone): the untried
    // devices are reported not_attempted, once, and nothing runs twice.
    let sim = Sim::start(attestable_fleet(600)).await.unwrap();
    let mut storage = azurite.settings("work4", "state4").await;
    for (k, v) in storage.iter_mut() {
        if k == "ATTEST_WORK_QUEUE" {
            *v = "no-such-queue".into();
        }
    }
    let hs = handlers(
        &sim,
        1,
        &storage,
        &[
            ("AzureFunctionsJobHost__functionTimeout", "00:00:04"),
            ("ATTEST_WRITE_BUDGET", "100"),
        ],
    )
    .await;
    let message =
        json!({"managed_device_ids": ids(&sim), "validate_device_exists": false, "timeouts": {"invoke": "10m"}});
    let (status, out) = post(&hs[0], "attest-queue", queue_envelope(&message.to_string(), "cont-1")).await;
    assert_eq!(status, 200, "{out}");
    let result = result_of(&out).unwrap();
    assert!(
        result["summary"]["not_attempted"].as_u64().unwrap_or(0) > 0,
        "{}",
        result["summary"]
    );
    row(
        "a continuation whose queueing fails",
        600,
        lost_and_duplicated(&sim, &ids(&sim), &[result]),
    );
    drop(hs);

    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fault-matrix-azure.md");
    let _ = std::fs::write(&out, &table);
    println!("{table}");
}

/// The managed identity's token endpoint as App Service and Functions
/// serve it (`IDENTITY_ENDPOINT`, `X-IDENTITY-HEADER`): answers a token
/// with the claims Azurite checks, and records what it was asked.
async fn identity_endpoint(
    header: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<HashMap<String, String>>>>) {
    use axum::extract::{Query, State};
    use std::sync::{Arc, Mutex};
    type Seen = Arc<Mutex<Vec<HashMap<String, String>>>>;
    let seen: Seen = Arc::default();
    async fn token(
        State((seen, header)): State<(Seen, &'static str)>,
        headers: axum::http::HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if headers.get("x-identity-header").and_then(|v| v.to_str().ok()) != Some(header) {
            return (axum::http::StatusCode::UNAUTHORIZED, "no identity header").into_response();
        }
        seen.lock().unwrap().push(q);
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({"aud": "https://storage.azure.com", "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600, "oid": "00000000-0000-0000-0000-0000000000aa"});
        let jwt = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"not checked by the emulator"),
        )
        .unwrap();
        axum::Json(json!({"access_token": jwt, "expires_on": (now + 3600).to_string(),
            "token_type": "Bearer", "resource": "https://storage.azure.com"}))
        .into_response()
    }
    let app = axum::Router::new()
        .route("/msi/token", axum::routing::get(token))
        .with_state((seen.clone(), header));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}/msi/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_managed_identity_reaches_storage_over_https_with_its_token() {
    let pki = azurite::Pki::new();
    let azurite = Azurite::start_https(&pki).await;
    let (blob, queue) = (
        format!("https://127.0.0.1:{}/{}", azurite.blob_port, azurite::ACCOUNT),
        format!("https://127.0.0.1:{}/{}", azurite.queue_port, azurite::ACCOUNT),
    );
    // The test itself sets up the queue and container with a SAS.
    let options = || azure_core::http::ClientOptions {
        transport: Some(pki.transport()),
        ..Default::default()
    };
    let sas =
        |base: &str, name: &str| azure_core::http::Url::parse(&format!("{base}/{name}?{}", Azurite::sas())).unwrap();
    let q = azure_storage_queue::QueueClient::new(
        sas(&queue, "work"),
        None,
        Some(azure_storage_queue::QueueClientOptions {
            client_options: options(),
            ..Default::default()
        }),
    )
    .unwrap();
    q.create(None).await.unwrap();
    azure_storage_blob::BlobContainerClient::new(
        sas(&blob, "state"),
        None,
        Some(azure_storage_blob::BlobContainerClientOptions {
            client_options: options(),
            ..Default::default()
        }),
    )
    .unwrap()
    .create(None)
    .await
    .unwrap();
    let (endpoint, seen) = identity_endpoint("identity-header-value").await;
    let sim = Sim::start(attestable_fleet(5)).await.unwrap();
    let ca = pki.ca.to_str().unwrap().to_owned();
    let env = [
        ("AzureWebJobsStorage__queueServiceUri", queue.as_str()),
        ("AzureWebJobsStorage__blobServiceUri", blob.as_str()),
        ("AzureWebJobsStorage__credential", "managedidentity"),
        ("AzureWebJobsStorage__clientId", "11111111-2222-3333-4444-555555555555"),
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", "identity-header-value"),
        ("ATTEST_WORK_QUEUE", "work"),
        ("ATTEST_STATE_CONTAINER", "state"),
        // The handler trusts the test CA (rustls reads the system's roots
        // from this file).
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let h = start(&sim, &env).await;
    // A webhook handed to the queue (a queue send with the token) ...
    let body = json!({"managed_device_ids": ids(&sim), "validate_device_exists": false}).to_string();
    let t = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = intune_attest::service::signature::sign(&SecretString::from(SECRET.to_string()), t, body.as_bytes());
    let request = json!({"Data": {"req": {"Url": "https://fn.example/api/attest-http", "Method": "POST", "Query": {},
        "Headers": {"X-Intune-Attest-Signature": [sig]}, "Params": {}, "Body": body}}, "Metadata": {}});
    let (_, accepted) = post(&h, "attest-http", request).await;
    assert_eq!(accepted["Outputs"]["res"]["statusCode"], 202, "{accepted}");
    // ... then run from the queue under a claim in the container.
    let (results, _) = drain_through(std::slice::from_ref(&h), &q).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["summary"]["initiated"], 5, "{}", results[0]);
    let asked = seen.lock().unwrap().clone();
    assert!(!asked.is_empty(), "the token came from the identity endpoint");
    for q in &asked {
        assert_eq!(
            q.get("client_id").map(String::as_str),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(q.get("resource").map(String::as_str), Some("https://storage.azure.com"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_50000_devices_is_queued_in_messages_that_fit_each_device_once() {
    let azurite = Azurite::start().await;
    let storage = azurite.settings("work", "state").await;
    let sim = Sim::start(attestable_fleet(50_000)).await.unwrap();
    let hs = handlers(&sim, 1, &storage, &[("SWEEP_ENABLED", "true")]).await;
    let (status, out) = post(
        &hs[0],
        "attest-sweep",
        json!({"Data": {"timer": {"IsPastDue": false}}, "Metadata": {"sys": {"UtcNow": "2026-12-02T02:00:00Z"}}}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert!(sim.ledger().is_empty(), "a sweep with a queue only dispatches");
    // Every queued message, as the trigger would take it.
    let q = azurite.account().queue("work").unwrap();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut messages = 0;
    loop {
        let got = azurite::receive(&q, 32, Duration::from_secs(600)).await;
        if got.is_empty() {
            break;
        }
        for m in got {
            messages += 1;
            let stored = MessageEncoding::Base64.encode(&m.payload).len();
            assert!(stored <= 64 * 1024, "a message of {stored} bytes as stored");
            let part = crate::common::payload_of(&m.payload);
            for id in part["managed_device_ids"].as_array().into_iter().flatten() {
                *seen.entry(id.as_str().unwrap().to_owned()).or_default() += 1;
            }
        }
    }
    assert!(messages > 1, "{messages} message(s)");
    assert_eq!(seen.len(), 50_000, "in {messages} messages");
    assert!(seen.values().all(|&n| n == 1), "a device queued twice");
}
