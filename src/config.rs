//! Deployment configuration, read from the environment. Everything that
//! decides where requests go or how fast they are sent comes from here,
//! never from a payload.

use std::time::Duration;

use crate::core::duration::parse_go_duration;
use crate::core::engine::EngineConfig;
use crate::core::pacer::PacerConfig;
use crate::core::request::RequestLimits;
use crate::graph::client::ClientConfig;
use crate::graph::endpoints::{Cloud, Endpoints, parse_root};

/// A setting was refused; the message names the variable and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// All deployment settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Graph and login hosts.
    pub endpoints: Endpoints,
    /// `GRAPH_ENDPOINT` and `AZURE_AUTHORITY_HOST`, when set: they win over a
    /// cloud named by stored credentials.
    pub endpoint_overrides: (Option<String>, Option<String>),
    /// Engine tuning.
    pub engine: EngineConfig,
    /// HTTP client tuning.
    pub client: ClientConfig,
    /// Request limits.
    pub limits: RequestLimits,
}

fn number<T>(get: &dyn Fn(&str) -> Option<String>, name: &str, default: T, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(ConfigError(format!(
                "{name}: {v:?} is not a whole number of at least {min}"
            ))),
        },
    }
}

fn duration(get: &dyn Fn(&str) -> Option<String>, name: &str, default: Duration) -> Result<Duration, ConfigError> {
    match get(name).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => match parse_go_duration(v.trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(ConfigError(format!(
                "{name}: {v:?} is not a positive Go duration such as \"20s\""
            ))),
        },
    }
}

impl Settings {
    /// Reads every setting; see docs/reference.md, "Configuration".
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get: &dyn Fn(&str) -> Option<String> = &get;
        let endpoints = Endpoints::from_env(get).map_err(|e| ConfigError(e.0))?;
        let mut engine = EngineConfig::default();
        let window = duration(get, "ATTEST_THROTTLE_WINDOW", Duration::from_secs(20))?;
        engine.writes = PacerConfig::new(number(get, "ATTEST_WRITE_BUDGET", 190u32, 1)?, window);
        engine.reads = PacerConfig::new(number(get, "ATTEST_READ_BUDGET", 1000u32, 1)?, window);
        engine.write_concurrency = number(get, "ATTEST_WRITE_CONCURRENCY", engine.write_concurrency, 1)?;
        engine.read_concurrency = number(get, "ATTEST_READ_CONCURRENCY", engine.read_concurrency, 1)?;
        engine.backoff.attempts = number(get, "ATTEST_MAX_ATTEMPTS", engine.backoff.attempts, 1)?;
        engine.progress_interval = duration(get, "ATTEST_PROGRESS_INTERVAL", engine.progress_interval)?;
        engine.max_retry_after = duration(get, "ATTEST_MAX_RETRY_AFTER", engine.max_retry_after)?;
        let max_devices = number(get, "ATTEST_MAX_DEVICES", crate::core::request::DEFAULT_MAX_DEVICES, 1)?;
        engine.max_devices = max_devices;
        let attestation_detail = match get("ATTEST_ATTESTATION_DETAIL").as_deref().map(str::trim) {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "ATTEST_ATTESTATION_DETAIL: {:?}; expected true or false",
                    crate::core::text::bounded(other, 40)
                )));
            }
        };
        let client = ClientConfig {
            request_timeout: duration(get, "ATTEST_REQUEST_TIMEOUT", Duration::from_secs(30))?,
            attestation_detail,
            ..ClientConfig::default()
        };
        let endpoint_overrides = (
            get("GRAPH_ENDPOINT").filter(|s| !s.is_empty()),
            get("AZURE_AUTHORITY_HOST").filter(|s| !s.is_empty()),
        );
        Ok(Self {
            endpoints,
            endpoint_overrides,
            engine,
            client,
            limits: RequestLimits { max_devices },
        })
    }

    /// The endpoints for credentials that name their own cloud: the cloud's
    /// hosts, unless `GRAPH_ENDPOINT` / `AZURE_AUTHORITY_HOST` override them.
    pub fn endpoints_for(&self, cloud: Option<Cloud>) -> Result<Endpoints, ConfigError> {
        let Some(cloud) = cloud else {
            return Ok(self.endpoints.clone());
        };
        let (graph, login) = &self.endpoint_overrides;
        let mut e = Endpoints::for_cloud(cloud);
        if let Some(g) = graph {
            e.graph = parse_root("GRAPH_ENDPOINT", g).map_err(|e| ConfigError(e.0))?;
        }
        if let Some(l) = login {
            e.login = parse_root("AZURE_AUTHORITY_HOST", l).map_err(|e| ConfigError(e.0))?;
        }
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_intune_limits() {
        let s = Settings::from_env(|_| None).unwrap();
        assert_eq!(s.engine.writes.budget, 190);
        assert_eq!(s.engine.writes.window, Duration::from_secs(20));
        assert_eq!(s.limits.max_devices, 50_000);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Settings::from_env(|k| (k == "ATTEST_WRITE_BUDGET").then(|| "lots".into())).unwrap_err();
        assert!(err.0.starts_with("ATTEST_WRITE_BUDGET: \"lots\""), "{err}");
        let err = Settings::from_env(|k| (k == "ATTEST_THROTTLE_WINDOW").then(|| "0s".into())).unwrap_err();
        assert!(err.0.starts_with("ATTEST_THROTTLE_WINDOW"), "{err}");
        let s = Settings::from_env(|k| (k == "ATTEST_THROTTLE_WINDOW").then(|| "2s".into())).unwrap();
        assert_eq!(s.engine.writes.window, Duration::from_secs(2));
    }
}
