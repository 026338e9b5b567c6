//! Several tenants from one deployment: a payload names a configured tenant
//! (never a secret), which runs with that tenant's credentials and budget;
//! an unconfigured tenant is refused before any call; one tenant's 429s
//! never slow another.

use std::time::{Duration, SystemTime};

use graph_sim::{AppRegistration, CLIENT_ID, CLIENT_SECRET, TENANT_ID};
use intune_attest::state::budget::{BudgetRules, DynamoBudget, SharedBudget};
use serde_json::json;

use crate::common::{WINDOW, attestable_fleet};
use crate::lambda_handler::{AppOptions, World, ctx, world};

/// A second app registration the simulator knows, for the second tenant.
pub(crate) const FABRIKAM_CLIENT: &str = "22222222-3333-4444-5555-666666666666";
pub(crate) const FABRIKAM_SECRET: &str = "fabrikam-client-secret-value";

async fn two_tenants() -> (World, String) {
    two_tenants_with(attestable_fleet(60), "tenants").await
}

/// A world whose simulator also knows the second tenant's app
/// registration, and a state table named `table`.
pub(crate) async fn two_tenants_with(mut cfg: graph_sim::SimConfig, table: &str) -> (World, String) {
    cfg.apps.push(AppRegistration {
        client_id: FABRIKAM_CLIENT.into(),
        secret: Some(FABRIKAM_SECRET.into()),
        ..Default::default()
    });
    let w = world(cfg).await;
    let table = w.aws.state_table(table).await;
    (w, table)
}

/// The two tenants' secrets (named with `tag`, so a test can make several).
pub(crate) async fn options(w: &World, table: &str, fabrikam_secret: &str, tag: &str) -> AppOptions {
    let contoso = w
        .aws
        .secret(
            &format!("intune-attest/tenants/contoso{tag}"),
            &json!({"tenant_id": TENANT_ID, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}).to_string(),
        )
        .await;
    let fabrikam = w
        .aws
        .secret(
            &format!("intune-attest/tenants/fabrikam{tag}"),
            &json!({"tenant_id": TENANT_ID, "client_id": FABRIKAM_CLIENT, "client_secret": fabrikam_secret})
                .to_string(),
        )
        .await;
    AppOptions {
        state_table: Some(table.to_owned()),
        tenants: vec![("contoso", contoso), ("fabrikam", fabrikam)],
        ..Default::default()
    }
}

#[tokio::test]
async fn an_unconfigured_tenant_is_refused_before_any_call_without_naming_the_configured_ones() {
    let (w, table) = two_tenants().await;
    let app = w.app(options(&w, &table, FABRIKAM_SECRET, "").await);
    let err = app
        .handle(
            json!({"managed_device_ids": w.all_ids(), "tenant": "northwind"}),
            ctx("t-1", 60),
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "InvalidRequest");
    // Unknown is all the caller learns: no configured name is listed.
    assert!(err.error_message.contains("northwind"), "{}", err.error_message);
    for configured in ["contoso", "fabrikam"] {
        assert!(
            !err.error_message.contains(configured),
            "the refusal names {configured}: {}",
            err.error_message
        );
    }
    assert_eq!(
        w.sim.stats().http_requests,
        0,
        "no call reached Graph or the token endpoint"
    );
}

#[tokio::test]
async fn each_tenant_runs_with_its_own_credentials_and_budget() {
    let (w, table) = two_tenants().await;
    let ids = w.all_ids();
    // Fabrikam's secret is wrong: only a request naming fabrikam uses it.
    let app = w.app(options(&w, &table, "not-fabrikams-secret", "-wrong").await);
    let ok = app
        .handle(
            json!({"managed_device_ids": &ids[..20], "validate_device_exists": false, "tenant": "contoso"}),
            ctx("t-2", 60),
        )
        .await
        .unwrap();
    assert_eq!(ok["summary"]["initiated"], 20);
    let err = app
        .handle(
            json!({"managed_device_ids": &ids[20..40], "tenant": "fabrikam"}),
            ctx("t-3", 60),
        )
        .await
        .unwrap_err();
    assert_eq!(err.error_type, "CredentialsUnavailable");
    assert!(
        err.error_message.contains("intune-attest/tenants/fabrikam"),
        "{}",
        err.error_message
    );

    // One tenant's 429 never slows another: contoso is paused for a minute
    // (a Retry-After the deployment honours), fabrikam (its own budget)
    // runs at once.
    let app = w.app(AppOptions {
        extra_env: vec![("ATTEST_MAX_RETRY_AFTER", "60s")],
        ..options(&w, &table, FABRIKAM_SECRET, "").await
    });
    let budget = DynamoBudget::new(w.aws.dynamodb.clone(), table.clone());
    let rules = BudgetRules::new(190, WINDOW);
    let contoso_key = format!("budget#{TENANT_ID}#{CLIENT_ID}#writes");
    budget
        .throttled(&contoso_key, rules, SystemTime::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let fabrikam = app
        .handle(
            json!({"managed_device_ids": &ids[20..40], "validate_device_exists": false, "tenant": "fabrikam", "timeouts": {"invoke": "5s"}}),
            ctx("t-4", 60),
        )
        .await
        .unwrap();
    assert_eq!(fabrikam["summary"]["initiated"], 20, "{fabrikam}");
    let contoso = app
        .handle(
            json!({"managed_device_ids": &ids[40..60], "validate_device_exists": false, "tenant": "contoso", "timeouts": {"invoke": "3s"}, "ignore_partial_failures": true}),
            ctx("t-5", 60),
        )
        .await
        .unwrap();
    assert_eq!(contoso["summary"]["initiated"], 0, "contoso is paused: {contoso}");
    assert_eq!(contoso["summary"]["not_attempted"], 20);
}
