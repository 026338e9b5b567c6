//! Reading the Functions host's envelopes.

use serde_json::Value;

/// A queue message arrives as a JSON string, as a string quoted once more,
/// or as parsed JSON, depending on the host version: accept all three.
pub fn queue_payload(data: &Value) -> Value {
    let mut v = data.clone();
    for _ in 0..2 {
        match v {
            Value::String(ref s) => match serde_json::from_str::<Value>(s) {
                Ok(inner) => v = inner,
                Err(_) => return v,
            },
            _ => return v,
        }
    }
    v
}

pub(super) fn header(headers: &Value, name: &str) -> Option<String> {
    let obj = headers.as_object()?;
    let (_, v) = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The host's `functionTimeout`: the app setting
/// `AzureFunctionsJobHost__functionTimeout` when set, else `host.json` in
/// the working directory. Written as `hh:mm:ss` or `d.hh:mm:ss`; `-1` (no
/// limit, Premium plans) reads as none.
pub fn function_timeout(setting: Option<&str>, host_json: Option<&str>) -> Option<std::time::Duration> {
    let text = match setting {
        Some(s) => s.to_owned(),
        None => serde_json::from_str::<Value>(host_json?)
            .ok()?
            .get("functionTimeout")?
            .as_str()?
            .to_owned(),
    };
    let (days, clock) = match text.trim().split_once('.') {
        Some((d, rest)) if rest.contains(':') => (d.parse::<u64>().ok()?, rest.to_owned()),
        _ => (0, text.trim().to_owned()),
    };
    let parts: Vec<u64> = clock.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = parts[..] else {
        return None;
    };
    let secs = days * 86_400 + h * 3600 + m * 60 + s;
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::signature::SIGNATURE_HEADER;
    use serde_json::json;

    #[test]
    fn the_host_timeout_is_read_from_the_setting_or_host_json() {
        use std::time::Duration;
        let host = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/infra/azure/host.json")).ok();
        assert_eq!(function_timeout(None, host.as_deref()), Some(Duration::from_secs(600)));
        assert_eq!(
            function_timeout(Some("00:00:03"), host.as_deref()),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            function_timeout(Some("1.00:00:00"), None),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(function_timeout(Some("-1"), None), None);
        assert_eq!(function_timeout(None, Some("{}")), None);
        assert_eq!(function_timeout(None, None), None);
    }

    #[test]
    fn queue_messages_arrive_in_three_shapes() {
        let payload = json!({"managed_device_ids": ["12345678-1234-1234-1234-123456789abc"]});
        let once = Value::String(payload.to_string());
        let twice = Value::String(once.to_string());
        for shape in [payload.clone(), once, twice] {
            assert_eq!(queue_payload(&shape), payload);
        }
        assert_eq!(queue_payload(&json!("not json")), json!("not json"));
    }

    #[test]
    fn headers_are_found_in_either_shape() {
        let h = json!({"X-Intune-Attest-Signature": ["t=1,v1=00"], "content-type": "application/json"});
        assert_eq!(header(&h, SIGNATURE_HEADER).as_deref(), Some("t=1,v1=00"));
        assert_eq!(header(&h, "Content-Type").as_deref(), Some("application/json"));
    }
}
