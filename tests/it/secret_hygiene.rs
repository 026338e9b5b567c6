//! Secrets never reach a log line, an error or a result: the binary runs at
//! the most verbose log level, succeeding and failing, with a client secret
//! and with a certificate, and none of the secret material, the private key
//! or any issued token appears in anything it prints, plainly or encoded.

use crate::common::{self, env_of, sim_config};
use base64::Engine as _;
use graph_sim::{CLIENT_SECRET, Sim};

const BIN: &str = env!("CARGO_BIN_EXE_intune-attest");

async fn run(sim: &Sim, extra: &[(&str, &str)], payload: serde_json::Value) -> String {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(BIN)
        .args(["invoke", "--event", "-", "--no-progress"])
        .env_clear()
        .envs(env_of(sim, extra))
        .env("ATTEST_LOG", "trace")
        .env("ATTEST_LOG_FORMAT", "json")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(payload.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn encodings(secret: &str) -> Vec<String> {
    let b = secret.as_bytes();
    vec![
        secret.to_owned(),
        base64::engine::general_purpose::STANDARD.encode(b),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b),
        url::form_urlencoded::byte_serialize(b).collect(),
    ]
}

fn assert_clean(output: &str, secrets: &[String]) {
    assert!(output.len() > 200, "the run printed almost nothing: {output}");
    for secret in secrets {
        for form in encodings(secret) {
            assert!(!output.contains(&form), "a secret leaked (as {form:?})");
        }
    }
}

#[tokio::test]
async fn client_secrets_and_tokens_never_appear_in_output() {
    let sim = Sim::start(sim_config()).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().take(30).map(|d| d.id.clone()).collect();
    let mut output = run(&sim, &[], serde_json::json!({"managed_device_ids": ids})).await;
    output += &run(
        &sim,
        &[],
        serde_json::json!({"managed_device_ids": ["00000000-dead-4bad-8bad-000000000001"]}),
    )
    .await;
    output += &run(
        &sim,
        &[("AZURE_CLIENT_SECRET", "wrong-secret-value-1234")],
        serde_json::json!({"managed_device_ids": ids}),
    )
    .await;
    let tokens = sim.issued_tokens();
    assert!(tokens.len() >= 2);
    let mut secrets = vec![CLIENT_SECRET.to_owned(), "wrong-secret-value-1234".to_owned()];
    secrets.extend(tokens);
    assert_clean(&output, &secrets);
    assert!(output.contains("invalid_client"), "the failing run says why");
}

#[tokio::test]
async fn the_private_key_and_its_assertions_never_appear_in_output() {
    let (cfg, path) = common::certificate_app(None);
    let sim = Sim::start(cfg).await.unwrap();
    let ids: Vec<String> = sim.fleet().iter().take(10).map(|d| d.id.clone()).collect();
    let output = run(
        &sim,
        &[("AZURE_CLIENT_CERTIFICATE_PATH", &path), ("AZURE_CLIENT_SECRET", "")],
        serde_json::json!({"managed_device_ids": ids}),
    )
    .await;
    let pem = std::fs::read_to_string(&path).unwrap();
    let key_lines: Vec<String> = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.len() > 40)
        .map(str::to_owned)
        .collect();
    assert!(key_lines.len() > 10);
    let mut secrets = key_lines;
    secrets.extend(sim.issued_tokens());
    assert_clean(&output, &secrets);
    assert!(!output.contains("eyJ"), "no JWT (client assertion) in the output");
}
