//! Serving HTTP/1.1 connections with limits, shared by the agent's API and the
//! collector's three listeners.
//!
//! Every listener served here has:
//! * a **connection cap** ([`Limits::max_connections`], a semaphore): past it a
//!   new connection is closed at once and counted in
//!   [`ListenerStats::connections_refused_total`], so one listener can never use
//!   up the process's file descriptors;
//! * a **header timeout** ([`Limits::header_timeout`], hyper's
//!   `header_read_timeout`): a request head (and, on TLS listeners, the
//!   handshake) must arrive whole within it. Hyper starts that timer when it
//!   waits for a head, which includes the wait for the next request on a
//!   keep-alive connection;
//! * a **body timeout** ([`Limits::body_timeout`]): the whole request body must
//!   arrive within it, counted from the request head; past it the handler's
//!   answer is replaced by `408` `{"error":{"code":"REQUEST_TIMEOUT",…}}` and
//!   the connection closes. Response bodies have no time limit, so long
//!   responses (the collector's revision stream) are never cut;
//! * an **idle timeout** ([`Limits::idle_timeout`]): a keep-alive connection
//!   with no request in flight is closed that long after its last response
//!   (in effect the shorter of this and the header timeout, see above);
//! * a **lingering close**: when hyper is done with a connection (for instance
//!   after answering `413` to a body it did not read), the write side is shut
//!   first and what the client still sends is read and discarded for a bounded
//!   time and size ([`LINGER_TIME`], [`LINGER_READ_TIMEOUT`],
//!   [`LINGER_MAX_BYTES`]), as nginx's `lingering_close` does, so the client
//!   reads the answer instead of a connection reset.
//!
//! Shutdown: when `shutdown` is cancelled the listener is dropped, every
//! connection finishes its in-flight request and closes; after `grace` the
//! rest are dropped and [`serve`] returns.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors of the boxed bodies used here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body every served connection writes.
pub type ServeBody = UnsyncBoxBody<Bytes, BoxError>;

/// Total time a lingering close may read and discard what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(5);
/// A lingering close ends when the client sends nothing for this long.
pub const LINGER_READ_TIMEOUT: Duration = Duration::from_secs(1);
/// A lingering close reads and discards at most this many bytes.
pub const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The limits of one listener (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest wait for a whole request head (and a TLS handshake).
    pub header_timeout: Duration,
    /// Longest time a whole request body may take to arrive.
    pub body_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Most connections open at once; more are closed at once.
    pub max_connections: usize,
}

impl Limits {
    /// Limits with the given connection cap and the common timeouts: header
    /// 10 s, body 30 s, idle 60 s.
    pub const fn with_max_connections(max_connections: usize) -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections,
        }
    }
}

/// Counters of one listener, read by the `/metrics` endpoints.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections accepted and served.
    pub connections_accepted_total: AtomicU64,
    /// Connections closed at once because the listener was at its cap.
    pub connections_refused_total: AtomicU64,
    /// Connections closed because a request head (or TLS handshake) did not arrive in time.
    pub header_timeouts_total: AtomicU64,
    /// Requests answered `408` because their body did not arrive in time.
    pub body_timeouts_total: AtomicU64,
}

/// A request body that fails once [`Limits::body_timeout`] has passed since the
/// request head arrived; the served connection then answers `408`.
pub struct RequestBody {
    inner: Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
    done: bool,
}

/// Why a [`RequestBody`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive in time")]
    Timeout,
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.done = true;
                    this.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyError::Timeout)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a connection has a request in flight, and when it last had one.
struct Activity {
    start: Instant,
    in_flight: AtomicU64,
    /// Milliseconds after `start` of the last request start or response end.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has been idle for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            if self.in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(idle).await;
                continue;
            }
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Held from a request's start until its response body is dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct TrackedBody {
    inner: ServeBody,
    _in_flight: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Decrements the open-connection gauge when a connection task ends.
struct OpenGuard(Arc<ListenerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A small JSON error answer with `Connection: close`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<ServeBody> {
    let body = serde_json::to_vec(&crate::wire::ErrorBody::new(code, message)).unwrap_or_default();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|e: Infallible| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Serves plain-TCP connections of `listener` with `app` (see [`serve`]).
pub async fn serve_plain<A, F, B>(
    listener: TcpListener,
    app: A,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()>
where
    A: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    serve(
        listener,
        |tcp| std::future::ready(Ok(tcp)),
        app,
        limits,
        stats,
        shutdown,
        grace,
    )
    .await
}

/// Accepts connections of `listener` until `shutdown`, runs `handshake` on each
/// (TLS, or nothing) within the header timeout, then serves HTTP/1.1 with
/// `app` under `limits` (see the module docs). Returns once the connections
/// have drained, or `grace` after `shutdown`.
pub async fn serve<H, HF, IO, A, F, B>(
    listener: TcpListener,
    handshake: H,
    app: A,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()>
where
    H: Fn(TcpStream) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = std::io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let tasks = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // per-connection errors are harmless; running out of file
                // descriptors would spin, so back off a little
                tracing::warn!(error = %e, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats
                .connections_refused_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, max_connections = limits.max_connections, "connection refused: listener at its cap");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        stats
            .connections_accepted_total
            .fetch_add(1, Ordering::Relaxed);
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        let conn = connection(
            tcp,
            peer,
            handshake.clone(),
            app.clone(),
            limits,
            stats.clone(),
            shutdown.clone(),
            hard_stop.clone(),
        );
        tasks.spawn(async move {
            conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "connections still open after the grace period; closing them"
        );
        hard_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection<H, HF, IO, A, F, B>(
    tcp: TcpStream,
    peer: SocketAddr,
    handshake: H,
    app: A,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
) where
    H: Fn(TcpStream) -> HF,
    HF: Future<Output = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _open = OpenGuard(stats.clone());
    let io = tokio::select! {
        r = tokio::time::timeout(limits.header_timeout, handshake(tcp)) => match r {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                stats.header_timeouts_total.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "handshake timed out");
                return;
            }
        },
        _ = hard_stop.cancelled() => return,
    };

    let activity = Arc::new(Activity {
        start: Instant::now(),
        in_flight: AtomicU64::new(0),
        last_ms: AtomicU64::new(0),
    });
    let svc_activity = activity.clone();
    let svc_stats = stats.clone();
    let body_timeout = limits.body_timeout;
    type SvcFuture =
        Pin<Box<dyn Future<Output = Result<Response<TrackedBody>, Infallible>> + Send>>;
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| -> SvcFuture {
        let in_flight = InFlight::new(svc_activity.clone());
        let timed_out = Arc::new(AtomicBool::new(false));
        let req = req.map(|inner| RequestBody {
            inner,
            deadline: Instant::now() + body_timeout,
            sleep: None,
            timed_out: timed_out.clone(),
            done: false,
        });
        let fut = app(req, peer);
        let stats = svc_stats.clone();
        Box::pin(async move {
            let resp = fut.await;
            let resp = if timed_out.load(Ordering::Relaxed) {
                stats.body_timeouts_total.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, "request body timed out");
                error_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    "the request body did not arrive in time",
                )
            } else {
                resp.map(|b| b.map_err(Into::into).boxed_unsync())
            };
            Ok(resp.map(|inner| TrackedBody {
                inner,
                _in_flight: in_flight,
            }))
        })
    });

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let mut conn = http.serve_connection(TokioIo::new(io), svc);
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = std::future::poll_fn(|cx| conn.poll_without_shutdown(cx)) => break r,
            _ = shutdown.cancelled(), if !closing => {
                closing = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            _ = activity.idle_for(limits.idle_timeout), if !closing => {
                closing = true;
                tracing::debug!(%peer, "idle connection closed");
                Pin::new(&mut conn).graceful_shutdown();
            }
            _ = hard_stop.cancelled() => return,
        }
    };
    match result {
        Ok(()) => {
            let io = conn.into_parts().io.into_inner();
            tokio::select! {
                _ = linger(io) => {}
                _ = hard_stop.cancelled() => {}
            }
        }
        Err(e) => {
            if e.is_timeout() {
                stats.header_timeouts_total.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Shuts the write side, then reads and discards what the client still sends,
/// within [`LINGER_TIME`], [`LINGER_READ_TIMEOUT`] and [`LINGER_MAX_BYTES`].
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    let deadline = Instant::now() + LINGER_TIME;
    if tokio::time::timeout_at(deadline, io.shutdown())
        .await
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut discarded = 0u64;
    loop {
        let read_deadline = deadline.min(Instant::now() + LINGER_READ_TIMEOUT);
        match tokio::time::timeout_at(read_deadline, io.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                discarded += n as u64;
                if discarded >= LINGER_MAX_BYTES {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A long response (like the collector's revision stream) outlives every timeout: the
    /// body timeout is for request bodies, and a connection with a response in flight is not
    /// idle.
    #[tokio::test]
    async fn long_response_is_not_cut_by_the_timeouts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(100),
            body_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(100),
            max_connections: 4,
        };
        let app = |_req: Request<RequestBody>, _peer: SocketAddr| async {
            // one chunk every 50 ms for 600 ms: six times each timeout
            let chunks = futures_stream(12, Duration::from_millis(50));
            Response::new(http_body_util::StreamBody::new(chunks))
        };
        let shutdown = CancellationToken::new();
        let stats = Arc::new(ListenerStats::default());
        let server = tokio::spawn(serve_plain(
            listener,
            app,
            limits,
            stats.clone(),
            shutdown.clone(),
            Duration::from_secs(1),
        ));
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).to_string()
        })
        .await
        .expect("the stream ends");
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        assert_eq!(got.matches("tick").count(), 12, "{got}");
        assert_eq!(stats.body_timeouts_total.load(Ordering::Relaxed), 0);
        shutdown.cancel();
        server.await.unwrap().unwrap();
    }

    /// `n` frames `tick`, one every `every`.
    fn futures_stream(
        n: usize,
        every: Duration,
    ) -> impl futures_util::stream::Stream<Item = Result<Frame<Bytes>, Infallible>> {
        futures_util::stream::unfold(0, move |i| async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Frame::data(Bytes::from_static(b"tick"))), i + 1))
        })
    }
}
