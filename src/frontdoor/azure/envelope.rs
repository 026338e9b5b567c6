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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::signature::SIGNATURE_HEADER;
    use serde_json::json;

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
