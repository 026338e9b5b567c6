//! `intune-attest status`: did attestation happen? Reads each device's
//! attestation action (and Intune's verdict, where Graph serves it) for the
//! devices a payload selects or a result document initiated.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::time::Instant;

use super::{Output, read_event, table};
use crate::config::Settings;
use crate::core::device::{DeviceId, DeviceKind, DeviceRef};
use crate::core::gateway::DeviceGateway;
use crate::core::request::AttestationRequest;
use crate::core::status;
use crate::graph::GraphClient;

/// How long a status read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The devices a result document initiated, and its correlation id.
fn from_result(path: &Path) -> anyhow::Result<(Vec<DeviceRef>, Option<String>)> {
    let bytes = super::read_document(path)?;
    let doc: Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
    let devices = doc["devices"]
        .as_array()
        .with_context(|| format!("{} is not a result document (no devices)", path.display()))?;
    let mut out = Vec::new();
    for (i, d) in devices.iter().enumerate() {
        if d["outcome"] != "initiated" {
            continue;
        }
        let id = d["device_id"]
            .as_str()
            .and_then(DeviceId::parse)
            .with_context(|| format!("devices[{i}].device_id is not a device ID"))?;
        let kind = match d["kind"].as_str() {
            Some("comanaged") => DeviceKind::Comanaged,
            _ => DeviceKind::Managed,
        };
        out.push(DeviceRef { id, kind });
    }
    Ok((out, doc["correlation_id"].as_str().map(str::to_owned)))
}

/// How `status` reads and says what it read.
pub(super) struct Options<'a> {
    /// The view on standard output.
    pub output: Output,
    /// Where the status document is written too.
    pub status_file: Option<&'a Path>,
    /// Read again until every action is over or this long has passed.
    pub watch: Option<Duration>,
    /// The states that make the exit code 1.
    pub fail_on: &'a [super::follow::FailOn],
    /// How to sign in.
    pub sign_in: &'a super::sign_in::SignIn,
}

/// Runs `status` and returns its exit code: 0 when every device was read,
/// 1 when Graph could not be reached or read for some, 2 for bad input,
/// configuration or credentials Entra ID refuses.
pub(super) async fn run(
    event: Option<String>,
    result: Option<&Path>,
    how: Options<'_>,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<ExitCode> {
    let Options {
        output,
        status_file,
        watch,
        fail_on,
        sign_in,
    } = how;
    let settings = Settings::from_env(&env)?;
    let (mut devices, correlation_id, filter) = match (event, result) {
        (Some(event), None) => {
            let req = AttestationRequest::from_slice(&read_event(&event)?, settings.limits)?;
            (
                req.devices.clone(),
                req.correlation_id.clone(),
                req.device_filter.clone(),
            )
        }
        (None, Some(path)) => {
            let (devices, correlation_id) = from_result(path)?;
            (devices, correlation_id, None)
        }
        _ => anyhow::bail!("give one of --event or --result"),
    };
    let creds = match super::sign_in::credentials(sign_in, &settings, &env).await {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    // The read time starts once signed in (a person may take minutes).
    let deadline = Instant::now() + READ_TIMEOUT;
    let client = Arc::new(GraphClient::new(
        settings.endpoints.clone(),
        creds,
        settings.client.clone(),
    )?);
    // Credentials refused, or Graph unreachable: said once on standard
    // error, as `invoke` says it, instead of a document of unread devices.
    if let Err(e) = client.prepare(deadline).await {
        eprintln!("error: {}", crate::core::text::bounded(&e.to_string(), 4000));
        let code = match e {
            crate::core::gateway::GatewayError::Credentials(_) => 2,
            _ => 1,
        };
        return Ok(ExitCode::from(code));
    }
    let mut listing_warnings = Vec::new();
    if let Some(filter) = &filter {
        let selected = match client.list_devices(filter, settings.limits.max_devices, deadline).await {
            Ok(listing) => {
                listing_warnings = listing.warnings();
                listing.devices
            }
            Err(e) => {
                eprintln!("error: {}", crate::core::text::bounded(&e.to_string(), 4000));
                return Ok(ExitCode::from(1));
            }
        };
        devices = crate::core::device::with_selected(&devices, selected).0;
    }
    let policy = crate::core::engine::Pacers::new(&settings.engine).read_policy(&settings.engine);
    let mut doc = status::read(client.clone(), &devices, correlation_id.clone(), &policy, deadline).await;
    // --watch: again every interval until every action is over or the
    // time is up.
    if let Some(watch) = watch {
        let until = Instant::now() + watch;
        let every = Duration::from_secs(30);
        while !doc.all_terminal() && Instant::now() + every <= until {
            tracing::info!(
                states = %serde_json::json!(doc.summary.action_states),
                "status: actions still going; reading again in 30 s"
            );
            tokio::time::sleep(every).await;
            doc = status::read(
                client.clone(),
                &devices,
                correlation_id.clone(),
                &policy,
                deadline.max(until),
            )
            .await;
        }
    }
    doc.warnings.extend(listing_warnings);
    let json = serde_json::to_string_pretty(&doc)?;
    if let Some(path) = status_file {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    match output {
        Output::Json => println!("{json}"),
        Output::Table => print!("{}", table::status(&doc, table::View::of_stdout())),
        Output::Summary => println!("{}", super::export::status_line(&doc)),
        Output::Csv => print!("{}", super::export::status_csv(&doc)?),
    }
    if let Some(first) = doc.devices.iter().find_map(|d| d.read_error.as_deref()) {
        let what = if doc.summary.unread == doc.summary.devices {
            "no device could be read".to_owned()
        } else {
            format!(
                "{} of {} device(s) could not be read",
                doc.summary.unread, doc.summary.devices
            )
        };
        eprintln!("error: {what} (first: {})", crate::core::text::bounded(first, 400));
    }
    if !fail_on.is_empty() {
        let n = super::follow::failing(&doc, fail_on);
        if n > 0 {
            eprintln!("error: {n} device(s) in a state --fail-on names");
        }
        return Ok(ExitCode::from(u8::from(n > 0)));
    }
    Ok(if doc.summary.unread > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
