//! The Lambda function's start-up: the service and its AWS adapters from
//! the function's environment, and the runtime loop.

use std::sync::Arc;
use std::time::Duration;

use std::time::{SystemTime, UNIX_EPOCH};

use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::{InvocationContext, LambdaApp};
use crate::config::Settings;
use crate::core::duration::parse_go_duration;
use crate::credentials::federation::FederationContext;
use crate::credentials::{CredentialSource, EnvCredentials};
use crate::frontdoor::HostError;
use crate::queue::WorkQueue;
use crate::results::ResultSink;
use crate::service::{AttestService, SweepSettings, WebhookAuth};

/// Builds the application from the environment.
pub(super) async fn build_app() -> Result<LambdaApp, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let settings = Settings::from_env(env).map_err(|e| e.0)?;
    // The SDK retries a failed call itself (standard mode: throttling, 5xx,
    // timeouts) three times in all; the adapters retry only what it cannot
    // see, entries refused inside an accepted batch call.
    let aws = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(3))
        .load()
        .await;
    let secrets_client = aws_sdk_secretsmanager::Client::new(&aws);
    // ATTEST_FEDERATION=aws (here or in a tenant's document) signs in with
    // the execution role's web identity token: no secret is read.
    let federation = FederationContext {
        sts: Some(aws_sdk_sts::Client::new(&aws)),
    };
    let credentials: Arc<dyn CredentialSource> = match env("SECRET_ID") {
        Some(id) => Arc::new(
            crate::credentials::secrets_manager::SecretsManagerCredentials::new(secrets_client.clone(), id)
                .with_federation(federation.clone()),
        ),
        None => {
            crate::credentials::check_federation_settings(env, &federation).map_err(|e| e.0)?;
            Arc::new(EnvCredentials::with_federation(federation.clone()))
        }
    };
    let sink: Option<Arc<dyn ResultSink>> = env("EVENT_BUS_NAME").map(|bus| {
        Arc::new(crate::results::eventbridge::EventBridgeSink::new(
            aws_sdk_eventbridge::Client::new(&aws),
            bus,
        )) as Arc<dyn ResultSink>
    });
    let queue: Option<Arc<dyn WorkQueue>> = env("WORK_QUEUE_URL").map(|url| {
        Arc::new(crate::queue::sqs::SqsWorkQueue::new(
            aws_sdk_sqs::Client::new(&aws),
            url,
        )) as Arc<dyn WorkQueue>
    });
    let ttl = match env("SECRET_TTL") {
        Some(v) => parse_go_duration(&v).map_err(|_| format!("SECRET_TTL: {v:?} is not a Go duration"))?,
        None => Duration::from_secs(300),
    };
    let auth = WebhookAuth {
        signature: env("WEBHOOK_SECRET_ID").map(|id| {
            Arc::new(crate::credentials::secrets_manager::SecretsManagerWebhookSecrets::new(
                secrets_client.clone(),
                id,
                ttl,
            )) as Arc<dyn crate::credentials::WebhookSecrets>
        }),
        // The template sets this from the function URL's AuthType.
        iam: env("FUNCTION_URL_AUTH_TYPE").is_some_and(|t| t == "AWS_IAM"),
        host: false,
    };
    let tenants = tenants(env("TENANT_NAMES"), env("TENANT_SECRET_IDS"))?
        .into_iter()
        .map(|(name, id)| {
            let source: Arc<dyn CredentialSource> = Arc::new(
                crate::credentials::secrets_manager::SecretsManagerCredentials::new(secrets_client.clone(), id)
                    .with_federation(federation.clone()),
            );
            (name, source)
        })
        .collect();
    let mut service = AttestService::new(settings, credentials, sink, queue, ttl)
        .with_tenants(tenants)
        .with_webhook_auth(auth)
        .with_sweep(SweepSettings::from_env(env)?);
    // Without a shared table, claims and replays live in this process.
    if let Some(table) = env("STATE_TABLE") {
        let dynamodb = aws_sdk_dynamodb::Client::new(&aws);
        service = service
            .with_state_store(Arc::new(crate::state::dynamodb::DynamoStore::new(
                dynamodb.clone(),
                table.clone(),
            )))
            .with_shared_budget(Arc::new(crate::state::budget::DynamoBudget::new(dynamodb, table)));
    }
    let function_name = env("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "intune-attest".into());
    let metrics = env("ATTEST_METRICS").is_none_or(|v| v != "off");
    Ok(LambdaApp::new(service, function_name, metrics))
}

/// Runs the Lambda runtime loop until the process is stopped.
pub fn main() -> std::process::ExitCode {
    let style = crate::telemetry::LogStyle {
        ansi: false,
        timestamps: false,
        level: None,
    };
    crate::telemetry::init(std::io::stderr, style);
    crate::frontdoor::host(async {
        let app = Arc::new(build_app().await.map_err(HostError::Startup)?);
        // The event arrives raw: the runtime's own decoding would turn deep
        // nesting or a lone surrogate into an opaque deserializer error, where
        // the caller should get InvalidRequest.
        let handler = service_fn(move |event: LambdaEvent<Box<RawValue>>| {
            let app = app.clone();
            async move {
                let (raw, context) = event.into_parts();
                let ctx = InvocationContext {
                    request_id: context.request_id.clone(),
                    deadline: time_left(context.deadline, SystemTime::now()).map(|left| Instant::now() + left),
                };
                let span = tracing::info_span!("invocation", request_id = %context.request_id);
                tracing::Instrument::instrument(app.handle_raw(raw.get(), ctx), span).await
            }
        });
        // The loop ends only when the runtime cannot read an invocation
        // (its client context or identity is not JSON, say): the process
        // exits, Lambda answers that invocation `Runtime.ExitError` and
        // starts a new instance for the next.
        lambda_runtime::run(handler).await.map_err(|e| {
            HostError::Stopped(format!(
                "an invocation the runtime could not read ({}); a client context or identity that is not JSON ends the process",
                crate::core::text::bounded(&e.to_string(), 200)
            ))
        })
    })
}

/// Whether the deadline warning was logged already (once a process).
static PAST_DEADLINE_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The time an invocation has left, from the runtime's deadline (ms since
/// the epoch). A deadline already past when the event arrives is no
/// deadline a run can use: local emulators send a constant (cargo-lambda:
/// `600000`, ten minutes after 1970). It is then unknown, the request's own
/// timeout bounds the run, and the log says so once.
pub(super) fn time_left(deadline_ms: u64, now: SystemTime) -> Option<Duration> {
    let now_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    match Duration::from_millis(deadline_ms).checked_sub(now_ms) {
        Some(left) if !left.is_zero() => Some(left),
        _ => {
            if !PAST_DEADLINE_SEEN.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    deadline_ms,
                    "the runtime's deadline had passed when the event arrived (a local emulator's constant?); \
                     runs are bounded by timeouts.invoke instead"
                );
            }
            None
        }
    }
}

/// The further tenants: `TENANT_NAMES` and `TENANT_SECRET_IDS`, two
/// comma-separated lists in the same order (the template fills both from
/// its parameters). Names are what payloads say in `tenant`.
pub(super) fn tenants(names: Option<String>, ids: Option<String>) -> Result<Vec<(String, String)>, String> {
    let list = |v: Option<String>| -> Vec<String> {
        v.map(|v| {
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
    };
    let (names, ids) = (list(names), list(ids));
    if names.len() != ids.len() {
        return Err(format!(
            "TENANT_NAMES has {} name(s) and TENANT_SECRET_IDS {} secret(s); they go in pairs",
            names.len(),
            ids.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for name in &names {
        if !crate::core::request::valid_tenant_name(name) || !seen.insert(name.clone()) {
            return Err(format!(
                "TENANT_NAMES: {name:?} is not a tenant name (1 to 64 letters, digits and . _ -, each once)"
            ));
        }
    }
    Ok(names.into_iter().zip(ids).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_past_on_arrival_is_unknown_not_zero() {
        let now = UNIX_EPOCH + Duration::from_secs(1_764_650_000);
        let in_a_minute = (now + Duration::from_secs(60)).duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(
            time_left(in_a_minute.as_millis() as u64, now),
            Some(Duration::from_secs(60))
        );
        // cargo-lambda's constant, and a deadline just past.
        assert_eq!(time_left(600_000, now), None);
        assert_eq!(
            time_left(in_a_minute.as_millis() as u64, now + Duration::from_secs(61)),
            None
        );
    }

    #[test]
    fn tenants_come_in_pairs_with_valid_unique_names() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            tenants(some("contoso, fabrikam"), some("arn:a,arn:b")).unwrap(),
            vec![("contoso".into(), "arn:a".into()), ("fabrikam".into(), "arn:b".into())]
        );
        assert!(tenants(None, None).unwrap().is_empty());
        assert!(tenants(some("a"), None).unwrap_err().contains("pairs"));
        assert!(tenants(some("a,a"), some("x,y")).is_err());
        assert!(tenants(some("a b"), some("x")).is_err());
    }
}
