//! The start/stop sequence both binaries (`opsplane-agent run`,
//! `opsplane-collector run`) share, documented in `docs/lifecycle.md`:
//!
//! 1. build the runtime and start the service (an error exits 1);
//! 2. print one `listening NAME=ADDR` line per bound listener on stdout;
//! 3. wait for SIGTERM or SIGINT;
//! 4. flip readiness: from now on `/readyz` answers `503` (`SHUTTING_DOWN`)
//!    on every listener served through the [`Gate`], while the listeners
//!    keep answering;
//! 5. stop the background work ([`Service::stop_work`]) and wait, within
//!    the grace period, for it and for the requests in flight to end;
//! 6. close the listeners and finish ([`Service::finish`]); exit 0.
//!
//! A second SIGTERM or SIGINT at any point of 4–6 exits at once with
//! [`FORCED_EXIT_CODE`] (130), without waiting for anything.

use crate::serve::RequestBody;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::task::TaskTracker;

/// Exit code of a process stopped by a second signal during its drain.
pub const FORCED_EXIT_CODE: u8 = 130;

/// A boxed future, as the served functions and [`Service`] return them.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Readiness and in-flight requests of a service's listeners: every listener
/// serves through [`Gate::wrap`], so `/readyz` answers 503 once the drain
/// has begun, and the drain can wait for the requests in flight.
#[derive(Clone, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Default)]
struct GateInner {
    draining: AtomicBool,
    requests: TaskTracker,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Whether the drain has begun (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// From now on `/readyz` answers 503 on every gated listener.
    pub fn begin_drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Resolves once no request is in flight on a gated listener (a request
    /// counts until its handler has returned the response head, so a
    /// streamed response body does not hold it).
    pub async fn requests_done(&self) {
        self.inner.requests.close();
        self.inner.requests.wait().await;
    }

    /// Requests in flight now on the gated listeners.
    pub fn requests_in_flight(&self) -> usize {
        self.inner.requests.len()
    }

    /// `app` behind the gate: `/readyz` answers 503 during the drain, and
    /// every other request is counted while its handler runs.
    pub fn wrap<A, F, B>(
        &self,
        app: A,
    ) -> impl Fn(Request<RequestBody>, SocketAddr) -> BoxFuture<Response<B>>
           + Clone
           + Send
           + Sync
           + Unpin
           + 'static
    where
        A: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + Unpin + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: From<Bytes> + Send + 'static,
    {
        let gate = self.clone();
        move |req: Request<RequestBody>, peer: SocketAddr| -> BoxFuture<Response<B>> {
            if gate.is_draining() && req.uri().path() == "/readyz" {
                return Box::pin(std::future::ready(shutting_down()));
            }
            let in_flight = gate.inner.requests.token();
            let fut = app(req, peer);
            Box::pin(async move {
                let resp = fut.await;
                drop(in_flight);
                resp
            })
        }
    }
}

/// The `/readyz` answer during the drain: `503`
/// `{"error":{"code":"SHUTTING_DOWN",…}}`, and the connection closes.
fn shutting_down<B: From<Bytes>>() -> Response<B> {
    let body = serde_json::to_vec(&crate::wire::ErrorBody::new(
        "SHUTTING_DOWN",
        "shutting down: not ready",
    ))
    .unwrap_or_default();
    let mut resp = Response::new(B::from(Bytes::from(body)));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A started service, as the sequence drives it.
pub trait Service: Send + 'static {
    /// Each bound listener as `(name, address)`, in the order printed.
    fn listeners(&self) -> Vec<(&'static str, SocketAddr)>;
    /// The gate its listeners serve through.
    fn gate(&self) -> &Gate;
    /// Tells the background work (sync, hooks, housekeeping) to stop; the
    /// listeners keep answering.
    fn stop_work(&self);
    /// Resolves once the background work has ended.
    fn work_done(&self) -> BoxFuture<()>;
    /// Closes the listeners, waits for their connections (with the service's
    /// own deadline) and releases what the service holds.
    fn finish(self) -> BoxFuture<()>;
    /// What to do, at once, before the process exits (after the drain, or
    /// at a forced exit): kill child processes still running, say. Nothing
    /// by default.
    fn before_exit(&self) -> Box<dyn FnOnce() + Send> {
        Box::new(|| {})
    }
}

/// How the sequence runs a service.
pub struct Options {
    /// Worker threads of the runtime (`None`: one per CPU).
    pub worker_threads: Option<usize>,
    /// Longest wait for the background work and the requests in flight
    /// once the drain has begun.
    pub grace: Duration,
}

/// The `listening` line of one listener (see `docs/lifecycle.md`).
pub fn listening_line(name: &str, addr: SocketAddr) -> String {
    format!("listening {name}={addr}")
}

/// Runs the whole sequence (see the module docs) and returns the exit code.
pub fn run<S, E, F>(options: Options, start: impl FnOnce() -> F) -> ExitCode
where
    S: Service,
    E: Display,
    F: Future<Output = Result<S, E>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = options.worker_threads {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async move {
        // installed before starting, so a signal during the start is not lost
        let mut signals = Signals::new();
        let service = match start().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(1);
            }
        };
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for (name, addr) in service.listeners() {
                let _ = writeln!(out, "{}", listening_line(name, addr));
            }
            let _ = out.flush();
        }
        signals.next().await;
        tracing::info!("shutting down: not ready, draining");
        let before_exit = service.before_exit();
        let drain = drain(service, options.grace);
        tokio::select! {
            () = drain => {
                before_exit();
                ExitCode::SUCCESS
            }
            () = signals.next() => {
                tracing::warn!(exit_code = FORCED_EXIT_CODE, "second signal: exiting at once without draining");
                before_exit();
                // nothing more is waited for: not the runtime's blocking threads either
                std::process::exit(i32::from(FORCED_EXIT_CODE));
            }
        }
    });
    // a blocking task stuck past the drain does not hold the exit
    rt.shutdown_timeout(Duration::from_secs(1));
    code
}

/// Steps 4–6 of the sequence.
async fn drain<S: Service>(service: S, grace: Duration) {
    let gate = service.gate().clone();
    gate.begin_drain();
    service.stop_work();
    let deadline = tokio::time::Instant::now() + grace;
    let busy = async {
        tokio::join!(gate.requests_done(), service.work_done());
    };
    if tokio::time::timeout_at(deadline, busy).await.is_err() {
        tracing::warn!(
            requests = gate.requests_in_flight(),
            "still busy after the grace period; closing the listeners anyway"
        );
    }
    // the service applies its own deadline to its connections; this one
    // only guards against a service that never returns
    let finish_deadline = tokio::time::Instant::now() + grace + Duration::from_secs(1);
    if tokio::time::timeout_at(finish_deadline, service.finish())
        .await
        .is_err()
    {
        tracing::warn!("listeners still open after the grace period; exiting anyway");
    }
}

/// SIGTERM and SIGINT, each delivery once.
struct Signals {
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Signals {
                unix: Some((term, int)),
            },
            _ => Signals { unix: None },
        }
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        match &mut self.unix {
            Some((term, int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            // no signal handlers: only Ctrl-C through tokio's portable path
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn the_listening_line_is_name_equals_address() {
        let addr: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(listening_line("api", addr), "listening api=127.0.0.1:41234");
    }

    #[tokio::test]
    async fn readyz_is_503_once_draining_and_requests_are_counted() {
        let gate = Gate::new();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let app = move |_req: Request<RequestBody>, _peer: SocketAddr| {
            let mut rx = release_rx.clone();
            async move {
                let _ = rx.wait_for(|r| *r).await;
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(crate::serve::serve_plain(
            listener,
            gate.wrap(app),
            crate::serve::Limits::with_max_connections(8),
            Arc::default(),
            stop.clone(),
            Duration::from_secs(1),
        ));
        // a slow request is in flight
        let slow = tokio::spawn(get(addr, "/slow"));
        while gate.requests_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        gate.begin_drain();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503 "));
        let done = gate.clone();
        let mut waiting = tokio::spawn(async move { done.requests_done().await });
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "the drain waits for the slow request"
        );
        release_tx.send_replace(true);
        waiting.await.unwrap();
        assert!(slow.await.unwrap().starts_with("HTTP/1.1 200 "));
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    }
}
