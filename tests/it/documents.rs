//! Every document the product writes follows its schema, over a fleet that
//! holds every kind of device: each outcome, each `reason_code`, co-managed
//! devices and a verify verdict, through the CLI and the Azure handler.

use std::collections::BTreeSet;
use std::path::Path;

use crate::cli::{invoke, status_doc};
use crate::common::sim_config;
use graph_sim::{FleetSpec, Sim, SimConfig};
use intune_attest::core::outcome::{Outcome, ReasonCode};
use serde_json::{Value, json};

fn validator(file: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schema").join(file);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the schema compiles")
}

fn assert_matches(validator: &jsonschema::Validator, doc: &Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

/// A fleet with some of every kind the simulator knows.
pub(crate) fn every_kind_fleet() -> SimConfig {
    let mut cfg = sim_config();
    cfg.action_delay = std::time::Duration::from_millis(300);
    cfg.fleet = FleetSpec {
        size: 200,
        seed: 23,
        non_windows: 0.1,
        windows_no_tpm: 0.08,
        windows_unknown_tpm: 0.08,
        tpm_1_2: 0.08,
        virtual_machines: 0.08,
        cloud_pcs: 0.08,
        old_builds: 0.08,
        not_mdm: 0.06,
        servers: 0.06,
        unlisted_builds: 0.06,
        comanaged: 0.3,
    };
    cfg
}

fn outcomes_and_codes(doc: &Value, outcomes: &mut BTreeSet<String>, codes: &mut BTreeSet<String>) {
    for d in doc["devices"].as_array().into_iter().flatten() {
        outcomes.extend(d["outcome"].as_str().map(str::to_owned));
        codes.extend(d["reason_code"].as_str().map(str::to_owned));
    }
}

#[tokio::test]
async fn every_document_over_a_fleet_of_every_kind_matches_its_schema() {
    let result_schema = validator("result.schema.json");
    let status_schema = validator("status.schema.json");
    let sim = Sim::start(every_kind_fleet()).await.unwrap();
    assert!(
        sim.fleet().iter().any(|d| d.comanaged),
        "the fleet has co-managed devices"
    );
    let (mut outcomes, mut codes) = (BTreeSet::new(), BTreeSet::new());
    let mut ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    ids.push("00000000-dead-4bad-8bad-0000000000aa".into());
    let dir = std::env::temp_dir().join(format!("documents-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let result_file = dir.join("result.json");

    // The whole fleet, validated, with a verify verdict.
    let payload = json!({
        "managed_device_ids": ids, "correlation_id": "every-kind",
        "verify": {"after": "1s", "until": "30s"}, "timeouts": {"invoke": "5m"}
    });
    let run = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-", "--result-file", result_file.to_str().unwrap()],
        Some(serde_json::to_vec(&payload).unwrap()),
    )
    .await;
    let doc: Value = serde_json::from_slice(&run.stdout).expect("a result document");
    assert_matches(&result_schema, &doc, "the result");
    assert!(doc["verdict"].is_object(), "a verdict: {doc}");
    assert_matches(&status_schema, &doc["verdict"], "the verdict");
    outcomes_and_codes(&doc, &mut outcomes, &mut codes);
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&result_file).unwrap()).unwrap();
    assert_matches(&result_schema, &stored, "the stored result");

    // The status read of that result.
    let status = invoke(&sim, &[], &["status", "--result", result_file.to_str().unwrap()], None).await;
    let status = status_doc(&status.stdout);
    assert!(status["summary"]["devices"].as_u64().unwrap() > 0);

    // A dry run, devices tried without validation (Graph refuses the
    // ones that are not Windows), and a run whose writes are refused.
    let mac = sim.fleet().iter().find(|d| !d.is_windows()).unwrap().id.clone();
    let good: Vec<String> = sim
        .fleet()
        .iter()
        .filter(|d| d.is_windows() && d.tpm.is_some_and(|t| t.starts_with('2')))
        .map(|d| d.id.clone())
        .collect();
    let runs = [
        json!({"managed_device_ids": &good[..3], "dry_run": true}),
        json!({"managed_device_ids": [&mac], "validate_device_exists": false}),
    ];
    for payload in runs {
        let out = invoke(
            &sim,
            &[],
            &["invoke", "--event", "-"],
            Some(serde_json::to_vec(&payload).unwrap()),
        )
        .await;
        let doc: Value = serde_json::from_slice(&out.stdout).expect("a result document");
        assert_matches(&result_schema, &doc, &payload.to_string());
        outcomes_and_codes(&doc, &mut outcomes, &mut codes);
    }
    sim.configure(|c| c.apps.iter_mut().for_each(|a| a.can_write = false));
    let out = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-"],
        Some(serde_json::to_vec(&json!({"managed_device_ids": &good[3..5]})).unwrap()),
    )
    .await;
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a result document");
    assert_matches(&result_schema, &doc, "a forbidden run");
    outcomes_and_codes(&doc, &mut outcomes, &mut codes);
    sim.configure(|c| c.apps.iter_mut().for_each(|a| a.can_write = true));

    // Throttling that outlasts a short run: throttled and untried devices.
    sim.set_faults(graph_sim::Faults {
        batch_429: 1.0,
        ..Default::default()
    });
    let out = invoke(
        &sim,
        &[],
        &["invoke", "--event", "-"],
        Some(serde_json::to_vec(&json!({"managed_device_ids": &good[5..65], "timeouts": {"invoke": "4s"}})).unwrap()),
    )
    .await;
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a result document");
    assert_matches(&result_schema, &doc, "a throttled run");
    outcomes_and_codes(&doc, &mut outcomes, &mut codes);
    sim.set_faults(graph_sim::Faults::default());

    // The Azure handler's output binding carries the same document.
    let handler = crate::azure_handler::start(&sim, &[]).await;
    let envelope = json!({"Data": {"message": {"managed_device_ids": &ids[..40]}}, "Metadata": {"Id": "every-kind", "DequeueCount": 1}});
    let (code, out) = crate::azure_handler::post(&handler, "attest-queue", envelope).await;
    assert_eq!(code, 200, "{out}");
    let doc: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    assert_matches(&result_schema, &doc, "the Azure queue output");
    outcomes_and_codes(&doc, &mut outcomes, &mut codes);

    // Every outcome a CLI or Azure run can give (`continued` needs a work
    // queue: the Lambda tests check it) and every reason code was written.
    for o in Outcome::ALL.iter().filter(|o| **o != Outcome::Continued) {
        assert!(
            outcomes.contains(o.as_str()),
            "no {} in any document: {outcomes:?}",
            o.as_str()
        );
    }
    for c in ReasonCode::ALL {
        assert!(
            codes.contains(c.as_str()),
            "no {} in any document: {codes:?}",
            c.as_str()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
