//! The fault matrix: the engine against the simulator under each fault, one
//! at a time and mixed, checking the same invariants every time: every
//! requested device has exactly one outcome; a device is in the simulator's
//! ledger if and only if it was initiated, except where an answer was lost,
//! which the result then says; nothing outside the request is touched; the
//! run ends before its deadline. The table is written to
//! `target/fault-matrix.md` (and printed by `scripts/test`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::{harness_with, sim_config};
use graph_sim::{Faults, FleetSpec, RetryAfterForm, SimConfig};
use intune_attest::core::device::DeviceKind;
use intune_attest::core::outcome::{Outcome, RunResult};
use serde_json::json;

struct Case {
    fault: &'static str,
    sim: fn(&mut SimConfig),
    env: &'static [(&'static str, &'static str)],
}

#[derive(Default)]
struct Row {
    runs: usize,
    devices: usize,
    lost: usize,
    duplicated: usize,
    wrong: usize,
    not_initiated: usize,
}

fn quiet() -> Faults {
    Faults {
        latency_ms: (1, 6),
        ..Faults::default()
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            fault: "none",
            sim: |_| {},
            env: &[],
        },
        Case {
            fault: "429 storm, Retry-After integer",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 40;
                c.retry_after = RetryAfterForm::Integer
            },
            env: &[],
        },
        Case {
            fault: "429 storm, Retry-After decimal",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 40;
                c.retry_after = RetryAfterForm::Decimal
            },
            env: &[],
        },
        Case {
            fault: "429 storm, Retry-After HTTP-date",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 40;
                c.retry_after = RetryAfterForm::HttpDate
            },
            env: &[],
        },
        Case {
            fault: "429 storm, Retry-After missing",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 40;
                c.retry_after = RetryAfterForm::Missing
            },
            env: &[],
        },
        Case {
            fault: "429 storm, Retry-After absurd (a day)",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 40;
                c.retry_after = RetryAfterForm::Absurd
            },
            env: &[],
        },
        Case {
            fault: "429 storm, Retry-After always 1",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 40;
                c.retry_after = RetryAfterForm::AlwaysOne
            },
            env: &[],
        },
        Case {
            fault: "429 on whole batches",
            sim: |c| {
                c.faults.batch_429 = 0.3;
                c.retry_after = RetryAfterForm::Rotate
            },
            env: &[],
        },
        Case {
            fault: "5xx on batch items",
            sim: |c| c.faults.item_5xx = 0.25,
            env: &[],
        },
        Case {
            fault: "500/502/503/504 on whole batches",
            sim: |c| c.faults.batch_5xx = 0.25,
            env: &[],
        },
        Case {
            fault: "424 on whole batches",
            sim: |c| c.faults.batch_424 = 0.25,
            env: &[],
        },
        Case {
            fault: "connection reset after Graph acted",
            sim: |c| c.faults.drop_after_accept = 0.2,
            env: &[],
        },
        Case {
            fault: "no answer at all (timeouts)",
            sim: |c| c.faults.hang = 0.1,
            env: &[("ATTEST_REQUEST_TIMEOUT", "250ms")],
        },
        Case {
            fault: "truncated, non-JSON batch answer",
            sim: |c| c.faults.truncate = 0.2,
            env: &[],
        },
        Case {
            fault: "batch answer missing an item",
            sim: |c| c.faults.missing_item = 0.25,
            env: &[],
        },
        Case {
            fault: "batch answer with an id twice",
            sim: |c| c.faults.duplicate_item = 0.25,
            env: &[],
        },
        Case {
            fault: "token expires mid-run",
            sim: |c| c.token_lifetime = Duration::from_secs(1),
            env: &[("ATTEST_WRITE_BUDGET", "60")],
        },
        Case {
            fault: "token endpoint slow",
            sim: |c| c.faults.token_delay_ms = 400,
            env: &[],
        },
        Case {
            fault: "all of the above, mixed",
            sim: |c| {
                c.limits.as_mut().unwrap().app_writes = 60;
                c.retry_after = RetryAfterForm::Rotate;
                c.token_lifetime = Duration::from_secs(2);
                c.faults = Faults {
                    latency_ms: (1, 6),
                    item_5xx: 0.08,
                    batch_5xx: 0.05,
                    batch_424: 0.03,
                    batch_429: 0.05,
                    drop_after_accept: 0.05,
                    hang: 0.03,
                    truncate: 0.05,
                    missing_item: 0.05,
                    duplicate_item: 0.05,
                    ..Faults::default()
                };
            },
            env: &[("ATTEST_REQUEST_TIMEOUT", "250ms")],
        },
    ]
}

fn kind(k: DeviceKind) -> &'static str {
    match k {
        DeviceKind::Managed => "managed",
        DeviceKind::Comanaged => "comanaged",
    }
}

/// Scores one run against the ledger.
fn score(
    row: &mut Row,
    requested: &[(String, &'static str)],
    result: &RunResult,
    ledger: &HashMap<(String, &'static str), usize>,
) {
    row.runs += 1;
    row.devices += requested.len();
    let mut outcomes: HashMap<(String, &'static str), usize> = HashMap::new();
    for d in &result.devices {
        *outcomes.entry((d.device_id.to_string(), kind(d.kind))).or_insert(0) += 1;
    }
    let wanted: HashSet<_> = requested.iter().cloned().collect();
    row.lost += wanted.iter().filter(|k| outcomes.get(*k) != Some(&1)).count();
    row.lost += outcomes.keys().filter(|k| !wanted.contains(*k)).count();
    row.wrong += ledger.keys().filter(|k| !wanted.contains(*k)).count();
    for d in &result.devices {
        let n = ledger
            .get(&(d.device_id.to_string(), kind(d.kind)))
            .copied()
            .unwrap_or(0) as u32;
        let initiated = d.outcome == Outcome::Initiated;
        if initiated && n == 0 || !initiated && n > d.lost_answers {
            row.wrong += 1;
        }
        if n > 1 + d.lost_answers {
            row.duplicated += 1;
        }
        if !initiated {
            row.not_initiated += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_keeps_every_device_accounted_for() {
    let mut table = String::from(
        "| fault | runs | devices | lost | duplicated | wrong outcome | not initiated |\n|---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for case in cases() {
        let mut row = Row::default();
        for seed in [3u64, 8] {
            let mut cfg = SimConfig {
                fleet: FleetSpec {
                    size: 100,
                    non_windows: 0.0,
                    windows_no_tpm: 0.0,
                    comanaged: 0.3,
                    seed,
                    ..FleetSpec::default()
                },
                faults: quiet(),
                seed,
                ..sim_config()
            };
            (case.sim)(&mut cfg);
            let h = harness_with(cfg, case.env, |e| e.backoff.attempts = 12).await;
            let managed: Vec<String> = h.ids(|_| true);
            let comanaged: Vec<String> = h.ids(|d| d.comanaged);
            let requested: Vec<(String, &'static str)> = managed
                .iter()
                .map(|id| (id.clone(), "managed"))
                .chain(comanaged.iter().map(|id| (id.clone(), "comanaged")))
                .collect();
            let started = Instant::now();
            let result = h
                .run(json!({"managed_device_ids": managed, "comanaged_device_ids": comanaged, "timeouts": {"invoke": "60s"}}))
                .await
                .expect("the run produces a result");
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}: the run overran its deadline",
                case.fault
            );
            score(&mut row, &requested, &result, &h.sim.ledger_counts());
        }
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            case.fault, row.runs, row.devices, row.lost, row.duplicated, row.wrong, row.not_initiated
        ));
        if row.lost + row.duplicated + row.wrong + row.not_initiated > 0 {
            failures.push(case.fault);
        }
    }
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../fault-matrix.md");
    let _ = std::fs::write(&out, &table);
    println!("{table}");
    assert!(
        failures.is_empty(),
        "faults with lost, duplicated, wrong or unfinished devices: {failures:?}\n{table}"
    );
}
