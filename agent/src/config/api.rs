//! `[api]`: the local API listener (address, token, body limit) and how it
//! is served (timeouts, connection cap, accepted `Host` names, `/metrics` token).

use super::{env_override, read_secret, ENV_API_LISTEN};
use common::config::{ByteSize, ConfigError, ConfigSource, HumanDuration};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7600";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub listen: Option<String>,
    /// Optional bearer token required on the local API (not on /healthz, /readyz).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub max_body: Option<ByteSize>,
    /// Longest wait for a whole request head (default 10s).
    pub header_timeout: Option<HumanDuration>,
    /// Longest time a whole request body may take (default 30s).
    pub body_timeout: Option<HumanDuration>,
    /// Idle keep-alive connections are closed after this (default 60s).
    pub idle_timeout: Option<HumanDuration>,
    /// Most connections open at once (default 512).
    pub max_connections: Option<usize>,
    /// `Host` values accepted besides loopback names and the listen address
    /// (DNS rebinding guard), e.g. a pod IP.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// File holding a bearer token required on `/metrics` (open when absent).
    pub metrics_token_file: Option<PathBuf>,
}

/// Serving settings of the local API listener.
#[derive(Debug, Clone)]
pub struct ApiHttp {
    pub limits: common::serve::Limits,
    /// Extra accepted `Host` names or addresses (lowercase, without port).
    pub allowed_hosts: Vec<String>,
    /// Bearer token required on `/metrics` when set.
    pub metrics_token: Option<String>,
}

/// Default cap of the local API listener.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 512;

impl Default for ApiHttp {
    fn default() -> Self {
        ApiHttp {
            limits: common::serve::Limits::with_max_connections(DEFAULT_API_MAX_CONNECTIONS),
            allowed_hosts: Vec::new(),
            metrics_token: None,
        }
    }
}

/// The `[api]` keys about where it listens and who may call it.
pub(super) struct ApiAccess {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub max_body_bytes: usize,
}

pub(super) fn resolve_access(
    src: &ConfigSource,
    api: &ApiSection,
    errs: &mut Vec<ConfigError>,
) -> ApiAccess {
    let listen_raw = env_override(ENV_API_LISTEN)
        .or(api.listen.clone())
        .unwrap_or_else(|| DEFAULT_API_LISTEN.into());
    let api_listen = listen_raw.parse().unwrap_or_else(|_| {
        errs.push(src.error(
            "api.listen",
            format!("invalid address {listen_raw:?} (expected IP:PORT)"),
        ));
        DEFAULT_API_LISTEN.parse().expect("default")
    });
    let api_token = match (&api.token, &api.token_file) {
        (Some(_), Some(_)) => {
            errs.push(src.error(
                "api.token_file",
                "give api.token or api.token_file, not both",
            ));
            None
        }
        (Some(t), None) if t.trim().is_empty() => {
            errs.push(src.error(
                "api.token",
                "is empty; an empty token would leave the API open (remove the key for no token)",
            ));
            None
        }
        (Some(t), None) => Some(t.clone()),
        // an empty file must not quietly mean "no token"
        (None, Some(p)) => match read_secret(p) {
            Ok(t) if t.is_empty() => {
                errs.push(src.error(
                    "api.token_file",
                    format!(
                        "{} is empty; an empty token would leave the API open",
                        p.display()
                    ),
                ));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(src.error("api.token_file", e));
                None
            }
        },
        (None, None) => None,
    };
    ApiAccess {
        listen: api_listen,
        token: api_token,
        max_body_bytes: api.max_body.map(|b| b.0 as usize).unwrap_or(1_000_000),
    }
}

/// The `[api]` keys about how the listener is served.
pub(super) fn resolve_http(
    src: &ConfigSource,
    api: &ApiSection,
    errs: &mut Vec<ConfigError>,
) -> ApiHttp {
    let mut limits = ApiHttp::default().limits;
    for (key, given, slot) in [
        (
            "api.header_timeout",
            api.header_timeout,
            &mut limits.header_timeout,
        ),
        (
            "api.body_timeout",
            api.body_timeout,
            &mut limits.body_timeout,
        ),
        (
            "api.idle_timeout",
            api.idle_timeout,
            &mut limits.idle_timeout,
        ),
    ] {
        match given {
            Some(d) if d.0.is_zero() => errs.push(src.error(key, "must be longer than zero")),
            Some(d) => *slot = d.0,
            None => {}
        }
    }
    match api.max_connections {
        Some(0) => errs.push(src.error("api.max_connections", "must be at least 1")),
        Some(n) => limits.max_connections = n,
        None => {}
    }
    let mut allowed_hosts = Vec::new();
    for h in &api.allowed_hosts {
        let host = h.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            errs.push(src.error(
                "api.allowed_hosts",
                format!("{h:?} is not a host name or address"),
            ));
        } else {
            allowed_hosts.push(host);
        }
    }
    let metrics_token = api
        .metrics_token_file
        .as_ref()
        .and_then(|p| match read_secret(p) {
            Ok(t) if t.is_empty() => {
                errs.push(src.error(
                    "api.metrics_token_file",
                    format!("{} is empty", p.display()),
                ));
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                errs.push(src.error("api.metrics_token_file", e));
                None
            }
        });
    ApiHttp {
        limits,
        allowed_hosts,
        metrics_token,
    }
}
