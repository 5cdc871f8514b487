//! The agent's reverse proxy: it sits in front of the app (ARCHITECTURE.md, "agent"),
//! enforces kill switches and otherwise passes traffic through untouched.
//!
//! Files: this one (settings, metrics, the accept loop), `forward.rs` (one request:
//! the kill-switch check, the pass-through, body timeouts), `tunnel.rs` (WebSocket
//! upgrades), `headers.rs` (hop-by-hop and forwarded headers, error answers),
//! `rules.rs` (kill rules prepared once) and `paths.rs` (path normalisation and matching).
//!
//! # What happens to a request
//!
//! 1. **Kill-switch check.** The current killed set is read with
//!    [`tokio::sync::watch::Receiver::borrow`] (a short read lock, never held across an
//!    `.await`). Only rules whose switch name is in the set are looked at; when nothing is
//!    killed the check costs one lock and an `is_empty()`. A request matches a rule when any
//!    of the rule's blocks matches (see *Matching* below); the first matching rule in
//!    configuration order wins. A matching request never reaches the upstream and gets:
//!    * the rule's status (a status below 200 is replaced by 503: it cannot be a final status),
//!    * `Retry-After: <secs>` when the rule has one,
//!    * `X-Opsplane-Killswitch: <name>`, `Cache-Control: no-store`, `Vary: Accept`,
//!    * a body chosen by the request's `Accept` header: when JSON is preferred (see
//!      [`prefers_json`]) it is `application/json`
//!      `{"error":{"code":"KILLED","message":BODY,"killswitch":NAME}}`, otherwise the rule's
//!      body as `text/plain; charset=utf-8`.
//!
//! 2. **Pass-through.** Method, path and query (byte for byte, *not* normalised) and headers
//!    go to the upstream's scheme and authority over pooled HTTP/1.1 keep-alive connections.
//!    Hop-by-hop headers are removed in both directions (RFC 9110 §7.6.1: `Connection` and
//!    every header it names, `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding`,
//!    `Upgrade`, plus `Trailer`, `Proxy-Authenticate` and `Proxy-Authorization` as Go's
//!    `httputil.ReverseProxy` does). `Expect` is removed too: the proxy itself answers
//!    `100-continue` to the client when it starts reading the body. `Host` is kept as the client
//!    sent it. `X-Forwarded-For` gets the client's IP appended (the rightmost entry is the one this
//!    proxy vouches for; earlier ones are whatever the client sent); `X-Forwarded-Proto` (`http`)
//!    and `X-Forwarded-Host` (the client's `Host`) are *replaced* unless
//!    [`ProxySettings::trust_forwarded_headers`] is set, in which case values sent by a
//!    trusted front proxy are kept and only missing ones are added. Bodies are streamed frame
//!    by frame in both directions, never buffered whole.
//!
//! 3. **Upgrades**: only WebSocket (`Connection: upgrade` + `Upgrade: websocket`). The request
//!    is forwarded with those two headers restored; when the upstream answers `101` with
//!    `Upgrade: websocket`, the `101` is relayed and both upgraded connections are joined with
//!    [`tokio::io::copy_bidirectional`]. Every other upgrade, `h2c` above all (HTTP/2 inside
//!    the tunnel would carry requests no kill switch sees), is stripped: the request goes on
//!    as plain HTTP/1.1 without `Upgrade`, `Connection` or `HTTP2-Settings` (see
//!    `requested_upgrade` for why stripping rather than refusing). An open tunnel is matched
//!    again against every new kill-switch state; when a kill now blocks the request that
//!    opened it, the tunnel is closed on both sides
//!    ([`ProxyMetrics::tunnels_closed_by_kill_total`]).
//!
//! 4. **Upstream failures**: refused / unreachable / broken → `502`
//!    `{"error":{"code":"UPSTREAM_UNAVAILABLE",…}}` (connect failures) or
//!    `{"error":{"code":"UPSTREAM_ERROR",…}}` (the upstream failed after connecting); no
//!    response head within [`ProxySettings::upstream_header_timeout`] of the request body
//!    having been forwarded whole → `504` `{"error":{"code":"UPSTREAM_TIMEOUT",…}}`. Once the
//!    head has arrived the body streams with no time limit (long polls, SSE). A request body
//!    that makes no progress for [`ProxySettings::body_timeout`] is cut: `408`
//!    `REQUEST_TIMEOUT` when the client stopped sending, `504` `UPSTREAM_TIMEOUT` when the app
//!    stopped reading. The messages never contain internal detail; the detail is logged with
//!    `tracing`.
//!
//! 5. **Limits**: at most [`ProxySettings::max_connections`] client connections; past it a new
//!    connection is closed at once and counted.
//!
//! # Matching
//!
//! How a request path is matched against a blocked prefix, and why spellings such as
//! `/api//pay` cannot bypass it, is described in `paths.rs`.
//!
//! # Shutdown
//!
//! When `shutdown` is cancelled the listener is dropped (no new connections), every HTTP
//! connection is asked to finish its in-flight request and close (idle keep-alive
//! connections close at once), and upgraded tunnels (WebSockets) are closed at once: they
//! have no request boundary to stop at. After [`ProxySettings::shutdown_grace`] whatever is
//! left is dropped, and `serve` returns.

mod forward;
mod headers;
mod paths;
mod rules;
#[cfg(test)]
mod tests;
mod tunnel;

use forward::{handle, ForwardBody};
pub use headers::prefers_json;
use rules::CompiledRule;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The names of kill switches currently killed for this agent; the agent replaces it on
/// every applied revision.
pub type KilledRx =
    tokio::sync::watch::Receiver<std::sync::Arc<std::collections::BTreeSet<String>>>;

/// Body of every response the proxy produces: the upstream's body streamed as it arrives,
/// or a small body the proxy made itself.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// How the proxy listens and where it forwards.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The app, e.g. `http://127.0.0.1:3000`. Only `http` is supported; only the scheme and
    /// authority are used (any path in it is ignored).
    pub upstream: Uri,
    /// Largest request head (request line + headers) accepted from a client; larger heads get
    /// `431`. Values below 8192 are raised to 8192 (hyper's minimum). Default 64 KiB.
    pub max_header_bytes: usize,
    /// Longest wait for the upstream's response head, counted from when the request body has
    /// been forwarded whole (connect included for bodiless requests); then `504`. Default 60 s.
    pub upstream_header_timeout: Duration,
    /// Longest a client may take to send a request head (slowloris guard); hyper's timer
    /// also runs while a keep-alive connection waits for its next request. Default 30 s.
    pub client_header_timeout: Duration,
    /// Longest a request body may make no progress on its way to the app, whether the client
    /// stops sending (`408`) or the app stops reading (`504`). Default 60 s. Response bodies
    /// and upgraded tunnels have no such limit.
    pub body_timeout: Duration,
    /// Most client connections open at once; past it new connections are closed at once and
    /// counted in [`ProxyMetrics::connections_refused_total`]. Default 4096.
    pub max_connections: usize,
    /// How long in-flight requests may run on after shutdown is requested. Default 5 s.
    pub shutdown_grace: Duration,
    /// Idle pooled upstream connections are closed after this. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// Most idle pooled upstream connections kept. Default 64.
    pub pool_max_idle: usize,
    /// Keep `X-Forwarded-Proto` / `X-Forwarded-Host` sent by the client (set this only when
    /// a trusted proxy is in front). Default false: they are overwritten.
    pub trust_forwarded_headers: bool,
}

impl ProxySettings {
    /// Settings with every default, forwarding to `upstream`.
    pub fn new(upstream: Uri) -> Self {
        ProxySettings {
            upstream,
            max_header_bytes: 64 * 1024,
            upstream_header_timeout: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_connections: 4096,
            shutdown_grace: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 64,
            trust_forwarded_headers: false,
        }
    }
}

/// One `block = [...]` entry of a kill switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMatch {
    /// `None` matches every method.
    pub method: Option<Method>,
    /// Matched against the normalised request path (see the module docs).
    pub path_prefix: String,
}

/// What a kill switch blocks and how the proxy answers while it is killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRule {
    pub name: String,
    pub blocks: Vec<BlockMatch>,
    pub status: StatusCode,
    pub retry_after_secs: Option<u64>,
    pub body: String,
}

/// Counters, shared with the agent's metrics endpoint.
#[derive(Debug, Default)]
pub struct ProxyMetrics {
    /// Every request the proxy received (blocked or not).
    pub requests_total: AtomicU64,
    /// Requests answered by a kill switch.
    pub blocked_total: AtomicU64,
    /// Requests that got a 502 or 504 from the proxy (timeouts included).
    pub upstream_errors_total: AtomicU64,
    /// The subset of `upstream_errors_total` that were 504 timeouts.
    pub upstream_timeouts_total: AtomicU64,
    /// Client connections open now.
    pub connections_open: AtomicU64,
    /// Client connections closed at once because the proxy was at its cap.
    pub connections_refused_total: AtomicU64,
    /// Requests cut because their body made no progress within the body timeout.
    pub body_timeouts_total: AtomicU64,
    /// Upgraded tunnels closed because a new kill-switch state blocks their route.
    pub tunnels_closed_by_kill_total: AtomicU64,
    /// Blocked requests per kill-switch name (locked only briefly when a request is blocked).
    pub blocked_by_rule: Mutex<BTreeMap<String, u64>>,
}

impl ProxyMetrics {
    /// Blocked requests counted for the kill switch `name`.
    pub fn blocked_for(&self, name: &str) -> u64 {
        self.blocked_by_rule
            .lock()
            .map(|m| m.get(name).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

/// Serve until `shutdown` is cancelled, then stop accepting and let in-flight requests finish
/// (graceful, bounded by [`ProxySettings::shutdown_grace`]).
///
/// Returns an `InvalidInput` error at once when `settings.upstream` is not an `http://`
/// URI with an authority; otherwise `Ok(())` after shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: ProxySettings,
    rules: std::sync::Arc<Vec<KillRule>>,
    killed: KilledRx,
    metrics: std::sync::Arc<ProxyMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let (scheme, authority) = upstream_parts(&settings.upstream)?;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(settings.pool_idle_timeout)
        .pool_max_idle_per_host(settings.pool_max_idle)
        .build(connector);

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.client_header_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .keep_alive(true);

    let hard_stop = CancellationToken::new();
    let shared = Arc::new(Shared {
        scheme,
        authority,
        upstream_header_timeout: settings.upstream_header_timeout,
        body_timeout: settings.body_timeout,
        trust_forwarded: settings.trust_forwarded_headers,
        rules: rules.iter().map(CompiledRule::new).collect(),
        killed,
        metrics,
        client,
        http,
        shutdown: shutdown.clone(),
        hard_stop: hard_stop.clone(),
        tasks: TaskTracker::new(),
    });

    let permits = Arc::new(tokio::sync::Semaphore::new(settings.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    shared
                        .metrics
                        .connections_refused_total
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, "proxy connection refused: at max_connections");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = shared.clone();
                s.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
                shared.tasks.spawn(async move {
                    let metrics = s.metrics.clone();
                    serve_connection(s, stream, peer).await;
                    metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(e) => {
                // Per-connection errors (ECONNABORTED…) are harmless; resource exhaustion
                // (EMFILE…) would spin, so back off a little.
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }

    drop(listener);
    shared.tasks.close();
    tracing::info!(
        connections = shared.tasks.len(),
        "proxy stopped accepting; draining"
    );
    if tokio::time::timeout(settings.shutdown_grace, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = shared.tasks.len(),
            "proxy shutdown grace expired; dropping connections"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), shared.tasks.wait()).await;
    }
    Ok(())
}

struct Shared {
    scheme: Scheme,
    authority: Authority,
    upstream_header_timeout: Duration,
    body_timeout: Duration,
    trust_forwarded: bool,
    rules: Vec<CompiledRule>,
    killed: KilledRx,
    metrics: Arc<ProxyMetrics>,
    client: Client<HttpConnector, ForwardBody>,
    http: hyper::server::conn::http1::Builder,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    tasks: TaskTracker,
}

fn upstream_parts(upstream: &Uri) -> std::io::Result<(Scheme, Authority)> {
    let invalid = |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg.to_owned());
    let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
    if scheme != Scheme::HTTP {
        return Err(invalid("proxy upstream must be an http:// URI"));
    }
    let authority = upstream
        .authority()
        .cloned()
        .ok_or_else(|| invalid("proxy upstream must name a host and port"))?;
    Ok((scheme, authority))
}

async fn serve_connection(shared: Arc<Shared>, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| handle(svc_shared.clone(), peer, req));
    let conn = shared
        .http
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let res = tokio::select! {
        res = conn.as_mut() => res,
        _ = shared.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                res = conn.as_mut() => res,
                _ = shared.hard_stop.cancelled() => return,
            }
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "proxy client connection ended with an error");
    }
}
