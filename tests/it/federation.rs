//! Workload identity federation on every host, with no secret anywhere in
//! the environment or configuration: the simulator's token endpoint holds
//! federated credentials (issuer, subject, audience) and verifies each
//! assertion's RS256 signature against keys the tests generate; stand-ins
//! speak the GitHub Actions OIDC, managed-identity and STS
//! `GetWebIdentityToken` wire formats. Every run initiates its devices, no
//! assertion or token appears in any output (trace level included), a
//! rotated token file is read again, an expired assertion is never sent,
//! and a deployment that selects federation without what it needs stops
//! with a configuration error before any Graph call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use graph_sim::{AppRegistration, CLIENT_ID, FederatedCredential, Sim, SimConfig, TENANT_ID, TrustedIssuer};
use intune_attest::config::Settings;
use intune_attest::core::backoff::Backoff;
use intune_attest::credentials::AppCredentials;
use intune_attest::graph::auth::TokenProvider;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use crate::common::aws::{Clients, Moto};
use crate::common::{attestable_fleet, env_of};

const AUDIENCE: &str = "api://AzureADTokenExchange";
const BIN: &str = env!("CARGO_BIN_EXE_intune-attest");
const KUBERNETES_ISSUER: &str = "https://oidc.prod-aks.azure.com/6f1c0a57-2d1e-4f5e-9a43-0c0e5c3c9b11/";
const KUBERNETES_SUBJECT: &str = "system:serviceaccount:attest:intune-attest";
const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
const GITHUB_SUBJECT: &str = "repo:contoso/incident-response:environment:production";
const STS_ISSUER: &str = "https://3f1c9a52-6b2d-4c8e-9f0a-7d6e5b4c3a21.tokens.sts.global.api.aws";
const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/intune-attest-function";
const IDENTITY_CLIENT_ID: &str = "7a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const IDENTITY_OBJECT_ID: &str = "0b9c8d7e-6f5a-4b3c-9d2e-1f0a9b8c7d6e";
const FABRIKAM_CLIENT: &str = "22222222-3333-4444-5555-666666666666";

/// An external issuer: its name and an RSA key pair generated for the test.
struct Issuer {
    issuer: String,
    key: jsonwebtoken::EncodingKey,
    public_pem: String,
}

impl Issuer {
    fn new(issuer: &str) -> Self {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let private: Pkcs8V1Der = pair.as_der().unwrap();
        let public: PublicKeyX509Der = pair.public_key().as_der().unwrap();
        let private_pem = pem::encode(&pem::Pem::new("PRIVATE KEY", private.as_ref().to_vec()));
        Self {
            issuer: issuer.to_owned(),
            key: jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
            public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", public.as_ref().to_vec())),
        }
    }

    /// A token for `subject` and `audience` that expires `lifetime` seconds
    /// from now (negative: already expired).
    fn mint(&self, subject: &str, audience: &str, lifetime: i64) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("test-key-1".into());
        let claims = json!({
            "iss": self.issuer, "sub": subject, "aud": audience,
            "iat": now - 5, "nbf": now - 5, "exp": now + lifetime,
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }

    fn trusted(&self) -> TrustedIssuer {
        TrustedIssuer {
            issuer: self.issuer.clone(),
            public_keys_pem: vec![self.public_pem.clone()],
        }
    }

    fn credential(&self, subject: &str, audience: &str) -> FederatedCredential {
        FederatedCredential {
            issuer: self.issuer.clone(),
            subject: subject.into(),
            audience: audience.into(),
        }
    }
}

/// A tenant whose app registrations hold no secret, only the federated
/// credentials given (`(client id, credentials)`), trusting `issuers`.
fn federated_sim(apps: Vec<(&str, Vec<FederatedCredential>)>, issuers: Vec<TrustedIssuer>) -> SimConfig {
    let mut cfg = attestable_fleet(40);
    cfg.apps = apps
        .into_iter()
        .map(|(client_id, federated)| AppRegistration {
            client_id: client_id.into(),
            federated,
            ..AppRegistration::default()
        })
        .collect();
    cfg.issuers = issuers;
    cfg
}

/// A stand-in HTTP endpoint on 127.0.0.1 answering with `answer`.
async fn stand_in<F>(answer: F) -> String
where
    F: Fn(axum::http::request::Parts, Vec<u8>) -> Response + Clone + Send + Sync + 'static,
{
    let app = Router::new().fallback(move |req: Request| {
        let answer = answer.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
            answer(parts, body.to_vec())
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn query(parts: &axum::http::request::Parts) -> HashMap<String, String> {
    url::form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn header<'a>(parts: &'a axum::http::request::Parts, name: &str) -> &'a str {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn status(code: u16, body: Value) -> Response {
    (axum::http::StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// Fails if any of `secrets`, whole or as its JWT signature, plainly or
/// encoded, appears in `output`.
fn assert_absent(output: &str, secrets: &[String]) {
    assert!(output.len() > 200, "the run printed almost nothing: {output}");
    for secret in secrets {
        let mut forms = vec![secret.clone()];
        if let Some(sig) = secret.rsplit('.').next().filter(|s| s.len() > 40) {
            forms.push(sig.to_owned());
        }
        forms.push(base64::engine::general_purpose::STANDARD.encode(secret));
        forms.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        for form in forms {
            assert!(!output.contains(&form), "a secret leaked (as {form:?})");
        }
    }
}

/// Runs `intune-attest invoke` with exactly `env` at trace level: exit
/// code, stdout and stderr.
async fn cli(env: HashMap<String, String>, payload: Value) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    assert!(
        !env.keys().any(|k| k.contains("SECRET") || k.contains("CERTIFICATE")),
        "no secret in the environment: {:?}",
        env.keys()
    );
    let mut child = tokio::process::Command::new(BIN)
        .args(["invoke", "--event", "-", "--no-progress"])
        .env_clear()
        .envs(env)
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
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn devices(sim: &Sim, n: usize) -> Vec<String> {
    sim.fleet().iter().take(n).map(|d| d.id.clone()).collect()
}

fn result_of(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not a result ({e}): {stdout}"))
}

#[tokio::test]
async fn a_token_file_signs_the_cli_in_with_no_secret_and_no_assertion_in_the_output() {
    let k8s = Issuer::new(KUBERNETES_ISSUER);
    let sim = Sim::start(federated_sim(
        vec![(CLIENT_ID, vec![k8s.credential(KUBERNETES_SUBJECT, AUDIENCE)])],
        vec![k8s.trusted()],
    ))
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("attest-fed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("azure-identity-token");
    let assertion = k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, 600);
    std::fs::write(&file, &assertion).unwrap();
    let path = file.to_string_lossy().into_owned();
    let env = env_of(&sim, &[("AZURE_FEDERATED_TOKEN_FILE", &path)]);
    let ids = devices(&sim, 20);
    let (code, stdout, stderr) = cli(env, json!({"managed_device_ids": ids})).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result_of(&stdout)["summary"]["initiated"], 20, "{stdout}");
    assert!(sim.stats().federated_tokens >= 1);
    let mut secrets = vec![assertion];
    secrets.extend(sim.issued_tokens());
    assert_absent(&format!("{stdout}\n{stderr}"), &secrets);
    let _ = std::fs::remove_dir_all(dir);
}

/// A token provider with the credentials and endpoints of `env`.
fn provider(env: &HashMap<String, String>, backoff: Backoff) -> TokenProvider {
    let settings = Settings::from_env(|k| env.get(k).cloned()).unwrap();
    let creds = AppCredentials::from_env(|k| env.get(k).cloned()).unwrap();
    TokenProvider::new(
        reqwest::Client::new(),
        &settings.endpoints,
        creds,
        Arc::new(AtomicU64::new(0)),
        Duration::from_secs(5),
        backoff,
    )
}

#[tokio::test]
async fn a_rotated_token_file_is_read_again_and_an_expired_assertion_is_never_sent() {
    let k8s = Issuer::new(KUBERNETES_ISSUER);
    let sim = Sim::start(federated_sim(
        vec![(CLIENT_ID, vec![k8s.credential(KUBERNETES_SUBJECT, AUDIENCE)])],
        vec![k8s.trusted()],
    ))
    .await
    .unwrap();
    let file = std::env::temp_dir().join(format!("attest-fed-{}.jwt", uuid::Uuid::new_v4()));
    std::fs::write(&file, k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, 600)).unwrap();
    let path = file.to_string_lossy().into_owned();
    let env = env_of(&sim, &[("AZURE_FEDERATED_TOKEN_FILE", &path)]);
    let tokens = provider(
        &env,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 2),
    );
    let deadline = || Instant::now() + Duration::from_secs(10);
    let first = tokens.token(deadline()).await.unwrap();
    assert_eq!(sim.stats().federated_tokens, 1);

    // The rotation stopped: the file holds an expired token. It is read,
    // refused on the client, and never reaches the token endpoint.
    std::fs::write(&file, k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, -60)).unwrap();
    tokens.invalidate(first.generation).await;
    let before = sim.stats().token_requests;
    let err = tokens.token(deadline()).await.err().unwrap();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(err.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"), "{err}");
    assert_eq!(sim.stats().token_requests, before, "an expired assertion is never sent");

    // Rotated again: the next request reads the new content.
    std::fs::write(&file, k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, 600)).unwrap();
    let second = tokens.token(deadline()).await.unwrap();
    assert_ne!(first.secret.expose_secret(), second.secret.expose_secret());
    assert_eq!(sim.stats().federated_tokens, 2);

    // Gone: a configuration error naming the setting, not a retry.
    std::fs::remove_file(&file).unwrap();
    tokens.invalidate(second.generation).await;
    let err = tokens.token(deadline()).await.err().unwrap();
    assert!(
        matches!(err, intune_attest::graph::auth::AuthError::Configuration(_)),
        "{err}"
    );
    assert!(
        err.to_string().starts_with("AZURE_FEDERATED_TOKEN_FILE: cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn github_actions_signs_the_cli_in_with_an_audience_that_follows_the_cloud() {
    let github = Arc::new(Issuer::new(GITHUB_ISSUER));
    let sim = Sim::start(federated_sim(
        vec![(CLIENT_ID, vec![github.credential(GITHUB_SUBJECT, AUDIENCE)])],
        vec![github.trusted()],
    ))
    .await
    .unwrap();
    const REQUEST_TOKEN: &str = "ghs-request-token-0123456789abcdefghij";
    let minted: Arc<Mutex<Vec<String>>> = Arc::default();
    let audiences: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = {
        let (github, minted, audiences) = (github.clone(), minted.clone(), audiences.clone());
        stand_in(move |parts, _| {
            if header(&parts, "authorization") != format!("Bearer {REQUEST_TOKEN}") {
                return status(401, json!({"message": "bad request token"}));
            }
            let q = query(&parts);
            assert_eq!(q.get("api-version").map(String::as_str), Some("2.0"));
            let audience = q.get("audience").cloned().unwrap_or_default();
            audiences.lock().unwrap().push(audience.clone());
            let jwt = github.mint(GITHUB_SUBJECT, &audience, 300);
            minted.lock().unwrap().push(jwt.clone());
            status(200, json!({"count": 1, "value": jwt}))
        })
        .await
    };
    let request_url = format!("{url}/_apis/distributedtask/hubs/build/plans/p/jobs/j/idtoken?api-version=2.0");
    let env = |extra: &[(&str, &str)]| {
        let mut all = vec![
            ("ATTEST_FEDERATION", "github_actions"),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", request_url.as_str()),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN),
        ];
        all.extend_from_slice(extra);
        env_of(&sim, &all)
    };
    let ids = devices(&sim, 15);
    let (code, stdout, stderr) = cli(env(&[]), json!({"managed_device_ids": ids})).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(result_of(&stdout)["summary"]["initiated"], 15, "{stdout}");
    assert_eq!(audiences.lock().unwrap().as_slice(), [AUDIENCE]);

    // Another cloud asks for its own audience, which this app's credential
    // does not name: Entra refuses, and the run says so.
    let (code, _, china) = cli(env(&[("ATTEST_CLOUD", "china")]), json!({"managed_device_ids": ids})).await;
    assert_eq!(code, 2, "{china}");
    assert!(china.contains("AADSTS700212"), "{china}");
    assert_eq!(
        audiences.lock().unwrap().last().map(String::as_str),
        Some("api://AzureADTokenExchangeChina")
    );

    let mut secrets = vec![REQUEST_TOKEN.to_owned()];
    secrets.extend(minted.lock().unwrap().iter().cloned());
    secrets.extend(sim.issued_tokens());
    assert_absent(&format!("{stdout}\n{stderr}\n{china}"), &secrets);
}

/// Reads a child's stderr as it comes (a trace-level run fills a pipe).
fn capture(child: &mut tokio::process::Child) -> Arc<Mutex<Vec<u8>>> {
    let out: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut stderr = child.stderr.take().unwrap();
    let sink = out.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    out
}

#[tokio::test]
async fn a_user_assigned_managed_identity_signs_the_azure_handler_in() {
    let entra = Arc::new(Issuer::new(&format!(
        "https://login.microsoftonline.com/{TENANT_ID}/v2.0"
    )));
    let sim = Sim::start(federated_sim(
        vec![(CLIENT_ID, vec![entra.credential(IDENTITY_OBJECT_ID, AUDIENCE)])],
        vec![entra.trusted()],
    ))
    .await
    .unwrap();
    const IDENTITY_HEADER: &str = "identity-header-5b7c9d1e3f5a7b9c1d3e";
    let minted: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let endpoint = {
        let (entra, minted, calls) = (entra.clone(), minted.clone(), calls.clone());
        stand_in(move |parts, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            let q = query(&parts);
            if header(&parts, "x-identity-header") != IDENTITY_HEADER
                || q.get("api-version").map(String::as_str) != Some("2019-08-01")
            {
                return status(400, json!({"error": "invalid_request"}));
            }
            if q.get("client_id").map(String::as_str) != Some(IDENTITY_CLIENT_ID) {
                return status(
                    400,
                    json!({"error": "invalid_request", "error_description": "Identity not found"}),
                );
            }
            let resource = q.get("resource").cloned().unwrap_or_default();
            let jwt = entra.mint(IDENTITY_OBJECT_ID, &resource, 3600);
            minted.lock().unwrap().push(jwt.clone());
            let expires_on = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600;
            status(
                200,
                json!({"access_token": jwt, "expires_on": expires_on.to_string(), "resource": resource,
                       "token_type": "Bearer", "client_id": IDENTITY_CLIENT_ID}),
            )
        })
        .await
    };
    let identity_endpoint = format!("{endpoint}/msi/token");
    let start = |client_id: &'static str| {
        let env = env_of(
            &sim,
            &[
                ("ATTEST_FEDERATION", "managed_identity"),
                ("IDENTITY_ENDPOINT", &identity_endpoint),
                ("IDENTITY_HEADER", IDENTITY_HEADER),
                ("ATTEST_MANAGED_IDENTITY_CLIENT_ID", client_id),
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(BIN)
            .env_clear()
            .envs(env)
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("FUNCTIONS_WORKER_RUNTIME", "Custom")
            .env("ATTEST_LOG", "trace")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        (child, port)
    };
    let (mut child, port) = start(IDENTITY_CLIENT_ID);
    let logs = capture(&mut child);
    let mut up = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the handler listens");
    let ids = devices(&sim, 12);
    let envelope =
        json!({"Data": {"message": {"managed_device_ids": ids}}, "Metadata": {"Id": "msg-1", "DequeueCount": 1}});
    let out: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/attest-queue"))
        .json(&envelope)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let result: Value = serde_json::from_str(out["Outputs"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["summary"]["initiated"], 12, "{result}");
    assert!(calls.load(Ordering::Relaxed) >= 1);
    let _ = child.start_kill();
    let _ = child.wait().await;

    // An identity the endpoint does not know: a configuration error naming
    // the setting, with no Graph call.
    let (mut child, port) = start("9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a");
    let more_logs = capture(&mut child);
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let graph_before = sim.stats().batches;
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/attest-queue"))
        .json(&envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        500,
        "the host retries the message once the setting is fixed"
    );
    let text = resp.text().await.unwrap();
    assert!(text.contains("ConfigurationError"), "{text}");
    assert!(text.contains("ATTEST_MANAGED_IDENTITY_CLIENT_ID"), "{text}");
    assert_eq!(sim.stats().batches, graph_before, "no Graph call");
    let _ = child.start_kill();
    let _ = child.wait().await;

    let output = format!(
        "{}\n{}\n{text}",
        String::from_utf8_lossy(&logs.lock().unwrap()),
        String::from_utf8_lossy(&more_logs.lock().unwrap())
    );
    let mut secrets = vec![IDENTITY_HEADER.to_owned()];
    secrets.extend(minted.lock().unwrap().iter().cloned());
    secrets.extend(sim.issued_tokens());
    assert_absent(&output, &secrets);
}

/// A stand-in STS for `GetWebIdentityToken` (moto lacks it): checks the
/// call is SigV4-signed for `sts` and its parameters, and answers the
/// documented XML, or the error `disabled` names.
struct Sts {
    url: String,
    minted: Arc<Mutex<Vec<String>>>,
    calls: Arc<AtomicUsize>,
}

async fn sts(issuer: Arc<Issuer>, disabled: bool) -> Sts {
    let minted: Arc<Mutex<Vec<String>>> = Arc::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let url = {
        let (minted, calls) = (minted.clone(), calls.clone());
        stand_in(move |parts, body| {
            calls.fetch_add(1, Ordering::Relaxed);
            let auth = header(&parts, "authorization");
            let signed = auth.starts_with("AWS4-HMAC-SHA256 Credential=")
                && auth.contains("/us-east-1/sts/aws4_request")
                && auth.contains("Signature=");
            let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
            let xml = |code: u16, text: String| {
                (
                    axum::http::StatusCode::from_u16(code).unwrap(),
                    [("content-type", "text/xml")],
                    text,
                )
                    .into_response()
            };
            let error = |code: u16, name: &str| {
                xml(
                    code,
                    format!(
                        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
                         <Code>{name}</Code><Message>{name}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                        uuid::Uuid::new_v4()
                    ),
                )
            };
            if !signed || parts.method != axum::http::Method::POST {
                return error(403, "IncompleteSignature");
            }
            if form.get("Action").map(String::as_str) != Some("GetWebIdentityToken")
                || form.get("SigningAlgorithm").map(String::as_str) != Some("RS256")
                || form
                    .get("DurationSeconds")
                    .and_then(|d| d.parse::<u32>().ok())
                    .is_none_or(|d| !(60..=3600).contains(&d))
            {
                return error(400, "ValidationError");
            }
            if disabled {
                return error(403, "OutboundWebIdentityFederationDisabledException");
            }
            let audience = form.get("Audience.member.1").cloned().unwrap_or_default();
            let jwt = issuer.mint(ROLE_ARN, &audience, 300);
            minted.lock().unwrap().push(jwt.clone());
            let expiration = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(300));
            xml(
                200,
                format!(
                    "<GetWebIdentityTokenResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                     <GetWebIdentityTokenResult><WebIdentityToken>{jwt}</WebIdentityToken>\
                     <Expiration>{expiration}</Expiration></GetWebIdentityTokenResult>\
                     <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></GetWebIdentityTokenResponse>",
                    uuid::Uuid::new_v4()
                ),
            )
        })
        .await
    };
    Sts { url, minted, calls }
}

fn lambda_env(sim: &Sim, moto: &Moto, sts: &Sts, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("GRAPH_ENDPOINT".into(), sim.url()),
        ("AZURE_AUTHORITY_HOST".into(), sim.url()),
        ("AZURE_TENANT_ID".into(), TENANT_ID.into()),
        ("AZURE_CLIENT_ID".into(), CLIENT_ID.into()),
        ("ATTEST_FEDERATION".into(), "aws".into()),
        ("ATTEST_THROTTLE_WINDOW".into(), "1s".into()),
        ("AWS_ENDPOINT_URL_STS".into(), sts.url.clone()),
        ("AWS_LAMBDA_LOG_FORMAT".into(), "JSON".into()),
        ("ATTEST_LOG".into(), "trace".into()),
    ];
    env.extend(moto.env());
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

#[tokio::test]
async fn the_lambda_function_signs_in_with_its_web_identity_token_for_every_tenant() {
    let aws = Arc::new(Issuer::new(STS_ISSUER));
    let sim = Sim::start(federated_sim(
        vec![
            (CLIENT_ID, vec![aws.credential(ROLE_ARN, AUDIENCE)]),
            (FABRIKAM_CLIENT, vec![aws.credential(ROLE_ARN, AUDIENCE)]),
        ],
        vec![aws.trusted()],
    ))
    .await
    .unwrap();
    let moto = Moto::start().await;
    let clients = Clients::new(&moto).await;
    // The further tenant's document names federation: no secret in it.
    let fabrikam = clients
        .secret(
            "intune-attest/tenants/fabrikam",
            &json!({"tenant_id": TENANT_ID, "client_id": FABRIKAM_CLIENT, "federation": "aws"}).to_string(),
        )
        .await;
    let sts = sts(aws.clone(), false).await;
    let env = lambda_env(
        &sim,
        &moto,
        &sts,
        &[("TENANT_NAMES", "fabrikam"), ("TENANT_SECRET_IDS", &fabrikam)],
    );
    assert!(
        !env.iter()
            .any(|(k, _)| k == "SECRET_ID" || k.starts_with("AZURE_CLIENT_SECRET"))
    );
    let mut f = crate::lambda_runtime::function(env).await;
    let logs = capture(&mut f.child);
    let ids = devices(&sim, 30);
    let (ok, own) = f.invoke(json!({"managed_device_ids": &ids[..15]})).await;
    assert!(ok, "{own}");
    assert_eq!(own["summary"]["initiated"], 15, "{own}");
    let (ok, other) = f
        .invoke(json!({"managed_device_ids": &ids[15..], "tenant": "fabrikam"}))
        .await;
    assert!(ok, "{other}");
    assert_eq!(other["summary"]["initiated"], 15, "{other}");
    let apps: std::collections::HashSet<String> = sim.ledger().into_iter().map(|e| e.app).collect();
    assert_eq!(apps.len(), 2, "each tenant signed in as its own app");
    assert!(
        sts.calls.load(Ordering::Relaxed) >= 2,
        "one web identity token per token request"
    );
    assert_eq!(sim.stats().federated_tokens as usize, sts.minted.lock().unwrap().len());
    let _ = f.child.start_kill();
    let _ = f.child.wait().await;
    let output = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let mut secrets: Vec<String> = sts.minted.lock().unwrap().clone();
    secrets.extend(sim.issued_tokens());
    assert_absent(&format!("{output}\n{own}\n{other}"), &secrets);
}

#[tokio::test]
async fn outbound_federation_disabled_for_the_account_is_a_configuration_error_before_any_graph_call() {
    let aws = Arc::new(Issuer::new(STS_ISSUER));
    let sim = Sim::start(federated_sim(
        vec![(CLIENT_ID, vec![aws.credential(ROLE_ARN, AUDIENCE)])],
        vec![aws.trusted()],
    ))
    .await
    .unwrap();
    let moto = Moto::start().await;
    let sts = sts(aws, true).await;
    let mut f = crate::lambda_runtime::function(lambda_env(&sim, &moto, &sts, &[])).await;
    // Trace-level output fills a pipe: read it as it comes.
    let _logs = capture(&mut f.child);
    let ids = devices(&sim, 5);
    let (ok, err) = f.invoke(json!({"managed_device_ids": ids})).await;
    assert!(!ok);
    assert_eq!(err["errorType"], "ConfigurationError", "{err}");
    let message = err["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("ATTEST_FEDERATION=aws"), "{message}");
    assert!(message.contains("enable-outbound-web-identity-federation"), "{message}");
    assert_eq!(
        sim.stats().http_requests,
        0,
        "neither Graph nor the token endpoint was called"
    );
    assert!(sts.calls.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn federation_without_what_it_needs_stops_at_start_up_naming_the_setting() {
    let sim = Sim::start(federated_sim(vec![(CLIENT_ID, vec![])], vec![]))
        .await
        .unwrap();
    let missing = std::env::temp_dir().join(format!("attest-none-{}", uuid::Uuid::new_v4()));
    let missing = missing.to_string_lossy().into_owned();
    let ids = devices(&sim, 3);
    for (extra, setting) in [
        (
            vec![("ATTEST_FEDERATION", "github_actions")],
            "ACTIONS_ID_TOKEN_REQUEST_URL",
        ),
        (
            vec![
                ("ATTEST_FEDERATION", "managed_identity"),
                ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token"),
                ("IDENTITY_HEADER", "h"),
            ],
            "ATTEST_MANAGED_IDENTITY_CLIENT_ID",
        ),
        (vec![("ATTEST_FEDERATION", "kerberos")], "ATTEST_FEDERATION"),
        (
            vec![("AZURE_FEDERATED_TOKEN_FILE", missing.as_str())],
            "AZURE_FEDERATED_TOKEN_FILE",
        ),
    ] {
        let (code, _, stderr) = cli(env_of(&sim, &extra), json!({"managed_device_ids": ids})).await;
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(setting), "{extra:?}: {stderr}");
    }
    // The Azure handler does not start.
    let out = tokio::process::Command::new(BIN)
        .env_clear()
        .envs(env_of(
            &sim,
            &[
                ("ATTEST_FEDERATION", "managed_identity"),
                ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token"),
                ("IDENTITY_HEADER", "h"),
            ],
        ))
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "1")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ATTEST_MANAGED_IDENTITY_CLIENT_ID"));
    assert_eq!(
        sim.stats().http_requests,
        0,
        "no call reached Graph or the token endpoint"
    );
}

#[tokio::test]
async fn the_token_endpoint_accepts_only_a_matching_signed_unexpired_assertion() {
    let k8s = Issuer::new(KUBERNETES_ISSUER);
    let impostor = Issuer::new(KUBERNETES_ISSUER);
    let mut cfg = federated_sim(
        vec![(CLIENT_ID, vec![k8s.credential(KUBERNETES_SUBJECT, AUDIENCE)])],
        vec![k8s.trusted()],
    );
    cfg.apps[0].secret = Some("also-a-secret-value".into());
    let sim = Sim::start(cfg).await.unwrap();
    let post = |assertion: String, secret: Option<&str>| {
        let url = format!("{}/{TENANT_ID}/oauth2/v2.0/token", sim.url());
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", CLIENT_ID.to_owned()),
            ("scope", format!("{}/.default", sim.url())),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".to_owned(),
            ),
            ("client_assertion", assertion),
        ];
        if let Some(s) = secret {
            form.push(("client_secret", s.to_owned()));
        }
        async move {
            let resp = reqwest::Client::new().post(url).form(&form).send().await.unwrap();
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap();
            (status, body["error_codes"][0].as_u64().unwrap_or(0))
        }
    };
    assert_eq!(post(k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, 300), None).await, (200, 0));
    let refused = [
        (k8s.mint("system:serviceaccount:other:app", AUDIENCE, 300), None, 700213),
        (
            k8s.mint(KUBERNETES_SUBJECT, "api://AzureADTokenExchangeUSGov", 300),
            None,
            700212,
        ),
        (impostor.mint(KUBERNETES_SUBJECT, AUDIENCE, 300), None, 5002738),
        (k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, -1), None, 700024),
        (
            Issuer::new(GITHUB_ISSUER).mint(KUBERNETES_SUBJECT, AUDIENCE, 300),
            None,
            700211,
        ),
        (
            k8s.mint(KUBERNETES_SUBJECT, AUDIENCE, 300),
            Some("also-a-secret-value"),
            90014,
        ),
    ];
    for (assertion, secret, code) in refused {
        let (status, got) = post(assertion, secret).await;
        assert!(status >= 400, "{code}");
        assert_eq!(got, code);
    }
    assert_eq!(sim.stats().federated_tokens, 1);
}

#[tokio::test]
async fn a_token_for_another_cloud_is_a_configuration_error_naming_the_cloud_settings_and_not_retried() {
    let sim = Sim::start(attestable_fleet(40)).await.unwrap();
    sim.set_faults(graph_sim::Faults {
        invalid_audience: true,
        ..Default::default()
    });
    let ids = devices(&sim, 40);
    let started = std::time::Instant::now();
    let mut env = env_of(&sim, &[]);
    env.retain(|k, _| k != "AZURE_CLIENT_SECRET");
    let secret = graph_sim::CLIENT_SECRET;
    let output = tokio::process::Command::new(BIN)
        .args(["invoke", "--event", "-", "--no-progress"])
        .env_clear()
        .envs(env)
        .env("AZURE_CLIENT_SECRET", secret)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = output;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                json!({"managed_device_ids": ids, "timeouts": {"invoke": "60s"}})
                    .to_string()
                    .as_bytes(),
            )
            .await
            .unwrap();
    }
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("Invalid audience") && stderr.contains("ATTEST_CLOUD"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not retried until the deadline"
    );
    assert!(sim.stats().unauthorized <= 4, "{:?}", sim.stats());
}

#[tokio::test]
async fn tokens_are_refreshed_ahead_by_one_caller_and_a_failed_refresh_keeps_the_valid_token() {
    let mut cfg = attestable_fleet(1);
    cfg.token_lifetime = Duration::from_secs(4);
    cfg.token_refresh_in = Some(1);
    let sim = Sim::start(cfg).await.unwrap();
    let env = env_of(&sim, &[]);
    let tokens = provider(
        &env,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 2),
    );
    let tokens = Arc::new(tokens);
    let deadline = || Instant::now() + Duration::from_secs(10);
    let first = tokens.token(deadline()).await.unwrap();
    let same = futures_util::future::join_all((0..20).map(|_| tokens.token(deadline()))).await;
    assert!(same.iter().all(|t| t.as_ref().unwrap().generation == first.generation));
    assert_eq!(sim.stats().token_requests, 1);

    // Past refresh_in: one caller refreshes while the others keep the
    // valid token at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.configure(|c| c.faults.token_delay_ms = 400);
    let started = Instant::now();
    let refresher = {
        let tokens = tokens.clone();
        tokio::spawn(async move { tokens.token(Instant::now() + Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let others = futures_util::future::join_all((0..10).map(|_| tokens.token(deadline()))).await;
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "the others did not wait for the refresh"
    );
    assert!(
        others
            .iter()
            .all(|t| t.as_ref().unwrap().generation == first.generation)
    );
    let second = refresher.await.unwrap().unwrap();
    assert_ne!(second.generation, first.generation);
    assert_eq!(sim.stats().token_requests, 2, "one refresh");

    // A refresh that fails leaves the valid token serving.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.configure(|c| {
        c.faults.token_delay_ms = 0;
        c.faults.token_down = true;
    });
    let kept = tokens.token(deadline()).await.unwrap();
    assert_eq!(
        kept.generation, second.generation,
        "the failed refresh did not fail the call"
    );
    assert!(sim.stats().token_requests > 2);
}
