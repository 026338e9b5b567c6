//! The Entra ID token endpoint: client secrets and certificate assertions.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::server::Answer;
use crate::{IssuedToken, State, lock};

fn aad_error(status: u16, error: &str, code: u32, description: &str) -> Answer {
    Answer::json(
        status,
        json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
               "error_codes": [code], "trace_id": uuid::Uuid::new_v4().to_string(),
               "correlation_id": uuid::Uuid::new_v4().to_string()}),
    )
}

pub(crate) async fn handle(state: &State, path: &str, body: &[u8]) -> Answer {
    lock(&state.stats).token_requests += 1;
    let (faults, tenant, apps, lifetime) = {
        let cfg = lock(&state.cfg);
        (
            cfg.faults.clone(),
            cfg.tenant_id.clone(),
            cfg.apps.clone(),
            cfg.token_lifetime,
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
    let ok = if let Some(secret) = form.get("client_secret") {
        app.secret.as_deref() == Some(secret.as_str())
    } else if let Some(assertion) = form.get("client_assertion") {
        let token_url = format!("{}{}", state.base_url, path);
        match &app.certificate {
            Some((public_pem, thumbprint)) => {
                verify_assertion(assertion, public_pem, thumbprint, &client_id, &token_url)
            }
            None => false,
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
    let token = format!(
        "sim.{}.{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let generation = *lock(&state.token_generation);
    lock(&state.tokens).insert(
        token.clone(),
        IssuedToken {
            client_id: client_id.clone(),
            expires: Instant::now() + lifetime,
            generation,
        },
    );
    let expires_in = lock(&state.cfg)
        .token_expires_in
        .clone()
        .unwrap_or_else(|| json!(lifetime.as_secs()));
    Answer::json(
        200,
        json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": lifetime.as_secs(), "access_token": token}),
    )
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
