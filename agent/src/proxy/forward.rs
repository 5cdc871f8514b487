//! One proxied request: the kill-switch check, the pass-through to the app with
//! hop-by-hop headers removed and forwarded headers added, the upstream and body
//! timeouts (see the module docs of `proxy`).

use super::headers::*;
use super::paths::find_block;
use super::tunnel::*;
use super::*;

pub(super) async fn handle(
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

/// Body progress of one forwarded request, shared by [`ForwardBody`] and the handler's
/// watchdog.
pub(super) struct Progress {
    pub(super) start: tokio::time::Instant,
    pub(super) timeout: Duration,
    /// Milliseconds after `start` of the last frame forwarded.
    pub(super) last_ms: AtomicU64,
    /// The last poll of the client's body found nothing to read: a stall is the client's.
    pub(super) waiting_on_client: std::sync::atomic::AtomicBool,
    /// The body failed because of the timeout.
    pub(super) timed_out: std::sync::atomic::AtomicBool,
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
pub(super) fn body_timeout_response(
    metrics: &ProxyMetrics,
    progress: &Progress,
) -> Response<ProxyBody> {
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
pub(super) struct ForwardBody {
    pub(super) inner: Incoming,
    pub(super) sent: Arc<Notify>,
    pub(super) progress: Arc<Progress>,
    pub(super) idle: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The error of a [`ForwardBody`].
#[derive(Debug, thiserror::Error)]
pub(super) enum ForwardError {
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
