//! The JSON of `$batch` and of Graph errors.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One request inside a `$batch` body.
#[derive(Debug, Serialize)]
pub struct BatchItemRequest {
    /// Unique (case-insensitively) within the batch.
    pub id: String,
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Relative to the version root: `/deviceManagement/...`.
    pub url: String,
    /// Headers; `Content-Type` accompanies a body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<HashMap<&'static str, &'static str>>,
    /// `{}` for body-less POSTs (the form every Graph version accepts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// A `$batch` body.
#[derive(Debug, Serialize)]
pub struct BatchRequest {
    /// At most 20 items.
    pub requests: Vec<BatchItemRequest>,
}

/// One answer inside a `$batch` response.
#[derive(Debug, Deserialize)]
pub struct BatchItemResponse {
    /// Matches a request id.
    pub id: String,
    /// The item's HTTP status.
    pub status: u16,
    /// The item's headers (names in any case).
    #[serde(default)]
    pub headers: HashMap<String, Value>,
    /// The item's body, if any.
    #[serde(default)]
    pub body: Option<Value>,
}

impl BatchItemResponse {
    /// A header value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| match v {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
    }
}

/// A `$batch` response.
#[derive(Debug, Deserialize)]
pub struct BatchResponse {
    /// Answers, in any order.
    pub responses: Vec<BatchItemResponse>,
}

/// The parts of a Graph error body worth keeping.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GraphError {
    /// `error.code`.
    pub code: Option<String>,
    /// `error.message`, kept as opaque text (bounded).
    pub message: Option<String>,
    /// `error.innerError.request-id`.
    pub request_id: Option<String>,
}

const MAX_MESSAGE: usize = 500;

/// Reads a Graph error body; tolerates anything.
pub fn parse_error(body: Option<&Value>) -> GraphError {
    let Some(err) = body.and_then(|b| b.get("error")) else {
        return GraphError::default();
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| bounded(s, MAX_MESSAGE));
    let inner = err.get("innerError").or_else(|| err.get("innererror"));
    GraphError {
        code: text(err.get("code")),
        message: text(err.get("message")),
        request_id: text(inner.and_then(|i| i.get("request-id"))),
    }
}

pub use crate::core::text::bounded;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_bodies_are_read_leniently() {
        let e = parse_error(Some(
            &json!({"error": {"code": "ResourceNotFound", "message": "{\"_version\": 3, \"Message\": \"x\"}",
            "innerError": {"date": "2025-01-22T19:17:04", "request-id": "65d4", "client-request-id": "09e5"}}}),
        ));
        assert_eq!(e.code.as_deref(), Some("ResourceNotFound"));
        assert_eq!(e.request_id.as_deref(), Some("65d4"));
        assert!(e.message.unwrap().contains("_version"));
        assert_eq!(parse_error(Some(&json!("oops"))), GraphError::default());
        assert_eq!(parse_error(None), GraphError::default());
        let long = parse_error(Some(&json!({"error": {"message": "x".repeat(5000)}})));
        assert!(long.message.unwrap().chars().count() <= MAX_MESSAGE + 1);
    }

    #[test]
    fn batch_headers_are_case_insensitive() {
        let r: BatchItemResponse = serde_json::from_value(
            json!({"id": "1", "status": 429, "headers": {"retry-after": "2.5", "Request-Id": "r"}}),
        )
        .unwrap();
        assert_eq!(r.header("Retry-After").as_deref(), Some("2.5"));
        assert_eq!(r.header("request-id").as_deref(), Some("r"));
    }
}
