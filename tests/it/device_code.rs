//! A responder signs in as themself with `--device-code`: the binary asks
//! the simulator's device code endpoint, prints where to sign in, polls at
//! the interval it was given, and the run acts for the user (their Intune
//! role, no app secret anywhere), redeeming the refresh token when the
//! first token runs out. The person is played by the test: it reads the
//! code the binary printed and signs in at the simulator.

use std::time::Duration;

use graph_sim::{Sim, SimConfig, SimUser};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::common::{attestable_fleet, env_of};

const BIN: &str = env!("CARGO_BIN_EXE_intune-attest");
const USER: &str = "responder@contoso.example";

/// An app that allows public client flows and has no secret at all.
fn public_app(mut cfg: SimConfig) -> SimConfig {
    for app in &mut cfg.apps {
        app.public_client = true;
        app.secret = None;
    }
    cfg.device_code_interval = Duration::from_secs(1);
    cfg
}

/// What a person does with the prompt.
enum Person {
    SignIn(SimUser),
    Decline,
    Ignore,
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` (a payload on standard input), and plays
/// the person: waits for the code on standard error, then acts on it
/// after `after`.
async fn run_signed_in(
    sim: &Sim,
    extra: &[(&str, &str)],
    args: &[&str],
    payload: &Value,
    person: Person,
    after: Duration,
) -> Ran {
    let mut env = env_of(sim, extra);
    env.remove("AZURE_CLIENT_SECRET");
    let mut child = tokio::process::Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(env)
        .env("ATTEST_LOG", "trace")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(payload.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let mut stdout = child.stdout.take().unwrap();
    let out_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s).await;
        s
    });
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    let mut user_code = None;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the binary writes to standard error")
    {
        stderr.push_str(&line);
        stderr.push('\n');
        if let Some(rest) = line.split("enter the code ").nth(1) {
            user_code = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    if let Some(code) = &user_code {
        tokio::time::sleep(after).await;
        match person {
            Person::SignIn(user) => assert!(sim.sign_in(code, user), "the code it printed is waiting"),
            Person::Decline => assert!(sim.decline_sign_in(code)),
            Person::Ignore => {}
        }
    }
    while let Ok(Some(line)) = lines.next_line().await {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("the run ends")
        .unwrap();
    Ran {
        code: status.code(),
        stdout: out_task.await.unwrap(),
        stderr,
    }
}

fn responder(intune_role: bool) -> Person {
    Person::SignIn(SimUser {
        upn: USER.into(),
        intune_role,
    })
}

#[tokio::test]
async fn a_responder_signs_in_with_a_device_code_and_the_run_acts_for_them() {
    // 60 devices at 10 writes a 1 s window: a run of about six seconds,
    // past the first token's three.
    let mut cfg = public_app(attestable_fleet(60));
    cfg.token_lifetime = Duration::from_secs(3);
    let sim = Sim::start(cfg).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().map(|d| d.id.clone()).collect();
    let payload = serde_json::json!({"managed_device_ids": ids, "validate_device_exists": false});
    let args = ["invoke", "--device-code", "--event", "-", "--no-progress"];
    let budget = [("ATTEST_WRITE_BUDGET", "10")];
    let ran = run_signed_in(
        &sim,
        &budget,
        &args,
        &payload,
        responder(true),
        Duration::from_millis(1500),
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stderr.contains("/devicelogin"), "where to sign in: {}", ran.stderr);
    assert!(ran.stderr.contains("signed in:"), "{}", ran.stderr);
    let doc: Value = serde_json::from_str(&ran.stdout).unwrap();
    crate::cli::assert_valid_result(ran.stdout.as_bytes());
    assert_eq!(doc["summary"]["initiated"], 60, "{}", doc["summary"]);
    // Every write acted for the user, none as the app alone.
    let ledger = sim.ledger();
    assert_eq!(ledger.len(), 60);
    assert!(ledger.iter().all(|e| e.user.as_deref() == Some(USER)));
    let stats = sim.stats();
    // It polled while the person signed in, never sooner than asked, and
    // the refresh token carried the run past the first token.
    assert!(stats.device_code_polls >= 2, "{stats:?}");
    assert_eq!(stats.slow_downs, 0, "{stats:?}");
    assert!(stats.refresh_grants >= 1, "{stats:?}");
    assert!(stats.delegated_tokens >= 2, "{stats:?}");
    // The redeemed refresh tokens are among those checked below.
    assert!(
        sim.issued_tokens().iter().filter(|t| t.starts_with("simrt.")).count() as u64 > stats.refresh_grants,
        "every refresh token, used or not, is checked"
    );
    // No token, refresh token or device code in anything it printed, at
    // trace level.
    for secret in sim.issued_tokens() {
        assert!(
            !ran.stdout.contains(&secret) && !ran.stderr.contains(&secret),
            "a token or code leaked"
        );
    }

    // `status` signs in the same way and reads the same devices back.
    let result = std::env::temp_dir().join(format!("device-code-{}.json", std::process::id()));
    std::fs::write(&result, &ran.stdout).unwrap();
    let args = ["status", "--device-code", "--result", result.to_str().unwrap()];
    let read = run_signed_in(&sim, &[], &args, &Value::Null, responder(true), Duration::ZERO).await;
    let _ = std::fs::remove_file(&result);
    assert_eq!(read.code, Some(0), "{}", read.stderr);
    let status: Value = serde_json::from_str(&read.stdout).unwrap();
    assert_eq!(status["summary"]["devices"], 60);
    assert_eq!(status["summary"]["unread"], 0);
}

fn one_device(sim: &Sim) -> Value {
    serde_json::json!({"managed_device_ids": [sim.fleet()[0].id], "validate_device_exists": false})
}

const INVOKE: [&str; 5] = ["invoke", "--device-code", "--event", "-", "--no-progress"];

#[tokio::test]
async fn an_app_that_does_not_allow_public_client_flows_is_named_and_nothing_is_written() {
    let mut cfg = public_app(attestable_fleet(5));
    cfg.apps[0].public_client = false;
    let sim = Sim::start(cfg).await.unwrap();
    let ran = run_signed_in(&sim, &[], &INVOKE, &one_device(&sim), responder(true), Duration::ZERO).await;
    assert_eq!(ran.code, Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("AADSTS7000218") && ran.stderr.contains("Allow public client flows"),
        "{}",
        ran.stderr
    );
    assert!(sim.ledger().is_empty());
    assert_eq!(sim.stats().writes, 0);
}

#[tokio::test]
async fn a_declined_sign_in_or_a_code_that_expires_ends_with_exit_2_and_no_write() {
    let mut cfg = public_app(attestable_fleet(5));
    cfg.device_code_lifetime = Duration::from_secs(3);
    let sim = Sim::start(cfg).await.unwrap();
    let declined = run_signed_in(&sim, &[], &INVOKE, &one_device(&sim), Person::Decline, Duration::ZERO).await;
    assert_eq!(declined.code, Some(2), "{}", declined.stderr);
    assert!(declined.stderr.contains("declined"), "{}", declined.stderr);
    let expired = run_signed_in(&sim, &[], &INVOKE, &one_device(&sim), Person::Ignore, Duration::ZERO).await;
    assert_eq!(expired.code, Some(2), "{}", expired.stderr);
    assert!(expired.stderr.contains("expired"), "{}", expired.stderr);
    assert_eq!(sim.stats().writes, 0);
    for secret in sim.issued_tokens() {
        for ran in [&declined, &expired] {
            assert!(
                !ran.stdout.contains(&secret) && !ran.stderr.contains(&secret),
                "a device code leaked"
            );
        }
    }
}

#[tokio::test]
async fn a_user_without_an_intune_role_gets_forbidden_devices_that_say_so() {
    let sim = Sim::start(public_app(attestable_fleet(5))).await.unwrap();
    let ran = run_signed_in(&sim, &[], &INVOKE, &one_device(&sim), responder(false), Duration::ZERO).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let doc: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(doc["devices"][0]["outcome"], "forbidden");
    assert!(
        doc["devices"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("Intune role"),
        "{}",
        doc["devices"][0]
    );
    assert!(sim.ledger().is_empty());
}

#[tokio::test]
async fn without_the_tenant_or_client_id_nothing_is_asked_of_entra() {
    let sim = Sim::start(public_app(attestable_fleet(5))).await.unwrap();
    let out = crate::cli::invoke(
        &sim,
        &[("AZURE_CLIENT_ID", ""), ("AZURE_TENANT_ID", "")],
        &INVOKE,
        Some(one_device(&sim).to_string().into_bytes()),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--device-code") && err.contains("AZURE_TENANT_ID") && err.contains("AZURE_CLIENT_ID"),
        "{err}"
    );
    assert_eq!(sim.stats().http_requests, 0);
}
