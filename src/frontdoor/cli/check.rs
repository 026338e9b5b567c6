//! `intune-attest check`: validate a payload without calling Graph, and
//! print the request as the service understood it.

use std::process::ExitCode;

use super::{Output, table};
use crate::config::Settings;
use crate::core::device::{DeviceId, DeviceKind};
use crate::core::request::AttestationRequest;

/// What `check` prints: the request as the service understood it.
#[derive(serde::Serialize)]
struct Checked<'a> {
    devices: Vec<CheckedDevice>,
    device_filter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_filter_plan: Option<FilterPlanDoc>,
    timeout_ms: u64,
    validate_device_exists: bool,
    ignore_partial_failures: bool,
    dry_run: bool,
    warnings: &'a [String],
}

/// Which parts of `device_filter` Graph applies and which the client does.
#[derive(serde::Serialize)]
struct FilterPlanDoc {
    /// The `$filter` Graph is sent (`null`: the whole listing is read).
    sent_to_graph: Option<String>,
    /// The comparisons only the client applies.
    client_only: Vec<String>,
    /// Always true: every listed device is checked against the whole filter.
    client_checks_every_listed_device: bool,
}

#[derive(serde::Serialize)]
struct CheckedDevice {
    device_id: DeviceId,
    kind: DeviceKind,
}

/// Runs `check`.
pub(super) fn run(bytes: &[u8], output: Output, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<ExitCode> {
    let settings = Settings::from_env(env)?;
    let mut req = AttestationRequest::from_slice(bytes, settings.limits)?;
    if let Some(w) = crate::core::estimate::timeout_warning(
        req.devices.len(),
        req.validate_device_exists,
        req.timeout,
        &settings.engine,
    ) {
        req.warnings.push(w);
    }
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
        device_filter_plan: req.device_filter.as_ref().map(|f| {
            let plan = f.plan();
            FilterPlanDoc {
                sent_to_graph: plan.graph,
                client_only: plan.client_only,
                client_checks_every_listed_device: true,
            }
        }),
        timeout_ms: req.timeout.as_millis() as u64,
        validate_device_exists: req.validate_device_exists,
        ignore_partial_failures: req.ignore_partial_failures,
        dry_run: req.dry_run,
        warnings: &req.warnings,
    };
    let count = |k: DeviceKind| doc.devices.iter().filter(|d| d.kind == k).count();
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&doc)?),
        Output::Summary => println!(
            "{}",
            super::export::checked_line(
                count(DeviceKind::Managed),
                count(DeviceKind::Comanaged),
                doc.device_filter.as_deref()
            )
        ),
        Output::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            w.write_record(["device_id", "kind"])?;
            for d in &doc.devices {
                w.write_record([d.device_id.to_string(), super::export::kind_word(d.kind)])?;
            }
            print!("{}", String::from_utf8(w.into_inner()?)?);
        }
        Output::Table => {
            let count = |k: DeviceKind| doc.devices.iter().filter(|d| d.kind == k).count().to_string();
            let mut rows = vec![
                ("managed devices", count(DeviceKind::Managed)),
                ("co-managed devices", count(DeviceKind::Comanaged)),
                ("device_filter", doc.device_filter.clone().unwrap_or_else(|| "-".into())),
            ];
            if let Some(plan) = &doc.device_filter_plan {
                rows.push((
                    "Graph applies ($filter)",
                    plan.sent_to_graph
                        .clone()
                        .unwrap_or_else(|| "nothing: every managed device is listed".into()),
                ));
                rows.push((
                    "only the client applies",
                    if plan.client_only.is_empty() {
                        "nothing more".into()
                    } else {
                        plan.client_only.join("; ")
                    },
                ));
                rows.push((
                    "client check",
                    "every listed device against the whole filter; non-matching ones are left out".into(),
                ));
            }
            rows.extend([
                ("timeouts.invoke", format!("{} ms", doc.timeout_ms)),
                ("validate_device_exists", doc.validate_device_exists.to_string()),
                ("ignore_partial_failures", doc.ignore_partial_failures.to_string()),
                ("dry_run", doc.dry_run.to_string()),
            ]);
            print!("{}", table::checked(&rows, doc.warnings, table::View::of_stdout()));
        }
    }
    Ok(ExitCode::SUCCESS)
}
