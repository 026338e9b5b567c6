//! Graph and login hosts per national cloud. They come from deployment
//! configuration only, never from a payload.

use reqwest::Url;

pub use crate::credentials::Cloud;

/// The hosts a run talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Graph root, without the version (`https://graph.microsoft.com`).
    pub graph: Url,
    /// Entra ID authority (`https://login.microsoftonline.com`).
    pub login: Url,
    /// The cloud the hosts belong to (it decides the audience of a
    /// federated credential's token, whatever the hosts are overridden to).
    pub cloud: Cloud,
}

/// A configuration value was refused; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EndpointError(pub String);

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Parses a host root: `https://` (or `http://` for loopback only), no
/// credentials, query or fragment; a trailing `/` is dropped.
pub fn parse_root(name: &str, raw: &str) -> Result<Url, EndpointError> {
    let url = Url::parse(raw.trim()).map_err(|e| EndpointError(format!("{name}: {raw:?} is not a URL ({e})")))?;
    let ok_scheme = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&url));
    if !ok_scheme {
        return Err(EndpointError(format!(
            "{name}: {raw:?} must use https (http is allowed only for 127.0.0.1, ::1 or localhost)"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(EndpointError(format!(
            "{name}: {raw:?} must be a bare origin without credentials, query or fragment"
        )));
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Err(EndpointError(format!(
            "{name}: {raw:?} must be a host root without a path"
        )));
    }
    Ok(url)
}

impl Endpoints {
    /// The endpoints of a national cloud.
    pub fn for_cloud(cloud: Cloud) -> Self {
        Self {
            graph: parse_root("graph", cloud.graph_host()).unwrap_or_else(|_| unreachable!()),
            login: parse_root("login", cloud.login_host()).unwrap_or_else(|_| unreachable!()),
            cloud,
        }
    }

    /// Reads `ATTEST_CLOUD` (default `global`), then lets `GRAPH_ENDPOINT`
    /// and `AZURE_AUTHORITY_HOST` override the hosts it implies.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, EndpointError> {
        let cloud = match get("ATTEST_CLOUD").filter(|s| !s.is_empty()) {
            Some(name) => name.parse::<Cloud>().map_err(EndpointError)?,
            None => Cloud::Global,
        };
        let mut e = Self::for_cloud(cloud);
        if let Some(g) = get("GRAPH_ENDPOINT").filter(|s| !s.is_empty()) {
            e.graph = parse_root("GRAPH_ENDPOINT", &g)?;
        }
        if let Some(l) = get("AZURE_AUTHORITY_HOST").filter(|s| !s.is_empty()) {
            e.login = parse_root("AZURE_AUTHORITY_HOST", &l)?;
        }
        Ok(e)
    }

    /// The Graph root as text, without a trailing `/`.
    pub fn graph_root(&self) -> String {
        self.graph.as_str().trim_end_matches('/').to_owned()
    }

    /// The token endpoint of a tenant.
    pub fn token_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/oauth2/v2.0/token",
            self.login.as_str().trim_end_matches('/')
        )
    }

    /// The device authorization endpoint of a tenant (the device code flow).
    pub fn device_code_url(&self, tenant: &str) -> String {
        format!(
            "{}/{tenant}/oauth2/v2.0/devicecode",
            self.login.as_str().trim_end_matches('/')
        )
    }

    /// The audience to ask an external issuer for (`api://AzureADTokenExchange`
    /// in the global cloud).
    pub fn federation_audience(&self) -> &'static str {
        self.cloud.federation_audience()
    }

    /// The client-credentials scope (`{graph}/.default`).
    pub fn scope(&self) -> String {
        format!("{}/.default", self.graph_root())
    }

    /// Whether `url` is on the Graph origin (scheme, host and port), so a
    /// bearer token may be sent to it.
    pub fn is_graph_origin(&self, url: &Url) -> bool {
        url.scheme() == self.graph.scheme()
            && url.host_str() == self.graph.host_str()
            && url.port_or_known_default() == self.graph.port_or_known_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn clouds_pick_their_hosts_and_overrides_win() {
        let e = Endpoints::from_env(env(&[("ATTEST_CLOUD", "usgovdod")])).unwrap();
        assert_eq!(e.graph_root(), "https://dod-graph.microsoft.us");
        assert_eq!(e.scope(), "https://dod-graph.microsoft.us/.default");
        assert_eq!(e.token_url("t"), "https://login.microsoftonline.us/t/oauth2/v2.0/token");
        let e = Endpoints::from_env(env(&[
            ("ATTEST_CLOUD", "china"),
            ("GRAPH_ENDPOINT", "http://127.0.0.1:8080/"),
        ]))
        .unwrap();
        assert_eq!(e.graph_root(), "http://127.0.0.1:8080");
        assert_eq!(e.login.as_str(), "https://login.chinacloudapi.cn/");
        assert_eq!(
            Endpoints::from_env(env(&[])).unwrap(),
            Endpoints::for_cloud(Cloud::Global)
        );
    }

    #[test]
    fn unsafe_hosts_are_refused_with_the_variable_named() {
        for bad in [
            "http://graph.microsoft.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "https://user:pw@graph.microsoft.com",
            "https://graph.microsoft.com/v1.0",
            "https://graph.microsoft.com?x=1",
            "not a url",
        ] {
            let err = Endpoints::from_env(env(&[("GRAPH_ENDPOINT", bad)])).unwrap_err();
            assert!(err.0.starts_with("GRAPH_ENDPOINT"), "{bad}: {err}");
        }
        assert!(
            Endpoints::from_env(env(&[("ATTEST_CLOUD", "mars")]))
                .unwrap_err()
                .0
                .contains("ATTEST_CLOUD")
        );
        assert!(Endpoints::from_env(env(&[("AZURE_AUTHORITY_HOST", "http://[::1]:9")])).is_ok());
        assert!(Endpoints::from_env(env(&[("AZURE_AUTHORITY_HOST", "http://localhost:9")])).is_ok());
    }

    #[test]
    fn origin_check_compares_scheme_host_and_port() {
        let e = Endpoints::for_cloud(Cloud::Global);
        assert!(e.is_graph_origin(&Url::parse("https://graph.microsoft.com/beta/x?$skiptoken=1").unwrap()));
        assert!(!e.is_graph_origin(&Url::parse("https://evil.example/beta/x").unwrap()));
        assert!(!e.is_graph_origin(&Url::parse("http://graph.microsoft.com/beta/x").unwrap()));
        assert!(!e.is_graph_origin(&Url::parse("https://graph.microsoft.com:8443/beta/x").unwrap()));
    }
}
