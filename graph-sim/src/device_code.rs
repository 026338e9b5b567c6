//! The device authorization grant (RFC 8628) as Entra ID serves it: the
//! `/devicecode` endpoint hands out a device code and a user code, the
//! client polls the token endpoint (`authorization_pending` until the user
//! signs in at the verification page, `slow_down` when it polls sooner
//! than the interval, `expired_token` after the code's lifetime), and the
//! token it gets acts for the user. An app must allow public client flows
//! for its tokens to be redeemed without a secret (AADSTS7000218 otherwise).
//! Refresh tokens are issued with `offline_access` and rotate on each use.

use std::collections::HashMap;

use serde_json::json;
use tokio::time::Instant;

use crate::server::Answer;
use crate::token::{aad_error, mint};
use crate::{SimUser, State, lock};

/// The device code grant type.
pub(crate) const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A device code handed out and not yet redeemed.
pub(crate) struct Pending {
    client_id: String,
    user_code: String,
    offline: bool,
    expires: Instant,
    last_poll: Option<Instant>,
    decision: Decision,
}

enum Decision {
    Waiting,
    SignedIn(SimUser),
    Declined,
}

/// A refresh token's grant.
pub(crate) struct Refresh {
    client_id: String,
    user: SimUser,
}

fn form_tenant_ok(state: &State, path: &str) -> bool {
    let tenant = lock(&state.cfg).tenant_id.clone();
    path.trim_start_matches('/').split('/').next() == Some(tenant.as_str())
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
pub(crate) fn authorize(state: &State, path: &str, body: &[u8]) -> Answer {
    if !form_tenant_ok(state, path) {
        return aad_error(400, "invalid_request", 90002, "Tenant not found.");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let (known, interval, lifetime) = {
        let cfg = lock(&state.cfg);
        (
            cfg.apps.iter().any(|a| a.client_id == client_id),
            cfg.device_code_interval,
            cfg.device_code_lifetime,
        )
    };
    if !known {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            "Application not found in the directory.",
        );
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if !scopes.iter().any(|s| s.ends_with("/.default")) {
        return aad_error(
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid.",
        );
    }
    let device_code = format!("simdc.{}", uuid::Uuid::new_v4().simple());
    let user_code: String = {
        let mut rng = lock(&state.rng);
        (0..9)
            .map(|_| {
                let alphabet = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
                char::from(alphabet[rng.usize(..alphabet.len())])
            })
            .collect()
    };
    lock(&state.device_codes).insert(
        device_code.clone(),
        Pending {
            client_id,
            user_code: user_code.clone(),
            offline: scopes.contains(&"offline_access"),
            expires: Instant::now() + lifetime,
            last_poll: None,
            decision: Decision::Waiting,
        },
    );
    let uri = format!("{}/devicelogin", state.base_url);
    Answer::json(
        200,
        json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": uri,
            "expires_in": lifetime.as_secs(),
            "interval": interval.as_secs().max(1),
            "message": format!("To sign in, use a web browser to open the page {uri} and enter the code {user_code} to authenticate."),
        }),
    )
}

/// Records the user's decision on the sign-in with `user_code`: signed in
/// as `user`, or declined (`None`).
pub(crate) fn decide(state: &State, user_code: &str, user: Option<SimUser>) -> bool {
    let mut codes = lock(&state.device_codes);
    let Some(p) = codes
        .values_mut()
        .find(|p| p.user_code == user_code && matches!(p.decision, Decision::Waiting))
    else {
        return false;
    };
    p.decision = match user {
        Some(u) => Decision::SignedIn(u),
        None => Decision::Declined,
    };
    true
}

/// `POST /devicelogin` with a form `user_code`, `user` and optionally
/// `intune_role=false` or `decline=true`: the page a person signs in at.
pub(crate) fn sign_in_form(state: &State, body: &[u8]) -> Answer {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let code = form.get("user_code").cloned().unwrap_or_default();
    let user = if form.get("decline").map(String::as_str) == Some("true") {
        None
    } else {
        Some(SimUser {
            upn: form
                .get("user")
                .cloned()
                .unwrap_or_else(|| "responder@contoso.example".into()),
            intune_role: form.get("intune_role").map(String::as_str) != Some("false"),
        })
    };
    if decide(state, &code, user) {
        Answer::json(200, json!({"signed_in": true}))
    } else {
        Answer::error(404, "NotFound", "No sign-in is waiting for that code.")
    }
}

/// The token endpoint's device code grant.
pub(crate) fn redeem(state: &State, form: &HashMap<String, String>) -> Answer {
    lock(&state.stats).device_code_polls += 1;
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let code = form.get("device_code").cloned().unwrap_or_default();
    let (interval, public) = {
        let cfg = lock(&state.cfg);
        let public = cfg.apps.iter().any(|a| a.client_id == client_id && a.public_client);
        (cfg.device_code_interval, public)
    };
    let mut codes = lock(&state.device_codes);
    let Some(p) = codes.get_mut(&code).filter(|p| p.client_id == client_id) else {
        return aad_error(
            400,
            "bad_verification_code",
            70019,
            "The device code was not recognized.",
        );
    };
    let now = Instant::now();
    if now >= p.expires {
        codes.remove(&code);
        lock(&state.redeemed_device_codes).push(code.clone());
        return aad_error(
            400,
            "expired_token",
            70020,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        );
    }
    // Sooner than nine tenths of the interval after the last poll.
    if p.last_poll
        .is_some_and(|at| now.duration_since(at) < interval.mul_f64(0.9))
    {
        p.last_poll = Some(now);
        lock(&state.stats).slow_downs += 1;
        return aad_error(
            400,
            "slow_down",
            70016,
            "Polling too often: wait the interval between polls.",
        );
    }
    p.last_poll = Some(now);
    match &p.decision {
        Decision::Waiting => aad_error(
            400,
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        ),
        Decision::Declined => {
            codes.remove(&code);
            lock(&state.redeemed_device_codes).push(code.clone());
            aad_error(
                400,
                "authorization_declined",
                70000,
                "The user declined the sign-in request.",
            )
        }
        Decision::SignedIn(_) if !public => aad_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ),
        Decision::SignedIn(user) => {
            let (user, offline) = (user.clone(), p.offline);
            codes.remove(&code);
            drop(codes);
            lock(&state.redeemed_device_codes).push(code);
            mint(state, &client_id, Some(user), offline)
        }
    }
}

/// A new refresh token for `user` of `client_id`.
pub(crate) fn issue_refresh(state: &State, client_id: &str, user: SimUser) -> String {
    let token = format!("simrt.{}", uuid::Uuid::new_v4().simple());
    lock(&state.refresh_tokens).insert(
        token.clone(),
        Refresh {
            client_id: client_id.to_owned(),
            user,
        },
    );
    token
}

/// The token endpoint's refresh token grant: the token is used up and a
/// new one comes with the access token.
pub(crate) fn refresh(state: &State, form: &HashMap<String, String>) -> Answer {
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let token = form.get("refresh_token").cloned().unwrap_or_default();
    let grant = {
        let mut tokens = lock(&state.refresh_tokens);
        match tokens.get(&token) {
            Some(r) if r.client_id == client_id => {
                lock(&state.redeemed_device_codes).push(token.clone());
                tokens.remove(&token)
            }
            _ => None,
        }
    };
    let Some(grant) = grant else {
        return aad_error(
            400,
            "invalid_grant",
            70008,
            "The provided authorization code or refresh token has expired or was revoked.",
        );
    };
    lock(&state.stats).refresh_grants += 1;
    mint(state, &client_id, Some(grant.user), true)
}
