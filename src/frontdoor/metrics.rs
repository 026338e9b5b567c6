//! CloudWatch Embedded Metric Format: one JSON line per run on stdout,
//! which Lambda's log pipeline turns into metrics without an API call.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::core::outcome::{Outcome, RunResult};

/// The metrics namespace.
pub const NAMESPACE: &str = "IntuneAttest";

/// The EMF line for one run.
pub fn emf_line(result: &RunResult, function_name: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut metrics = vec![
        ("DevicesRequested", "Count", result.summary.requested as u64),
        ("ThrottledResponses", "Count", result.stats.throttled_responses),
        ("HttpRequests", "Count", result.stats.http_requests),
        ("RunDuration", "Milliseconds", result.stats.duration_ms),
    ];
    let names: Vec<(Outcome, &str)> = vec![
        (Outcome::Initiated, "DevicesInitiated"),
        (Outcome::NotFound, "DevicesNotFound"),
        (Outcome::Unsupported, "DevicesUnsupported"),
        (Outcome::Forbidden, "DevicesForbidden"),
        (Outcome::Failed, "DevicesFailed"),
        (Outcome::Throttled, "DevicesThrottled"),
        (Outcome::NotAttempted, "DevicesNotAttempted"),
        (Outcome::Continued, "DevicesContinued"),
    ];
    for (o, name) in names {
        metrics.push((name, "Count", result.summary.count(o) as u64));
    }
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({"Timestamp": ms, "CloudWatchMetrics": [{
            "Namespace": NAMESPACE,
            "Dimensions": [["FunctionName"]],
            "Metrics": metrics.iter().map(|(n, u, _)| json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
        }]}),
    );
    line.insert("FunctionName".into(), json!(function_name));
    for (name, _, value) in &metrics {
        line.insert((*name).into(), json!(value));
    }
    line.insert("correlation_id".into(), json!(result.correlation_id));
    line.insert(
        "status".into(),
        serde_json::to_value(result.status).unwrap_or(Value::Null),
    );
    Value::Object(line).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outcome::RunRecord;

    #[test]
    fn every_declared_metric_has_a_value() {
        let r = RunResult::new(RunRecord {
            correlation_id: "c".into(),
            ..RunRecord::default()
        });
        let v: Value = serde_json::from_str(&emf_line(&r, "fn")).unwrap();
        let declared = v["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array().unwrap();
        assert!(declared.len() >= 12);
        for m in declared {
            let name = m["Name"].as_str().unwrap();
            assert!(v[name].is_u64(), "{name}");
        }
        assert_eq!(v["FunctionName"], "fn");
    }
}
