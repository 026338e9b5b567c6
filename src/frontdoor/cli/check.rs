//! `intune-attest check`: validate a payload without calling Graph, and
//! print the request as the service understood it.

use std::process::ExitCode;

use super::{Output, read_event, table};
use crate::config::Settings;
use crate::core::device::{DeviceId, DeviceKind};
use crate::core::request::AttestationRequest;

/// What `check` prints: the request as the service understood it.
#[derive(serde::Serialize)]
struct Checked<'a> {
    devices: Vec<CheckedDevice>,
    device_filter: Option<String>,
    timeout_ms: u64,
    validate_device_exists: bool,
    ignore_partial_failures: bool,
    dry_run: bool,
    warnings: &'a [String],
}

#[derive(serde::Serialize)]
struct CheckedDevice {
    device_id: DeviceId,
    kind: DeviceKind,
}

/// Runs `check`.
pub(super) fn run(event: &str, output: Output, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env(env)?;
    let bytes = read_event(event)?;
    let req = AttestationRequest::from_slice(&bytes, settings.limits)?;
    let doc = Checked {
        devices: req
            .devices
            .iter()
            .map(|d| CheckedDevice {
                device_id: d.id,
                kind: d.kind,
            })
            .collect(),
        device_filter: req.device_filter.as_ref().map(ToString::to_string),
        timeout_ms: req.timeout.as_millis() as u64,
        validate_device_exists: req.validate_device_exists,
        ignore_partial_failures: req.ignore_partial_failures,
        dry_run: req.dry_run,
        warnings: &req.warnings,
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Table => {
            let count = |k: DeviceKind| doc.devices.iter().filter(|d| d.kind == k).count().to_string();
            let rows = [
                ("managed devices", count(DeviceKind::Managed)),
                ("co-managed devices", count(DeviceKind::Comanaged)),
                ("device_filter", doc.device_filter.clone().unwrap_or_else(|| "-".into())),
                ("timeouts.invoke", format!("{} ms", doc.timeout_ms)),
                ("validate_device_exists", doc.validate_device_exists.to_string()),
                ("ignore_partial_failures", doc.ignore_partial_failures.to_string()),
                ("dry_run", doc.dry_run.to_string()),
            ];
            print!("{}", table::checked(&rows, doc.warnings));
        }
    }
    Ok(ExitCode::SUCCESS)
}
