//! The engine and Graph client over real HTTP against the simulator.

use std::time::Duration;

use crate::common::*;
use graph_sim::{Faults, FleetSpec, RetryAfterForm, SimConfig};
use intune_attest::core::device::DeviceKind;
use intune_attest::core::engine::RunError;
use intune_attest::core::outcome::{Outcome, RunStatus};
use serde_json::json;

const MISSING: &str = "00000000-dead-4bad-8bad-000000000001";

#[tokio::test]
async fn mixed_fleet_gets_one_precise_outcome_per_device_on_both_endpoints() {
    let h = harness(sim_config()).await;
    let windows = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let no_tpm = h.ids(|d| d.is_windows() && d.tpm == Some(""));
    let mac = h.ids(|d| !d.is_windows());
    let comanaged = h.ids(|d| d.comanaged);
    let mut managed: Vec<String> = windows.iter().take(60).cloned().collect();
    managed.push(no_tpm[0].clone());
    managed.push(mac[0].to_uppercase());
    managed.push(MISSING.into());
    let result = h
        .run(json!({"managed_device_ids": managed, "comanaged_device_ids": [comanaged[0]], "correlation_id": "t-1"}))
        .await
        .unwrap();
    h.assert_ledger_agrees(&result);
    let o = outcomes(&result);
    assert_eq!(o[&Outcome::Initiated], 61, "{o:?}");
    assert_eq!(o[&Outcome::Unsupported], 2);
    assert_eq!(o[&Outcome::NotFound], 1);
    assert_eq!(result.status, RunStatus::PartiallyFailed);
    assert!(result.failed, "ignore_partial_failures defaults to false");
    assert_eq!(result.correlation_id, "t-1");
    let reasons: Vec<_> = result.devices.iter().filter_map(|d| d.reason.clone()).collect();
    assert!(reasons.iter().any(|r| r == "no TPM reported"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("not Windows")), "{reasons:?}");
    let co = result.devices.iter().find(|d| d.kind == DeviceKind::Comanaged).unwrap();
    assert_eq!(co.outcome, Outcome::Initiated);
    assert!(h.sim.ledger_counts().contains_key(&(comanaged[0].clone(), "comanaged")));
    let missing = result.devices.iter().find(|d| d.device_id.as_str() == MISSING).unwrap();
    assert_eq!(
        (missing.http_status, missing.error_code.as_deref()),
        (Some(404), Some("ResourceNotFound"))
    );
    assert!(missing.request_id.is_some());
    // Batches were full: reads and writes of 64 devices in a handful of calls.
    assert!(result.stats.http_requests <= 12, "{:?}", result.stats);
}

#[tokio::test]
async fn without_validation_graph_decides_and_the_comanaged_route_is_separate() {
    let h = harness(sim_config()).await;
    let plain = h.ids(|d| d.is_windows() && !d.comanaged);
    let mac = h.ids(|d| !d.is_windows());
    let result = h
        .run(json!({
            "managed_device_ids": [plain[0], mac[0], MISSING],
            "comanaged_device_ids": [plain[0]],
            "validate_device_exists": false,
            "ignore_partial_failures": true
        }))
        .await
        .unwrap();
    h.assert_ledger_agrees(&result);
    let by = |id: &str, kind| {
        result
            .devices
            .iter()
            .find(|d| d.device_id.as_str() == id && d.kind == kind)
            .unwrap()
    };
    assert_eq!(by(&plain[0], DeviceKind::Managed).outcome, Outcome::Initiated);
    assert_eq!(by(&plain[0], DeviceKind::Comanaged).outcome, Outcome::NotFound);
    let m = by(&mac[0], DeviceKind::Managed);
    assert_eq!((m.outcome, m.http_status), (Outcome::Failed, Some(400)));
    assert_eq!(by(MISSING, DeviceKind::Managed).outcome, Outcome::NotFound);
    assert!(!result.failed);
    assert_eq!(result.warnings.len(), 2, "{:?}", result.warnings);
}

#[tokio::test]
async fn item_and_batch_faults_are_retried_until_every_device_is_initiated() {
    let mut cfg = sim_config();
    cfg.seed = 11;
    cfg.faults = Faults {
        latency_ms: (1, 10),
        item_5xx: 0.15,
        batch_5xx: 0.1,
        batch_424: 0.05,
        ..Faults::default()
    };
    let h = harness_with(cfg, &[], |e| e.backoff.attempts = 12).await;
    let ids = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let result = h.run(json!({"managed_device_ids": ids})).await.unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, ids.len(), "{:?}", result.summary);
    assert!(
        result.devices.iter().any(|d| d.attempts > 2),
        "some device must have been retried"
    );
    assert!(h.sim.stats().batches as usize > ids.len() / 19 * 2);
}

async fn throttled_run(form: RetryAfterForm) {
    let mut cfg = sim_config();
    cfg.retry_after = form;
    // The tenant is shared: the real ceiling is far below the configured budget.
    cfg.limits.as_mut().unwrap().app_writes = 60;
    let h = harness_with(cfg, &[], |e| e.backoff.attempts = 12).await;
    let ids = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let ids: Vec<_> = ids.into_iter().take(150).collect();
    let result = h
        .run(json!({"managed_device_ids": ids, "validate_device_exists": false, "timeouts": {"invoke": "60s"}}))
        .await
        .unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, 150, "{form:?}: {:?}", result.summary);
    assert!(
        result.stats.throttled_responses > 0,
        "{form:?}: the simulator never throttled"
    );
    assert_eq!(result.stats.throttled_responses, h.sim.stats().throttled);
    // Adaptive pacing keeps the 429s a small share of the write items.
    let writes = h.sim.stats().writes as f64;
    assert!(
        (h.sim.stats().throttled_writes as f64) < writes * 0.5,
        "{form:?}: {:?}",
        h.sim.stats()
    );
}

#[tokio::test]
async fn throttling_with_integer_retry_after() {
    throttled_run(RetryAfterForm::Integer).await;
}

#[tokio::test]
async fn throttling_with_decimal_retry_after() {
    throttled_run(RetryAfterForm::Decimal).await;
}

#[tokio::test]
async fn throttling_with_http_date_retry_after() {
    throttled_run(RetryAfterForm::HttpDate).await;
}

#[tokio::test]
async fn throttling_without_retry_after() {
    throttled_run(RetryAfterForm::Missing).await;
}

#[tokio::test]
async fn throttling_with_absurd_retry_after_is_capped() {
    throttled_run(RetryAfterForm::Absurd).await;
}

#[tokio::test]
async fn whole_batch_429s_are_retried() {
    let mut cfg = sim_config();
    cfg.faults.batch_429 = 0.3;
    cfg.retry_after = RetryAfterForm::Rotate;
    let h = harness_with(cfg, &[], |e| e.backoff.attempts = 12).await;
    let ids = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let result = h.run(json!({"managed_device_ids": ids})).await.unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, ids.len());
    assert!(result.stats.throttled_responses > 0);
}

#[tokio::test]
async fn lost_answers_are_retried_and_reported() {
    let mut cfg = sim_config();
    cfg.seed = 5;
    cfg.faults = Faults {
        latency_ms: (1, 5),
        drop_after_accept: 0.15,
        truncate: 0.1,
        missing_item: 0.1,
        duplicate_item: 0.1,
        ..Faults::default()
    };
    let h = harness_with(cfg, &[], |e| e.backoff.attempts = 10).await;
    let ids = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let result = h
        .run(json!({"managed_device_ids": ids, "validate_device_exists": false}))
        .await
        .unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, ids.len(), "{:?}", result.summary);
    let lost: u32 = result.devices.iter().map(|d| d.lost_answers).sum();
    assert!(lost > 0, "some answers must have been lost");
    let extra = h.sim.ledger().len() - ids.len();
    assert!(
        extra as u32 <= lost,
        "{extra} duplicate acceptances but only {lost} lost answers reported"
    );
}

#[tokio::test]
async fn hung_requests_time_out_and_are_retried() {
    let mut cfg = sim_config();
    cfg.faults = Faults {
        latency_ms: (1, 5),
        hang: 0.1,
        ..Faults::default()
    };
    let h = harness_with(cfg, &[("ATTEST_REQUEST_TIMEOUT", "300ms")], |e| e.backoff.attempts = 10).await;
    let ids: Vec<_> = h
        .ids(|d| d.is_windows() && d.tpm != Some(""))
        .into_iter()
        .take(80)
        .collect();
    let result = h.run(json!({"managed_device_ids": ids})).await.unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, 80, "{:?}", result.summary);
}

#[tokio::test]
async fn tokens_expiring_mid_run_are_refreshed() {
    let mut cfg = sim_config();
    cfg.token_lifetime = Duration::from_secs(1);
    cfg.limits.as_mut().unwrap().app_writes = 100;
    let h = harness_with(cfg, &[("ATTEST_WRITE_BUDGET", "95")], |_| {}).await;
    let ids: Vec<_> = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let result = h
        .run(json!({"managed_device_ids": ids, "validate_device_exists": false}))
        .await
        .unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, ids.len());
    assert!(h.sim.stats().token_requests >= 2, "{:?}", h.sim.stats());
}

#[tokio::test]
async fn revoked_tokens_are_refreshed_once_on_401() {
    let h = harness(sim_config()).await;
    let ids: Vec<_> = h.ids(|d| d.is_windows() && d.tpm != Some(""));
    let first = h.run(json!({"managed_device_ids": [ids[0]]})).await.unwrap();
    assert_eq!(first.summary.initiated, 1);
    h.sim.revoke_tokens();
    let second = h.run(json!({"managed_device_ids": [ids[1]]})).await.unwrap();
    h.assert_ledger_agrees_from(&second, 1);
    assert_eq!(second.summary.initiated, 1);
    let s = h.sim.stats();
    assert_eq!((s.token_requests, s.unauthorized), (2, 1), "{s:?}");
}

#[tokio::test]
async fn the_deadline_leaves_untried_devices_not_attempted() {
    let cfg = windows_fleet(1200);
    let h = harness_with(cfg, &[("ATTEST_WRITE_BUDGET", "100")], |e| {
        e.finish_reserve = Duration::from_millis(200)
    })
    .await;
    let ids = h.ids(|_| true);
    let started = std::time::Instant::now();
    let result = h
        .run(json!({"managed_device_ids": ids, "validate_device_exists": false, "timeouts": {"invoke": "2s"}}))
        .await
        .unwrap();
    let took = started.elapsed();
    h.assert_ledger_agrees(&result);
    assert!(took < Duration::from_secs(2), "the run overran its deadline: {took:?}");
    let o = outcomes(&result);
    assert!(o[&Outcome::Initiated] > 0);
    assert!(o[&Outcome::NotAttempted] > 0);
    assert_eq!(o[&Outcome::Initiated] + o[&Outcome::NotAttempted], 1200, "{o:?}");
    for d in result.devices.iter().filter(|d| d.outcome == Outcome::NotAttempted) {
        assert_eq!(d.attempts, 0);
    }
}

#[tokio::test]
async fn dry_run_validates_and_sends_nothing() {
    let h = harness(sim_config()).await;
    let ids: Vec<_> = h.ids(|_| true).into_iter().take(50).collect();
    let result = h
        .run(json!({"managed_device_ids": ids, "dry_run": true}))
        .await
        .unwrap();
    assert!(h.sim.ledger().is_empty());
    assert_eq!(h.sim.stats().writes, 0);
    let o = outcomes(&result);
    assert!(o[&Outcome::WouldInitiate] > 0);
    assert_eq!(
        o[&Outcome::WouldInitiate] + o.get(&Outcome::Unsupported).unwrap_or(&0),
        50,
        "{o:?}"
    );
    assert!(result.dry_run);

    let result = h
        .run(json!({"managed_device_ids": [MISSING], "dry_run": true, "validate_device_exists": false}))
        .await
        .unwrap();
    assert_eq!(result.summary.would_initiate, 1);
    assert_eq!(
        result.stats.http_requests, 0,
        "a dry run without validation needs no Graph call"
    );
}

#[tokio::test]
async fn a_filter_selects_across_pages_and_unions_with_named_ids() {
    let mut cfg = sim_config();
    cfg.max_page = 7;
    cfg.fleet.size = 120;
    let h = harness(cfg).await;
    let windows = h.ids(|d| d.is_windows());
    let mac = h.ids(|d| !d.is_windows());
    let result = h
        .run(json!({
            "device_filter": "operatingSystem eq 'Windows'",
            "managed_device_ids": [windows[0], mac[0]],
            "dry_run": true,
            "validate_device_exists": false
        }))
        .await
        .unwrap();
    assert_eq!(result.devices.len(), windows.len() + 1);
    assert_eq!(result.devices[1].device_id.as_str(), mac[0]);
    assert!(
        h.sim.stats().list_pages as usize >= windows.len() / 7,
        "{:?}",
        h.sim.stats()
    );
    assert!(
        result.warnings.iter().any(|w| w.contains("also listed")),
        "{:?}",
        result.warnings
    );
}

#[tokio::test]
async fn a_filter_selecting_too_many_devices_fails_before_any_write() {
    let mut cfg = sim_config();
    cfg.fleet.size = 100;
    let h = harness_with(cfg, &[], |e| e.max_devices = 10).await;
    let err = h
        .run(json!({"device_filter": "operatingSystem eq 'Windows'"}))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Selection(_)), "{err:?}");
    assert_eq!(h.sim.stats().writes, 0);
}

#[tokio::test]
async fn missing_permission_is_forbidden_with_a_hint() {
    let mut cfg = sim_config();
    cfg.apps[0].can_write = false;
    let h = harness(cfg).await;
    let ids: Vec<_> = h
        .ids(|d| d.is_windows() && d.tpm != Some(""))
        .into_iter()
        .take(3)
        .collect();
    let result = h.run(json!({"managed_device_ids": ids})).await.unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.forbidden, 3);
    assert_eq!(result.status, RunStatus::Failed);
    let d = &result.devices[0];
    assert_eq!((d.http_status, d.error_code.as_deref()), (Some(403), Some("Forbidden")));
    assert!(d.reason.as_deref().unwrap().contains("PrivilegedOperations.All"));
}

#[tokio::test]
async fn refused_credentials_stop_the_run_without_device_calls() {
    let h = harness_with(sim_config(), &[("AZURE_CLIENT_SECRET", "a-wrong-secret")], |_| {}).await;
    let err = h.run(json!({"managed_device_ids": [MISSING]})).await.unwrap_err();
    match &err {
        RunError::Credentials(m) => assert!(m.contains("invalid_client") && m.contains("AADSTS7000215"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains("a-wrong-secret"));
    assert_eq!(h.sim.stats().batches, 0);
}

#[tokio::test]
async fn a_token_endpoint_that_stays_down_is_reported_as_unavailable() {
    let mut cfg = sim_config();
    cfg.faults.token_down = true;
    let h = harness(cfg).await;
    let err = h
        .run(json!({"managed_device_ids": [MISSING], "timeouts": {"invoke": "3s"}}))
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Unavailable(_)), "{err:?}");
    assert!(h.sim.stats().token_requests >= 2, "the token request must be retried");
}

#[tokio::test]
async fn a_certificate_credential_signs_a_client_assertion() {
    let (cfg, path) = certificate_app(None);
    let h = harness_with(
        cfg,
        &[("AZURE_CLIENT_CERTIFICATE_PATH", &path), ("AZURE_CLIENT_SECRET", "")],
        |_| {},
    )
    .await;
    let ids: Vec<_> = h
        .ids(|d| d.is_windows() && d.tpm != Some(""))
        .into_iter()
        .take(5)
        .collect();
    let result = h.run(json!({"managed_device_ids": ids})).await.unwrap();
    assert_eq!(result.summary.initiated, 5);
    assert_eq!(h.sim.stats().token_requests, 1);
}

#[tokio::test]
async fn a_certificate_with_the_wrong_thumbprint_is_refused() {
    let (cfg, path) = certificate_app(Some("not-the-thumbprint"));
    let h = harness_with(
        cfg,
        &[("AZURE_CLIENT_CERTIFICATE_PATH", &path), ("AZURE_CLIENT_SECRET", "")],
        |_| {},
    )
    .await;
    let err = h.run(json!({"managed_device_ids": [MISSING]})).await.unwrap_err();
    assert!(matches!(err, RunError::Credentials(_)), "{err:?}");
}

#[tokio::test]
async fn writes_stay_under_the_budget_in_every_window() {
    let cfg = windows_fleet(700);
    let h = harness(cfg).await;
    let ids = h.ids(|_| true);
    let result = h.run(json!({"managed_device_ids": ids})).await.unwrap();
    h.assert_ledger_agrees(&result);
    assert_eq!(result.summary.initiated, 700);
    assert_eq!(
        result.stats.throttled_responses, 0,
        "pacing must stay under Intune's limit"
    );
    // Server-side view: no sliding window ever saw more than the client budget.
    assert!(
        h.sim.max_writes_in_any_window(WINDOW) <= 190,
        "{}",
        h.sim.max_writes_in_any_window(WINDOW)
    );
    // Batches were nearly full: reads and writes of 700 devices at 19-20 a call.
    let per_device = result.stats.http_requests as f64 / 700.0;
    assert!(per_device <= 0.12, "{per_device} requests per device");
}

#[tokio::test]
async fn unused_sim_config_is_default() {
    // The simulator's defaults are Intune's documented limits.
    let c = SimConfig::default();
    let l = c.limits.unwrap();
    assert_eq!(
        (l.app_writes, l.tenant_writes, l.app_any, l.tenant_any),
        (200, 400, 2000, 4000)
    );
    assert_eq!(c.window, Duration::from_secs(20));
}

#[tokio::test]
async fn every_kind_that_cannot_attest_is_unsupported_with_its_code_and_costs_no_write() {
    let mut cfg = sim_config();
    cfg.fleet = FleetSpec {
        size: 500,
        seed: 11,
        non_windows: 0.1,
        windows_no_tpm: 0.1,
        windows_unknown_tpm: 0.1,
        tpm_1_2: 0.1,
        virtual_machines: 0.1,
        cloud_pcs: 0.1,
        old_builds: 0.1,
        not_mdm: 0.06,
        servers: 0.06,
        unlisted_builds: 0.06,
        comanaged: 0.0,
    };
    let h = harness(cfg).await;
    let fleet = h.sim.fleet().to_vec();
    let ids: Vec<String> = fleet.iter().map(|d| d.id.clone()).collect();
    let r = h
        .run(json!({"managed_device_ids": ids, "validate_device_exists": true, "timeouts": {"invoke": "2m"}}))
        .await
        .unwrap();
    let ledger = h.sim.ledger_counts();
    let mut seen = std::collections::HashMap::new();
    for (d, out) in fleet.iter().zip(&r.devices) {
        let expected = if !d.is_windows() {
            Some("not_windows")
        } else if !d.has_mdm_channel() {
            Some("not_mdm_managed")
        } else if d.device_type == "cloudPC" {
            Some("cloud_pc")
        } else if d.model == "Virtual Machine" {
            Some("virtual_machine")
        } else if d.is_server() {
            Some("windows_server")
        } else if d.os_version.starts_with("10.0.19044") {
            Some("os_build_too_old")
        } else if d.tpm == Some("") {
            Some("no_tpm")
        } else if d.tpm.is_some_and(|t| t.starts_with("1.2")) {
            Some("tpm_below_2_0")
        } else {
            None
        };
        let code = out.reason_code.map(|c| c.as_str());
        let written = ledger.contains_key(&(d.id.clone(), "managed"));
        match expected {
            Some(want) => {
                assert_eq!(out.outcome, Outcome::Unsupported, "{}: {out:?}", d.id);
                assert_eq!(code, Some(want), "{}", d.id);
                assert!(out.reason.is_some());
                assert!(!written, "a write was spent on an ineligible device");
            }
            None => {
                assert_eq!(out.outcome, Outcome::Initiated, "{}: {out:?}", d.id);
                assert!(written);
                let warning = if d.tpm.is_none() {
                    Some("tpm_unknown")
                } else if ["10.0.26100.", "10.0.26200."]
                    .iter()
                    .any(|b| d.os_version.starts_with(b))
                {
                    Some("os_build_unlisted")
                } else {
                    None
                };
                assert_eq!(code, warning, "{d:?}");
            }
        }
        *seen.entry(code.unwrap_or("eligible")).or_insert(0) += 1;
    }
    for kind in [
        "not_windows",
        "cloud_pc",
        "virtual_machine",
        "os_build_too_old",
        "no_tpm",
        "tpm_below_2_0",
        "tpm_unknown",
        "not_mdm_managed",
        "windows_server",
        "os_build_unlisted",
        "eligible",
    ] {
        assert!(
            seen.get(kind).is_some_and(|&n| n > 0),
            "the fleet had no {kind}: {seen:?}"
        );
    }
}

/// Whether the simulator's device can attest by Intune's rules (a device
/// that does not report its TPM is attempted).
fn can_attest(d: &graph_sim::SimDevice) -> bool {
    d.is_windows()
        && d.device_type != "cloudPC"
        && d.model != "Virtual Machine"
        && !d.os_version.starts_with("10.0.19044")
        && d.tpm != Some("")
        && !d.tpm.is_some_and(|t| t.starts_with("1."))
}

#[tokio::test]
async fn every_filter_form_writes_exactly_the_matching_eligible_devices_whatever_graph_applies() {
    type Pick = fn(&graph_sim::SimDevice) -> bool;
    // Every form the reference documents: each operator, `or`, `ne`, both
    // date comparisons, and documented parts mixed with client-only ones.
    let cases: [(&str, Pick); 15] = [
        ("operatingSystem eq 'Windows'", |d| d.is_windows()),
        ("operatingSystem eq 'macOS' or operatingSystem eq 'iOS'", |d| {
            d.os == "macOS" || d.os == "iOS"
        }),
        ("contains(deviceName,'DEV-00001')", |d| d.name.contains("DEV-00001")),
        ("deviceName eq 'dev-000042'", |d| d.name == "DEV-000042"),
        ("model eq 'Virtual Machine'", |d| d.model == "Virtual Machine"),
        (
            "contains(model,'latitude') and deviceCategoryDisplayName eq 'Lab'",
            |d| d.model.contains("Latitude") && d.category == "Lab",
        ),
        ("operatingSystem eq 'Windows' and contains(osVersion,'19044')", |d| {
            d.is_windows() && d.os_version.contains("19044")
        }),
        (
            "operatingSystem eq 'Windows' and lastSyncDateTime gt 2026-11-21T23:59:59Z",
            |d| d.is_windows() && d.last_sync.as_str() > "2026-11-21T23:59:59Z",
        ),
        (
            "enrolledDateTime lt 2025-04-01T00:00:00Z and operatingSystem eq 'Windows'",
            |d| d.is_windows() && d.enrolled.as_str() < "2025-04-01",
        ),
        ("jailBroken eq 'Unknown' and complianceState eq 'noncompliant'", |d| {
            d.jailbroken == "Unknown" && d.compliance == "noncompliant"
        }),
        (
            "managementAgent eq 'configurationManagerClientMdm' or deviceCategoryDisplayName eq 'Office'",
            |d| d.comanaged || d.category == "Office",
        ),
        (
            "operatingSystem eq 'Windows' and userPrincipalName ne 'user3@contoso.com'",
            |d| d.is_windows() && d.user != "user3@contoso.com",
        ),
        (
            "userPrincipalName eq 'USER4@contoso.com' and manufacturer eq 'Dell Inc.'",
            |d| d.user == "user4@contoso.com" && d.manufacturer == "Dell Inc.",
        ),
        (
            "(operatingSystem eq 'Linux' or manufacturer eq 'Microsoft Corporation') and lastSyncDateTime gt 2026-11-14T00:00:00Z",
            |d| {
                (d.os == "Linux" || d.manufacturer == "Microsoft Corporation")
                    && d.last_sync.as_str() > "2026-11-14T00:00:00Z"
            },
        ),
        (
            "contains(deviceName,'DEV-0000') and lastSyncDateTime lt 2026-11-10T00:00:00Z",
            |d| d.name.contains("DEV-0000") && d.last_sync.as_str() < "2026-11-10",
        ),
    ];
    for support in [
        graph_sim::FilterSupport::Documented,
        graph_sim::FilterSupport::Strict,
        graph_sim::FilterSupport::Ignored,
    ] {
        let mut cfg = sim_config();
        cfg.limits = None;
        cfg.filter_support = support;
        cfg.fleet = FleetSpec {
            size: 240,
            seed: 5,
            virtual_machines: 0.1,
            old_builds: 0.1,
            ..FleetSpec::default()
        };
        let h = harness(cfg).await;
        let fleet = h.sim.fleet().to_vec();
        for (filter, pick) in cases {
            let before = h.sim.ledger().len();
            let r = h
                .run(json!({"device_filter": filter, "timeouts": {"invoke": "2m"}}))
                .await
                .unwrap_or_else(|e| panic!("{support:?} {filter}: {e}"));
            let mut written: Vec<String> = h.sim.ledger()[before..].iter().map(|e| e.device_id.clone()).collect();
            let mut selected: Vec<String> = r.devices.iter().map(|d| d.device_id.to_string()).collect();
            let mut want: Vec<String> = fleet.iter().filter(|d| pick(d)).map(|d| d.id.clone()).collect();
            let mut want_written: Vec<String> = fleet
                .iter()
                .filter(|d| pick(d) && can_attest(d))
                .map(|d| d.id.clone())
                .collect();
            for v in [&mut written, &mut selected, &mut want, &mut want_written] {
                v.sort();
            }
            assert!(!want.is_empty(), "{filter}: the fleet has no such device");
            assert_eq!(selected, want, "{support:?} {filter}: the selection");
            assert_eq!(written, want_written, "{support:?} {filter}: the ledger");
            let not_applied = r
                .warnings
                .iter()
                .filter(|w| w.starts_with("Graph did not apply"))
                .count();
            let plan = intune_attest::core::filter::DeviceFilter::parse(filter).unwrap().plan();
            if support == graph_sim::FilterSupport::Ignored && plan.graph.is_some() {
                let sent = intune_attest::core::filter::DeviceFilter::parse(plan.graph.as_deref().unwrap()).unwrap();
                let outside = fleet
                    .iter()
                    .filter(|d| {
                        let v = d.to_json(false);
                        !sent.matches(&|p| v.get(p).and_then(|x| x.as_str()).map(str::to_owned))
                    })
                    .count();
                assert_eq!(not_applied, usize::from(outside > 0), "{filter}: {:?}", r.warnings);
                if outside > 0 {
                    let w = r
                        .warnings
                        .iter()
                        .find(|w| w.starts_with("Graph did not apply"))
                        .unwrap();
                    assert!(w.contains(&format!(" {outside} device(s)")), "{w}");
                }
            } else {
                assert_eq!(not_applied, 0, "{support:?} {filter}: {:?}", r.warnings);
            }
        }
    }
}

#[tokio::test]
async fn graph_is_sent_only_the_documented_part_of_a_filter() {
    // In the simulator's strict mode every $filter is applied, so a sent
    // `model eq` would narrow the listing: it is not sent, the client
    // applies it, and says how many devices it left out.
    let mut cfg = sim_config();
    cfg.filter_support = graph_sim::FilterSupport::Strict;
    cfg.fleet = FleetSpec {
        size: 120,
        virtual_machines: 0.2,
        ..FleetSpec::default()
    };
    let h = harness(cfg).await;
    let vms = h.ids(|d| d.model == "Virtual Machine");
    let r = h
        .run(json!({"device_filter": "model eq 'Virtual Machine'", "dry_run": true, "validate_device_exists": false}))
        .await
        .unwrap();
    assert_eq!(r.devices.len(), vms.len());
    let left_out = 120 - vms.len();
    assert!(
        r.warnings.iter().any(|w| w.starts_with(&format!(
            "{left_out} listed device(s) did not match the parts of device_filter the client applies"
        ))),
        "{:?}",
        r.warnings
    );
    assert_eq!(h.sim.stats().list_pages, 1);
}

#[tokio::test]
async fn devices_the_validation_read_found_carry_their_name_in_the_result_and_status() {
    let h = harness(sim_config()).await;
    let fleet = h.sim.fleet().to_vec();
    let mut ids: Vec<String> = fleet.iter().take(6).map(|d| d.id.clone()).collect();
    ids.push(MISSING.into());
    let r = h
        .run(json!({"managed_device_ids": ids, "dry_run": true}))
        .await
        .unwrap();
    for (d, out) in fleet.iter().take(6).zip(&r.devices) {
        assert_eq!(out.device_name.as_deref(), Some(d.name.as_str()), "{out:?}");
    }
    let missing = r.devices.last().unwrap();
    assert_eq!(
        (missing.outcome, missing.device_name.clone()),
        (Outcome::NotFound, None)
    );
    let doc = serde_json::to_value(&r).unwrap();
    assert_eq!(doc["devices"][0]["device_name"], fleet[0].name.as_str());
    assert!(
        doc["devices"][6].get("device_name").is_none(),
        "additive: absent when unknown"
    );
    // Without a read there is no name to give.
    let r = h
        .run(json!({"managed_device_ids": [&fleet[0].id], "dry_run": true, "validate_device_exists": false}))
        .await
        .unwrap();
    assert_eq!(r.devices[0].device_name, None);
}
