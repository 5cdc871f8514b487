//! `[proxy]`: the reverse proxy in front of the app that enforces kill
//! switches (listen address, upstream, timeouts, connection cap).

use super::{env_override, ENV_PROXY_LISTEN};
use common::config::{ConfigError, ConfigSource, HumanDuration};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Default cap of the proxy listener (each proxied connection also holds one
/// to the app).
pub const DEFAULT_PROXY_MAX_CONNECTIONS: usize = 4096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    pub listen: String,
    pub upstream: String,
    pub upstream_timeout: Option<HumanDuration>,
    /// Longest a client may take to send a request head (default 30s).
    pub header_timeout: Option<HumanDuration>,
    /// Longest a request body may make no progress, client to proxy or proxy
    /// to app (default 60s).
    pub body_timeout: Option<HumanDuration>,
    /// Most client connections open at once (default 4096).
    pub max_connections: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Proxy {
    pub listen: SocketAddr,
    pub upstream: http::Uri,
    pub upstream_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

pub(super) fn resolve(
    src: &ConfigSource,
    p: &ProxySection,
    errs: &mut Vec<ConfigError>,
) -> Option<Proxy> {
    let listen_raw = env_override(ENV_PROXY_LISTEN).unwrap_or_else(|| p.listen.clone());
    let listen = listen_raw
        .parse()
        .map_err(|_| {
            errs.push(src.error(
                "proxy.listen",
                format!("invalid address {listen_raw:?} (expected IP:PORT)"),
            ))
        })
        .ok();
    let upstream = p
        .upstream
        .parse::<http::Uri>()
        .ok()
        .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some());
    if upstream.is_none() {
        errs.push(src.error(
            "proxy.upstream",
            format!("{:?} is not an http://host:port URL", p.upstream),
        ));
    }
    for (key, d) in [
        ("proxy.header_timeout", p.header_timeout),
        ("proxy.body_timeout", p.body_timeout),
    ] {
        if d.is_some_and(|d| d.0.is_zero()) {
            errs.push(src.error(key, "must be longer than zero"));
        }
    }
    if p.max_connections == Some(0) {
        errs.push(src.error("proxy.max_connections", "must be at least 1"));
    }
    Some(Proxy {
        listen: listen?,
        upstream: upstream?,
        upstream_timeout: p
            .upstream_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
        header_timeout: p
            .header_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30)),
        body_timeout: p
            .body_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
        max_connections: p.max_connections.unwrap_or(DEFAULT_PROXY_MAX_CONNECTIONS),
    })
}
