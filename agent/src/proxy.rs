//! The agent's reverse proxy: it sits in front of the app (SPEC §4, "agent proxy"),
//! enforces kill switches (SPEC §7) and otherwise passes traffic through untouched.
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
//! # Matching (why `/api//pay`, `/api/./pay`, `/api/%70ay` cannot bypass `/api/pay`)
//!
//! The proxy forwards the path untouched, so it must block every spelling that the *app*
//! might route to the killed endpoint. Apps differ (some decode `%2F`, some resolve `..`,
//! some do not, Java containers strip `;params`, some routers are case-insensitive), so the
//! rule is: **a block matches when any plausible interpretation of the request path starts
//! with the normalised prefix.** Over-blocking a near-identical spelling is the safe side of a
//! kill switch. The interpretations (`path_views`) are:
//!
//! * **raw**: the path as received (ASCII-lowercased);
//! * **collapsed**: percent-decoded repeatedly until stable (at most 4 rounds, so `%2570` is
//!   caught for apps that decode twice; `%2F` becomes `/`), `\` treated as `/`, `;params`
//!   stripped from each segment, empty segments (`//`) dropped, `.`/`..` kept verbatim —
//!   what an app that does not resolve dot-segments sees;
//! * **resolved**: as *collapsed*, with `.` dropped and `..` removing the previous segment
//!   (never above the root) — what an app that resolves dot-segments sees.
//!
//! All views and prefixes are ASCII-lowercased (case-insensitive routers exist) and compared
//! as bytes, so a path that decodes to invalid UTF-8 is still compared. A trailing `/` is
//! kept, so a prefix `/api/pay/` only blocks what is below `/api/pay`. The prefix is a plain
//! byte prefix, as the configuration key says: `/api/pay` also blocks `/api/payments`
//! (write `/api/pay/` to block only below it). The configured prefix itself goes through
//! the *resolved* normalisation.
//!
//! Methods: compared case-insensitively; a block for `GET` also blocks `HEAD` (frameworks run
//! the GET handler for HEAD); method-override headers (`X-HTTP-Method-Override`,
//! `X-HTTP-Method`, `X-Method-Override`) are honoured as an alternative method. A `_method`
//! field inside a form body cannot be seen without buffering the body and is not checked.
//!
//! # Shutdown
//!
//! When `shutdown` is cancelled the listener is dropped (no new connections), every HTTP
//! connection is asked to finish its in-flight request and close (idle keep-alive
//! connections close at once), and upgraded tunnels (WebSockets) are closed at once: they
//! have no request boundary to stop at. After [`ProxySettings::shutdown_grace`] whatever is
//! left is dropped, and `serve` returns.

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

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let metrics = &shared.metrics;
    metrics.requests_total.fetch_add(1, Ordering::Relaxed);

    // The borrow is a short read lock; it is released before any await.
    let blocked = {
        let killed = shared.killed.borrow();
        find_block(
            &shared.rules,
            &killed,
            req.method(),
            req.uri().path(),
            req.headers(),
        )
    };
    if let Some(i) = blocked {
        let rule = &shared.rules[i];
        metrics.blocked_total.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = metrics.blocked_by_rule.lock() {
            *m.entry(rule.name.clone()).or_insert(0) += 1;
        }
        tracing::debug!(killswitch = %rule.name, method = %req.method(), path = req.uri().path(), "request blocked by kill switch");
        return Ok(rule.response(prefers_json(req.headers())));
    }

    let upgrade = requested_upgrade(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    // What an open tunnel is matched against when the kill-switch state changes.
    let tunnel_match = upgrade.as_ref().map(|_| TunnelMatch {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        headers: req.headers().clone(),
    });

    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let uri = match Uri::builder()
        .scheme(shared.scheme.clone())
        .authority(shared.authority.clone())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(_) => {
            return Ok(json_error(
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the request target cannot be forwarded",
            ))
        }
    };

    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::EXPECT);
    // Only `websocket` upgrades are forwarded (see `requested_upgrade`); the settings of a
    // refused h2c upgrade go too, even when `Connection` does not name them.
    headers.remove(HTTP2_SETTINGS);
    if let Some(proto) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    add_forwarded(
        &mut headers,
        peer,
        parts.uri.authority(),
        shared.trust_forwarded,
    );

    let sent = Arc::new(Notify::new());
    if body.is_end_stream() {
        sent.notify_one();
    }
    let progress = Arc::new(Progress::new(shared.body_timeout));
    let body = ForwardBody {
        inner: body,
        sent: sent.clone(),
        progress: progress.clone(),
        idle: None,
    };
    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;

    // The header timeout runs from the moment the request body has been forwarded whole: a
    // long upload from a slow client is not the upstream's fault. An upstream that answers
    // before reading the body (413, 401…) is answered at once.
    let request = shared.client.request(out);
    tokio::pin!(request);
    let result = tokio::select! {
        res = &mut request => Ok(res),
        _ = sent.notified() => {
            tokio::time::timeout(shared.upstream_header_timeout, &mut request).await
        }
        _ = progress.stalled() => {
            // No body progress for `body_timeout` while the request was being sent.
            return Ok(body_timeout_response(metrics, &progress));
        }
    };
    let mut resp = match result {
        Ok(Ok(resp)) => resp,
        Ok(Err(_)) if progress.timed_out.load(Ordering::Relaxed) => {
            return Ok(body_timeout_response(metrics, &progress));
        }
        Ok(Err(e)) => {
            metrics
                .upstream_errors_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "proxy upstream request failed");
            return Ok(if e.is_connect() {
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "UPSTREAM_UNAVAILABLE",
                    "the application is not reachable",
                )
            } else {
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "UPSTREAM_ERROR",
                    "the application failed to answer",
                )
            });
        }
        Err(_) => {
            metrics
                .upstream_errors_total
                .fetch_add(1, Ordering::Relaxed);
            metrics
                .upstream_timeouts_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(timeout = ?shared.upstream_header_timeout, "proxy upstream timed out");
            return Ok(json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "UPSTREAM_TIMEOUT",
                "the application did not answer in time",
            ));
        }
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            metrics
                .upstream_errors_total
                .fetch_add(1, Ordering::Relaxed);
            return Ok(json_error(
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_ERROR",
                "the application switched protocols without being asked",
            ));
        };
        let (Some(tunnel_match), Some(proto)) = (
            tunnel_match,
            resp.headers()
                .get(header::UPGRADE)
                .filter(|v| is_websocket(v))
                .cloned(),
        ) else {
            metrics
                .upstream_errors_total
                .fetch_add(1, Ordering::Relaxed);
            return Ok(json_error(
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_ERROR",
                "the application switched to a protocol the proxy does not forward",
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let mut headers = std::mem::take(resp.headers_mut());
        strip_hop_by_hop(&mut headers);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
        let tunnel_shared = shared.clone();
        shared.tasks.spawn(async move {
            let tunnel = async {
                let (client_io, upstream_io) = tokio::try_join!(client_upgrade, upstream_upgrade)
                    .map_err(std::io::Error::other)?;
                let mut client_io = TokioIo::new(client_io);
                let mut upstream_io = TokioIo::new(upstream_io);
                tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await
            };
            run_tunnel(tunnel_shared, tunnel_match, tunnel).await;
        });
        let mut out = Response::new(Either::Right(Full::new(Bytes::new())));
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = headers;
        return Ok(out);
    }

    strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(Either::Left))
}

/// The original request of an upgraded tunnel, matched again on every kill-switch change.
struct TunnelMatch {
    method: Method,
    path: String,
    headers: HeaderMap,
}

/// Runs an upgraded tunnel until it ends, the proxy shuts down, or a new kill-switch state
/// blocks the request that opened it (then both sides are closed: dropping the upgraded
/// connections closes the client's and the app's sockets).
async fn run_tunnel(
    shared: Arc<Shared>,
    m: TunnelMatch,
    tunnel: impl Future<Output = std::io::Result<(u64, u64)>>,
) {
    tokio::pin!(tunnel);
    let mut killed = shared.killed.clone();
    let mut watching = true;
    loop {
        if watching {
            // Checked before every wait, so a kill that landed between the request's own
            // check and this point is seen too.
            let blocked = {
                let k = killed.borrow_and_update();
                find_block(&shared.rules, &k, &m.method, &m.path, &m.headers)
            };
            if let Some(i) = blocked {
                shared
                    .metrics
                    .tunnels_closed_by_kill_total
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(killswitch = %shared.rules[i].name, path = %m.path, "open tunnel closed: its route is now killed");
                return;
            }
        }
        tokio::select! {
            res = &mut tunnel => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "proxy upgraded tunnel ended with an error");
                }
                return;
            }
            _ = shared.shutdown.cancelled() => return,
            changed = killed.changed(), if watching => {
                // The sender is gone only when the agent stops; keep the tunnel until then.
                watching = changed.is_ok();
            }
        }
    }
}

/// Body progress of one forwarded request, shared by [`ForwardBody`] and the handler's
/// watchdog.
struct Progress {
    start: tokio::time::Instant,
    timeout: Duration,
    /// Milliseconds after `start` of the last frame forwarded.
    last_ms: AtomicU64,
    /// The last poll of the client's body found nothing to read: a stall is the client's.
    waiting_on_client: std::sync::atomic::AtomicBool,
    /// The body failed because of the timeout.
    timed_out: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn new(timeout: Duration) -> Self {
        Progress {
            start: tokio::time::Instant::now(),
            timeout,
            last_ms: AtomicU64::new(0),
            waiting_on_client: Default::default(),
            timed_out: Default::default(),
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + self.timeout
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once the body has made no progress for the timeout.
    async fn stalled(&self) {
        loop {
            let deadline = self.deadline();
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// `408` when the client stopped sending its body, `504` when the app stopped reading it.
fn body_timeout_response(metrics: &ProxyMetrics, progress: &Progress) -> Response<ProxyBody> {
    metrics.body_timeouts_total.fetch_add(1, Ordering::Relaxed);
    let mut resp = if progress.waiting_on_client.load(Ordering::Relaxed) {
        tracing::debug!(timeout = ?progress.timeout, "proxy request body timed out (client)");
        json_error(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            "the request body did not arrive in time",
        )
    } else {
        metrics
            .upstream_errors_total
            .fetch_add(1, Ordering::Relaxed);
        metrics
            .upstream_timeouts_total
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(timeout = ?progress.timeout, "proxy upstream stopped reading the request body");
        json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "UPSTREAM_TIMEOUT",
            "the application did not read the request in time",
        )
    };
    // The rest of the body is not read: the connection cannot be reused.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The client's request body on its way upstream; wakes `sent` once it has been read whole
/// (or failed), which starts the upstream header timeout. Fails once no frame has arrived
/// from the client for the body timeout.
struct ForwardBody {
    inner: Incoming,
    sent: Arc<Notify>,
    progress: Arc<Progress>,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The error of a [`ForwardBody`].
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("the request body made no progress in time")]
    Timeout,
    #[error(transparent)]
    Client(#[from] hyper::Error),
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = ForwardError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ForwardError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        let finished = match &res {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if res.is_pending() {
            this.progress
                .waiting_on_client
                .store(true, Ordering::Relaxed);
            let deadline = this.progress.deadline();
            let idle = this
                .idle
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if idle.deadline() != deadline {
                idle.as_mut().reset(deadline);
            }
            if idle.as_mut().poll(cx).is_ready() {
                this.progress.timed_out.store(true, Ordering::Relaxed);
                this.sent.notify_one();
                return Poll::Ready(Some(Err(ForwardError::Timeout)));
            }
            return Poll::Pending;
        }
        this.progress
            .waiting_on_client
            .store(false, Ordering::Relaxed);
        this.progress.touch();
        if finished {
            this.sent.notify_one();
        }
        res.map(|o| o.map(|r| r.map_err(ForwardError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------
// Header handling

/// Hop-by-hop headers always removed (RFC 9110 §7.6.1, plus the extras Go removes).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Removes `Connection`, every header it names, and the fixed hop-by-hop headers.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| n != header::HOST)
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// True for an `Upgrade` value of exactly `websocket` (any case).
fn is_websocket(v: &HeaderValue) -> bool {
    v.to_str()
        .is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket"))
}

/// The `Upgrade` value when the request asks for a WebSocket upgrade.
///
/// Any other upgrade (`h2c` above all: HTTP/2 inside the tunnel would carry requests the
/// kill switches never see) is not forwarded: its `Upgrade`, `Connection` and
/// `HTTP2-Settings` headers are stripped and the request goes on as plain HTTP/1.1. Stripping
/// rather than refusing keeps clients working: an h2c upgrade is only an offer, which a server
/// that does not take it answers in HTTP/1.1 (RFC 9113 §3.1, RFC 7540 §3.2).
fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers
            .get(header::UPGRADE)
            .filter(|v| is_websocket(v))
            .cloned()
    } else {
        None
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    target_authority: Option<&Authority>,
    trust: bool,
) {
    let ip = peer.ip().to_canonical().to_string();
    let mut xff: Vec<u8> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let v = v.as_bytes().trim_ascii();
        if !v.is_empty() {
            xff.extend_from_slice(v);
            xff.extend_from_slice(b", ");
        }
    }
    xff.extend_from_slice(ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        headers.insert(X_FORWARDED_FOR, v);
    }

    if !trust || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !trust || !headers.contains_key(&X_FORWARDED_HOST) {
        let host = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| target_authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        match host {
            Some(h) => {
                headers.insert(X_FORWARDED_HOST, h);
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

/// True when the `Accept` header prefers JSON over text: the best-q `application/json` (or
/// `…+json`) range beats the best-q `text/…` range, ties going to whichever was listed first.
/// `*/*` and `application/*` count for neither, so `Accept: */*` and browsers get text.
pub fn prefers_json(headers: &HeaderMap) -> bool {
    // (q, position) of the best range of each kind.
    let mut json: Option<(f32, usize)> = None;
    let mut text: Option<(f32, usize)> = None;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for (pos, range) in ranges.enumerate() {
        let mut params = range.split(';');
        let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0f32;
        for p in params {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| q.is_finite())
                        .unwrap_or(0.0);
                }
            }
        }
        if q <= 0.0 {
            continue;
        }
        let slot = if media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"))
        {
            &mut json
        } else if media.starts_with("text/") {
            &mut text
        } else {
            continue;
        };
        if slot.is_none_or(|(best, _)| q > best) {
            *slot = Some((q, pos));
        }
    }
    match (json, text) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some((jq, jp)), Some((tq, tp))) => jq > tq || (jq == tq && jp < tp),
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = format!(
        "{{\"error\":{{\"code\":{},\"message\":{}}}}}",
        json_string(code),
        json_string(message)
    );
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------
// Kill-switch matching

const X_OPSPLANE_KILLSWITCH: HeaderName = HeaderName::from_static("x-opsplane-killswitch");
const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// Percent-decoding rounds for matching (catches double and triple encoding).
const MAX_DECODE_ROUNDS: usize = 4;

/// A [`KillRule`] prepared once at start: normalised prefixes, ready headers and bodies.
struct CompiledRule {
    name: String,
    blocks: Vec<CompiledBlock>,
    status: StatusCode,
    retry_after: Option<HeaderValue>,
    name_header: Option<HeaderValue>,
    text_body: Bytes,
    json_body: Bytes,
}

struct CompiledBlock {
    method: Option<Method>,
    prefix: Vec<u8>,
}

impl CompiledRule {
    fn new(rule: &KillRule) -> Self {
        let status = if rule.status.as_u16() < 200 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            rule.status
        };
        let json_body = format!(
            "{{\"error\":{{\"code\":\"KILLED\",\"message\":{},\"killswitch\":{}}}}}",
            json_string(&rule.body),
            json_string(&rule.name)
        );
        CompiledRule {
            name: rule.name.clone(),
            blocks: rule
                .blocks
                .iter()
                .map(|b| CompiledBlock {
                    method: b.method.clone(),
                    prefix: normalize_prefix(&b.path_prefix),
                })
                .collect(),
            status,
            retry_after: rule.retry_after_secs.map(HeaderValue::from),
            name_header: HeaderValue::from_str(&rule.name).ok(),
            text_body: Bytes::from(rule.body.clone()),
            json_body: Bytes::from(json_body),
        }
    }

    fn response(&self, json: bool) -> Response<ProxyBody> {
        let (content_type, body) = if json {
            ("application/json", self.json_body.clone())
        } else {
            ("text/plain; charset=utf-8", self.text_body.clone())
        };
        let mut resp = Response::new(Either::Right(Full::new(body)));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
        if let Some(v) = &self.name_header {
            h.insert(X_OPSPLANE_KILLSWITCH, v.clone());
        }
        if let Some(v) = &self.retry_after {
            h.insert(header::RETRY_AFTER, v.clone());
        }
        resp
    }
}

/// Index of the first rule that is killed and has a matching block.
fn find_block(
    rules: &[CompiledRule],
    killed: &BTreeSet<String>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<usize> {
    if killed.is_empty() {
        return None;
    }
    let mut views: Option<[Vec<u8>; 3]> = None;
    for (i, rule) in rules.iter().enumerate() {
        if !killed.contains(&rule.name) {
            continue;
        }
        let views = views.get_or_insert_with(|| path_views(path));
        let hit = rule.blocks.iter().any(|b| {
            method_matches(b.method.as_ref(), method, headers)
                && views.iter().any(|v| v.starts_with(&b.prefix))
        });
        if hit {
            return Some(i);
        }
    }
    None
}

fn method_matches(want: Option<&Method>, got: &Method, headers: &HeaderMap) -> bool {
    let Some(want) = want else { return true };
    let is_wanted = |m: &str| {
        let m = m.trim();
        m.eq_ignore_ascii_case(want.as_str())
            || (*want == Method::GET && m.eq_ignore_ascii_case("HEAD"))
    };
    if is_wanted(got.as_str()) {
        return true;
    }
    METHOD_OVERRIDE_HEADERS.iter().any(|name| {
        headers
            .get_all(*name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(is_wanted))
    })
}

/// The configured prefix in the *resolved* normalisation (see the module docs).
fn normalize_prefix(prefix: &str) -> Vec<u8> {
    let [_, _, resolved] = path_views(prefix);
    resolved
}

/// The three interpretations of a request path that are matched: `[raw, collapsed,
/// resolved]`, all lowercased (see the module docs).
fn path_views(path: &str) -> [Vec<u8>; 3] {
    let mut raw = path.as_bytes().to_ascii_lowercase();
    if !raw.starts_with(b"/") {
        raw.insert(0, b'/');
    }

    let mut decoded = path.as_bytes().to_vec();
    for _ in 0..MAX_DECODE_ROUNDS {
        match percent_decode(&decoded) {
            Some(d) => decoded = d,
            None => break,
        }
    }
    for b in decoded.iter_mut() {
        if *b == b'\\' {
            *b = b'/';
        }
    }
    decoded.make_ascii_lowercase();

    let mut collapsed = Vec::with_capacity(decoded.len() + 1);
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut last_empty = true; // the path so far ends with a separator
    let mut last_dot = false; // the last segment was `.` or `..`
    for seg in decoded.split(|b| *b == b'/') {
        let seg = match seg.iter().position(|b| *b == b';') {
            Some(p) => &seg[..p],
            None => seg,
        };
        last_empty = seg.is_empty();
        last_dot = false;
        if seg.is_empty() {
            continue;
        }
        collapsed.push(b'/');
        collapsed.extend_from_slice(seg);
        match seg {
            b"." => last_dot = true,
            b".." => {
                stack.pop();
                last_dot = true;
            }
            _ => stack.push(seg),
        }
    }
    if collapsed.is_empty() || last_empty {
        collapsed.push(b'/');
    }

    let mut resolved = Vec::with_capacity(decoded.len() + 1);
    for seg in &stack {
        resolved.push(b'/');
        resolved.extend_from_slice(seg);
    }
    if resolved.is_empty() || last_empty || last_dot {
        resolved.push(b'/');
    }
    [raw, collapsed, resolved]
}

/// One round of `%XX` decoding; `None` when there was nothing to decode. Malformed escapes
/// are kept as they are.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    if !input.contains(&b'%') {
        return None;
    }
    let mut out = Vec::with_capacity(input.len());
    let mut changed = false;
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                changed = true;
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, method: Option<Method>, prefix: &str) -> CompiledRule {
        CompiledRule::new(&KillRule {
            name: name.into(),
            blocks: vec![BlockMatch {
                method,
                path_prefix: prefix.into(),
            }],
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after_secs: Some(120),
            body: "paused".into(),
        })
    }

    fn killed(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn blocked(path: &str) -> bool {
        let rules = [rule("pay", Some(Method::POST), "/api/pay")];
        find_block(
            &rules,
            &killed(&["pay"]),
            &Method::POST,
            path,
            &HeaderMap::new(),
        )
        .is_some()
    }

    fn s(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    #[test]
    fn views_normalise() {
        let [raw, collapsed, resolved] = path_views("/API//x/./../Pay%2fnow;jsessionid=1/");
        assert_eq!(s(&raw), "/api//x/./../pay%2fnow;jsessionid=1/");
        assert_eq!(s(&collapsed), "/api/x/./../pay/now/");
        assert_eq!(s(&resolved), "/api/pay/now/");
        let [_, _, r] = path_views("/a/b/..");
        assert_eq!(s(&r), "/a/");
        let [_, _, r] = path_views("/../../..");
        assert_eq!(s(&r), "/");
        let [_, c, r] = path_views("");
        assert_eq!((s(&c), s(&r)), ("/", "/"));
        let [_, _, r] = path_views("*");
        assert_eq!(s(&r), "/*");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode(b"/a%70"), Some(b"/ap".to_vec()));
        assert_eq!(percent_decode(b"/a%7"), None);
        assert_eq!(percent_decode(b"/a%zz%"), None);
        assert_eq!(percent_decode(b"%"), None);
        assert_eq!(percent_decode(b"%2570"), Some(b"%70".to_vec()));
        // Invalid UTF-8 after decoding must not panic and still compares as bytes.
        let [_, _, r] = path_views("/api/%ff%fe");
        assert_eq!(r, b"/api/\xff\xfe".to_vec());
    }

    #[test]
    fn bypass_spellings_are_blocked() {
        for p in [
            "/api/pay",
            "/api/pay/123",
            "/api/payments",
            "/api//pay",
            "//api/pay",
            "/api/./pay",
            "/api/x/../pay",
            "/api/%70ay",
            "/api/%2570ay",
            "/api%2Fpay",
            "/api%2fpay",
            "/%61%70%69/%70%61%79",
            "/API/PAY",
            "/api\\pay",
            "/api;x=1/pay",
            "/api/..;/api/pay",
            "/api/%2e/pay",
            "/api/%2e%2e/api/pay",
            // An app that does not resolve `..` routes this under /api/pay.
            "/api/pay/../other",
        ] {
            assert!(blocked(p), "{p} should be blocked");
        }
        for p in [
            "/api",
            "/api/pa",
            "/api/other",
            "/apipay",
            "/v2/api/pay",
            "/",
            "",
        ] {
            assert!(!blocked(p), "{p} should pass");
        }
    }

    #[test]
    fn methods() {
        let rules = [rule("pay", Some(Method::POST), "/api/pay")];
        let k = killed(&["pay"]);
        let h = HeaderMap::new();
        assert!(find_block(&rules, &k, &Method::GET, "/api/pay", &h).is_none());
        let odd = Method::from_bytes(b"post").unwrap();
        assert!(find_block(&rules, &k, &odd, "/api/pay", &h).is_some());
        let mut ov = HeaderMap::new();
        ov.insert("x-http-method-override", HeaderValue::from_static("post"));
        assert!(find_block(&rules, &k, &Method::GET, "/api/pay", &ov).is_some());

        let rules = [rule("feed", Some(Method::GET), "/feed")];
        let k = killed(&["feed"]);
        assert!(find_block(&rules, &k, &Method::HEAD, "/feed", &h).is_some());
        assert!(find_block(&rules, &k, &Method::POST, "/feed", &h).is_none());

        let rules = [rule("all", None, "/")];
        let k = killed(&["all"]);
        assert!(find_block(&rules, &k, &Method::DELETE, "/anything", &h).is_some());
        assert!(find_block(&rules, &k, &Method::GET, "", &h).is_some());
    }

    #[test]
    fn only_killed_rules_and_first_wins() {
        let rules = [
            rule("a", None, "/x"),
            rule("b", None, "/x/y"),
            rule("c", None, "/z/"),
        ];
        let h = HeaderMap::new();
        assert_eq!(
            find_block(&rules, &killed(&[]), &Method::GET, "/x", &h),
            None
        );
        assert_eq!(
            find_block(&rules, &killed(&["zzz"]), &Method::GET, "/x", &h),
            None
        );
        assert_eq!(
            find_block(&rules, &killed(&["a", "b"]), &Method::GET, "/x/y", &h),
            Some(0)
        );
        assert_eq!(
            find_block(&rules, &killed(&["b"]), &Method::GET, "/x/y/z", &h),
            Some(1)
        );
        assert_eq!(
            find_block(&rules, &killed(&["b"]), &Method::GET, "/x", &h),
            None
        );
        // Trailing slash in the prefix: only below it.
        assert_eq!(
            find_block(&rules, &killed(&["c"]), &Method::GET, "/z", &h),
            None
        );
        assert_eq!(
            find_block(&rules, &killed(&["c"]), &Method::GET, "/z/", &h),
            Some(2)
        );
        assert_eq!(
            find_block(&rules, &killed(&["c"]), &Method::GET, "/z//q", &h),
            Some(2)
        );
        assert_eq!(
            find_block(&rules, &killed(&["c"]), &Method::GET, "/zz", &h),
            None
        );
    }

    #[test]
    fn accept_negotiation() {
        let accept = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            prefers_json(&h)
        };
        assert!(!prefers_json(&HeaderMap::new()));
        assert!(accept("application/json"));
        assert!(accept("application/problem+json"));
        assert!(accept("application/json, text/plain, */*"));
        assert!(!accept("*/*"));
        assert!(!accept(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        ));
        assert!(!accept("text/plain, application/json"));
        assert!(accept("text/plain;q=0.5, application/json"));
        assert!(!accept("application/json;q=0, text/plain;q=0.1"));
        assert!(!accept("application/json;q=nan"));
    }

    #[test]
    fn blocked_response_shape() {
        let mut r = rule("pay \"x\"", None, "/");
        r.text_body = Bytes::from_static(b"t");
        let resp = r.response(true);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "120");
        assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(resp.headers()["x-opsplane-killswitch"], "pay \"x\"");
        assert_eq!(
            r.json_body,
            Bytes::from_static(
                br#"{"error":{"code":"KILLED","message":"paused","killswitch":"pay \"x\""}}"#
            )
        );
        // A name that cannot be a header value and a 1xx status must not panic.
        let odd = CompiledRule::new(&KillRule {
            name: "bad\nname".into(),
            blocks: vec![],
            status: StatusCode::CONTINUE,
            retry_after_secs: None,
            body: "\u{1}".into(),
        });
        let resp = odd.response(false);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().get("x-opsplane-killswitch").is_none());
        assert_eq!(
            odd.json_body,
            Bytes::from_static(
                br#"{"error":{"code":"KILLED","message":"\u0001","killswitch":"bad\nname"}}"#
            )
        );
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret, host"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["host", "x-kept"]);
    }

    #[test]
    fn forwarded_headers() {
        let peer: SocketAddr = "[::ffff:10.0.0.7]:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app.example"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let mut trusted = h.clone();
        add_forwarded(&mut h, peer, None, false);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.7");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "app.example");
        add_forwarded(&mut trusted, peer, None, true);
        assert_eq!(trusted[X_FORWARDED_PROTO], "https");
        assert_eq!(trusted[X_FORWARDED_HOST], "app.example");
    }

    #[test]
    fn upstream_validation() {
        assert!(upstream_parts(&"http://127.0.0.1:3000".parse().unwrap()).is_ok());
        assert!(upstream_parts(&"https://127.0.0.1:3000".parse().unwrap()).is_err());
        assert!(upstream_parts(&"/relative".parse().unwrap()).is_err());
    }
}
