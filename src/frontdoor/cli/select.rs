//! Devices picked the way responders have them: `--device-id` on the
//! command line, `--ids-from` a CSV the Intune admin center exported (or a
//! plain list), `--retry-from` a previous result's devices that were not
//! initiated. They go into the payload (`--event`'s, or an empty one) as
//! `managed_device_ids` and `comanaged_device_ids`, which the payload's own
//! validation then checks like any other.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Value};

use crate::core::device::DeviceId;

/// The column of the Intune admin center's device export that holds the
/// Intune device id.
const INTUNE_COLUMN: &str = "device id";
/// Columns that hold Entra ID's device id instead, which Intune's actions
/// do not take.
const ENTRA_COLUMNS: [&str; 4] = [
    "azure ad device id",
    "microsoft entra device id",
    "entra device id",
    "azureaddeviceid",
];
/// Outcomes `--retry-from` takes by default: every device not initiated.
const NOT_INITIATED: [&str; 7] = [
    "failed",
    "throttled",
    "not_attempted",
    "forbidden",
    "not_found",
    "unsupported",
    "continued",
];

/// What the command line picked, beside `--event`.
#[derive(Debug, Default, clap::Args)]
pub struct Picks {
    /// A managed device to attest (repeatable), without writing a payload.
    #[arg(long = "device-id", value_name = "ID")]
    pub device_ids: Vec<String>,
    /// A co-managed device to attest (repeatable).
    #[arg(long = "comanaged-device-id", value_name = "ID")]
    pub comanaged_device_ids: Vec<String>,
    /// A CSV exported from the Intune admin center (its "Device ID"
    /// column), or a plain list of ids, one a line.
    #[arg(long, value_name = "FILE")]
    pub ids_from: Option<PathBuf>,
    /// A previous result document: attest again the devices it did not
    /// initiate.
    #[arg(long, value_name = "RESULT")]
    pub retry_from: Option<PathBuf>,
    /// With `--retry-from`: only devices with these outcomes
    /// (comma-separated, such as `failed,throttled,not_attempted`).
    #[arg(long, value_delimiter = ',', requires = "retry_from")]
    pub only: Vec<String>,
}

impl Picks {
    fn is_empty(&self) -> bool {
        self.device_ids.is_empty()
            && self.comanaged_device_ids.is_empty()
            && self.ids_from.is_none()
            && self.retry_from.is_none()
    }
}

/// The payload to run: `event`'s bytes as they are when nothing was picked,
/// else its object (or an empty one) with the picked devices added.
pub fn payload(event: Option<Vec<u8>>, picks: &Picks) -> anyhow::Result<Vec<u8>> {
    if picks.is_empty() {
        return event.context("give --event, or pick devices with --device-id, --ids-from or --retry-from");
    }
    let mut base = match event {
        Some(bytes) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => map,
            _ => bail!("--event must be a JSON object to add picked devices to"),
        },
        None => Map::new(),
    };
    let mut managed = picks.device_ids.clone();
    let mut comanaged = picks.comanaged_device_ids.clone();
    if let Some(path) = &picks.ids_from {
        managed.extend(ids_from(path)?);
    }
    if let Some(path) = &picks.retry_from {
        let (m, c) = retry_from(path, &picks.only)?;
        if m.is_empty() && c.is_empty() {
            bail!("{}: no device matches; nothing to retry", path.display());
        }
        managed.extend(m);
        comanaged.extend(c);
    }
    for (key, ids) in [("managed_device_ids", managed), ("comanaged_device_ids", comanaged)] {
        if ids.is_empty() {
            continue;
        }
        let list = base.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = list else {
            bail!("--event's {key} is not a list to add picked devices to");
        };
        list.extend(ids.into_iter().map(Value::String));
    }
    Ok(serde_json::to_vec(&Value::Object(base))?)
}

/// The ids in an admin center export (its "Device ID" column) or a plain
/// list, each checked, naming the row and column of one that is not.
fn ids_from(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = super::read_document(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes.as_slice());
    let mut rows = reader.records();
    let Some(first) = rows.next() else {
        bail!("{} holds no device id", path.display());
    };
    let first = first.with_context(|| format!("{} is not CSV", path.display()))?;
    let names: Vec<String> = first
        .iter()
        .map(|c| c.trim_start_matches('\u{feff}').trim().to_ascii_lowercase())
        .collect();
    let plain = first.len() == 1 && DeviceId::parse(first.get(0).unwrap_or_default()).is_some();
    let column = if plain {
        0
    } else if let Some(i) = names.iter().position(|n| n == INTUNE_COLUMN) {
        i
    } else if let Some(name) = names.iter().find(|n| ENTRA_COLUMNS.contains(&n.as_str())) {
        bail!(
            "{}: the {name:?} column holds Entra ID device ids (azureADDeviceId), which Intune's attestation does not take; \
             export the Intune devices (their \"Device ID\" column), or select by Entra id with \
             device_filter \"azureADDeviceId eq '<id>'\"",
            path.display()
        );
    } else {
        bail!(
            "{}: no \"Device ID\" column (an Intune admin center export), and the first line is not a device id",
            path.display()
        );
    };
    let mut out = Vec::new();
    let header = if plain { "(ids)" } else { "Device ID" };
    let first_data = if plain { Some(Ok(first)) } else { None };
    for (n, record) in first_data.into_iter().chain(rows).enumerate() {
        let row = n + if plain { 1 } else { 2 };
        let record = record.with_context(|| format!("{} row {row} is not CSV", path.display()))?;
        let cell = record.get(column).unwrap_or_default();
        if cell.is_empty() {
            continue;
        }
        if DeviceId::parse(cell).is_none() {
            bail!(
                "{} row {row} ({header}): {:?} is not a device id",
                path.display(),
                crate::core::text::bounded(cell, 80)
            );
        }
        out.push(cell.to_owned());
    }
    if out.is_empty() {
        bail!("{} holds no device id", path.display());
    }
    Ok(out)
}

/// The devices of a previous result with the outcomes asked for (every
/// outcome but initiated, by default): managed and co-managed.
fn retry_from(path: &Path, only: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let bytes = super::read_document(path)?;
    let doc: Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not JSON", path.display()))?;
    let devices = doc["devices"]
        .as_array()
        .with_context(|| format!("{} is not a result document (no devices)", path.display()))?;
    let wanted: Vec<&str> = if only.is_empty() {
        NOT_INITIATED.to_vec()
    } else {
        only.iter().map(|s| s.trim()).collect()
    };
    if let Some(bad) = wanted.iter().find(|w| !NOT_INITIATED.contains(w) && **w != "initiated") {
        bail!(
            "--only: {bad:?} is not an outcome; expected some of {}",
            NOT_INITIATED.join(", ")
        );
    }
    let (mut managed, mut comanaged) = (Vec::new(), Vec::new());
    for d in devices {
        let outcome = d["outcome"].as_str().unwrap_or_default();
        if !wanted.contains(&outcome) {
            continue;
        }
        let Some(id) = d["device_id"].as_str() else { continue };
        match d["kind"].as_str() {
            Some("comanaged") => comanaged.push(id.to_owned()),
            _ => managed.push(id.to_owned()),
        }
    }
    Ok((managed, comanaged))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "91207391-2c09-5de8-a570-29444930a691";
    const B: &str = "4435a94d-90cd-7175-c0ad-a613d881aa1c";

    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("select-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn picked(picks: &Picks) -> Value {
        serde_json::from_slice(&payload(None, picks).unwrap()).unwrap()
    }

    #[test]
    fn an_admin_center_export_or_a_plain_list_gives_its_device_ids() {
        let export = file(
            "export.csv",
            &format!("\u{feff}Device name,Device ID,OS\nLAB-1,{A},Windows\nLAB-2,\"{B}\",Windows\n"),
        );
        let picks = Picks {
            ids_from: Some(export),
            ..Picks::default()
        };
        assert_eq!(picked(&picks)["managed_device_ids"], serde_json::json!([A, B]));
        let list = file("ids.txt", &format!("{A}\n\n{B}\n"));
        let picks = Picks {
            ids_from: Some(list),
            device_ids: vec![A.into()],
            ..Picks::default()
        };
        assert_eq!(picked(&picks)["managed_device_ids"], serde_json::json!([A, A, B]));
    }

    #[test]
    fn a_bad_cell_or_an_entra_export_is_named() {
        let bad = file(
            "bad.csv",
            &format!("Device name,Device ID\nLAB-1,{A}\nLAB-2,not-an-id\n"),
        );
        let err = payload(
            None,
            &Picks {
                ids_from: Some(bad),
                ..Picks::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("row 3 (Device ID)") && err.contains("not-an-id"), "{err}");
        let entra = file("entra.csv", &format!("Display name,Azure AD Device ID\nLAB-1,{A}\n"));
        let err = payload(
            None,
            &Picks {
                ids_from: Some(entra),
                ..Picks::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("azureADDeviceId"), "{err}");
    }

    #[test]
    fn a_retry_takes_the_devices_not_initiated_with_their_kind() {
        let result = file(
            "result.json",
            &serde_json::json!({"devices": [
                {"device_id": A, "kind": "managed", "outcome": "initiated"},
                {"device_id": B, "kind": "comanaged", "outcome": "throttled"},
                {"device_id": A, "kind": "managed", "outcome": "not_found"},
            ]})
            .to_string(),
        );
        let all = picked(&Picks {
            retry_from: Some(result.clone()),
            ..Picks::default()
        });
        assert_eq!(all["managed_device_ids"], serde_json::json!([A]));
        assert_eq!(all["comanaged_device_ids"], serde_json::json!([B]));
        let only = picked(&Picks {
            retry_from: Some(result.clone()),
            only: vec!["throttled".into()],
            ..Picks::default()
        });
        assert!(only.get("managed_device_ids").is_none());
        let err = payload(
            None,
            &Picks {
                retry_from: Some(result),
                only: vec!["bogus".into()],
                ..Picks::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an outcome"), "{err}");
    }

    #[test]
    fn picks_add_to_the_events_own_options() {
        let event = serde_json::to_vec(&serde_json::json!({"managed_device_ids": [A], "dry_run": true})).unwrap();
        let picks = Picks {
            device_ids: vec![B.into()],
            ..Picks::default()
        };
        let v: Value = serde_json::from_slice(&payload(Some(event), &picks).unwrap()).unwrap();
        assert_eq!(v["managed_device_ids"], serde_json::json!([A, B]));
        assert_eq!(v["dry_run"], true);
        assert!(payload(None, &Picks::default()).is_err());
    }
}
