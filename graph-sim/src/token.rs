//! The Entra ID token endpoint: client secrets, certificate assertions, and
//! federated credentials (an external issuer's token, verified against that
//! issuer's keys and matched exactly on issuer, subject and audience); the
//! device code and refresh token grants are in [`crate::device_code`].

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::server::Answer;
use crate::{IssuedToken, State, lock};

pub(crate) fn aad_error(status: u16, error: &str, code: u32, description: &str) -> Answer {
    Answer::json(
        status,
        json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
               "error_codes": [code], "trace_id": uuid::Uuid::new_v4().to_string(),
               "correlation_id": uuid::Uuid::new_v4().to_string()}),
    )
}

pub(crate) async fn handle(state: &State, path: &str, body: &[u8]) -> Answer {
    lock(&state.stats).token_requests += 1;
    let answer = issue(state, path, body).await;
    if answer.status != 200 {
        lock(&state.stats).token_refusals += 1;
    }
    answer
}

async fn issue(state: &State, path: &str, body: &[u8]) -> Answer {
    let (faults, tenant, apps, issuers) = {
        let cfg = lock(&state.cfg);
        (
            cfg.faults.clone(),
            cfg.tenant_id.clone(),
            cfg.apps.clone(),
            cfg.issuers.clone(),
        )
    };
    if faults.token_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.token_delay_ms)).await;
    }
    if faults.token_down {
        return aad_error(
            503,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
        );
    }
    let path_tenant = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    if path_tenant != tenant {
        return aad_error(400, "invalid_request", 90002, "Tenant not found.");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    match form.get("grant_type").map(String::as_str) {
        Some(crate::device_code::GRANT) => return crate::device_code::redeem(state, &form),
        Some("refresh_token") => return crate::device_code::refresh(state, &form),
        _ => {}
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if !form.get("scope").is_some_and(|s| s.ends_with("/.default")) {
        return aad_error(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(app) = apps.iter().find(|a| a.client_id == client_id) else {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    };
    if faults.token_invalid_client {
        return aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.");
    }
    if form.contains_key("client_secret") && form.contains_key("client_assertion") {
        return aad_error(
            400,
            "invalid_request",
            90014,
            "A request may carry either a client secret or a client assertion, not both.",
        );
    }
    let mut federated = false;
    let ok = if let Some(secret) = form.get("client_secret") {
        app.secret.as_deref() == Some(secret.as_str())
    } else if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return aad_error(400, "invalid_request", 50027, "Invalid client_assertion_type.");
        }
        let token_url = format!("{}{}", state.base_url, path);
        if unverified_issuer(assertion).as_deref() == Some(client_id.as_str()) {
            match &app.certificate {
                Some((public_pem, thumbprint)) => {
                    verify_assertion(assertion, public_pem, thumbprint, &client_id, &token_url)
                }
                None => false,
            }
        } else {
            if let Err((code, why)) = verify_federated(assertion, &app.federated, &issuers) {
                return aad_error(400, "invalid_client", code, why);
            }
            federated = true;
            true
        }
    } else {
        false
    };
    if !ok {
        return aad_error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.",
        );
    }
    if federated {
        lock(&state.stats).federated_tokens += 1;
    }
    mint(state, &client_id, None, false)
}

/// Issues an access token for `client_id` (acting for `user`, when
/// delegated), and a refresh token too when `offline`.
pub(crate) fn mint(state: &State, client_id: &str, user: Option<crate::SimUser>, offline: bool) -> Answer {
    let lifetime = lock(&state.cfg).token_lifetime;
    let token = format!(
        "sim.{}.{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let generation = *lock(&state.token_generation);
    if user.is_some() {
        lock(&state.stats).delegated_tokens += 1;
    }
    lock(&state.tokens).insert(
        token.clone(),
        IssuedToken {
            client_id: client_id.to_owned(),
            user: user.clone(),
            expires: Instant::now() + lifetime,
            generation,
        },
    );
    let expires_in = lock(&state.cfg)
        .token_expires_in
        .clone()
        .unwrap_or_else(|| json!(lifetime.as_secs()));
    let mut answer = json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": lifetime.as_secs(), "access_token": token});
    if let Some(r) = lock(&state.cfg).token_refresh_in {
        answer["refresh_in"] = json!(r);
    }
    if let (Some(user), true) = (user, offline) {
        let refresh = crate::device_code::issue_refresh(state, client_id, user);
        answer["refresh_token"] = json!(refresh);
        answer["scope"] =
            json!("DeviceManagementManagedDevices.PrivilegedOperations.All DeviceManagementManagedDevices.Read.All");
    }
    Answer::json(200, answer)
}

fn verify_assertion(jwt: &str, public_pem: &str, thumbprint: &str, client_id: &str, token_url: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        sub: String,
        #[allow(dead_code)]
        jti: String,
    }
    let Ok(header) = jsonwebtoken::decode_header(jwt) else {
        return false;
    };
    if header.x5t_s256.as_deref() != Some(thumbprint) {
        return false;
    }
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem.as_bytes()) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    if !matches!(
        header.alg,
        jsonwebtoken::Algorithm::PS256 | jsonwebtoken::Algorithm::RS256
    ) {
        return false;
    }
    validation.set_audience(&[token_url]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    match jsonwebtoken::decode::<Claims>(jwt, &key, &validation) {
        Ok(data) => data.claims.iss == client_id && data.claims.sub == client_id,
        Err(_) => false,
    }
}

/// The `iss` claim of a JWT, read without verifying anything (to tell a
/// certificate assertion, issued by the app itself, from an external one).
fn unverified_issuer(jwt: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// Checks an external assertion as Entra does for a federated credential:
/// RS256 only, signed by one of its issuer's keys, within its time range
/// (no leeway), and issuer, subject and audience equal to one of the app's
/// federated credentials. The error is an AADSTS number and its text.
fn verify_federated(
    jwt: &str,
    credentials: &[crate::FederatedCredential],
    issuers: &[crate::TrustedIssuer],
) -> Result<(), (u32, &'static str)> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        sub: String,
        aud: serde_json::Value,
    }
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| (50027, "The assertion is not a valid JWT."))?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        return Err((5002738, "The assertion is not signed with RS256."));
    }
    let issuer = unverified_issuer(jwt).ok_or((50027, "The assertion has no issuer."))?;
    let trusted = issuers.iter().find(|i| i.issuer == issuer).ok_or((
        700211,
        "No matching federated identity record found for presented assertion issuer.",
    ))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.leeway = 0;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let mut claims = None;
    let mut expired = false;
    for pem in &trusted.public_keys_pem {
        let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()) else {
            continue;
        };
        match jsonwebtoken::decode::<Claims>(jwt, &key, &validation) {
            Ok(data) => {
                claims = Some(data.claims);
                break;
            }
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => expired = true,
            Err(_) => {}
        }
    }
    if expired {
        return Err((700024, "Client assertion is not within its valid time range."));
    }
    let claims = claims.ok_or((
        5002738,
        "The assertion's signature does not verify against the issuer's keys.",
    ))?;
    let audiences: Vec<String> = match &claims.aud {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    };
    let of_issuer: Vec<&crate::FederatedCredential> = credentials.iter().filter(|c| c.issuer == claims.iss).collect();
    if of_issuer.is_empty() {
        return Err((
            700211,
            "No matching federated identity record found for presented assertion issuer.",
        ));
    }
    let of_subject: Vec<&&crate::FederatedCredential> = of_issuer.iter().filter(|c| c.subject == claims.sub).collect();
    if of_subject.is_empty() {
        return Err((
            700213,
            "No matching federated identity record found for presented assertion subject.",
        ));
    }
    if !of_subject.iter().any(|c| audiences.contains(&c.audience)) {
        return Err((
            700212,
            "No matching federated identity record found for presented assertion audience.",
        ));
    }
    Ok(())
}
