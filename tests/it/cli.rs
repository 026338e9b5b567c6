//! The `intune-attest` binary end to end: exit codes, stdout, and that bad
//! input never reaches Graph.

use std::path::Path;
use std::process::Output;

use crate::common::{env_of, sim_config};
use graph_sim::Sim;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_intune-attest");

pub(crate) async fn invoke(sim: &Sim, extra: &[(&str, &str)], args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(env_of(sim, extra))
        .env("ATTEST_LOG", "info");
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("binary runs");
    if let Some(bytes) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(&bytes).await.expect("write stdin");
        drop(pipe);
    }
    child.wait_with_output().await.expect("binary finishes")
}

fn schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/result.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("the schema compiles")
}

/// Runs `invoke` on `payload`, keeping the result document in `result`.
pub(crate) async fn invoke_to_file(sim: &Sim, payload: Vec<u8>, result: &Path) -> Output {
    invoke(
        sim,
        &[],
        &["invoke", "--event", "-", "--result-file", result.to_str().unwrap()],
        Some(payload),
    )
    .await
}

/// Runs `report` on a result (and a status) document into `out`.
pub(crate) async fn make_report(sim: &Sim, result: &Path, status: Option<&Path>, out: &Path) -> Output {
    let mut args = vec![
        "report",
        "--result",
        result.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(status) = status {
        args.extend(["--status", status.to_str().unwrap()]);
    }
    invoke(sim, &[], &args, None).await
}

pub(crate) fn assert_valid_result(stdout: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(stdout).expect("stdout is one JSON document");
    let validator = schema();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    doc
}

#[tokio::test]
async fn every_malformed_payload_is_refused_with_exit_2_and_no_graph_call() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/payloads/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 20);
    for file in &files {
        let out = invoke(&sim, &[], &["invoke", "--event", file.to_str().unwrap()], None).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", file.display());
        assert!(out.stdout.is_empty(), "{}: wrote a result", file.display());
        assert!(stderr.contains("invalid request"), "{}: {stderr}", file.display());
        assert!(
            stderr.len() < 2000,
            "{}: error is not bounded ({} bytes)",
            file.display(),
            stderr.len()
        );
    }
    assert_eq!(
        sim.stats().http_requests,
        0,
        "a malformed payload reached the simulator"
    );
}

#[tokio::test]
async fn errors_name_the_field_and_the_value() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let out = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-"],
        Some(br#"{"managed_device_ids": ["12345678-1234-1234-1234-123456789abc", "nope"], "timeouts": {"invoke": "1d"}}"#.to_vec()),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains(r#"managed_device_ids[1]: got "nope""#), "{stderr}");
    assert!(stderr.contains(r#"timeouts.invoke: got "1d""#), "{stderr}");
}

#[tokio::test]
async fn oversize_requests_are_refused_before_any_call() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let ids: Vec<String> = (0..60_000u64)
        .map(|i| format!("12345678-1234-1234-1234-{i:012x}"))
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({"managed_device_ids": ids})).unwrap();
    let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(body)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("at most 50000 devices"), "{stderr}");
    assert_eq!(sim.stats().http_requests, 0);
}

#[tokio::test]
async fn a_successful_run_exits_0_and_prints_a_schema_valid_result() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let ids: Vec<&str> = sim
        .fleet()
        .iter()
        .filter(|d| d.is_windows() && d.tpm != Some(""))
        .take(30)
        .map(|d| d.id.as_str())
        .collect();
    let payload =
        serde_json::to_vec(&serde_json::json!({"managed_device_ids": ids, "correlation_id": "cli-ok"})).unwrap();
    let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload)).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = assert_valid_result(&out.stdout);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["summary"]["initiated"], 30);
    assert_eq!(sim.ledger().len(), 30);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run finished"), "{stderr}");
}

/// The first simulated Windows device that reports a TPM.
fn first_attestable(sim: &Sim) -> String {
    sim.fleet()
        .iter()
        .find(|d| d.is_windows() && d.tpm != Some(""))
        .unwrap()
        .id
        .clone()
}

#[tokio::test]
async fn a_token_endpoint_answering_an_absurd_lifetime_neither_panics_nor_stops_the_run() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let id = first_attestable(&sim);
    let payload = serde_json::to_vec(&serde_json::json!({"managed_device_ids": [id]})).unwrap();
    // Clamped: the run goes on with a token believed for a day at most.
    sim.configure(|c| c.token_expires_in = Some(serde_json::json!(u64::MAX)));
    let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload.clone())).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sim.ledger().len(), 1);
    // Negative or fractional: an error that names the field, no panic.
    for bad in [serde_json::json!(-5), serde_json::json!(12.5)] {
        sim.configure(|c| c.token_expires_in = Some(bad.clone()));
        let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload.clone())).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{stderr}");
        assert_ne!(out.status.code(), Some(0), "{stderr}");
        assert!(
            stderr.contains("expires_in") && stderr.contains("whole number"),
            "{bad}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(sim.ledger().len(), 1);
}

#[tokio::test]
async fn partial_failure_exits_1_unless_ignored() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let good = first_attestable(&sim);
    let missing = "00000000-dead-4bad-8bad-000000000001";
    for (ignore, code) in [(false, 1), (true, 0)] {
        let payload = serde_json::to_vec(&serde_json::json!({
            "managed_device_ids": [good, missing], "ignore_partial_failures": ignore
        }))
        .unwrap();
        let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload)).await;
        assert_eq!(out.status.code(), Some(code), "ignore={ignore}");
        let doc = assert_valid_result(&out.stdout);
        assert_eq!(doc["status"], "partially_failed");
        assert_eq!(doc["failed"], !ignore);
    }
}

#[tokio::test]
async fn dry_runs_and_the_sample_events_produce_valid_results() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let quickstart = concat!(env!("CARGO_MANIFEST_DIR"), "/events/quickstart.json");
    let mut payload: Value = serde_json::from_str(&std::fs::read_to_string(quickstart).unwrap()).unwrap();
    payload["dry_run"] = Value::Bool(true);
    let out = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-"],
        Some(serde_json::to_vec(&payload).unwrap()),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let doc = assert_valid_result(&out.stdout);
    assert!(doc["summary"]["would_initiate"].as_u64().unwrap() > 100);
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_variable_and_hiding_secrets() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let payload = br#"{"managed_device_ids": ["12345678-1234-1234-1234-123456789abc"]}"#.to_vec();
    let out = invoke(
        &sim,
        &[("GRAPH_ENDPOINT", "http://graph.example.com")],
        &["invoke", "--event", "-"],
        Some(payload.clone()),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRAPH_ENDPOINT"));

    let out = invoke(
        &sim,
        &[("AZURE_CLIENT_SECRET", "a-wrong-secret-value")],
        &["invoke", "--event", "-"],
        Some(payload),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid_client"), "{stderr}");
    assert!(!stderr.contains("a-wrong-secret-value"));
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn check_prints_the_normalised_request_without_calling_graph() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let payload =
        br#"{"managed_device_ids": ["12345678-ABCD-1234-1234-123456789ABC", "12345678-abcd-1234-1234-123456789abc"],
        "device_filter": "operatingsystem eq 'Windows'", "timeouts": {"invoke": "2h45m"}}"#
            .to_vec();
    let out = invoke(&sim, &[], &["check", "--event", "-"], Some(payload)).await;
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["devices"].as_array().unwrap().len(), 1);
    assert_eq!(doc["devices"][0]["device_id"], "12345678-abcd-1234-1234-123456789abc");
    assert_eq!(doc["device_filter"], "operatingSystem eq 'Windows'");
    assert_eq!(doc["timeout_ms"], 9_900_000);
    assert_eq!(doc["warnings"][0], "1 duplicate ID(s) removed from managed_device_ids");
    assert_eq!(sim.stats().http_requests, 0);
}

#[tokio::test]
async fn check_says_which_parts_of_the_filter_graph_applies_and_which_the_client_does() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let payload = br#"{"device_filter": "operatingSystem eq 'Windows' and model eq 'Surface Laptop 5' and (jailBroken eq 'False' or imei eq '1')"}"#.to_vec();
    let out = invoke(&sim, &[], &["check", "--event", "-"], Some(payload.clone())).await;
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let plan = &doc["device_filter_plan"];
    assert_eq!(plan["sent_to_graph"], "operatingSystem eq 'Windows'");
    assert_eq!(
        plan["client_only"],
        serde_json::json!(["model eq 'Surface Laptop 5'", "jailBroken eq 'False'", "imei eq '1'"])
    );
    assert_eq!(plan["client_checks_every_listed_device"], true);
    let table = invoke(
        &sim,
        &[],
        &["check", "--output", "table", "--event", "-"],
        Some(payload),
    )
    .await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("Graph applies ($filter)")
            && text.contains("only the client applies")
            && text.contains("model eq 'Surface Laptop 5'"),
        "{text}"
    );
    let none = invoke(
        &sim,
        &[],
        &["check", "--event", "-"],
        Some(br#"{"device_filter": "model eq 'Surface Laptop 5'"}"#.to_vec()),
    )
    .await;
    let doc: Value = serde_json::from_slice(&none.stdout).unwrap();
    assert!(doc["device_filter_plan"]["sent_to_graph"].is_null(), "{doc}");
    assert_eq!(sim.stats().http_requests, 0);
}

#[tokio::test]
async fn the_table_view_shows_status_counts_and_the_devices_that_were_not_initiated() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let good: Vec<String> = sim
        .fleet()
        .iter()
        .filter(|d| d.is_windows() && d.tpm.is_some_and(|t| !t.is_empty()))
        .take(3)
        .map(|d| d.id.clone())
        .collect();
    // 60 unknown devices: more rows than the view lists.
    let missing: Vec<String> = (0..60).map(|i| format!("00000000-dead-4bad-8bad-{i:012x}")).collect();
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": good.iter().chain(&missing).collect::<Vec<_>>(),
        "correlation_id": "table-view"
    }))
    .unwrap();
    let json = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload.clone())).await;
    let table = invoke(
        &sim,
        &[],
        &["invoke", "--output", "table", "--event", "-"],
        Some(payload),
    )
    .await;
    assert_eq!(
        table.status.code(),
        json.status.code(),
        "the same exit code in both modes"
    );
    assert_eq!(table.status.code(), Some(1));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("partially_failed (failed)") && text.contains("table-view"),
        "{text}"
    );
    assert!(text.contains("not_found"), "{text}");
    assert!(
        text.contains(&missing[0]),
        "a row for a device that was not initiated: {text}"
    );
    assert!(!text.contains(&good[0]), "initiated devices get no row: {text}");
    assert!(
        text.contains("and 10 more;") && text.contains("lists every device"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colour when stdout is not a terminal");

    let check = invoke(
        &sim,
        &[],
        &["check", "--output", "table", "--event", "-"],
        Some(br#"{"device_filter": "operatingSystem eq 'Windows'", "dry_run": true}"#.to_vec()),
    )
    .await;
    assert_eq!(check.status.code(), Some(0));
    let text = String::from_utf8(check.stdout).unwrap();
    assert!(
        text.contains("device_filter") && text.contains("operatingSystem eq 'Windows'"),
        "{text}"
    );
}

fn status_schema() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/status.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).expect("the schema compiles")
}

pub(crate) fn status_doc(stdout: &[u8]) -> Value {
    let doc: Value = serde_json::from_slice(stdout).expect("a JSON status document");
    let errors: Vec<String> = status_schema().iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}\n{doc}");
    doc
}

/// The setting that opts in to the attestation detail.
const DETAIL: &[(&str, &str)] = &[("ATTEST_ATTESTATION_DETAIL", "true")];

#[tokio::test]
async fn status_follows_the_action_to_its_verdict() {
    let mut cfg = sim_config();
    cfg.action_delay = std::time::Duration::from_millis(1500);
    cfg.serve_attestation_detail = true;
    cfg.fleet = graph_sim::FleetSpec {
        size: 200,
        non_windows: 0.0,
        virtual_machines: 0.2,
        tpm_1_2: 0.2,
        windows_no_tpm: 0.0,
        windows_unknown_tpm: 0.0,
        ..graph_sim::FleetSpec::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let pick = |f: &dyn Fn(&graph_sim::SimDevice) -> bool| sim.fleet().iter().find(|d| f(d)).unwrap().id.clone();
    let good = pick(&|d| d.model != "Virtual Machine" && d.tpm.is_some_and(|t| t.starts_with('2')));
    let vm = pick(&|d| d.model == "Virtual Machine");
    let old_tpm = pick(&|d| d.tpm.is_some_and(|t| t.starts_with("1.")));
    let untouched = pick(&|d| d.id != good && d.id != vm && d.id != old_tpm);
    // Initiated without validation, so the kinds that cannot attest are
    // tried and Intune reports on them.
    let result = std::env::temp_dir().join(format!("status-{}.json", std::process::id()));
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": [&good, &vm, &old_tpm], "validate_device_exists": false, "correlation_id": "verdict"
    }))
    .unwrap();
    let run = invoke_to_file(&sim, payload, &result).await;
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stdout));

    let early = invoke(&sim, DETAIL, &["status", "--result", result.to_str().unwrap()], None).await;
    assert_eq!(
        early.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&early.stderr)
    );
    let doc = status_doc(&early.stdout);
    assert_eq!(doc["correlation_id"], "verdict");
    assert_eq!(doc["summary"]["devices"], 3);
    for d in doc["devices"].as_array().unwrap() {
        assert!(
            ["pending", "active"].contains(&d["action_state"].as_str().unwrap()),
            "{d}"
        );
        assert_eq!(d["attestation_status"], "unknown");
    }

    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    let late = invoke(&sim, DETAIL, &["status", "--result", result.to_str().unwrap()], None).await;
    let doc = status_doc(&late.stdout);
    let of = |id: &str| {
        doc["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            of(&good)["action_state"].clone(),
            of(&good)["attestation_status"].clone()
        ),
        (json_str("done"), json_str("trusted"))
    );
    assert_eq!(of(&vm)["action_state"], "not_supported");
    assert_eq!(of(&old_tpm)["action_state"], "failed");
    assert_eq!(of(&old_tpm)["attestation_status"], "untrusted");

    // By event: a device never initiated has no action; an unknown one
    // cannot be read, which is exit 1.
    let by_event = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": [&good, &untouched, "00000000-dead-4bad-8bad-000000000009"]
    }))
    .unwrap();
    let out = invoke(&sim, DETAIL, &["status", "--event", "-"], Some(by_event)).await;
    assert_eq!(out.status.code(), Some(1));
    let doc = status_doc(&out.stdout);
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices[0]["action_state"], "done");
    let name_of = |id: &str| sim.fleet().iter().find(|d| d.id == id).unwrap().name.clone();
    assert_eq!(
        devices[0]["device_name"],
        name_of(&good).as_str(),
        "the status read selects deviceName"
    );
    assert!(devices[2].get("device_name").is_none());
    assert_eq!(devices[1]["action_state"], "none");
    assert!(devices[2]["read_error"].as_str().unwrap().contains("no such device"));
    assert_eq!(doc["summary"]["unread"], 1);

    // Recent Graph refuses the attestation detail: the read goes on without
    // it, with one warning.
    // Without the opt-in the property is not selected, and no warning.
    let plain = invoke(&sim, &[], &["status", "--result", result.to_str().unwrap()], None).await;
    let plain = status_doc(&plain.stdout);
    assert!(plain["warnings"].as_array().unwrap().is_empty(), "{plain}");
    assert_eq!(plain["summary"]["attestation_statuses"], serde_json::json!({"null": 3}));
    assert_eq!(plain["summary"]["action_states"]["done"], 1);

    sim.configure(|c| c.serve_attestation_detail = false);
    let out = invoke(
        &sim,
        DETAIL,
        &["status", "--result", result.to_str().unwrap(), "--output", "json"],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let doc = status_doc(&out.stdout);
    assert_eq!(doc["warnings"].as_array().unwrap().len(), 1, "{doc}");
    assert!(
        doc["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["attestation_status"].is_null())
    );
    assert_eq!(of(&good)["action_state"], "done");
    let table = invoke(
        &sim,
        &[],
        &["status", "--result", result.to_str().unwrap(), "--output", "table"],
        None,
    )
    .await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("not_supported") && text.contains(&vm), "{text}");
    assert!(text.contains("device name") && text.contains(&name_of(&vm)), "{text}");
    let _ = std::fs::remove_file(&result);
}

#[tokio::test]
async fn status_fails_like_invoke_when_the_credentials_are_refused_or_graph_cannot_be_reached() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let id = sim.fleet()[0].id.clone();
    let event = serde_json::to_vec(&serde_json::json!({"managed_device_ids": [&id]})).unwrap();
    // The secret's id pasted instead of its value.
    let refused = invoke(
        &sim,
        &[("AZURE_CLIENT_SECRET", "not-the-secret")],
        &["status", "--event", "-"],
        Some(event.clone()),
    )
    .await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("AADSTS7000215"), "{stderr}");
    assert!(refused.stdout.is_empty(), "no document of unread devices");

    // Graph itself unreachable (the token host answers).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let graph = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = invoke(
        &sim,
        &[("GRAPH_ENDPOINT", &graph)],
        &["status", "--event", "-"],
        Some(event),
    )
    .await;
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no device could be read"), "{stderr}");
    let doc = status_doc(&unreachable.stdout);
    let device = &doc["devices"][0];
    assert!(
        device["action_state"].is_null(),
        "an unread device is not `none`: {device}"
    );
    assert!(
        device["read_error"]
            .as_str()
            .unwrap()
            .starts_with("no answer from Graph"),
        "{device}"
    );
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema/status.schema.json")).unwrap();
    let schema = jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap();
    let errors: Vec<String> = schema.iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test]
async fn a_filter_that_matches_nothing_succeeds_and_says_so() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let payload = serde_json::to_vec(&serde_json::json!({"device_filter": "deviceName eq 'NO-SUCH-DEVICE'"})).unwrap();
    let json = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload.clone())).await;
    assert_eq!(json.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["summary"]["requested"], 0);
    assert!(doc["warnings"].to_string().contains("matched no device"), "{doc}");
    let table = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-", "--output", "table"],
        Some(payload),
    )
    .await;
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.contains("no device: none was named"), "{text}");
    assert!(text.contains("warning: device_filter matched no device"), "{text}");
    assert!(!text.contains("++\n"), "an empty table box: {text}");
}

#[tokio::test]
async fn a_timeout_too_short_for_the_devices_is_said_before_any_write() {
    let sim = Sim::start(sim_config()).await.unwrap();
    // 3,000 devices at 190 per window of the simulator's pace need about
    // 15 windows; the 60 s default covers three.
    let ids: Vec<String> = (0..3000).map(|i| format!("00000000-0000-4000-8000-{i:012}")).collect();
    let payload = serde_json::to_vec(&serde_json::json!({"managed_device_ids": ids, "dry_run": true})).unwrap();
    let env = [("ATTEST_THROTTLE_WINDOW", "20s")];
    let checked = invoke(&sim, &env, &["check", "--event", "-"], Some(payload.clone())).await;
    assert_eq!(checked.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&checked.stdout).unwrap();
    let warnings = doc["warnings"].to_string();
    assert!(warnings.contains("3000 device(s) at the write budget"), "{warnings}");
    assert!(warnings.contains("set timeouts.invoke to at least"), "{warnings}");
    // Enough time: no warning.
    let roomy =
        serde_json::to_vec(&serde_json::json!({"managed_device_ids": ids, "timeouts": {"invoke": "10m"}})).unwrap();
    let checked = invoke(&sim, &env, &["check", "--event", "-"], Some(roomy)).await;
    let doc: Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert!(!doc["warnings"].to_string().contains("write budget"), "{doc}");
    assert_eq!(sim.stats().http_requests, 0, "check calls nothing");
}

#[tokio::test]
async fn ctrl_c_stops_new_writes_and_still_writes_the_whole_result() {
    let sim = Sim::start(crate::common::attestable_fleet(600)).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": ids, "validate_device_exists": false, "timeouts": {"invoke": "10m"}
    }))
    .unwrap();
    let saved = std::env::temp_dir().join(format!("interrupted-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&saved);
    // 20 writes a window: the run would take 30 windows.
    let mut child = tokio::process::Command::new(BIN)
        .args(["invoke", "--event", "-", "--result-file", saved.to_str().unwrap()])
        .env_clear()
        .envs(env_of(&sim, &[("ATTEST_WRITE_BUDGET", "20")]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&payload).await.unwrap();
    }
    while sim.ledger().len() < 40 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SAFETY: signals the child this test started.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: no new call starts"), "{stderr}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(doc, on_disk, "the result file is written too");
    let errors: Vec<String> = schema().iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 600, "every device has its outcome");
    let initiated: std::collections::HashSet<&str> = devices
        .iter()
        .filter(|d| d["outcome"] == "initiated")
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    let ledger = sim.ledger_counts();
    assert_eq!(
        initiated.len(),
        ledger.len(),
        "what Graph accepted is what the result says"
    );
    assert!(ledger.keys().all(|id| initiated.contains(id.0.as_str())));
    assert!(initiated.len() < 600, "the run stopped early");
    assert_eq!(
        devices.iter().filter(|d| d["outcome"] == "not_attempted").count(),
        600 - initiated.len()
    );
    assert!(
        doc["warnings"].to_string().contains("interrupted"),
        "{}",
        doc["warnings"]
    );
    let _ = std::fs::remove_file(&saved);
}

#[tokio::test]
async fn devices_a_filter_selected_that_cannot_attest_are_reported_not_failures() {
    let mut cfg = sim_config();
    cfg.fleet = graph_sim::FleetSpec {
        size: 60,
        non_windows: 0.0,
        virtual_machines: 0.2,
        ..graph_sim::FleetSpec::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let vm = sim
        .fleet()
        .iter()
        .find(|d| d.model == "Virtual Machine")
        .unwrap()
        .id
        .clone();
    let by_filter = serde_json::to_vec(&serde_json::json!({"device_filter": "operatingSystem eq 'Windows'"})).unwrap();
    let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(by_filter)).await;
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", doc["summary"]);
    let errors: Vec<String> = schema().iter_errors(&doc).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let unsupported: Vec<&Value> = doc["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["outcome"] == "unsupported")
        .collect();
    assert!(!unsupported.is_empty(), "the fleet has machines that cannot attest");
    assert!(unsupported.iter().all(|d| d["selected_by_filter"] == true));
    assert_eq!(doc["status"], "succeeded");
    assert!(doc["warnings"].to_string().contains("not counted as failures"));
    // The same machine named in the payload: a failure of the run.
    let named = serde_json::to_vec(&serde_json::json!({"managed_device_ids": [&vm]})).unwrap();
    let out = invoke(&sim, &[], &["invoke", "--event", "-"], Some(named)).await;
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["devices"][0]["outcome"], "unsupported");
    assert!(doc["devices"][0].get("selected_by_filter").is_none());
}

#[tokio::test]
async fn devices_picked_on_the_command_line_and_a_retry_of_what_a_result_did_not_initiate() {
    let sim = Sim::start(crate::common::attestable_fleet(10)).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    let missing = "00000000-dead-4bad-8bad-000000000001";
    let dir = std::env::temp_dir().join(format!("cli-picks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("first.json");
    let out = invoke(
        &sim,
        &[],
        &[
            "invoke",
            "--device-id",
            &ids[0],
            "--device-id",
            &ids[1],
            "--device-id",
            missing,
            "--result-file",
            saved.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let first = assert_valid_result(&out.stdout);
    assert_eq!(first["summary"]["initiated"], 2);
    assert_eq!(first["summary"]["not_found"], 1);
    // Again, only what the first run did not initiate.
    let again = invoke(&sim, &[], &["check", "--retry-from", saved.to_str().unwrap()], None).await;
    let checked: Value = serde_json::from_slice(&again.stdout).unwrap();
    let devices = checked["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{checked}");
    assert_eq!(devices[0]["device_id"], missing);
    // A payload and picked devices together: the payload's options stay.
    let event = dir.join("event.json");
    std::fs::write(
        &event,
        serde_json::json!({"dry_run": true, "managed_device_ids": [&ids[2]]}).to_string(),
    )
    .unwrap();
    let both = invoke(
        &sim,
        &[],
        &["invoke", "--event", event.to_str().unwrap(), "--device-id", &ids[3]],
        None,
    )
    .await;
    let doc = assert_valid_result(&both.stdout);
    assert_eq!(doc["dry_run"], true);
    assert_eq!(doc["summary"]["requested"], 2);
    // Nothing at all to run: said, exit 2.
    let none = invoke(&sim, &[], &["invoke"], None).await;
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("--device-id"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_one_line_summary_for_a_ticket_and_the_devices_as_csv() {
    let sim = Sim::start(crate::common::attestable_fleet(6)).await.unwrap();
    let mut ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    ids.push("00000000-dead-4bad-8bad-000000000001".into());
    let payload =
        serde_json::to_vec(&serde_json::json!({"managed_device_ids": ids, "correlation_id": "incident-4711"})).unwrap();
    let summary = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-", "--output", "summary"],
        Some(payload.clone()),
    )
    .await;
    let line = String::from_utf8(summary.stdout).unwrap();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("incident-4711: partially_failed; 6 initiated, 1 not_found"),
        "{line}"
    );
    let csv = invoke(&sim, &[], &["invoke", "--event", "-", "--output", "csv"], Some(payload)).await;
    let text = String::from_utf8(csv.stdout).unwrap();
    let mut rows = text.lines();
    assert!(rows.next().unwrap().starts_with("device_id,device_name,kind,outcome"));
    assert_eq!(rows.count(), 7, "{text}");
    assert!(text.contains("00000000-dead-4bad-8bad-000000000001"));
    let status = invoke(
        &sim,
        &[],
        &["status", "--output", "csv", "--event", "-"],
        Some(serde_json::to_vec(&serde_json::json!({"managed_device_ids": &ids[..2]})).unwrap()),
    )
    .await;
    let text = String::from_utf8(status.stdout).unwrap();
    assert!(text.starts_with("device_id,device_name,kind,action_state"), "{text}");
    assert_eq!(text.lines().count(), 3, "{text}");
}

#[tokio::test]
async fn version_completions_and_quiet_or_verbose_logs() {
    let sim = Sim::start(crate::common::attestable_fleet(2)).await.unwrap();
    let version = invoke(&sim, &[], &["--version"], None).await;
    let text = String::from_utf8(version.stdout).unwrap();
    assert!(
        text.starts_with(&format!("intune-attest {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = invoke(&sim, &[], &["completions", shell], None).await;
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("intune-attest") && script.contains("retry-from"),
            "{shell}"
        );
    }
    let id = sim.fleet()[0].id.clone();
    // ATTEST_LOG=info (the helper's) and -q: warnings only.
    let quiet = invoke(&sim, &[], &["invoke", "-q", "--device-id", &id], None).await;
    assert_eq!(quiet.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(!stderr.contains("INFO"), "{stderr}");
    let loud = invoke(&sim, &[], &["invoke", "-v", "--device-id", &id], None).await;
    let stderr = String::from_utf8_lossy(&loud.stderr);
    assert!(stderr.contains("DEBUG"), "{stderr}");
}

#[tokio::test]
async fn fail_on_sets_the_exit_code_from_the_verdict() {
    let mut cfg = sim_config();
    cfg.action_delay = std::time::Duration::from_millis(300);
    cfg.serve_attestation_detail = true;
    cfg.fleet = graph_sim::FleetSpec {
        size: 100,
        non_windows: 0.0,
        virtual_machines: 0.0,
        tpm_1_2: 0.3,
        windows_no_tpm: 0.0,
        windows_unknown_tpm: 0.0,
        ..graph_sim::FleetSpec::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let pick = |f: &dyn Fn(&graph_sim::SimDevice) -> bool| sim.fleet().iter().find(|d| f(d)).unwrap().id.clone();
    let good = pick(&|d| d.tpm.is_some_and(|t| t.starts_with('2')));
    let old_tpm = pick(&|d| d.tpm.is_some_and(|t| t.starts_with("1.")));
    let run = |ids: Vec<String>| {
        serde_json::to_vec(
            &serde_json::json!({"managed_device_ids": ids, "validate_device_exists": false,
            "verify": {"after": "1s", "until": "20s"}}),
        )
        .unwrap()
    };
    let args = ["invoke", "--event", "-", "--fail-on", "untrusted,failed"];
    // Every initiation succeeds, but one device's verdict is untrusted.
    let mixed = invoke(&sim, DETAIL, &args, Some(run(vec![good.clone(), old_tpm.clone()]))).await;
    let stderr = String::from_utf8_lossy(&mixed.stderr);
    assert_eq!(mixed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--fail-on"), "{stderr}");
    let doc: Value = serde_json::from_slice(&mixed.stdout).unwrap();
    assert_eq!(doc["status"], "succeeded");
    // Only trusted devices: 0.
    let trusted = invoke(&sim, DETAIL, &args, Some(run(vec![good.clone()]))).await;
    assert_eq!(
        trusted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    // status reads the same way.
    let event = serde_json::to_vec(&serde_json::json!({"managed_device_ids": [&good, &old_tpm]})).unwrap();
    let status = invoke(
        &sim,
        DETAIL,
        &["status", "--event", "-", "--fail-on", "untrusted"],
        Some(event),
    )
    .await;
    assert_eq!(
        status.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    // Where Graph serves no verdict, a done device cannot be shown trusted.
    sim.configure(|c| c.serve_attestation_detail = false);
    let only_good = serde_json::to_vec(&serde_json::json!({"managed_device_ids": [&good]})).unwrap();
    let unknown = invoke(
        &sim,
        DETAIL,
        &["status", "--event", "-", "--fail-on", "untrusted"],
        Some(only_good),
    )
    .await;
    assert_eq!(unknown.status.code(), Some(1));
}

#[tokio::test]
async fn on_a_terminal_the_bar_replaces_the_progress_lines_which_stay_in_logs() {
    let sim = Sim::start(crate::common::attestable_fleet(120)).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    let dir = std::env::temp_dir().join(format!("cli-bar-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event = dir.join("event.json");
    std::fs::write(
        &event,
        serde_json::json!({"managed_device_ids": ids, "validate_device_exists": false}).to_string(),
    )
    .unwrap();
    // 20 writes a window and a progress line every 200 ms: several lines
    // in the run's six windows.
    let extra = [("ATTEST_WRITE_BUDGET", "20"), ("ATTEST_PROGRESS_INTERVAL", "200ms")];
    let logged = invoke(&sim, &extra, &["invoke", "--event", event.to_str().unwrap()], None).await;
    let piped = String::from_utf8_lossy(&logged.stderr);
    assert!(piped.matches(" progress ").count() >= 2, "{piped}");
    // The same under a terminal (script(1) gives the command a pty).
    let command = format!(
        "{BIN} invoke --event {} > {}",
        event.display(),
        dir.join("out.json").display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env_clear()
        .envs(env_of(&sim, &extra))
        .env("ATTEST_LOG", "info")
        .env("TERM", "xterm");
    let tty = cmd.output().await.unwrap();
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(0), "{screen}");
    assert!(!screen.contains(" progress "), "progress lines under the bar: {screen}");
    assert!(
        screen.contains("run finished") || screen.contains("finished"),
        "{screen}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn at_sixty_columns_the_table_output_is_records_and_no_line_wraps() {
    // A run with every kind of device that is not initiated: the device
    // table would be over 100 columns wide.
    let sim = Sim::start(sim_config()).await.unwrap();
    let mut ids: Vec<String> = sim.fleet().iter().take(300).map(|d| d.id.clone()).collect();
    ids.push("00000000-dead-4bad-8bad-000000000001".into());
    let dir = std::env::temp_dir().join(format!("cli-narrow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let event = dir.join("event.json");
    std::fs::write(&event, serde_json::json!({"managed_device_ids": ids}).to_string()).unwrap();
    let screen = |cols: u16| {
        let command = format!(
            "stty cols {cols} rows 200; {BIN} -q invoke --no-progress --output table --event {}",
            event.display()
        );
        let mut cmd = tokio::process::Command::new("script");
        cmd.args(["-qec", &command, "/dev/null"])
            .env_clear()
            .envs(env_of(&sim, &[]))
            .env("TERM", "xterm")
            .env("NO_COLOR", "1");
        cmd
    };
    for cols in [60u16, 200] {
        let out = screen(cols).output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
        assert!(text.contains("ResourceNotFound"), "{text}");
        let longest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(longest <= usize::from(cols), "{longest} columns at {cols}:\n{text}");
        let missing = "00000000-dead-4bad-8bad-000000000001";
        if cols == 60 {
            // Records: the id whole on a line of its own, its fields under it.
            assert!(text.lines().any(|l| l == missing), "{text}");
            assert!(!text.contains("│ device id"), "{text}");
        } else {
            assert!(text.contains("│ device id"), "a table where it fits: {text}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn json_str(s: &str) -> Value {
    Value::String(s.to_owned())
}

/// Replaces what differs from run to run (times, Graph's request ids, the
/// traffic figures, which follow timing) with placeholders.
fn stable(mut doc: Value) -> Value {
    for key in ["started_at", "finished_at"] {
        doc[key] = Value::from("<time>");
    }
    if let Some(stats) = doc["stats"].as_object_mut() {
        for (_, v) in stats.iter_mut() {
            *v = Value::from("<figure>");
        }
    }
    for d in doc["devices"].as_array_mut().into_iter().flatten() {
        if !d["request_id"].is_null() {
            d["request_id"] = Value::from("<request-id>");
        }
    }
    doc
}

/// Compares `doc` with the stored document `name` under tests/fixtures
/// (`UPDATE_FIXTURES=1` writes it instead, for a deliberate change).
fn assert_stored(name: &str, doc: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = serde_json::to_string_pretty(doc).unwrap() + "\n";
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let stored = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        text, stored,
        "{name} changed; if on purpose, rerun with UPDATE_FIXTURES=1"
    );
}

#[tokio::test]
async fn json_output_is_the_stored_document() {
    // The default fleet (seed 7): every kind of device, and one unknown.
    let sim = Sim::start(sim_config()).await.unwrap();
    let fleet = sim.fleet();
    let first = |f: &dyn Fn(&graph_sim::SimDevice) -> bool| fleet.iter().find(|d| f(d)).unwrap().id.clone();
    let ids = [
        first(&|d| d.is_windows() && d.tpm.is_some_and(|t| t.starts_with('2')) && d.model != "Virtual Machine"),
        first(&|d| !d.is_windows()),
        first(&|d| d.is_windows() && d.tpm == Some("")),
        "00000000-dead-4bad-8bad-000000000001".to_string(),
    ];
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": ids, "correlation_id": "stored", "timeouts": {"invoke": "2m"}
    }))
    .unwrap();
    let run = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload.clone())).await;
    assert_eq!(run.status.code(), Some(1));
    assert_stored("invoke-result.json", &stable(assert_valid_result(&run.stdout)));
    let check = invoke(&sim, &[], &["check", "--event", "-"], Some(payload)).await;
    assert_eq!(check.status.code(), Some(0));
    assert_stored("check-output.json", &serde_json::from_slice(&check.stdout).unwrap());
    assert_eq!(sim.stats().writes, 1, "check made no call; invoke wrote once");
}

#[tokio::test]
async fn invoke_with_verify_waits_for_the_verdict_and_adds_it_to_the_result() {
    let mut cfg = sim_config();
    cfg.action_delay = std::time::Duration::from_millis(1500);
    cfg.fleet = graph_sim::FleetSpec {
        size: 100,
        non_windows: 0.0,
        virtual_machines: 0.2,
        windows_no_tpm: 0.0,
        windows_unknown_tpm: 0.0,
        ..graph_sim::FleetSpec::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let good: Vec<String> = sim
        .fleet()
        .iter()
        .filter(|d| d.model != "Virtual Machine" && d.tpm.is_some_and(|t| t.starts_with('2')))
        .take(3)
        .map(|d| d.id.clone())
        .collect();
    let vm = sim
        .fleet()
        .iter()
        .find(|d| d.model == "Virtual Machine")
        .unwrap()
        .id
        .clone();
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": [&good[0], &good[1], &good[2], &vm], "validate_device_exists": false,
        "verify": {"after": "1s", "until": "20s"}, "correlation_id": "cli-verify"
    }))
    .unwrap();
    let run = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload.clone())).await;
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let doc = assert_valid_result(&run.stdout);
    let verdict = &doc["verdict"];
    assert_eq!(verdict["correlation_id"], "cli-verify");
    assert_eq!(verdict["summary"]["devices"], 4);
    assert_eq!(
        verdict["summary"]["action_states"],
        serde_json::json!({"done": 3, "not_supported": 1})
    );
    let errors: Vec<String> = status_schema().iter_errors(verdict).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains("verify: check done"), "each check is logged: {log}");
    // The table view shows the verdict after the result.
    let table = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-", "--output", "table"],
        Some(payload),
    )
    .await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("action states") && text.contains("not_supported"),
        "{text}"
    );
    // The report shows the verdict the result carries.
    let dir = std::env::temp_dir().join(format!("cli-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (result, page) = (dir.join("result.json"), dir.join("report.html"));
    std::fs::write(&result, &run.stdout).unwrap();
    let made = make_report(&sim, &result, None, &page).await;
    assert_eq!(made.status.code(), Some(0), "{}", String::from_utf8_lossy(&made.stderr));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("id=\"verdict\"") && html.contains(">not_supported<"));
    // A status document where a result is expected: said in those words.
    let status = dir.join("status.json");
    let verdict = serde_json::from_slice::<Value>(&run.stdout).unwrap()["verdict"].clone();
    std::fs::write(&status, verdict.to_string()).unwrap();
    let wrong = make_report(&sim, &status, None, &page).await;
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(stderr.contains("is a status document"), "{stderr}");
    assert!(stderr.contains("--result takes a result document"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_action_state_graph_adds_later_is_unknown_logged_once_and_checked_again() {
    let mut cfg = sim_config();
    cfg.action_delay = std::time::Duration::from_secs(60);
    cfg.future_action_state = Some("queuedForDevice".into());
    cfg.fleet = graph_sim::FleetSpec {
        size: 40,
        non_windows: 0.0,
        windows_no_tpm: 0.0,
        windows_unknown_tpm: 0.0,
        ..graph_sim::FleetSpec::default()
    };
    let sim = Sim::start(cfg).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().take(4).map(|d| d.id.clone()).collect();
    let payload = serde_json::to_vec(&serde_json::json!({
        "managed_device_ids": ids, "validate_device_exists": false,
        "verify": {"after": "1s", "until": "3s"}
    }))
    .unwrap();
    let run = invoke(&sim, &[], &["invoke", "--event", "-"], Some(payload)).await;
    assert_eq!(run.status.code(), Some(0), "{}", String::from_utf8_lossy(&run.stderr));
    let doc = assert_valid_result(&run.stdout);
    let verdict = &doc["verdict"];
    assert_eq!(verdict["summary"]["action_states"], serde_json::json!({"unknown": 4}));
    assert!(
        verdict["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["action_state"] == "unknown")
    );
    let errors: Vec<String> = status_schema().iter_errors(verdict).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        log.matches("verify: check done").count() >= 2,
        "an unknown state is not terminal: the schedule went on: {log}"
    );
    assert_eq!(
        log.matches("does not know").count(),
        1,
        "logged once for the value, over every device and check: {log}"
    );
}

#[tokio::test]
async fn report_prints_no_control_character_a_document_carries() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-controls");
    std::fs::create_dir_all(&dir).unwrap();
    let (result, status, page) = (
        dir.join("result.json"),
        dir.join("status.json"),
        dir.join("report.html"),
    );
    // Correlation ids that would clear the screen, set the terminal's
    // title and forge a line of their own.
    let hostile = |run: &str| format!("{run}\u{1b}[2J\u{1b}]0;owned\u{7}\r\nerror: forged by {run}\u{202E}");
    let result_doc = serde_json::json!({"schema_version": "1", "correlation_id": hostile("result"), "status": "succeeded",
        "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z", "summary": {"requested": 0},
        "devices": []});
    let status_doc = serde_json::json!({"correlation_id": hostile("status"), "checked_at": "2026-01-01T00:01:00Z",
        "summary": {"devices": 0}, "devices": []});
    std::fs::write(&result, result_doc.to_string()).unwrap();
    std::fs::write(&status, status_doc.to_string()).unwrap();
    let made = make_report(&sim, &result, Some(&status), &page).await;
    assert_eq!(made.status.code(), Some(0), "{}", String::from_utf8_lossy(&made.stderr));
    let stderr = String::from_utf8(made.stderr).unwrap();
    assert!(
        stderr.contains("the status document is about another run"),
        "the warning names both runs: {stderr}"
    );
    let acting: Vec<char> = stderr
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || *c == '\u{202E}')
        .collect();
    assert!(acting.is_empty(), "control characters reach the terminal: {acting:?}");
    assert!(
        !stderr.lines().any(|l| l.starts_with("error: forged")),
        "a document forged a line: {stderr}"
    );
}
