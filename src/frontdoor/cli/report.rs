//! `intune-attest report`: one self-contained HTML page from a result
//! document and, optionally, a status document read after it.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context;
use serde::de::DeserializeOwned;

use crate::report::{self, ReportInput, ResultDocument, StatusDocument};

fn read<T: DeserializeOwned>(path: &Path, what: &str) -> anyhow::Result<T> {
    let bytes = super::read_document(path)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        // Only on the way out: say which document it is, if it is one.
        let given = match kind_of(&bytes) {
            Some(kind) if kind != what => format!("{} is a {kind} document", path.display()),
            _ => format!("{} is not a {what} document ({e})", path.display()),
        };
        let expected = match what {
            "result" => "--result takes a result document (`invoke --result-file`, or a Device Attestation Result event's detail)",
            _ => "--status takes a status document (`status --status-file`, or a Device Attestation Verdict event's detail)",
        };
        anyhow::anyhow!("{given}; {expected}")
    })
}

/// Which of the product's documents `bytes` hold, by their telling members
/// (read for their presence only: nothing of their values is kept, so a
/// document that fails to parse costs no more than one that parses).
fn kind_of(bytes: &[u8]) -> Option<&'static str> {
    #[derive(serde::Deserialize)]
    struct Members {
        check: Option<serde::de::IgnoredAny>,
        checked_at: Option<serde::de::IgnoredAny>,
        started_at: Option<serde::de::IgnoredAny>,
        devices: Option<serde::de::IgnoredAny>,
    }
    let v: Members = serde_json::from_slice(bytes).ok()?;
    if v.check.is_some() && v.checked_at.is_some() {
        Some("verdict")
    } else if v.checked_at.is_some() {
        Some("status")
    } else if v.started_at.is_some() && v.devices.is_some() {
        Some("result")
    } else {
        None
    }
}

/// Writes the report; exit 0 when written, 2 when a document is unreadable.
pub(super) fn run(result: &Path, status: Option<&Path>, out: &Path) -> anyhow::Result<ExitCode> {
    let result: ResultDocument = read(result, "result")?;
    // A status document given wins over the verdict `invoke` waited for.
    let status: Option<StatusDocument> = match status {
        Some(p) => Some(read(p, "status")?),
        None => result.verdict.clone(),
    };
    if let Some(s) = &status
        && let Some(id) = s.correlation_id.as_deref()
        && id != result.correlation_id
    {
        tracing::warn!(
            result = %result.correlation_id,
            status = %id,
            devices = s.devices.len(),
            "the status document is about another run; devices are matched by id"
        );
    }
    let generated_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let html = report::render(&ReportInput {
        result: &result,
        status: status.as_ref(),
        version: env!("CARGO_PKG_VERSION"),
        generated_at: &generated_at,
    });
    std::fs::write(out, &html).with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "report: {} ({} devices, {} bytes)",
        out.display(),
        result.devices.len(),
        html.len()
    );
    Ok(ExitCode::SUCCESS)
}
