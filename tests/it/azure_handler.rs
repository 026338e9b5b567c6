//! The built binary as an Azure Functions custom handler, driven over HTTP
//! with the request shapes the Functions host sends, against the simulator.

use std::time::Duration;

use crate::common::{env_of, sim_config, windows_fleet};
use graph_sim::Sim;
use secrecy::SecretString;
use serde_json::{Value, json};

pub(crate) struct Handler {
    child: tokio::process::Child,
    url: String,
}

impl Drop for Handler {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub(crate) async fn start(sim: &Sim, extra: &[(&str, &str)]) -> Handler {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_intune-attest"))
        .env_clear()
        .envs(env_of(sim, extra))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("FUNCTIONS_WORKER_RUNTIME", "Custom")
        .env(
            "ATTEST_WEBHOOK_SECRETS",
            "whsec-a-0123456789abcdefghijklmnopqrst, whsec-b-0123456789abcdefghijklmnopqrst",
        )
        .env("ATTEST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("the handler starts");
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Handler {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the handler did not listen");
}

pub(crate) async fn post(h: &Handler, function: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/{function}", h.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn windows(sim: &Sim, n: usize) -> Vec<String> {
    sim.fleet()
        .iter()
        .filter(|d| d.is_windows() && d.tpm != Some(""))
        .take(n)
        .map(|d| d.id.clone())
        .collect()
}

#[tokio::test]
async fn queue_messages_in_every_shape_the_host_sends_are_run() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let h = start(&sim, &[]).await;
    let ids = windows(&sim, 3);
    let payloads = [
        json!({"managed_device_ids": [ids[0]]}),
        Value::String(json!({"managed_device_ids": [ids[1]]}).to_string()),
        Value::String(Value::String(json!({"managed_device_ids": [ids[2]]}).to_string()).to_string()),
    ];
    for (i, message) in payloads.into_iter().enumerate() {
        let envelope = json!({"Data": {"message": message}, "Metadata": {"Id": format!("msg-{i}"), "DequeueCount": 1}});
        let (status, out) = post(&h, "attest-queue", envelope).await;
        assert_eq!(status, 200, "{out}");
        let result: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
        assert_eq!(result["summary"]["initiated"], 1, "{result}");
        assert_eq!(result["invocation"]["trigger"], "azure-queue");
        assert!(out["Logs"].as_array().is_some());
    }
    assert_eq!(sim.ledger().len(), 3);

    let (status, out) = post(
        &h,
        "attest-queue",
        json!({"Data": {"message": "{\"managed_device_ids\": [\"bad\"]}"}, "Metadata": {}}),
    )
    .await;
    assert_eq!(status, 200, "a malformed message is acknowledged");
    let rejection: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(rejection["error_type"], "InvalidRequest");

    // A check or a later part the service did not seal: refused once, not
    // retried to the poison queue.
    for forged in [
        json!({"managed_device_ids": [ids[0]], "verify": {"after": "1s", "until": "1h"},
               "check": {"number": 9999, "due_at": "2026-01-01T00:00:00.000Z", "until_at": "9999-12-31T00:00:00.000Z"}}),
        json!({"managed_device_ids": [ids[0]], "part": 5}),
    ] {
        let envelope =
            json!({"Data": {"message": forged.to_string()}, "Metadata": {"Id": "forged", "DequeueCount": 1}});
        let (status, out) = post(&h, "attest-queue", envelope).await;
        assert_eq!(status, 200, "{out}");
        let rejection: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
        assert_eq!(rejection["error_type"], "InvalidRequest", "{rejection}");
    }
    assert_eq!(sim.ledger().len(), 3, "nothing more ran");
}

#[tokio::test]
async fn the_http_function_needs_a_signature_and_answers_through_its_binding() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let h = start(&sim, &[]).await;
    let body = json!({"managed_device_ids": windows(&sim, 2)}).to_string();
    let request = |headers: Value| {
        json!({"Data": {"req": {"Url": "https://fn.example/api/attest-http", "Method": "POST", "Query": {},
            "Headers": headers, "Params": {}, "Body": body}}, "Metadata": {}})
    };
    let (status, out) = post(
        &h,
        "attest-http",
        request(json!({"Content-Type": ["application/json"]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(out["Outputs"]["res"]["statusCode"], 401);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sig = intune_attest::service::signature::sign(
        &SecretString::from("whsec-b-0123456789abcdefghijklmnopqrst".to_string()),
        t,
        body.as_bytes(),
    );
    let (_, out) = post(&h, "attest-http", request(json!({"X-Intune-Attest-Signature": [sig]}))).await;
    assert_eq!(out["Outputs"]["res"]["statusCode"], 200, "{out}");
    let result: Value = serde_json::from_str(out["Outputs"]["res"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(result["summary"]["initiated"], 2);
    assert!(
        out["Outputs"]["result"].is_string(),
        "the result also goes to the output binding"
    );
    // The same signed request captured and replayed: refused, and no
    // device is initiated a second time.
    let (_, replay) = post(&h, "attest-http", request(json!({"X-Intune-Attest-Signature": [sig]}))).await;
    assert_eq!(replay["Outputs"]["res"]["statusCode"], 401, "{replay}");
    assert!(replay["Outputs"].get("result").is_none());
    let counts = sim.ledger_counts();
    assert_eq!(counts.len(), 2);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
}

#[tokio::test]
async fn the_timer_sweeps_the_fleet_where_sweeps_are_enabled() {
    let sim = Sim::start(sim_config()).await.unwrap();
    // Not enabled: the tick is refused and nothing is read.
    let off = start(&sim, &[]).await;
    let tick = json!({"Data": {"timer": {"IsPastDue": false}}, "Metadata": {}});
    let (_, out) = post(&off, "attest-sweep", tick).await;
    assert!(out.to_string().contains("SWEEP_ENABLED"), "{out}");
    assert_eq!(sim.stats().http_requests, 0);
    let h = start(&sim, &[("SWEEP_ENABLED", "true")]).await;
    let (status, out) = post(
        &h,
        "attest-sweep",
        json!({"Data": {"timer": {"IsPastDue": false}}, "Metadata": {}}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    let result: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(
        result["summary"]["requested"],
        sim.fleet().iter().filter(|d| d.is_windows()).count()
    );
}

#[tokio::test]
async fn a_failure_that_can_pass_fails_the_invocation_so_the_host_retries() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let h = start(&sim, &[("AZURE_CLIENT_SECRET", "not-the-secret")]).await;
    let envelope =
        json!({"Data": {"message": json!({"managed_device_ids": windows(&sim, 1)}).to_string()}, "Metadata": {}});
    let (status, out) = post(&h, "attest-queue", envelope).await;
    assert_eq!(status, 500, "{out}");
    assert!(out["Logs"][0].as_str().unwrap().starts_with("CredentialsUnavailable"));
    assert!(!out.to_string().contains("not-the-secret"));
}

#[tokio::test]
async fn the_hosts_function_timeout_caps_the_run() {
    let cfg = windows_fleet(300);
    let sim = Sim::start(cfg).await.unwrap();
    let h = start(
        &sim,
        &[
            ("AzureFunctionsJobHost__functionTimeout", "00:00:04"),
            ("ATTEST_WRITE_BUDGET", "20"),
        ],
    )
    .await;
    let ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    let message = json!({"managed_device_ids": ids, "validate_device_exists": false, "timeouts": {"invoke": "10m"}});
    let envelope = json!({"Data": {"message": message.to_string()}, "Metadata": {"Id": "m-timeout"}});
    let (status, out) = post(&h, "attest-queue", envelope).await;
    assert_eq!(status, 200, "{out}");
    let result: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    let initiated = result["summary"]["initiated"].as_u64().unwrap();
    let untried = result["summary"]["not_attempted"].as_u64().unwrap();
    assert!(initiated > 0 && untried > 0, "{}", result["summary"]);
    assert_eq!(initiated + untried, 300);
}

#[tokio::test]
async fn a_webhook_secret_setting_without_a_usable_secret_stops_the_handler() {
    let sim = Sim::start(sim_config()).await.unwrap();
    for setting in [" , ", "too-short"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_intune-attest"))
            .env_clear()
            .envs(env_of(&sim, &[]))
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", "1")
            .env("ATTEST_WEBHOOK_SECRETS", setting)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{setting:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ATTEST_WEBHOOK_SECRETS"), "{stderr}");
        assert!(!stderr.contains("too-short"), "the value is never echoed");
    }
}

#[tokio::test]
async fn requests_whose_host_went_away_give_back_their_budget_and_their_claims() {
    let mut cfg = sim_config();
    cfg.fleet.size = 900;
    let sim = Sim::start(cfg).await.unwrap();
    let h = start(&sim, &[]).await;
    let ids = windows(&sim, 471);
    assert_eq!(ids.len(), 471);
    let message = |id: String, devices: &[String]| {
        let payload = json!({"managed_device_ids": devices, "validate_device_exists": false});
        json!({"Data": {"message": payload.to_string()}, "Metadata": {"Id": id, "DequeueCount": 1}})
    };
    // A first run signs in; then answers slow down, so every call is in
    // flight when its caller goes away.
    let (status, _) = post(&h, "attest-queue", message("warm".into(), &ids[470..])).await;
    assert_eq!(status, 200);
    sim.set_faults(graph_sim::Faults {
        latency_ms: (2500, 2600),
        ..Default::default()
    });
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let abandoned = ids[..320].chunks(40).enumerate().map(|(i, chunk)| {
        let request = impatient
            .post(format!("{}/attest-queue", h.url))
            .json(&message(format!("gone-{i}"), chunk));
        async move { request.send().await.is_err() }
    });
    let gone = futures_util::future::join_all(abandoned).await;
    assert!(gone.iter().all(|g| *g), "every impatient caller went away");
    sim.set_faults(graph_sim::Faults {
        latency_ms: (2, 15),
        ..Default::default()
    });
    // A normal request after them has the whole budget (a window later):
    // the abandoned calls held all of it.
    let (status, out) = post(&h, "attest-queue", message("normal".into(), &ids[320..470])).await;
    assert_eq!(status, 200, "{out}");
    let result: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["summary"]["initiated"], 150, "{}", result["summary"]);
    // The host's retry of an abandoned message runs.
    let (status, out) = post(&h, "attest-queue", message("gone-0".into(), &ids[..40])).await;
    assert_eq!(status, 200, "{out}");
    let result: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["summary"]["initiated"], 40, "{}", result["summary"]);
}
