//! The Lambda front door's handler against the Graph simulator and moto:
//! Secrets Manager credentials, EventBridge result events, SQS partial
//! failures and continuations, webhooks, sweeps.

use std::sync::Arc;
use std::time::Duration;

use crate::common::aws::{Clients, Moto};
use crate::common::{WINDOW, env_of, payload_of, sim_config, windows_fleet};
use graph_sim::{CLIENT_ID, CLIENT_SECRET, Sim, SimConfig, TENANT_ID};
use intune_attest::config::Settings;
use intune_attest::core::BoxFuture;
use intune_attest::core::backoff::Backoff;
use intune_attest::credentials::WebhookSecrets;
use intune_attest::credentials::secrets_manager::SecretsManagerCredentials;
use intune_attest::frontdoor::lambda::{InvocationContext, LambdaApp};
use intune_attest::queue::WorkQueue;
use intune_attest::queue::sqs::SqsWorkQueue;
use intune_attest::results::ResultSink;
use intune_attest::results::eventbridge::EventBridgeSink;
use intune_attest::service::signature as webhook;
use intune_attest::service::{AttestService, SweepSettings, WebhookAuth};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::time::Instant;

pub(crate) struct World {
    pub(crate) sim: Sim,
    pub(crate) _moto: Moto,
    pub(crate) aws: Clients,
    pub(crate) events_queue: String,
    pub(crate) work_queue: String,
    pub(crate) secret_arn: String,
}

pub(crate) struct FixedSecrets(Vec<&'static str>);

impl WebhookSecrets for FixedSecrets {
    fn secrets(&self) -> BoxFuture<'_, Result<Vec<SecretString>, String>> {
        Box::pin(async move { Ok(self.0.iter().map(|s| SecretString::from(s.to_string())).collect()) })
    }
}

fn secret_json(secret: &str) -> String {
    json!({"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": secret}).to_string()
}

pub(crate) async fn world(cfg: SimConfig) -> World {
    let sim = Sim::start(cfg).await.unwrap();
    let moto = Moto::start().await;
    let aws = Clients::new(&moto).await;
    let secret_arn = aws.secret("intune-attest/app", &secret_json(CLIENT_SECRET)).await;
    let events_queue = aws.bus_into_queue("attest-results").await;
    let work_queue = aws.queue("attest-work").await;
    World {
        sim,
        _moto: moto,
        aws,
        events_queue,
        work_queue,
        secret_arn,
    }
}

pub(crate) struct AppOptions {
    pub(crate) queue: bool,
    pub(crate) queue_url: Option<String>,
    pub(crate) secrets_endpoint: Option<&'static str>,
    pub(crate) bus: &'static str,
    pub(crate) webhook: Option<Vec<&'static str>>,
    pub(crate) extra_env: Vec<(&'static str, &'static str)>,
    /// The function URL is not IAM: an IAM context is not to be trusted.
    pub(crate) no_iam: bool,
    /// The DynamoDB state table shared with other instances.
    pub(crate) state_table: Option<String>,
    /// The shared budget to draw on (else one on `state_table`).
    pub(crate) budget: Option<Arc<dyn intune_attest::state::budget::SharedBudget>>,
    /// Further tenants: names and their credentials secrets.
    pub(crate) tenants: Vec<(&'static str, String)>,
    /// A work queue in front of SQS (a stand-in that enforces a limit).
    pub(crate) work_queue: Option<Arc<dyn WorkQueue>>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            queue: false,
            queue_url: None,
            secrets_endpoint: None,
            bus: "attest-results",
            webhook: None,
            extra_env: vec![],
            no_iam: false,
            state_table: None,
            budget: None,
            tenants: vec![],
            work_queue: None,
        }
    }
}

impl World {
    pub(crate) fn app(&self, o: AppOptions) -> LambdaApp {
        let env = env_of(&self.sim, &o.extra_env);
        let settings = Settings::from_env(|k| env.get(k).cloned()).unwrap();
        let secrets = match o.secrets_endpoint {
            // A secret store that cannot be reached.
            Some(url) => aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::Config::builder()
                    .behavior_version_latest()
                    .endpoint_url(url)
                    .region(aws_sdk_secretsmanager::config::Region::new("us-east-1"))
                    .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                        "t", "t", None, None, "t",
                    ))
                    .build(),
            ),
            None => self.aws.secrets.clone(),
        };
        let creds = Arc::new(SecretsManagerCredentials::new(secrets, self.secret_arn.clone()));
        let sink: Arc<dyn ResultSink> = Arc::new(
            EventBridgeSink::new(self.aws.events.clone(), o.bus.into()).with_backoff(Backoff::new(
                Duration::from_millis(10),
                Duration::from_millis(10),
                2,
            )),
        );
        let url = o.queue_url.clone().unwrap_or_else(|| self.work_queue.clone());
        let queue = o.work_queue.clone().or_else(|| {
            o.queue
                .then(|| Arc::new(SqsWorkQueue::new(self.aws.sqs.clone(), url)) as Arc<dyn WorkQueue>)
        });
        let auth = WebhookAuth {
            signature: o.webhook.map(|s| Arc::new(FixedSecrets(s)) as Arc<dyn WebhookSecrets>),
            iam: !o.no_iam,
            host: false,
        };
        // Sweeps enabled unless the options say otherwise.
        let sweep = SweepSettings::from_env(|k| match k {
            "SWEEP_CHUNK_SIZE" => Some("50".to_string()),
            "SWEEP_ENABLED" => Some(env.get(k).cloned().unwrap_or_else(|| "true".into())),
            _ => env.get(k).cloned(),
        })
        .unwrap();
        let tenants = o
            .tenants
            .iter()
            .map(|(name, secret)| {
                let source: Arc<dyn intune_attest::credentials::CredentialSource> =
                    Arc::new(SecretsManagerCredentials::new(self.aws.secrets.clone(), secret.clone()));
                ((*name).to_owned(), source)
            })
            .collect();
        let mut service = AttestService::new(settings, creds, Some(sink), queue, Duration::from_secs(300))
            .with_webhook_auth(auth)
            .with_sweep(sweep)
            .with_tenants(tenants);
        if let Some(table) = o.state_table {
            service = service
                .with_state_store(Arc::new(intune_attest::state::dynamodb::DynamoStore::new(
                    self.aws.dynamodb.clone(),
                    table.clone(),
                )))
                .with_shared_budget(o.budget.unwrap_or_else(|| {
                    Arc::new(intune_attest::state::budget::DynamoBudget::new(
                        self.aws.dynamodb.clone(),
                        table,
                    ))
                }));
        }
        LambdaApp::new(service, "intune-attest-test".into(), false)
    }

    /// Every device of the fleet.
    pub(crate) fn all_ids(&self) -> Vec<String> {
        self.sim.fleet().iter().map(|d| d.id.clone()).collect()
    }

    pub(crate) fn windows(&self, n: usize) -> Vec<String> {
        self.sim
            .fleet()
            .iter()
            .filter(|d| d.is_windows() && d.tpm != Some(""))
            .take(n)
            .map(|d| d.id.clone())
            .collect()
    }

    pub(crate) async fn events(&self) -> Vec<Value> {
        self.aws
            .drain(&self.events_queue)
            .await
            .iter()
            .map(|b| serde_json::from_str(b).unwrap())
            .collect()
    }
}

pub(crate) fn ctx(id: &str, secs: u64) -> InvocationContext {
    InvocationContext {
        request_id: id.into(),
        deadline: Some(Instant::now() + Duration::from_secs(secs)),
    }
}

pub(crate) fn sqs_event(records: &[(&str, String)]) -> Value {
    json!({"Records": records.iter().map(|(id, body)| json!({
        "messageId": id, "receiptHandle": "h", "body": body, "attributes": {"ApproximateReceiveCount": "1"},
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:attest-work", "awsRegion": "us-east-1"
    })).collect::<Vec<_>>()})
}

#[tokio::test]
async fn a_direct_invoke_runs_with_stored_credentials_and_puts_its_result_on_the_bus() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let ids = w.windows(25);
    let out = app
        .handle(
            json!({"managed_device_ids": ids, "correlation_id": "direct-1"}),
            ctx("req-1", 60),
        )
        .await
        .unwrap();
    assert_eq!(out["summary"]["initiated"], 25);
    assert_eq!(out["invocation"]["trigger"], "direct");
    assert_eq!(out["invocation"]["delivery_id"], "req-1");
    let events = w.events().await;
    assert_eq!(events.len(), 2, "{events:?}");
    let summary = events
        .iter()
        .find(|e| e["detail-type"] == "Device Attestation Result")
        .unwrap();
    assert_eq!(summary["source"], "intune-attest");
    assert_eq!(summary["detail"]["correlation_id"], "direct-1");
    assert_eq!(summary["detail"]["event_parts"], 2);
    let devices = events
        .iter()
        .find(|e| e["detail-type"] == "Device Attestation Result Devices")
        .unwrap();
    assert_eq!(devices["detail"]["devices"].as_array().unwrap().len(), 25);

    // The same request id again (an async retry): recognised, not redone.
    let again = app
        .handle(
            json!({"managed_device_ids": ids, "correlation_id": "direct-1"}),
            ctx("req-1", 60),
        )
        .await
        .unwrap();
    assert_eq!(again["repeat"], true);
    assert_eq!(w.sim.ledger().len(), 25);
}

#[tokio::test]
async fn a_failed_run_is_a_typed_error_and_still_emits_its_result() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let mut ids = w.windows(2);
    ids.push("00000000-dead-4bad-8bad-000000000001".into());
    let err = app
        .handle(json!({"managed_device_ids": ids}), ctx("req-2", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "AttestationFailed");
    assert!(err.error_message.contains("partially_failed"), "{}", err.error_message);
    assert_eq!(w.events().await.len(), 2);
    let err = app
        .handle(json!({"managed_device_ids": ["nope"]}), ctx("req-3", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");
    assert!(err.error_message.contains("managed_device_ids[0]"));
}

#[tokio::test]
async fn sqs_partial_failures_name_exactly_the_messages_to_retry() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let ids = w.windows(3);
    // The secret store loses the secret: valid messages must come back for retry.
    w.aws
        .secrets
        .delete_secret()
        .secret_id(&w.secret_arn)
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let event = sqs_event(&[
        ("m-1", json!({"managed_device_ids": [ids[0]]}).to_string()),
        ("m-2", "{not json".to_string()),
        ("m-3", json!({"managed_device_ids": [ids[1]]}).to_string()),
    ]);
    let out = app.handle(event, ctx("req-4", 60)).await.unwrap();
    assert_eq!(
        out,
        json!({"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-3"}]})
    );
    // The malformed message was reported once, then acknowledged.
    let events = w.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["detail-type"], "Device Attestation Request Rejected");
    assert_eq!(events[0]["detail"]["delivery_id"], "m-2");
    assert!(w.sim.ledger().is_empty());
}

#[tokio::test]
async fn sqs_messages_run_and_a_redelivered_message_is_not_redone() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let ids = w.windows(4);
    let event = sqs_event(&[
        ("m-1", json!({"managed_device_ids": [ids[0], ids[1]]}).to_string()),
        ("m-2", json!({"managed_device_ids": [ids[2], ids[3]]}).to_string()),
    ]);
    let out = app.handle(event.clone(), ctx("req-5", 60)).await.unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    let out = app.handle(event, ctx("req-6", 60)).await.unwrap();
    assert_eq!(out, json!({"batchItemFailures": []}));
    assert_eq!(w.sim.ledger().len(), 4, "a redelivery must not attest again");
}

#[tokio::test]
async fn a_rotated_secret_is_picked_up() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let ids = w.windows(2);
    app.handle(json!({"managed_device_ids": [ids[0]]}), ctx("r-1", 60))
        .await
        .unwrap();
    // Rotation: the app's secret changes in Entra ID and in the store; the
    // cached token is no longer accepted.
    w.sim.configure(|c| c.apps[0].secret = Some("rotated-secret".into()));
    w.aws
        .secrets
        .put_secret_value()
        .secret_id(&w.secret_arn)
        .secret_string(secret_json("rotated-secret"))
        .send()
        .await
        .unwrap();
    w.sim.revoke_tokens();
    let out = app
        .handle(json!({"managed_device_ids": [ids[1]]}), ctx("r-2", 60))
        .await
        .unwrap();
    assert_eq!(out["summary"]["initiated"], 1);
}

#[tokio::test]
async fn a_missing_secret_field_is_credentials_unavailable_naming_the_secret() {
    let w = world(sim_config()).await;
    w.aws
        .secrets
        .put_secret_value()
        .secret_id(&w.secret_arn)
        .secret_string(json!({"tenant_id": TENANT_ID, "client_secret": CLIENT_SECRET}).to_string())
        .send()
        .await
        .unwrap();
    let app = w.app(AppOptions::default());
    let err = app
        .handle(json!({"managed_device_ids": w.windows(1)}), ctx("r-3", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "CredentialsUnavailable");
    assert!(
        err.error_message.contains("intune-attest/app") && err.error_message.contains("client_id"),
        "{}",
        err.error_message
    );
    assert!(!err.error_message.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn the_deadline_hands_untried_devices_to_a_continuation_that_finishes_them() {
    let cfg = windows_fleet(600);
    let w = world(cfg).await;
    let app = w.app(AppOptions {
        queue: true,
        extra_env: vec![("ATTEST_WRITE_BUDGET", "60")],
        ..Default::default()
    });
    let ids: Vec<String> = w.sim.fleet().iter().map(|d| d.id.clone()).collect();
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false, "correlation_id": "big-run"});
    let first = app.handle(payload, ctx("part-1", 3)).await.unwrap();
    let continued = first["summary"]["continued"].as_u64().unwrap_or(0) as usize;
    let initiated = first["summary"]["initiated"].as_u64().unwrap() as usize;
    assert!(continued > 0 && initiated > 0, "{}", first["summary"]);
    assert_eq!(initiated + continued, 600, "{}", first["summary"]);
    assert_eq!(first["status"], "succeeded");
    let messages = w.aws.drain(&w.work_queue).await;
    assert_eq!(messages.len(), 1);
    let next = payload_of(&messages[0]);
    assert_eq!(next["part"], 2);
    assert_eq!(next["correlation_id"], "big-run");
    assert_eq!(next["managed_device_ids"].as_array().unwrap().len(), continued);

    let second = app
        .handle(sqs_event(&[("cont-1", messages[0].clone())]), ctx("part-2", 60))
        .await
        .unwrap();
    assert_eq!(second, json!({"batchItemFailures": []}));
    let ledger = w.sim.ledger_counts();
    assert_eq!(ledger.len(), 600, "every device initiated across the parts");
    assert!(ledger.values().all(|n| *n == 1), "no device initiated twice");
    let results: Vec<Value> = w
        .events()
        .await
        .into_iter()
        .filter(|e| e["detail-type"] == "Device Attestation Result")
        .collect();
    let parts: Vec<u64> = results
        .iter()
        .map(|e| e["detail"]["invocation"]["part"].as_u64().unwrap())
        .collect();
    assert_eq!(parts.len(), 2);
    assert!(parts.contains(&1) && parts.contains(&2));
    let _ = WINDOW;
}

#[tokio::test]
async fn a_result_kept_for_one_caller_is_never_served_to_another() {
    let w = world(sim_config()).await;
    // The result cannot be published, so it is kept for the retry.
    let app = w.app(AppOptions {
        bus: "no-such-bus",
        ..Default::default()
    });
    let ids = w.windows(2);
    let body = json!({"managed_device_ids": ids, "validate_device_exists": false, "correlation_id": "incident-4711"})
        .to_string();
    let alice = "arn:aws:sts::123456789012:assumed-role/IncidentResponder/alice";
    let mallory = "arn:aws:sts::123456789012:assumed-role/Contractor/mallory";
    let out = app
        .handle(http_event(&body, json!({}), Some(alice)), ctx("k-1", 60))
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 503, "{out}");
    assert_eq!(w.sim.ledger_counts().len(), 2);
    // The same ids and correlation id from another caller: a run of its
    // own, not alice's kept result.
    app.handle(http_event(&body, json!({}), Some(mallory)), ctx("k-2", 60))
        .await
        .unwrap();
    let counts = w.sim.ledger_counts();
    assert!(counts.values().all(|&n| n == 2), "mallory's request ran: {counts:?}");
    // Alice's retry is answered from her kept result: nothing runs again.
    app.handle(http_event(&body, json!({}), Some(alice)), ctx("k-3", 60))
        .await
        .unwrap();
    let counts = w.sim.ledger_counts();
    assert!(counts.values().all(|&n| n == 2), "alice's retry ran again: {counts:?}");
}

#[tokio::test]
async fn result_events_that_cannot_be_delivered_are_reported() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions {
        bus: "no-such-bus",
        ..Default::default()
    });
    let ids = w.windows(1);
    let err = app
        .handle(json!({"managed_device_ids": ids}), ctx("d-1", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "ResultDeliveryFailed");
    let out = app
        .handle(
            sqs_event(&[("m-9", json!({"managed_device_ids": ids}).to_string())]),
            ctx("d-2", 60),
        )
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": [{"itemIdentifier": "m-9"}]}));
}

pub(crate) fn http_event(body: &str, headers: Value, iam: Option<&str>) -> Value {
    let mut ctx = json!({"http": {"method": "POST", "path": "/", "sourceIp": "203.0.113.9"}, "requestId": "r"});
    if let Some(arn) = iam {
        ctx["authorizer"] = json!({"iam": {"userArn": arn}});
    }
    json!({"version": "2.0", "rawPath": "/", "headers": headers, "requestContext": ctx, "body": body, "isBase64Encoded": false})
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn webhooks_need_a_fresh_unreplayed_signature() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions {
        webhook: Some(vec!["whsec-new", "whsec-old"]),
        ..Default::default()
    });
    let body = json!({"managed_device_ids": w.windows(2), "correlation_id": "hook-1"}).to_string();
    let sig = |secret: &str, t: u64| webhook::sign(&SecretString::from(secret.to_string()), t, body.as_bytes());
    let call = |headers: Value| app.handle(http_event(&body, headers, None), ctx("w", 60));

    for headers in [
        json!({}),
        json!({"x-intune-attest-signature": sig("wrong", now())}),
        json!({"x-intune-attest-signature": sig("whsec-old", now() - 600)}),
        json!({"x-intune-attest-signature": "t=1,v1=zz"}),
    ] {
        let out = call(headers).await.unwrap();
        assert_eq!(out["statusCode"], 401);
        assert_eq!(out["body"], r#"{"error":"unauthorized"}"#, "no detail leaks");
    }
    let good = json!({"x-intune-attest-signature": sig("whsec-old", now())});
    let out = call(good.clone()).await.unwrap();
    assert_eq!(out["statusCode"], 200, "{out}");
    let result: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(result["summary"]["initiated"], 2);
    let replay = call(good).await.unwrap();
    assert_eq!(replay["statusCode"], 401);
    assert!(w.sim.ledger().len() == 2);

    let bad = r#"{"managed_device_ids": ["x"]}"#;
    let out = app
        .handle(http_event(bad, json!({"x-intune-attest-signature": webhook::sign(&SecretString::from("whsec-new".to_string()), now(), bad.as_bytes())}), None), ctx("w", 60))
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 400);
    assert!(out["body"].as_str().unwrap().contains("managed_device_ids[0]"));
}

#[tokio::test]
async fn an_iam_authenticated_webhook_records_the_caller_and_a_queue_answers_202() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let body = json!({"managed_device_ids": w.windows(1)}).to_string();
    let unsigned = app
        .handle(http_event(&body, json!({}), None), ctx("w1", 60))
        .await
        .unwrap();
    assert_eq!(unsigned["statusCode"], 401);
    let arn = "arn:aws:sts::123456789012:assumed-role/IncidentResponder/alice";
    let out = app
        .handle(http_event(&body, json!({}), Some(arn)), ctx("w2", 60))
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 200);
    let result: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    assert_eq!(result["invocation"]["caller"], arn);

    let queued = w.app(AppOptions {
        queue: true,
        ..Default::default()
    });
    let out = queued
        .handle(http_event(&body, json!({}), Some(arn)), ctx("w3", 60))
        .await
        .unwrap();
    assert_eq!(out["statusCode"], 202);
    let accepted: Value = serde_json::from_str(out["body"].as_str().unwrap()).unwrap();
    let messages = w.aws.drain(&w.work_queue).await;
    assert_eq!(messages.len(), 1);
    let queued_payload = payload_of(&messages[0]);
    assert_eq!(queued_payload["correlation_id"], accepted["correlation_id"]);
}

#[tokio::test]
async fn a_schedule_event_sweeps_nothing_where_the_deployment_enabled_no_sweep() {
    let w = world(sim_config()).await;
    // Built from the environment, as the function is: SWEEP_ENABLED unset.
    let env = env_of(&w.sim, &[]);
    let sweep = SweepSettings::from_env(|k| env.get(k).cloned()).unwrap();
    assert!(!sweep.enabled);
    let app = w.app(AppOptions {
        queue: true,
        extra_env: vec![("SWEEP_ENABLED", "false")],
        ..Default::default()
    });
    let rule =
        json!({"version": "0", "id": "evt-9", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let err = app.handle(rule, ctx("s-9", 60)).await.unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");
    assert!(err.error_message.contains("SWEEP_ENABLED"), "{}", err.error_message);
    assert_eq!(w.sim.stats().http_requests, 0, "nothing was selected");
    assert!(w.aws.drain(&w.work_queue).await.is_empty());
}

#[tokio::test]
async fn a_schedule_sweep_queues_the_fleet_in_chunks() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions {
        queue: true,
        ..Default::default()
    });
    let rule =
        json!({"version": "0", "id": "evt-1", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
    let out = app.handle(rule, ctx("s-1", 60)).await.unwrap();
    let windows = w.sim.fleet().iter().filter(|d| d.is_windows()).count();
    assert_eq!(out["devices"], windows);
    assert_eq!(out["chunks"], windows.div_ceil(50));
    let messages = w.aws.drain(&w.work_queue).await;
    assert_eq!(messages.len(), windows.div_ceil(50));
    let total: usize = messages
        .iter()
        .map(|m| payload_of(m)["managed_device_ids"].as_array().unwrap().len())
        .sum();
    assert_eq!(total, windows);
    assert!(w.sim.ledger().is_empty(), "dispatching attests nothing itself");
}

#[tokio::test]
async fn an_unreachable_secret_store_returns_every_message_for_retry() {
    let w = world(sim_config()).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint: &'static str = Box::leak(format!("http://127.0.0.1:{closed}").into_boxed_str());
    let app = w.app(AppOptions {
        secrets_endpoint: Some(endpoint),
        ..Default::default()
    });
    let ids = w.windows(2);
    let event = sqs_event(&[
        ("m-1", json!({"managed_device_ids": [ids[0]]}).to_string()),
        ("m-2", json!({"managed_device_ids": [ids[1]]}).to_string()),
    ]);
    let out = app.handle(event, ctx("u-1", 60)).await.unwrap();
    assert_eq!(
        out,
        json!({"batchItemFailures": [{"itemIdentifier": "m-1"}, {"itemIdentifier": "m-2"}]})
    );
    let err = app
        .handle(json!({"managed_device_ids": [ids[0]]}), ctx("u-2", 60))
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "CredentialsUnavailable");
    assert!(err.error_message.contains("intune-attest/app"), "{}", err.error_message);
    assert!(w.sim.ledger().is_empty());
}

#[tokio::test]
async fn a_continuation_that_cannot_be_queued_is_reported_not_lost() {
    let cfg = windows_fleet(400);
    let w = world(cfg).await;
    let missing_queue = format!("{}/123456789012/no-such-queue", w._moto.url);
    let app = w.app(AppOptions {
        queue: true,
        queue_url: Some(missing_queue),
        extra_env: vec![("ATTEST_WRITE_BUDGET", "60")],
        ..Default::default()
    });
    let ids: Vec<String> = w.sim.fleet().iter().map(|d| d.id.clone()).collect();
    let payload = json!({"managed_device_ids": ids, "validate_device_exists": false, "ignore_partial_failures": true});
    let out = app.handle(payload, ctx("c-1", 3)).await.unwrap();
    let initiated = out["summary"]["initiated"].as_u64().unwrap();
    let not_attempted = out["summary"]["not_attempted"].as_u64().unwrap();
    assert!(not_attempted > 0, "{}", out["summary"]);
    assert_eq!(initiated + not_attempted, 400, "{}", out["summary"]);
    assert!(
        out["warnings"].to_string().contains("could not be handed on"),
        "{}",
        out["warnings"]
    );
    assert_eq!(w.sim.ledger().len() as u64, initiated);
}

#[tokio::test]
async fn base64_webhook_bodies_are_verified_on_their_decoded_bytes() {
    use base64::Engine as _;
    let w = world(sim_config()).await;
    let app = w.app(AppOptions {
        webhook: Some(vec!["whsec-new"]),
        ..Default::default()
    });
    let body = json!({"managed_device_ids": w.windows(1)}).to_string();
    let header = webhook::sign(&SecretString::from("whsec-new".to_string()), now(), body.as_bytes());
    let mut event = http_event(
        &base64::engine::general_purpose::STANDARD.encode(&body),
        json!({"x-intune-attest-signature": header}),
        None,
    );
    event["isBase64Encoded"] = json!(true);
    let out = app.handle(event.clone(), ctx("b-1", 60)).await.unwrap();
    assert_eq!(out["statusCode"], 200, "{out}");
    event["body"] = json!("%%% not base64 %%%");
    let out = app.handle(event, ctx("b-2", 60)).await.unwrap();
    assert_eq!(out["statusCode"], 400);
}

#[tokio::test]
async fn every_hostile_payload_is_refused_at_every_front_door_without_a_graph_call() {
    let w = world(sim_config()).await;
    let app = w.app(AppOptions::default());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/payloads/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let arn = "arn:aws:sts::123456789012:assumed-role/IncidentResponder/alice";
    for (i, file) in files.iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // The webhook.
        let out = app
            .handle(http_event(&text, json!({}), Some(arn)), ctx("h", 60))
            .await
            .unwrap();
        assert_eq!(out["statusCode"], 400, "{}: {out}", file.display());
        assert!(out["body"].as_str().unwrap().len() < 4000, "{}", file.display());
        // A queue message: reported once and acknowledged.
        let out = app
            .handle(sqs_event(&[(&format!("bad-{i}"), text.clone())]), ctx("q", 60))
            .await
            .unwrap();
        assert_eq!(out, json!({"batchItemFailures": []}), "{}", file.display());
        // A direct invoke, when the file is JSON at all.
        if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
            let err = app.handle(v, ctx("d", 60)).await.unwrap_err();
            assert_eq!(err.error_type, "InvalidRequest", "{}", file.display());
        }
    }
    assert_eq!(w.sim.stats().http_requests, 0, "a hostile payload reached Graph");
    let rejected = w
        .events()
        .await
        .iter()
        .filter(|e| e["detail-type"] == "Device Attestation Request Rejected")
        .count();
    assert_eq!(rejected, files.len());
}

#[tokio::test]
async fn a_throttling_secret_store_is_retried_then_every_message_is_returned() {
    // A Secrets Manager that always answers ThrottlingException.
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let throttling = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (
                axum::http::StatusCode::BAD_REQUEST,
                [
                    ("content-type", "application/x-amz-json-1.1"),
                    ("x-amzn-errortype", "ThrottlingException"),
                ],
                r#"{"__type": "ThrottlingException", "message": "Rate exceeded"}"#,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint: &'static str = Box::leak(format!("http://{}", listener.local_addr().unwrap()).into_boxed_str());
    tokio::spawn(async move { axum::serve(listener, throttling).await });

    let w = world(sim_config()).await;
    let app = w.app(AppOptions {
        secrets_endpoint: Some(endpoint),
        ..Default::default()
    });
    let ids = w.windows(1);
    let out = app
        .handle(
            sqs_event(&[("t-1", json!({"managed_device_ids": ids}).to_string())]),
            ctx("t", 60),
        )
        .await
        .unwrap();
    assert_eq!(out, json!({"batchItemFailures": [{"itemIdentifier": "t-1"}]}));
    assert!(
        calls.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the SDK retries a throttled read"
    );
    assert!(w.sim.ledger().is_empty());
}
