//! Several instances, one app registration: the write budget on the shared
//! state table (moto's DynamoDB) holds across them, a dead instance's
//! leases come back, and a 429 seen by one pauses the others. The
//! simulator counts what reached Graph by arrival time.

use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use graph_sim::{CLIENT_ID, TENANT_ID};
use intune_attest::state::budget::{Acquired, Ask, BudgetRules, DynamoBudget, SharedBudget};
use serde_json::{Value, json};

use crate::common::{WINDOW, attestable_fleet};
use crate::lambda_handler::{AppOptions, World, ctx, world};
use intune_attest::frontdoor::lambda::LambdaApp;

#[path = "../../benches/support/chart.rs"]
mod chart;

const BUDGET: usize = 190;

fn write_key() -> String {
    format!("budget#{TENANT_ID}#{CLIENT_ID}#writes")
}

/// Runs the instances at once, each attesting its own `per_instance`
/// devices of the fleet; returns their answers.
async fn run_apps(w: &World, apps: &[LambdaApp], per_instance: usize, validate: bool) -> Vec<Value> {
    let ids = w.all_ids();
    let runs = apps.iter().enumerate().map(|(i, app)| {
        let mine = &ids[i * per_instance..(i + 1) * per_instance];
        app.handle(
            json!({"managed_device_ids": mine, "validate_device_exists": validate, "timeouts": {"invoke": "10m"}}),
            ctx(&format!("instance-{i}"), 600),
        )
    });
    join_all(runs)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| json!({"error": e.error_type, "message": e.error_message})))
        .collect()
}

/// `instances` instances on the table (or alone), sharing the fleet.
async fn run_together(w: &World, instances: usize, table: Option<&str>) -> Vec<Value> {
    let apps: Vec<_> = (0..instances)
        .map(|_| {
            w.app(AppOptions {
                state_table: table.map(str::to_owned),
                ..Default::default()
            })
        })
        .collect();
    run_apps(w, &apps, w.all_ids().len() / instances, false).await
}

#[tokio::test]
async fn instances_that_share_the_table_never_exceed_the_budget_in_any_window() {
    for instances in [2, 4] {
        let w = world(attestable_fleet(instances * 300)).await;
        let table = w.aws.state_table(&format!("budget-{instances}")).await;
        let answers = run_together(&w, instances, Some(&table)).await;
        for a in &answers {
            assert_eq!(a["summary"]["initiated"], 300, "{a}");
        }
        let most = w.sim.max_writes_in_any_window(WINDOW);
        assert!(most <= BUDGET, "{instances} instances: {most} writes in one window");
        assert_eq!(
            w.sim.stats().throttled_writes,
            0,
            "{instances} instances were throttled"
        );
        let ledger = w.sim.ledger_counts();
        assert_eq!(ledger.len(), instances * 300);
        assert!(ledger.values().all(|&n| n == 1));
    }
}

#[tokio::test]
async fn instances_pacing_alone_overrun_the_budget() {
    // The same two instances without the shared table: each paces itself
    // to the whole budget, so together they exceed it. This is what the
    // shared budget prevents.
    let w = world(attestable_fleet(800)).await;
    run_together(&w, 2, None).await;
    let most = w.sim.max_writes_in_any_window(WINDOW);
    let throttled = w.sim.stats().throttled_writes;
    assert!(
        most > BUDGET || throttled > 0,
        "{most} writes in a window, {throttled} throttled"
    );
}

#[tokio::test]
async fn an_unreadable_budget_item_stops_writes_until_it_is_valid_again() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("budget-unreadable").await;
    w.aws
        .dynamodb
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S(write_key()))
        .item("sk", AttributeValue::S("budget".into()))
        .item("version", AttributeValue::N("3".into()))
        .item("state", AttributeValue::S("{\"leases\": \"not a list".into()))
        .send()
        .await
        .unwrap();
    let budget = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let rules = BudgetRules::new(BUDGET as u32, WINDOW);
    let asked = SystemTime::now();
    let ask = |latest: SystemTime| Ask {
        n: 19,
        hold: WINDOW,
        not_before: SystemTime::now(),
        latest_start: latest,
        spare: false,
    };
    // Not read as an empty budget: nothing is granted now.
    let got = budget
        .acquire(&write_key(), ask(SystemTime::now()), rules)
        .await
        .unwrap();
    let Acquired::WaitUntil(at) = got else {
        panic!("an unreadable budget granted permits: {got:?}");
    };
    assert!(at >= asked + WINDOW * 2, "the pause outlasts any lease the item held");
    assert_eq!(budget.unreadable_reads(), 1);
    // It recovers by itself: a reservation after the pause is granted, and
    // the item is valid again.
    let got = budget
        .acquire(&write_key(), ask(SystemTime::now() + WINDOW * 4), rules)
        .await
        .unwrap();
    let Acquired::Granted(grant) = got else {
        panic!("the budget did not recover: {got:?}");
    };
    let start = std::time::UNIX_EPOCH + Duration::from_millis(grant.lease.start_ms);
    assert!(start >= asked + WINDOW * 2, "granted inside the pause");
    let item = w
        .aws
        .dynamodb
        .get_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(write_key()))
        .key("sk", AttributeValue::S("budget".into()))
        .send()
        .await
        .unwrap();
    let state: Value = serde_json::from_str(item.item().unwrap()["state"].as_s().unwrap()).unwrap();
    assert!(state["paused_until"].as_u64().unwrap() > 0, "{state}");
    assert_eq!(budget.unreadable_reads(), 1, "read once, then valid");
}

/// Writes a budget item as anyone with write access to the table could.
async fn forge_budget_item(w: &World, table: &str, version: &str, state: Value) {
    use aws_sdk_dynamodb::types::AttributeValue;
    w.aws
        .dynamodb
        .put_item()
        .table_name(table)
        .item("pk", AttributeValue::S(write_key()))
        .item("sk", AttributeValue::S("budget".into()))
        .item("version", AttributeValue::N(version.into()))
        .item("state", AttributeValue::S(state.to_string()))
        .send()
        .await
        .unwrap();
}

async fn budget_item_state(w: &World, table: &str) -> (String, Value) {
    use aws_sdk_dynamodb::types::AttributeValue;
    let item = w
        .aws
        .dynamodb
        .get_item()
        .table_name(table)
        .key("pk", AttributeValue::S(write_key()))
        .key("sk", AttributeValue::S("budget".into()))
        .send()
        .await
        .unwrap();
    let item = item.item().unwrap();
    (
        item["version"].as_n().unwrap().clone(),
        serde_json::from_str(item["state"].as_s().unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn a_forged_budget_item_pauses_no_longer_than_the_longest_retry_after_and_is_repaired() {
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("budget-forged").await;
    let budget = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let max_pause = WINDOW * 2;
    let rules = BudgetRules::new(BUDGET as u32, WINDOW).with_max_pause(max_pause);
    let ask = |latest: SystemTime| Ask {
        n: 19,
        hold: WINDOW,
        not_before: SystemTime::now(),
        latest_start: latest,
        spare: false,
    };
    let year_9999 = 253_402_300_799_000u64;
    // Paused until the year 9999, with a lease to then holding every permit.
    forge_budget_item(
        &w,
        &table,
        "7",
        json!({"leases": [{"id": "x", "n": u32::MAX, "start": 0, "until": year_9999, "holder": "f"}],
               "paused_until": year_9999, "ceiling": null, "cut_at": 0}),
    )
    .await;
    let asked = SystemTime::now();
    let got = budget.acquire(&write_key(), ask(asked), rules).await.unwrap();
    let Acquired::WaitUntil(at) = got else {
        panic!("a paused budget granted permits: {got:?}");
    };
    assert!(
        at <= asked + WINDOW * 9 + Duration::from_millis(200),
        "asked to wait {:?}, past the pause and lease bounds",
        at.duration_since(asked)
    );
    // Written back within bounds, at the next version.
    let (version, state) = budget_item_state(&w, &table).await;
    assert_eq!(version, "8");
    assert!(state["paused_until"].as_u64().unwrap() < year_9999, "{state}");
    assert!(state["leases"][0]["until"].as_u64().unwrap() < year_9999, "{state}");

    // A version no instance writes (beyond u64) is replaced by a pause,
    // not a store error every grant.
    forge_budget_item(
        &w,
        &table,
        "18446744073709551616000",
        json!({"leases": [], "paused_until": year_9999, "ceiling": null, "cut_at": 0}),
    )
    .await;
    let fresh = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let asked = SystemTime::now();
    let got = fresh.acquire(&write_key(), ask(asked), rules).await.unwrap();
    let Acquired::WaitUntil(at) = got else {
        panic!("a foreign item granted permits: {got:?}");
    };
    assert!(
        at <= asked + WINDOW * 3,
        "the unreadable item's pause: {:?}",
        at.duration_since(asked)
    );
    assert_eq!(fresh.unreadable_reads(), 1);
    let (version, state) = budget_item_state(&w, &table).await;
    assert_eq!(version, "1", "replaced at a version the service writes");
    assert!(state["paused_until"].as_u64().unwrap() < year_9999, "{state}");
    let got = fresh
        .acquire(&write_key(), ask(SystemTime::now() + WINDOW * 4), rules)
        .await
        .unwrap();
    assert!(matches!(got, Acquired::Granted(_)), "the budget recovers: {got:?}");
}

/// Writes one row of the "platform limits" part of the fault matrix (as
/// `tests/it/platform_limits.rs` does).
fn record(limit: &str, devices: usize, lost: usize, duplicated: usize) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../platform-limits");
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!(
        "{}.row",
        limit.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
    ));
    let _ = std::fs::write(file, format!("| {limit} | {devices} | {lost} | {duplicated} |\n"));
}

#[tokio::test]
async fn a_run_on_a_forged_budget_item_waits_a_bounded_pause_and_initiates_every_device_once() {
    let w = world(attestable_fleet(40)).await;
    let table = w.aws.state_table("budget-forged-run").await;
    let year_9999 = 253_402_300_799_000u64;
    // Paused until the year 9999, and 5,200 leases no budget holds.
    let leases: Vec<Value> = (0..5_200)
        .map(|i| json!({"id": format!("f{i}"), "n": 1, "start": 0, "until": year_9999, "holder": "f"}))
        .collect();
    forge_budget_item(
        &w,
        &table,
        "3",
        json!({"leases": leases, "paused_until": year_9999, "ceiling": null, "cut_at": 0}),
    )
    .await;
    let app = w.app(AppOptions {
        state_table: Some(table.clone()),
        ..Default::default()
    });
    let out = app
        .handle(
            json!({"managed_device_ids": w.all_ids(), "validate_device_exists": false, "timeouts": {"invoke": "20s"}}),
            ctx("forged-run", 60),
        )
        .await
        .unwrap();
    let ledger = w.sim.ledger_counts();
    let lost = 40usize.saturating_sub(ledger.len());
    let duplicated = ledger.values().filter(|&&n| n > 1).count();
    record(
        "shared budget item forged (paused until 9999, 5,200 leases)",
        40,
        lost,
        duplicated,
    );
    assert_eq!(out["summary"]["initiated"], 40, "{}", out["summary"]);
    assert_eq!((lost, duplicated), (0, 0));
}

#[tokio::test]
async fn a_dead_instances_leases_come_back_within_a_window() {
    let w = world(attestable_fleet(100)).await;
    let table = w.aws.state_table("budget-dead").await;
    // An instance leased the whole budget for a window and died.
    let budget = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let rules = BudgetRules::new(BUDGET as u32, WINDOW);
    let now = Ask {
        n: BUDGET as u32,
        hold: WINDOW,
        not_before: SystemTime::now(),
        latest_start: SystemTime::now(),
        spare: false,
    };
    let got = budget.acquire(&write_key(), now, rules).await.unwrap();
    assert!(matches!(got, Acquired::Granted(_)), "{got:?}");
    let started = tokio::time::Instant::now();
    let answers = run_together(&w, 1, Some(&table)).await;
    assert_eq!(answers[0]["summary"]["initiated"], 100, "{}", answers[0]);
    let first = w.sim.ledger().iter().map(|e| e.at).min().unwrap();
    let waited = first.duration_since(started);
    assert!(
        waited >= WINDOW / 2,
        "a write went out while the dead lease held the budget ({waited:?})"
    );
    assert!(waited < WINDOW * 3, "the dead lease did not come back ({waited:?})");
}

#[tokio::test]
async fn a_429_seen_by_one_instance_pauses_the_others() {
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("budget-429").await;
    let rules = BudgetRules::new(BUDGET as u32, WINDOW);
    let (a, b) = (
        DynamoBudget::new(w.aws.dynamodb.clone(), table.clone()),
        DynamoBudget::new(w.aws.dynamodb.clone(), table),
    );
    let ask = Ask {
        n: 19,
        hold: WINDOW,
        not_before: SystemTime::now(),
        latest_start: SystemTime::now() + Duration::from_secs(1),
        spare: false,
    };
    assert!(matches!(
        a.acquire(&write_key(), ask, rules).await.unwrap(),
        Acquired::Granted(_)
    ));
    let pause = SystemTime::now() + Duration::from_secs(5);
    a.throttled(&write_key(), rules, pause).await.unwrap();
    match b.acquire(&write_key(), ask, rules).await.unwrap() {
        Acquired::WaitUntil(at) => assert!(at >= pause - Duration::from_millis(5), "{at:?}"),
        other => panic!("instance B was not paused: {other:?}"),
    }
}

/// The figures of `instances` instances sharing one budget: summed writes
/// per window (mean of full windows), the most in any sliding window, 429s,
/// table requests per device, and the writes of every window. With
/// `ten_times`, the 20 s window lasts 2 s instead of 1 s.
async fn shared_run(
    instances: usize,
    per_instance: usize,
    validate: bool,
    ten_times: bool,
) -> (f64, usize, u64, f64, Vec<usize>) {
    let (window, env) = if ten_times {
        (Duration::from_secs(2), vec![("ATTEST_THROTTLE_WINDOW", "2000ms")])
    } else {
        (WINDOW, vec![])
    };
    let mut cfg = attestable_fleet(instances * per_instance);
    cfg.window = window;
    let w = world(cfg).await;
    let table = w.aws.state_table(&format!("bench-{instances}")).await;
    let budgets: Vec<std::sync::Arc<DynamoBudget>> = (0..instances)
        .map(|_| std::sync::Arc::new(DynamoBudget::new(w.aws.dynamodb.clone(), table.clone())))
        .collect();
    let apps: Vec<_> = budgets
        .iter()
        .map(|b| {
            w.app(AppOptions {
                state_table: Some(table.clone()),
                budget: Some(b.clone()),
                extra_env: env.clone(),
                ..Default::default()
            })
        })
        .collect();
    for answer in run_apps(&w, &apps, per_instance, validate).await {
        assert_eq!(answer["summary"]["initiated"], per_instance, "{answer}");
    }
    let windows: Vec<usize> = w.sim.writes_per_window(window).into_iter().filter(|&n| n > 0).collect();
    let inner = if windows.len() > 2 {
        &windows[1..windows.len() - 1]
    } else {
        &windows[..]
    };
    let mean = inner.iter().sum::<usize>() as f64 / inner.len().max(1) as f64;
    let requests: u64 = budgets.iter().map(|b| b.requests()).sum();
    (
        mean,
        w.sim.max_writes_in_any_window(window),
        w.sim.stats().throttled_writes,
        requests as f64 / (instances * per_instance) as f64,
        windows,
    )
}

/// Two tenants side by side, `instances` instances each, every instance
/// attesting its own `per_instance` devices in its tenant: per tenant, the
/// mean writes per full window, the most in any sliding window, 429s, and
/// table requests per device. With `ten_times`, the window lasts 2 s.
async fn two_tenant_run(
    instances: usize,
    per_instance: usize,
    ten_times: bool,
) -> Vec<(&'static str, f64, usize, u64, f64)> {
    use crate::tenants::{FABRIKAM_CLIENT, FABRIKAM_SECRET, options, two_tenants_with};
    let window = if ten_times { Duration::from_secs(2) } else { WINDOW };
    let mut cfg = attestable_fleet(2 * instances * per_instance);
    cfg.window = window;
    let (w, table) = two_tenants_with(cfg, &format!("bench-tenants-{ten_times}")).await;
    let ids = w.all_ids();
    let mut runs = Vec::new();
    let mut budgets = Vec::new();
    for (t, tenant) in ["contoso", "fabrikam"].into_iter().enumerate() {
        for i in 0..instances {
            let budget = std::sync::Arc::new(DynamoBudget::new(w.aws.dynamodb.clone(), table.clone()));
            budgets.push((tenant, budget.clone()));
            let mut o = options(&w, &table, FABRIKAM_SECRET, &format!("-{ten_times}-{t}-{i}")).await;
            o.budget = Some(budget);
            if ten_times {
                o.extra_env = vec![("ATTEST_THROTTLE_WINDOW", "2000ms")];
            }
            let app = w.app(o);
            let k = t * instances + i;
            let mine = ids[k * per_instance..(k + 1) * per_instance].to_vec();
            runs.push(async move {
                app.handle(
                    json!({"managed_device_ids": mine, "validate_device_exists": false,
                           "tenant": tenant, "timeouts": {"invoke": "10m"}}),
                    ctx(&format!("{tenant}-{i}"), 600),
                )
                .await
            });
        }
    }
    for answer in join_all(runs).await {
        let answer = answer.unwrap_or_else(|e| panic!("{}: {}", e.error_type, e.error_message));
        assert_eq!(answer["summary"]["initiated"], per_instance, "{answer}");
    }
    [("contoso", CLIENT_ID), ("fabrikam", FABRIKAM_CLIENT)]
        .into_iter()
        .map(|(tenant, app)| {
            let windows: Vec<usize> = w
                .sim
                .writes_per_window_of(window, Some(app))
                .into_iter()
                .filter(|&n| n > 0)
                .collect();
            let inner = if windows.len() > 2 {
                &windows[1..windows.len() - 1]
            } else {
                &windows[..]
            };
            let mean = inner.iter().sum::<usize>() as f64 / inner.len().max(1) as f64;
            let requests: u64 = budgets
                .iter()
                .filter(|(t, _)| *t == tenant)
                .map(|(_, b)| b.requests())
                .sum();
            (
                tenant,
                mean,
                w.sim.max_writes_in_any_window_of(window, Some(app)),
                w.sim.stats().throttled_writes,
                requests as f64 / (instances * per_instance) as f64,
            )
        })
        .collect()
}

/// The shared-budget scenario of BENCHMARKS.md:
/// `cargo test --test it -- --ignored --nocapture shared_budget_scenario`.
#[tokio::test]
#[ignore = "a benchmark run of a few minutes; see BENCHMARKS.md"]
async fn shared_budget_scenario() {
    println!(
        "| instances | writes per window (mean of full windows) | % of the budget | most in any sliding window | 429s | table requests per device |"
    );
    println!("|---|---|---|---|---|---|");
    let mut per_window = Vec::new();
    for instances in [1, 2, 4, 8] {
        let (mean, most, throttled, per_device, windows) = shared_run(instances, 4000 / instances, false, false).await;
        per_window.push((format!("{instances} instance(s)"), windows));
        println!(
            "| {instances} | {mean:.1} | {:.1}% | {most} | {throttled} | {per_device:.3} |",
            mean * 100.0 / BUDGET as f64
        );
        assert!(most <= BUDGET);
    }
    // The same with validation (the default): every device is read first,
    // and the reads draw on their own shared budget.
    let (mean, most, throttled, per_device, _) = shared_run(4, 1000, true, false).await;
    println!(
        "| 4, validating | {mean:.1} | {:.1}% | {most} | {throttled} | {per_device:.3} |",
        mean * 100.0 / BUDGET as f64
    );
    assert!(most <= BUDGET);
    // Eight again with the window at 2 s (x10 time): round trips weigh half
    // as much against the window.
    let (mean, most, throttled, per_device, _) = shared_run(8, 500, false, true).await;
    println!(
        "| 8, x10 time | {mean:.1} | {:.1}% | {most} | {throttled} | {per_device:.3} |",
        mean * 100.0 / BUDGET as f64
    );
    assert!(most <= BUDGET);
    use plotters::style::{BLACK, BLUE, GREEN, MAGENTA, RED, RGBColor};
    let colours = [BLUE, GREEN, MAGENTA, RED];
    let series: Vec<(&str, &[usize], RGBColor)> = per_window
        .iter()
        .zip(colours)
        .map(|((name, w), c)| (name.as_str(), w.as_slice(), c))
        .collect();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benchmarks/shared-budget.svg");
    chart::chart(
        path,
        "Writes accepted per window, instances sharing one budget (x20 time)",
        &series,
        &[
            ("Intune ceiling 200", 200, BLACK),
            ("budget 190", 190, RGBColor(150, 150, 150)),
        ],
    );
    println!("chart: {path}");
    println!();
    println!(
        "| tenant (4 instances each, side by side) | writes per window (mean of full windows) | % of its budget | most in any sliding window | 429s (both) | table requests per device |"
    );
    println!("|---|---|---|---|---|---|");
    for ten_times in [false, true] {
        for (tenant, mean, most, throttled, per_device) in two_tenant_run(4, 1000, ten_times).await {
            let scale = if ten_times { ", x10 time" } else { "" };
            println!(
                "| {tenant}{scale} | {mean:.1} | {:.1}% | {most} | {throttled} | {per_device:.3} |",
                mean * 100.0 / BUDGET as f64
            );
            assert!(most <= BUDGET);
        }
    }
}

#[tokio::test]
async fn a_full_budget_reserves_later_with_a_spare_and_a_spare_given_back_serves_another() {
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("budget-reserve").await;
    let rules = BudgetRules::new(BUDGET as u32, WINDOW);
    let (a, b, c) = (
        DynamoBudget::new(w.aws.dynamodb.clone(), table.clone()),
        DynamoBudget::new(w.aws.dynamodb.clone(), table.clone()),
        DynamoBudget::new(w.aws.dynamodb.clone(), table),
    );
    let ask = |n: u32| Ask {
        n,
        hold: WINDOW,
        not_before: SystemTime::now(),
        latest_start: SystemTime::now() + WINDOW * 5,
        spare: true,
    };
    // The whole budget, now: no spare when permits are free.
    let Acquired::Granted(first) = a.acquire(&write_key(), ask(BUDGET as u32), rules).await.unwrap() else {
        panic!("the empty budget refused");
    };
    assert!(first.spare.is_none());
    // Full: a reservation when A's lease ends, with a spare behind it.
    let Acquired::Granted(reserved) = b.acquire(&write_key(), ask(100), rules).await.unwrap() else {
        panic!("no reservation");
    };
    assert!(
        reserved.lease.start_ms >= first.lease.until_ms,
        "{reserved:?} {first:?}"
    );
    let spare = reserved.spare.clone().expect("a spare behind the reservation");
    assert!(spare.start_ms >= reserved.lease.start_ms);
    // With 100 + 100 > 190 the spare starts after the reservation ends.
    assert!(spare.start_ms >= reserved.lease.until_ms, "{spare:?}");
    // C, asking now, queues behind both...
    let Acquired::Granted(behind) = c.acquire(&write_key(), ask(90), rules).await.unwrap() else {
        panic!("no reservation for C");
    };
    assert_eq!(behind.lease.start_ms, reserved.lease.start_ms, "90 fits beside B's 100");
    // ...and once B gives its spare back, the spare's slot serves a new ask.
    b.release(&write_key(), &spare).await.unwrap();
    let Acquired::Granted(again) = c.acquire(&write_key(), ask(100), rules).await.unwrap() else {
        panic!("no reservation after the release");
    };
    assert_eq!(again.lease.start_ms, spare.start_ms, "the released slot is free again");
}

#[tokio::test]
async fn validation_reads_draw_several_batches_from_one_lease() {
    let w = world(attestable_fleet(500)).await;
    let table = w.aws.state_table("budget-reads").await;
    let budget = std::sync::Arc::new(DynamoBudget::new(w.aws.dynamodb.clone(), table.clone()));
    let app = w.app(AppOptions {
        state_table: Some(table),
        budget: Some(budget.clone()),
        ..Default::default()
    });
    let answers = run_apps(&w, &[app], 500, true).await;
    assert_eq!(answers[0]["summary"]["initiated"], 500, "{}", answers[0]);
    // One table request a call would make this ratio 1 (one instance, no
    // contention); read calls sharing a lease bring it well below.
    let batches = w.sim.stats().batches as f64;
    let ratio = budget.requests() as f64 / batches;
    assert!(
        ratio < 0.8,
        "{} table requests for {batches} $batch calls",
        budget.requests()
    );
    assert!(w.sim.max_writes_in_any_window(WINDOW) <= BUDGET);
}

/// A gateway that answers every write at once and counts the calls.
#[derive(Default)]
struct CountingGateway {
    writes: std::sync::atomic::AtomicUsize,
}

impl intune_attest::core::gateway::DeviceGateway for CountingGateway {
    async fn prepare(&self, _: tokio::time::Instant) -> Result<(), intune_attest::core::gateway::GatewayError> {
        Ok(())
    }

    async fn list_devices(
        &self,
        _: &intune_attest::core::filter::DeviceFilter,
        _: usize,
        _: tokio::time::Instant,
    ) -> Result<intune_attest::core::gateway::Listing, intune_attest::core::gateway::GatewayError> {
        Ok(Default::default())
    }

    async fn read_devices(
        &self,
        devices: &[intune_attest::core::device::DeviceRef],
        _: tokio::time::Instant,
    ) -> Vec<intune_attest::core::gateway::ItemAnswer<intune_attest::core::gateway::DeviceInfo>> {
        devices
            .iter()
            .map(|_| intune_attest::core::gateway::ItemAnswer::Ok {
                value: Default::default(),
                status: 200,
                request_id: None,
            })
            .collect()
    }

    async fn initiate(
        &self,
        devices: &[intune_attest::core::device::DeviceRef],
        _: tokio::time::Instant,
    ) -> Vec<intune_attest::core::gateway::ItemAnswer<()>> {
        self.writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        devices
            .iter()
            .map(|_| intune_attest::core::gateway::ItemAnswer::Ok {
                value: (),
                status: 204,
                request_id: None,
            })
            .collect()
    }

    fn stats(&self) -> intune_attest::core::gateway::GatewayStats {
        Default::default()
    }
}

#[tokio::test]
async fn no_lease_starts_too_late_for_its_answer_to_come_before_the_cutoff() {
    use intune_attest::core::device::{DeviceId, DeviceKind, DeviceRef};
    use intune_attest::core::gateway::{DeviceGateway, FailureKind, ItemAnswer};
    use intune_attest::service::{BudgetKey, BudgetedGateway};
    let w = world(attestable_fleet(1)).await;
    let table = w.aws.state_table("budget-cutoff").await;
    let rules = BudgetRules::new(BUDGET as u32, WINDOW);
    // Another instance holds the whole budget until `free`.
    let other = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let held = Ask {
        n: BUDGET as u32,
        hold: WINDOW,
        not_before: SystemTime::now(),
        latest_start: SystemTime::now(),
        spare: false,
    };
    let Acquired::Granted(grant) = other.acquire(&write_key(), held, rules).await.unwrap() else {
        panic!("the budget was free");
    };
    let free = std::time::UNIX_EPOCH + Duration::from_millis(grant.lease.until_ms) + rules.skew;
    let to_free = free.duration_since(SystemTime::now()).unwrap();
    let key = |kind: &str| BudgetKey {
        key: format!("budget#{TENANT_ID}#{CLIENT_ID}#{kind}"),
        rules,
    };
    let inner = std::sync::Arc::new(CountingGateway::default());
    let gateway = BudgetedGateway::shared(
        inner.clone(),
        std::sync::Arc::new(DynamoBudget::new(w.aws.dynamodb.clone(), table)),
        key("writes"),
        key("reads"),
    );
    let device = DeviceRef {
        id: DeviceId::parse("00000000-0000-4000-8000-00000000beef").unwrap(),
        kind: DeviceKind::Managed,
    };
    // The cutoff comes a moment after the budget frees up: too soon for an
    // answer to a call sent then.
    let cutoff = tokio::time::Instant::now() + to_free + WINDOW / 100;
    let answers = gateway.initiate(&[device], cutoff).await;
    assert_eq!(
        inner.writes.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a call went out at the cutoff"
    );
    assert!(
        matches!(&answers[..], [ItemAnswer::Failed(f)] if f.kind == FailureKind::NotSent),
        "the device is left untried for the next part"
    );
    // With time for an answer, the call goes once the budget is free.
    let cutoff = tokio::time::Instant::now() + WINDOW * 2;
    let answers = gateway.initiate(&[device], cutoff).await;
    assert!(matches!(&answers[..], [ItemAnswer::Ok { .. }]));
    assert_eq!(inner.writes.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// One instance attesting `devices` at x10 time (2 s windows, and Graph's
/// usual 80-250 ms latency scaled alike, as the throughput benchmark has
/// it) against a simulator counting `windows` as given: with the shared
/// state table (`shared`) or pacing alone.
/// Mean writes per full window, the most in any sliding window, 429s and
/// table requests per device.
async fn one_instance_run(devices: usize, shared: bool, windows: graph_sim::Windows) -> (f64, usize, u64, f64) {
    let window = Duration::from_secs(2);
    let mut cfg = attestable_fleet(devices);
    cfg.window = window;
    cfg.windows = windows;
    cfg.faults.latency_ms = (8, 25);
    let w = world(cfg).await;
    let table = w.aws.state_table(&format!("one-{shared}-{windows:?}")).await;
    let budget = std::sync::Arc::new(DynamoBudget::new(w.aws.dynamodb.clone(), table.clone()));
    let app = w.app(AppOptions {
        state_table: shared.then(|| table.clone()),
        budget: shared.then(|| budget.clone() as std::sync::Arc<dyn SharedBudget>),
        extra_env: vec![("ATTEST_THROTTLE_WINDOW", "2000ms")],
        ..Default::default()
    });
    for answer in run_apps(&w, std::slice::from_ref(&app), devices, false).await {
        assert_eq!(answer["summary"]["initiated"], devices, "{answer}");
    }
    let per_window: Vec<usize> = w.sim.writes_per_window(window).into_iter().filter(|&n| n > 0).collect();
    let inner = &per_window[1..per_window.len().saturating_sub(1).max(1)];
    let mean = inner.iter().sum::<usize>() as f64 / inner.len().max(1) as f64;
    (
        mean,
        w.sim.max_writes_in_any_window(window),
        w.sim.stats().throttled_writes,
        budget.requests() as f64 / devices as f64,
    )
}

/// One instance with the shared store against one pacing alone, on fixed
/// and sliding windows (the benchmark rows in BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo test --test it -- --ignored --nocapture one_instance_scenario"]
async fn one_instance_scenario() {
    println!(
        "| one instance, x10 time | windows | writes per window (mean of full windows) | % of the budget | most in any sliding window | 429s | table requests per device |"
    );
    println!("|---|---|---|---|---|---|---|");
    for windows in [graph_sim::Windows::Fixed, graph_sim::Windows::Sliding] {
        for shared in [false, true] {
            let (mean, most, throttled, per_device) = one_instance_run(3000, shared, windows).await;
            let name = if shared {
                "shared state table"
            } else {
                "in-process pacer"
            };
            println!(
                "| {name} | {windows:?} | {mean:.1} | {:.1}% | {most} | {throttled} | {per_device:.3} |",
                mean * 100.0 / BUDGET as f64
            );
            assert!(most <= BUDGET, "{most} writes in one window");
        }
    }
}
