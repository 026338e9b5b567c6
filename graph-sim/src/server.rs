//! HTTP routing, Graph request dispatch, `$batch`, and fault injection.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{LedgerEntry, RetryAfterForm, SimUser, State, device_code, lock, token};

/// A dispatched answer, before it is written to the wire.
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Option<Value>,
}

impl Answer {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: vec![],
            body: Some(body),
        }
    }

    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let rid = uuid::Uuid::new_v4().to_string();
        let mut a = Self::json(
            status,
            json!({"error": {"code": code, "message": message,
                "innerError": {"date": "2026-01-01T00:00:00", "request-id": rid, "client-request-id": rid}}}),
        );
        a.headers.push(("request-id".into(), rid));
        a
    }

    fn into_response(self) -> Response {
        let mut builder =
            Response::builder().status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        let has_rid = self.headers.iter().any(|(k, _)| k == "request-id");
        for (k, v) in &self.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if !has_rid {
            builder = builder.header("request-id", uuid::Uuid::new_v4().to_string());
        }
        let body = match self.body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        builder.body(body).unwrap_or_default()
    }
}

pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new().fallback(move |req: Request<Body>| {
        let state = state.clone();
        async move { handle(state, req).await }
    })
}

fn roll(state: &State, p: f64) -> bool {
    p > 0.0 && lock(&state.rng).f64() < p
}

async fn handle(state: Arc<State>, req: Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 4 * 1024 * 1024).await.unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    lock(&state.stats).http_requests += 1;

    if parts.method == Method::POST && path.ends_with("/oauth2/v2.0/token") {
        return token::handle(&state, &path, &body).await.into_response();
    }
    if parts.method == Method::POST && path.ends_with("/oauth2/v2.0/devicecode") {
        return device_code::authorize(&state, &path, &body).into_response();
    }
    if parts.method == Method::POST && path == "/devicelogin" {
        return device_code::sign_in_form(&state, &body).into_response();
    }
    if path == "/_sim/ledger" {
        let counts: Vec<Value> = lock(&state.ledger)
            .iter()
            .map(|e| json!({"device_id": e.device_id, "kind": e.kind}))
            .collect();
        return Answer::json(200, json!({"accepted": counts})).into_response();
    }
    let Some(rel) = path.strip_prefix("/beta") else {
        return Answer::error(400, "BadRequest", "Invalid version: expected /beta").into_response();
    };
    if lock(&state.cfg).faults.invalid_audience {
        lock(&state.stats).unauthorized += 1;
        return Answer::error(401, "InvalidAuthenticationToken", "Invalid audience.").into_response();
    }
    let Some(caller) = authorise(&state, &parts.headers) else {
        lock(&state.stats).unauthorized += 1;
        return Answer::error(
            401,
            "InvalidAuthenticationToken",
            "Access token has expired or is not yet valid.",
        )
        .into_response();
    };

    let faults = lock(&state.cfg).faults.clone();
    let (lo, hi) = faults.latency_ms;
    let mut delay = if hi > lo {
        lo + lock(&state.rng).u64(0..=hi - lo)
    } else {
        lo
    };
    if roll(&state, faults.tail.0) {
        delay += faults.tail.1;
    }
    if roll(&state, faults.hang) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }

    let is_batch = rel == "/$batch" && parts.method == Method::POST;
    if is_batch {
        if roll(&state, faults.batch_5xx) {
            let status = [500, 502, 503, 504][lock(&state.rng).usize(..4)];
            let mut a = Answer::error(status, "ServiceUnavailable", "The service is temporarily unavailable.");
            if status == 503 {
                a.headers.push(("Retry-After".into(), "0.2".into()));
            }
            return a.into_response();
        }
        if roll(&state, faults.batch_424) {
            return Answer::error(424, "FailedDependency", "The batch failed.").into_response();
        }
        if roll(&state, faults.batch_429) {
            lock(&state.stats).throttled += 1;
            let mut a = Answer::error(429, "TooManyRequests", "Too many requests.");
            if let Some(v) = retry_after_value(&state, Duration::from_millis(300)) {
                a.headers.push(("Retry-After".into(), v));
            }
            return a.into_response();
        }
    }

    let answer = if is_batch {
        batch(&state, &caller, &body)
    } else {
        let pq = match &query {
            Some(q) => format!("{rel}?{q}"),
            None => rel.to_owned(),
        };
        dispatch(&state, parts.method.as_str(), &pq, &caller)
    };

    if roll(&state, faults.drop_after_accept) {
        let text = answer.body.map(|b| b.to_string()).unwrap_or_else(|| "{}".into());
        let half = Bytes::from(text.into_bytes()).slice(..1);
        let stream = futures_util::stream::iter(vec![
            Ok::<Bytes, std::io::Error>(half),
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated reset",
            )),
        ]);
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_default();
    }
    if is_batch && roll(&state, faults.truncate) {
        let text = answer.body.map(|b| b.to_string()).unwrap_or_default();
        let cut = text.len() / 2;
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(text[..cut].to_owned()))
            .unwrap_or_default();
    }
    answer.into_response()
}

/// Who a valid token speaks for: an app, and for a delegated token the
/// user who signed in.
pub(crate) struct Caller {
    app: String,
    user: Option<SimUser>,
}

fn authorise(state: &State, headers: &HeaderMap) -> Option<Caller> {
    let value = headers
        .get("authorization")
        .and_then(|v: &HeaderValue| v.to_str().ok())?;
    let token = value.strip_prefix("Bearer ")?;
    let generation = *lock(&state.token_generation);
    let tokens = lock(&state.tokens);
    let t = tokens.get(token)?;
    (t.expires > Instant::now() && t.generation == generation).then(|| Caller {
        app: t.client_id.clone(),
        user: t.user.clone(),
    })
}

pub(crate) fn retry_after_value(state: &State, wait: Duration) -> Option<String> {
    let form = lock(&state.cfg).retry_after;
    let form = if form == RetryAfterForm::Rotate {
        let mut r = lock(&state.rotate);
        *r += 1;
        [
            RetryAfterForm::Integer,
            RetryAfterForm::Decimal,
            RetryAfterForm::HttpDate,
            RetryAfterForm::Missing,
        ][*r % 4]
    } else {
        form
    };
    match form {
        RetryAfterForm::Integer => Some(wait.as_secs_f64().ceil().max(1.0).to_string()),
        RetryAfterForm::Decimal => Some(format!("{:.3}", wait.as_secs_f64())),
        RetryAfterForm::HttpDate => Some(httpdate::fmt_http_date(
            SystemTime::now() + wait + Duration::from_secs(1),
        )),
        RetryAfterForm::Missing => None,
        RetryAfterForm::Absurd => Some("86400".into()),
        RetryAfterForm::AlwaysOne => Some("1".into()),
        RetryAfterForm::Rotate => None,
    }
}

fn batch(state: &State, caller: &Caller, body: &[u8]) -> Answer {
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        return Answer::error(400, "BadRequest", "Invalid batch payload format.");
    };
    let Some(requests) = parsed.get("requests").and_then(Value::as_array) else {
        return Answer::error(400, "BadRequest", "Invalid batch payload format: requests is missing.");
    };
    if requests.is_empty() || requests.len() > 20 {
        return Answer::error(400, "BadRequest", "Number of batch requests must be between 1 and 20.");
    }
    let mut ids = std::collections::HashSet::new();
    for r in requests {
        let id = r
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_ascii_lowercase();
        if id.is_empty() || !ids.insert(id) {
            return Answer::error(400, "BadRequest", "Batch request ids must be present and unique.");
        }
    }
    {
        let mut s = lock(&state.stats);
        s.batches += 1;
        s.batch_items += requests.len() as u64;
    }
    let faults = lock(&state.cfg).faults.clone();
    let mut responses: Vec<Value> = requests
        .iter()
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            let method = r.get("method").and_then(Value::as_str).unwrap_or_default();
            let url = r.get("url").and_then(Value::as_str).unwrap_or_default();
            let answer = if !url.starts_with('/') || url.starts_with("/beta/") || url.starts_with("/v1.0/") {
                Answer::error(
                    400,
                    "BadRequest",
                    "Invalid request URL: it must be relative to the version root.",
                )
            } else if roll(state, faults.item_5xx) {
                let status = [500, 502, 503, 504][lock(&state.rng).usize(..4)];
                Answer::error(status, "ServiceUnavailable", "Transient failure.")
            } else {
                dispatch(state, method, url, caller)
            };
            let headers: serde_json::Map<String, Value> =
                answer.headers.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            let mut item = json!({"id": id, "status": answer.status, "headers": headers});
            if let Some(b) = answer.body {
                item["body"] = b;
            }
            item
        })
        .collect();
    lock(&state.rng).shuffle(&mut responses);
    if roll(state, faults.missing_item) {
        let i = lock(&state.rng).usize(..responses.len());
        responses.remove(i);
    }
    if roll(state, faults.duplicate_item) && !responses.is_empty() {
        let i = lock(&state.rng).usize(..responses.len());
        let mut dup = responses[i].clone();
        dup["status"] = json!(500);
        responses.push(dup);
    }
    Answer::json(200, json!({"responses": responses}))
}

/// Serves one Graph request (direct, or an item of a batch). `target` is
/// relative to the version root and may carry a query.
fn dispatch(state: &State, method: &str, target: &str, caller: &Caller) -> Answer {
    let app = caller.app.as_str();
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let write = method != "GET";
    let (limits, window, count_rejected, windows) = {
        let cfg = lock(&state.cfg);
        (cfg.limits, cfg.window, cfg.count_rejected, cfg.windows)
    };
    if let Some(limits) = limits {
        let counting = crate::throttle::Counting {
            limits,
            window,
            count_rejected,
            windows,
        };
        let wait = lock(&state.throttle).admit(app, write, &counting, Instant::now());
        if let Some(wait) = wait {
            {
                let mut s = lock(&state.stats);
                s.throttled += 1;
                if write {
                    s.throttled_writes += 1;
                    s.writes += 1;
                }
            }
            let mut a = Answer::error(429, "TooManyRequests", "Too many requests.");
            if let Some(v) = retry_after_value(state, wait) {
                a.headers.push(("Retry-After".into(), v));
            }
            return a;
        }
    }
    match (method, segments.as_slice()) {
        ("GET", ["deviceManagement", "managedDevices"]) => list(state, query),
        ("GET", ["deviceManagement", "managedDevices", id]) => {
            lock(&state.stats).device_reads += 1;
            match state.by_id.get(&id.to_ascii_lowercase()) {
                None => Answer::error(
                    404,
                    "ResourceNotFound",
                    &format!("{{\"_version\": 3, \"Message\": \"Resource not found: {id}\"}}"),
                ),
                Some(&i) => {
                    let select = query_param(query, "$select");
                    let selects = |f: &str| select.as_deref().is_some_and(|s| s.split(',').any(|x| x == f));
                    let (delay, serve) = {
                        let cfg = lock(&state.cfg);
                        (cfg.action_delay, cfg.serve_attestation_detail)
                    };
                    if !serve && selects("deviceIdentityAttestationDetail") {
                        return Answer::error(
                            400,
                            "BadRequest",
                            "Could not find a property named 'deviceIdentityAttestationDetail' on type 'microsoft.graph.managedDevice'.",
                        );
                    }
                    let with_hw = select.is_none() || selects("hardwareInformation");
                    let mut body = state.fleet[i].to_json(with_hw);
                    let (results, detail) = action_life(state, &state.fleet[i], delay);
                    body["deviceActionResults"] = results;
                    if serve {
                        body["deviceIdentityAttestationDetail"] = detail;
                    }
                    if let (Some(sel), Some(obj)) = (select, body.as_object_mut()) {
                        let keep: Vec<&str> = sel.split(',').collect();
                        obj.retain(|k, _| k == "id" || keep.contains(&k.as_str()));
                    }
                    body["@odata.context"] = json!(format!(
                        "{}/beta/$metadata#deviceManagement/managedDevices/$entity",
                        state.base_url
                    ));
                    Answer::json(200, body)
                }
            }
        }
        (
            "POST",
            [
                "deviceManagement",
                collection @ ("managedDevices" | "comanagedDevices"),
                id,
                action,
            ],
        ) if *action == "initiateDeviceAttestation" || *action == "microsoft.graph.initiateDeviceAttestation" => {
            lock(&state.stats).writes += 1;
            // A delegated token acts for its user: the app's permission and
            // the user's Intune role both.
            let can_write = lock(&state.cfg).apps.iter().any(|a| a.client_id == app && a.can_write)
                && caller.user.as_ref().is_none_or(|u| u.intune_role);
            if !can_write {
                return Answer::error(
                    403,
                    "Forbidden",
                    "Application is not authorized to perform this operation.",
                );
            }
            let comanaged_route = *collection == "comanagedDevices";
            let device = state.by_id.get(&id.to_ascii_lowercase()).map(|&i| &state.fleet[i]);
            match device {
                None => Answer::error(404, "ResourceNotFound", "Resource not found"),
                Some(d) if comanaged_route && !d.comanaged => {
                    Answer::error(404, "ResourceNotFound", "Resource not found")
                }
                Some(d) if !d.is_windows() => {
                    let message = lock(&state.cfg).platform_error_message.clone();
                    Answer::error(400, "BadRequest", &message)
                }
                Some(d) => {
                    lock(&state.ledger).push(LedgerEntry {
                        device_id: d.id.clone(),
                        kind: if comanaged_route { "comanaged" } else { "managed" },
                        app: app.to_string(),
                        user: caller.user.as_ref().map(|u| u.upn.clone()),
                        at: Instant::now(),
                    });
                    Answer {
                        status: 204,
                        headers: vec![],
                        body: None,
                    }
                }
            }
        }
        _ => Answer::error(
            400,
            "BadRequest",
            &format!(
                "Resource not found for the segment '{}'.",
                segments.last().unwrap_or(&"")
            ),
        ),
    }
}

/// The device's `deviceActionResults` and attestation detail, from its
/// latest accepted initiation: `pending`, then `active`, then how it ends.
fn action_life(state: &State, d: &crate::SimDevice, delay: std::time::Duration) -> (Value, Value) {
    let last = lock(&state.ledger)
        .iter()
        .filter(|e| e.device_id == d.id)
        .map(|e| e.at)
        .max();
    let Some(at) = last else {
        return (json!([]), json!({"deviceIdentityAttestationStatus": "unknown"}));
    };
    let elapsed = at.elapsed();
    let (end, status) = d.attestation_end();
    let future = lock(&state.cfg).future_action_state.clone();
    let (action, status) = if elapsed < delay / 3 {
        (future.unwrap_or_else(|| "pending".into()), "unknown")
    } else if elapsed < delay {
        (future.unwrap_or_else(|| "active".into()), "unknown")
    } else {
        (end.to_owned(), status)
    };
    let stamp = |ago: std::time::Duration| {
        let t = std::time::SystemTime::now() - ago;
        rfc3339(t)
    };
    let updated = if elapsed < delay / 3 {
        elapsed
    } else if elapsed < delay {
        elapsed - delay / 3
    } else {
        elapsed - delay
    };
    (
        json!([{"actionName": "initiateDeviceAttestation", "actionState": action,
                "startDateTime": stamp(elapsed), "lastUpdatedDateTime": stamp(updated)}]),
        json!({"deviceIdentityAttestationStatus": status}),
    )
}

/// RFC 3339 in UTC, seconds precision.
fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn list(state: &State, query: &str) -> Answer {
    lock(&state.stats).list_pages += 1;
    let filter = match query_param(query, "$filter") {
        Some(text) => match crate::odata::parse(&text) {
            Ok(f) => Some(f),
            Err(e) => {
                return Answer::error(400, "BadRequest", &format!("Invalid filter clause: {e}"));
            }
        },
        None => None,
    };
    let (max_page, support) = {
        let cfg = lock(&state.cfg);
        (cfg.max_page, cfg.filter_support)
    };
    let filter = filter.filter(|f| match support {
        crate::FilterSupport::Strict => true,
        crate::FilterSupport::Ignored => false,
        crate::FilterSupport::Documented => crate::odata::properties(f).iter().all(|p| {
            crate::DOCUMENTED_FILTER_PROPERTIES
                .iter()
                .any(|d| d.eq_ignore_ascii_case(p))
        }),
    });
    let top = query_param(query, "$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, max_page);
    let skip = query_param(query, "$skiptoken")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let matching: Vec<&crate::SimDevice> = state
        .fleet
        .iter()
        .filter(|d| {
            let v = d.to_json(false);
            filter.as_ref().is_none_or(|f| crate::odata::matches(f, &v))
        })
        .collect();
    let page: Vec<Value> = matching.iter().skip(skip).take(top).map(|d| d.to_json(false)).collect();
    let mut body = json!({
        "@odata.context": format!("{}/beta/$metadata#deviceManagement/managedDevices", state.base_url),
        "value": page,
    });
    if skip + top < matching.len() {
        let mut next = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            if k != "$skiptoken" {
                next.append_pair(&k, &v);
            }
        }
        next.append_pair("$skiptoken", &(skip + top).to_string());
        body["@odata.nextLink"] = json!(format!(
            "{}/beta/deviceManagement/managedDevices?{}",
            state.base_url,
            next.finish()
        ));
    }
    Answer::json(200, body)
}
