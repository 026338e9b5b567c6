//! Recognising what invoked the function, by explicit keys (never by trying
//! shapes until one deserialises).

use serde_json::Value;

/// The trigger behind an event.
#[derive(Debug, PartialEq)]
pub enum EventShape<'a> {
    /// An SQS batch: `Records[].eventSource == "aws:sqs"`.
    Sqs(&'a [Value]),
    /// A function URL / HTTP API v2 request: `version "2.0"`, `rawPath`,
    /// `requestContext.http`.
    Http,
    /// An EventBridge schedule rule: `source "aws.events"`,
    /// `detail-type "Scheduled Event"`.
    ScheduleRule,
    /// Anything else: the payload itself (Step Functions, `aws lambda
    /// invoke`, EventBridge Scheduler's configured input).
    Direct,
}

/// Classifies an event.
pub fn classify(event: &Value) -> EventShape<'_> {
    if let Some(records) = event.get("Records").and_then(Value::as_array)
        && !records.is_empty()
        && records
            .iter()
            .all(|r| r.get("eventSource").and_then(Value::as_str) == Some("aws:sqs"))
    {
        return EventShape::Sqs(records);
    }
    if event.get("version").and_then(Value::as_str) == Some("2.0")
        && event.get("rawPath").is_some()
        && event.get("requestContext").and_then(|c| c.get("http")).is_some()
    {
        return EventShape::Http;
    }
    if event.get("source").and_then(Value::as_str) == Some("aws.events")
        && event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
    {
        return EventShape::ScheduleRule;
    }
    EventShape::Direct
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_shape_is_recognised_by_its_keys() {
        let sqs = json!({"Records": [{"messageId": "1", "eventSource": "aws:sqs", "body": "{}"}]});
        assert!(matches!(classify(&sqs), EventShape::Sqs(r) if r.len() == 1));
        let http =
            json!({"version": "2.0", "rawPath": "/", "requestContext": {"http": {"method": "POST"}}, "body": ""});
        assert_eq!(classify(&http), EventShape::Http);
        let rule =
            json!({"version": "0", "id": "e", "detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
        assert_eq!(classify(&rule), EventShape::ScheduleRule);
        assert_eq!(classify(&json!({"managed_device_ids": []})), EventShape::Direct);
        // Look-alikes are payloads, and payload validation refuses them.
        let mixed = json!({"Records": [{"eventSource": "aws:sqs"}, {"eventSource": "aws:s3"}]});
        assert_eq!(classify(&mixed), EventShape::Direct);
        assert_eq!(classify(&json!({"Records": []})), EventShape::Direct);
        assert_eq!(
            classify(&json!({"source": "aws.events", "detail-type": "Other"})),
            EventShape::Direct
        );
    }
}
