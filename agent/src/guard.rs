//! Checks wrapped around the whole local API router (in `lib.rs`), before any
//! handler or the API token check runs:
//!
//! * **Host check** (DNS rebinding): a web page on another origin can make a
//!   browser send requests to `127.0.0.1:7600` under its own host name. Only
//!   `Host` values that are loopback names or addresses (`localhost`,
//!   `127.0.0.0/8`, `[::1]`, any port), the configured listen address, or an
//!   entry of `[api] allowed_hosts` are accepted; others get `403`
//!   `{"error":{"code":"HOST_NOT_ALLOWED",…}}`.
//! * **Metrics token**: with `[api] metrics_token_file`, `GET /metrics` needs
//!   `Authorization: Bearer <token>` (compared in constant time) and is then
//!   answered here, so a scraper needs only that token, not the API token.
//!   Without it `/metrics` is served by the router as before.

use crate::state::Shared;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use common::wire::ErrorBody;
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The middleware: Host check, then the metrics token.
pub async fn api_guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let http = &s.config.api_http;
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
    let allowed = host
        .as_deref()
        .is_some_and(|h| host_allowed(h, s.config.api_listen, &http.allowed_hosts));
    if !allowed {
        tracing::debug!(host = ?host, "request refused: host not allowed");
        return error(
            StatusCode::FORBIDDEN,
            "HOST_NOT_ALLOWED",
            "this Host is not allowed on the agent API (see [api] allowed_hosts)",
        );
    }
    if let Some(want) = &http.metrics_token {
        if req.uri().path() == "/metrics" && req.method() == Method::GET {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if !given.is_some_and(|g| token_eq(g, want)) {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "missing or wrong metrics token",
                );
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            let mut r = Response::new(Body::from(crate::metrics::render(&s)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return r;
        }
    }
    next.run(req).await
}

/// Compares two secrets in constant time (their SHA-256 digests, so the
/// length is not revealed either).
pub fn token_eq(given: &str, want: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(want.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody::new(code, message)).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Whether a `Host` value (with or without port) may reach the API.
pub fn host_allowed(host: &str, listen: SocketAddr, extra: &[String]) -> bool {
    let host = host.trim().to_ascii_lowercase();
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, tail)) if tail.strip_prefix(':').is_some_and(is_port) => ip,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if is_port(port) && !h.contains(':') => h,
            Some(_) => return false,
            None => host.as_str(),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return false;
    }
    if name == "localhost" {
        return true;
    }
    let ip = name.parse::<IpAddr>().ok().map(|ip| ip.to_canonical());
    if let Some(ip) = ip {
        let listen_ip = listen.ip().to_canonical();
        if ip.is_loopback() || (!listen_ip.is_unspecified() && ip == listen_ip) {
            return true;
        }
    }
    extra.iter().any(|e| {
        let e = e.trim_start_matches('[').trim_end_matches(']');
        match (ip, e.parse::<IpAddr>()) {
            (Some(ip), Ok(want)) => ip == want.to_canonical(),
            _ => e == name,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let lo: SocketAddr = "127.0.0.1:7600".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7600".parse().unwrap();
        let pod: SocketAddr = "10.1.2.3:7600".parse().unwrap();
        let extra = vec!["10.9.9.9".to_string(), "agent.internal".to_string()];
        for h in [
            "localhost",
            "LOCALHOST:7600",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:7600",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:7600",
            "[::ffff:127.0.0.1]:1",
            "10.9.9.9:7600",
            "agent.internal",
        ] {
            assert!(host_allowed(h, lo, &extra), "{h}");
        }
        for h in [
            "",
            "evil.example",
            "evil.example:7600",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.1.2.3:7600",
            "0.0.0.0:7600",
            "::1",
            "[::1]x",
            "[::1]:",
            "127.0.0.1:x",
            "user@localhost",
        ] {
            assert!(!host_allowed(h, lo, &extra), "{h}");
        }
        assert!(host_allowed("10.1.2.3:7600", pod, &[]));
        assert!(!host_allowed("0.0.0.0", any, &[]));
        assert!(!host_allowed("10.1.2.3", any, &[]));
    }

    #[test]
    fn tokens() {
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abc", "abd"));
        assert!(!token_eq("", "abc"));
    }
}
