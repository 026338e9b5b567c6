//! The built binary under a Lambda Runtime API emulator on 127.0.0.1,
//! processing every sample in `events/` against the Graph simulator and
//! moto, through the real `lambda_runtime` loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::aws::{Clients, Moto};
use crate::common::sim_config;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Response};
use graph_sim::{CLIENT_ID, CLIENT_SECRET, Sim, TENANT_ID};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

type Answer = (bool, Value);

/// An event's request id, body, and headers that replace the emulator's.
type Event = (String, String, Vec<(&'static str, String)>);

#[derive(Clone)]
struct Emulator {
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>>,
}

async fn next(State(e): State<Emulator>) -> Response<Body> {
    // Never answer an idle `next` with an error: wait for an event.
    let Some((id, event, headers)) = e.events.lock().await.recv().await else {
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() + 60_000;
    let header = |name: &str, default: String| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or(default, |(_, v)| v.clone())
    };
    let mut builder = Response::builder();
    if let Some((_, context)) = headers.iter().find(|(n, _)| *n == "Lambda-Runtime-Client-Context") {
        builder = builder.header("Lambda-Runtime-Client-Context", context);
    }
    builder
        .header("Lambda-Runtime-Aws-Request-Id", id)
        .header(
            "Lambda-Runtime-Deadline-Ms",
            header("Lambda-Runtime-Deadline-Ms", deadline.to_string()),
        )
        .header(
            "Lambda-Runtime-Invoked-Function-Arn",
            "arn:aws:lambda:us-east-1:123456789012:function:intune-attest",
        )
        .header(
            "Lambda-Runtime-Trace-Id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        )
        .header("content-type", "application/json")
        .body(Body::from(event))
        .unwrap()
}

async fn answer(e: &Emulator, id: &str, ok: bool, body: &[u8]) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(tx) = e.waiting.lock().unwrap().remove(id) {
        let _ = tx.send((ok, value));
    }
}

async fn response(State(e): State<Emulator>, Path(id): Path<String>, body: axum::body::Bytes) -> &'static str {
    answer(&e, &id, true, &body).await;
    "{}"
}

async fn error(
    State(e): State<Emulator>,
    Path(id): Path<String>,
    _h: HeaderMap,
    body: axum::body::Bytes,
) -> &'static str {
    answer(&e, &id, false, &body).await;
    "{}"
}

pub(crate) struct Running {
    tx: mpsc::UnboundedSender<Event>,
    emulator: Emulator,
    pub(crate) child: tokio::process::Child,
    n: usize,
}

/// A Runtime API emulator on 127.0.0.1: the address to give the function
/// and the handles to invoke it with.
async fn runtime_api() -> (mpsc::UnboundedSender<Event>, Emulator, std::net::SocketAddr) {
    let (tx, rx) = mpsc::unbounded_channel();
    let emulator = Emulator {
        events: Arc::new(tokio::sync::Mutex::new(rx)),
        waiting: Arc::new(Mutex::new(HashMap::new())),
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", axum::routing::get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            axum::routing::post(response),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", axum::routing::post(error))
        .with_state(emulator.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (tx, emulator, api)
}

/// The built binary as a Lambda function under the emulator, with exactly
/// `env` (and the runtime's own variables), its output piped.
pub(crate) async fn function(env: Vec<(String, String)>) -> Running {
    let (tx, emulator, api) = runtime_api().await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intune-attest"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "intune-attest")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .envs(env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    Running {
        tx,
        emulator,
        child,
        n: 0,
    }
}

impl Running {
    pub(crate) async fn invoke(&mut self, event: Value) -> Answer {
        self.invoke_raw(event.to_string()).await
    }

    /// Sends an event's bytes as they are, even when they are not JSON a
    /// parser with a recursion limit accepts.
    async fn invoke_raw(&mut self, event: String) -> Answer {
        self.invoke_with(event, Vec::new())
            .await
            .expect("the function answered")
    }

    /// Sends an event with headers of its own; `None` when the function
    /// never answered it.
    async fn invoke_with(&mut self, event: String, headers: Vec<(&'static str, String)>) -> Option<Answer> {
        self.n += 1;
        let id = format!("req-{}", self.n);
        let (tx, rx) = oneshot::channel();
        self.emulator.waiting.lock().unwrap().insert(id.clone(), tx);
        self.tx.send((id, event, headers)).unwrap();
        tokio::time::timeout(Duration::from_secs(90), rx)
            .await
            .expect("the function answered or stopped")
            .ok()
    }
}

fn sample(name: &str) -> Value {
    let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn the_binary_serves_every_sample_event_through_the_runtime_api() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let moto = Moto::start().await;
    let aws = Clients::new(&moto).await;
    let secret = aws
        .secret(
            "intune-attest/app",
            &json!({"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}).to_string(),
        )
        .await;
    let webhook_secret = aws
        .secret(
            "intune-attest/webhook",
            r#"{"secrets": ["whsec-current-0123456789abcdefghijklm", "whsec-previous-0123456789abcdefghijkl"]}"#,
        )
        .await;
    let results = aws.bus_into_queue("attest-results").await;

    let (tx, emulator, api) = runtime_api().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_intune-attest"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_RUNTIME_API", api.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "intune-attest")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("GRAPH_ENDPOINT", sim.url())
        .env("AZURE_AUTHORITY_HOST", sim.url())
        .env("ATTEST_THROTTLE_WINDOW", "1s")
        .env("SECRET_ID", &secret)
        .env("WEBHOOK_SECRET_ID", &webhook_secret)
        .env("FUNCTION_URL_AUTH_TYPE", "AWS_IAM")
        .env("EVENT_BUS_NAME", "attest-results")
        .env("SWEEP_ENABLED", "true")
        .envs(moto.env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("the binary starts");
    let mut f = Running {
        tx,
        emulator,
        child,
        n: 0,
    };

    let (ok, direct) = f.invoke(sample("direct-invoke.json")).await;
    assert!(ok, "{direct}");
    assert_eq!(direct["summary"]["initiated"], 4, "{direct}");
    assert_eq!(direct["correlation_id"], "ir-2026-1142-isolate-and-attest");

    let (ok, sqs) = f.invoke(sample("sqs-batch.json")).await;
    assert!(ok);
    assert_eq!(
        sqs,
        json!({"batchItemFailures": []}),
        "the malformed message is reported and acknowledged"
    );

    let mut signed = sample("webhook-signed.json");
    let body = signed["body"].as_str().unwrap().to_owned();
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    signed["headers"]["x-intune-attest-signature"] = json!(intune_attest::service::signature::sign(
        &SecretString::from("whsec-previous-0123456789abcdefghijkl".to_string()),
        t,
        body.as_bytes()
    ));
    let (_, hook) = f.invoke(signed.clone()).await;
    assert_eq!(hook["statusCode"], 200, "{hook}");
    let (_, stale) = f.invoke(sample("webhook-signed.json")).await;
    assert_eq!(stale["statusCode"], 401);
    let (_, unsigned) = f.invoke(sample("webhook-unsigned.json")).await;
    assert_eq!(unsigned["statusCode"], 401);
    let (_, iam) = f.invoke(sample("webhook-iam.json")).await;
    assert_eq!(iam["statusCode"], 200, "{iam}");
    let iam_result: Value = serde_json::from_str(iam["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        iam_result["invocation"]["caller"],
        "arn:aws:sts::123456789012:assumed-role/IncidentResponder/responder"
    );

    let (ok, sweep) = f.invoke(sample("schedule-rule.json")).await;
    assert!(ok, "{sweep}");
    let windows = sim.fleet().iter().filter(|d| d.is_windows()).count();
    assert_eq!(sweep["summary"]["requested"], windows, "{sweep}");

    let (ok, scheduled) = f.invoke(sample("scheduler-input.json")).await;
    assert!(ok, "{scheduled}");
    assert_eq!(scheduled["correlation_id"], "scheduler-7f3c2a");

    let (ok, bad) = f.invoke(json!({"managed_device_ids": ["../../etc"]})).await;
    assert!(!ok);
    assert_eq!(bad["errorType"], "InvalidRequest", "{bad}");
    // Events the runtime's own decoding would refuse with an opaque
    // deserializer error: deep nesting, a lone surrogate.
    for raw in [
        format!("{}1{}", "[".repeat(3000), "]".repeat(3000)),
        r#"{"managed_device_ids": ["\ud800"]}"#.to_owned(),
    ] {
        let (ok, bad) = f.invoke_raw(raw).await;
        assert!(!ok);
        assert_eq!(bad["errorType"], "InvalidRequest", "{bad}");
        assert!(bad["errorMessage"].as_str().unwrap().len() < 400, "{bad}");
    }

    let (ok, failed) = f
        .invoke(json!({"managed_device_ids": ["00000000-dead-4bad-8bad-000000000001"]}))
        .await;
    assert!(!ok);
    assert_eq!(failed["errorType"], "AttestationFailed", "{failed}");

    // A local emulator's constant deadline (cargo-lambda sends 600000 ms
    // since 1970): unknown, not already past; the runs go ahead.
    let emulated = vec![("Lambda-Runtime-Deadline-Ms", "600000".to_string())];
    let (ok, direct) = f
        .invoke_with(sample("direct-invoke.json").to_string(), emulated.clone())
        .await
        .unwrap();
    assert!(ok, "{direct}");
    assert_eq!(direct["summary"]["initiated"], 4, "{direct}");
    // New messages (the same ids would be repeats, acknowledged unrun).
    let mut batch = sample("sqs-batch.json");
    for record in batch["Records"].as_array_mut().unwrap() {
        record["messageId"] = format!("{}-again", record["messageId"].as_str().unwrap()).into();
    }
    let (ok, sqs) = f.invoke_with(batch.to_string(), emulated).await.unwrap();
    assert!(ok);
    assert_eq!(sqs, json!({"batchItemFailures": []}), "nothing returned for retry");

    let events: Vec<Value> = aws
        .drain(&results)
        .await
        .iter()
        .map(|b| serde_json::from_str(b).unwrap())
        .collect();
    let kinds = |t: &str| events.iter().filter(|e| e["detail-type"] == t).count();
    // direct, 2 SQS messages, 2 webhooks, the sweep, the scheduler input,
    // the failed run, then the direct invoke and the SQS messages again.
    assert_eq!(kinds("Device Attestation Result"), 11);
    assert_eq!(kinds("Device Attestation Request Rejected"), 2);

    // A client context that is not JSON: the runtime cannot read the
    // invocation, the process ends saying why (Lambda answers the caller
    // Runtime.ExitError and starts a new instance), and it does not panic.
    f.tx.send((
        "req-unreadable".into(),
        sample("direct-invoke.json").to_string(),
        vec![("Lambda-Runtime-Client-Context", "not json".to_string())],
    ))
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), f.child.wait())
        .await
        .expect("the process went on after an invocation it could not read")
        .unwrap();
    assert!(!status.success());
    let out = f.child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not read"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Said once, not once per invocation.
    assert_eq!(stderr.matches("deadline had passed").count(), 1, "{stderr}");
    // Metrics in Embedded Metric Format, one line per run.
    let emf: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_aws").is_some())
        .collect();
    assert_eq!(emf.len(), 11, "{stdout}");
    // JSON logs that carry the request id; no secret anywhere.
    let run_lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("\"request_id\":\"req-1\""))
        .collect();
    assert!(!run_lines.is_empty(), "{stderr}");
    assert!(
        run_lines
            .iter()
            .all(|l| l.contains("\"correlation_id\":\"ir-2026-1142-isolate-and-attest\"")),
        "{run_lines:#?}"
    );
    for leaked in [
        CLIENT_SECRET,
        "whsec-current-0123456789abcdefghijklm",
        "whsec-previous-0123456789abcdefghijkl",
    ] {
        assert!(!stderr.contains(leaked) && !stdout.contains(leaked), "{leaked} leaked");
    }
}
