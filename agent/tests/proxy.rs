//! Integration tests for the agent proxy: real sockets on 127.0.0.1, a real upstream written
//! here with hyper, and the proxy in between. No sleeps are used for synchronisation: every
//! wait is on a channel, a response or a polled condition, bounded by a deadline.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::proxy::{serve, BlockMatch, KillRule, ProxyMetrics, ProxySettings};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// The upstream app

#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
    peer: SocketAddr,
}

#[derive(Default)]
struct UpState {
    seen: Mutex<Vec<Seen>>,
    /// Chunks for the next `/stream` response; the response ends when the sender is dropped.
    stream_rx: Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>,
    /// Gets the running byte count while `/upload` reads its body.
    upload_progress: Mutex<Option<mpsc::UnboundedSender<u64>>>,
}

struct Upstream {
    addr: SocketAddr,
    state: Arc<UpState>,
}

impl Upstream {
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
    fn hits(&self, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.uri.split('?').next() == Some(path))
            .count()
    }
    fn last(&self) -> Seen {
        self.seen().last().cloned().expect("upstream saw a request")
    }
}

type UpBody = UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed_unsync()
}

async fn upstream_handle(
    state: Arc<UpState>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<UpBody>, Infallible> {
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let headers = req.headers().clone();
    let record = |body: Bytes| {
        state.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            uri: uri.clone(),
            headers: headers.clone(),
            body,
            peer,
        })
    };
    match req.uri().path() {
        "/stream" => {
            record(Bytes::new());
            let rx = state
                .stream_rx
                .lock()
                .unwrap()
                .take()
                .expect("stream set up");
            let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Ok(Response::new(StreamBody::new(chunks).boxed_unsync()))
        }
        "/upload" => {
            record(Bytes::new());
            let progress = state.upload_progress.lock().unwrap().take();
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(Response::new(full("body error")));
                };
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    n += data.len() as u64;
                    if let Some(p) = &progress {
                        let _ = p.send(n);
                    }
                }
            }
            Ok(Response::new(full(format!(
                "{n} {}",
                hex(&hasher.finalize())
            ))))
        }
        "/hang" => {
            record(Bytes::new());
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            record(body.clone());
            let mut resp = Response::new(full(format!("upstream {method} {uri} {}", body.len())));
            let h = resp.headers_mut();
            h.insert("x-upstream", "yes".parse().unwrap());
            // Hop-by-hop headers the proxy must not relay to the client.
            h.insert("connection", "x-internal".parse().unwrap());
            h.insert("x-internal", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            Ok(resp)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(UpState::default());
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| upstream_handle(st.clone(), peer, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, state }
}

/// A WebSocket echo server (raw tungstenite on a TCP listener).
async fn start_ws_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() || msg.is_binary() {
                        if ws.send(msg).await.is_err() {
                            return;
                        }
                    } else if msg.is_close() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------
// The proxy

struct Proxy {
    addr: SocketAddr,
    killed: watch::Sender<Arc<BTreeSet<String>>>,
    metrics: Arc<ProxyMetrics>,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Proxy {
    fn kill(&self, names: &[&str]) {
        let set: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        self.killed.send_replace(Arc::new(set));
    }
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

fn pay_rule() -> KillRule {
    KillRule {
        name: "checkout-payments".into(),
        blocks: vec![BlockMatch {
            method: Some(Method::POST),
            path_prefix: "/api/pay".into(),
        }],
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after_secs: Some(120),
        body: "Payments are paused for maintenance".into(),
    }
}

fn ws_rule() -> KillRule {
    KillRule {
        name: "live-feed".into(),
        blocks: vec![BlockMatch {
            method: None,
            path_prefix: "/ws/killed".into(),
        }],
        status: StatusCode::SERVICE_UNAVAILABLE,
        retry_after_secs: None,
        body: "feed off".into(),
    }
}

async fn start_proxy(
    upstream: SocketAddr,
    rules: Vec<KillRule>,
    tweak: impl FnOnce(&mut ProxySettings),
) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut settings = ProxySettings::new(format!("http://{upstream}").parse().unwrap());
    tweak(&mut settings);
    let (killed, killed_rx) = watch::channel(Arc::new(BTreeSet::new()));
    let metrics = Arc::new(ProxyMetrics::default());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        settings,
        Arc::new(rules),
        killed_rx,
        metrics.clone(),
        shutdown.clone(),
    ));
    Proxy {
        addr,
        killed,
        metrics,
        shutdown,
        task,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

// ---------------------------------------------------------------------------------------
// A raw HTTP/1.1 client, for request targets that URL libraries would normalise.

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (which must ask for `Connection: close`) and reads the whole response.
async fn raw_request(addr: SocketAddr, head: &str) -> RawResponse {
    within("raw request", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        parse_response(&buf)
    })
    .await
}

fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete response head");
    let head = std::str::from_utf8(&buf[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap(), 16).unwrap();
            rest = &rest[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn passes_method_path_query_headers_and_body_through() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![pay_rule()], |_| {}).await;

    let resp = within(
        "response",
        client()
            .put(proxy.url("/echo/a%20b/c?x=1&y=two%2F"))
            .header("x-custom", "v1")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-proto", "https")
            .body("hello body")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert!(
        resp.headers().get("x-internal").is_none(),
        "hop-by-hop from upstream relayed"
    );
    assert!(resp.headers().get("keep-alive").is_none());
    let body = resp.text().await.unwrap();

    let seen = up.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.uri, "/echo/a%20b/c?x=1&y=two%2F");
    assert_eq!(seen.body, Bytes::from_static(b"hello body"));
    assert_eq!(body, "upstream PUT /echo/a%20b/c?x=1&y=two%2F 10");
    let h = &seen.headers;
    assert_eq!(h["x-custom"], "v1");
    assert_eq!(
        h["host"],
        proxy.addr.to_string(),
        "Host kept as the client sent it"
    );
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "untrusted X-Forwarded-Proto replaced"
    );
    assert_eq!(h["x-forwarded-host"], proxy.addr.to_string());
    assert_eq!(proxy.metrics.requests_total.load(Ordering::Relaxed), 1);

    // Hop-by-hop request headers, including one named by Connection, are dropped.
    let r = raw_request(
        proxy.addr,
        "GET /hop?q=1 HTTP/1.1\r\nHost: app.example\r\nConnection: close, X-Hop\r\n\
         X-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\
         TE: trailers\r\nX-Other: kept\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/hop?q=1");
    for gone in [
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert!(seen.headers.get(gone).is_none(), "{gone} was forwarded");
    }
    assert_eq!(seen.headers["x-other"], "kept");
    assert_eq!(seen.headers["host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-host"], "app.example");
}

#[tokio::test]
async fn killed_route_is_blocked_others_pass_and_revive_restores() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![pay_rule()], |_| {}).await;
    let c = client();
    proxy.kill(&["checkout-payments"]);

    let resp = within("blocked", c.post(proxy.url("/api/pay")).body("{}").send())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let h = resp.headers().clone();
    assert_eq!(h["retry-after"], "120");
    assert_eq!(h["x-opsplane-killswitch"], "checkout-payments");
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        resp.text().await.unwrap(),
        "Payments are paused for maintenance"
    );

    // A JSON-preferring client gets the JSON error shape.
    let resp = within(
        "blocked json",
        c.post(proxy.url("/api/pay/card?x=1"))
            .header("accept", "application/json")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["retry-after"], "120");
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":{"code":"KILLED","message":"Payments are paused for maintenance","killswitch":"checkout-payments"}}"#
    );

    // Different method, and a path outside the prefix, pass while killed.
    let resp = within("GET pay", c.get(proxy.url("/api/pay")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = within("POST other", c.post(proxy.url("/api/other")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hits("/api/pay"), 1, "only the GET reached the upstream");
    assert_eq!(up.hits("/api/pay/card"), 0);
    assert!(up
        .seen()
        .iter()
        .all(|s| s.method != Method::POST || !s.uri.starts_with("/api/pay")));

    assert_eq!(proxy.metrics.blocked_total.load(Ordering::Relaxed), 2);
    assert_eq!(proxy.metrics.blocked_for("checkout-payments"), 2);
    assert_eq!(proxy.metrics.requests_total.load(Ordering::Relaxed), 4);

    // Killing something else leaves this route alone; reviving lets it through again.
    proxy.kill(&["some-other-switch"]);
    let resp = within("other killed", c.post(proxy.url("/api/pay")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    proxy.kill(&["checkout-payments"]);
    let resp = within("re-killed", c.post(proxy.url("/api/pay")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    proxy.kill(&[]);
    let resp = within("revived", c.post(proxy.url("/api/pay")).body("x").send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream POST /api/pay 1");
    let posts = up
        .seen()
        .iter()
        .filter(|s| s.method == Method::POST && s.uri == "/api/pay")
        .count();
    assert_eq!(posts, 2, "exactly the two POSTs sent while not killed");
}

#[tokio::test]
async fn path_normalisation_bypasses_are_blocked() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![pay_rule()], |_| {}).await;
    proxy.kill(&["checkout-payments"]);

    for target in [
        "/api/pay",
        "/api//pay",
        "//api/pay",
        "/api/./pay",
        "/api/x/../pay",
        "/api/%70ay",
        "/api/%2570ay",
        "/api%2Fpay",
        "/API/Pay",
        "/api/pay;jsessionid=1",
        "/api;v=1/pay",
        "/api/..;/api/pay",
        "/api/%2e/pay",
        "/api/pay?x=1",
        "http://app.example/api/pay",
    ] {
        for method in ["POST", "post"] {
            let r = raw_request(
                proxy.addr,
                &format!(
                    "{method} {target} HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n\
                     Connection: close\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(r.status, 503, "{method} {target} was not blocked");
            assert_eq!(r.header("x-opsplane-killswitch"), Some("checkout-payments"));
            assert_eq!(r.body, b"Payments are paused for maintenance");
        }
    }
    // Method override headers cannot sneak a POST past a POST block either.
    let r = raw_request(
        proxy.addr,
        "GET /api/pay HTTP/1.1\r\nHost: a\r\nX-HTTP-Method-Override: POST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(up.seen().is_empty(), "upstream saw {:?}", up.seen());

    // Look-alikes that are not under the prefix still pass.
    for target in ["/api/pa", "/api/other/pay", "/v2/api/pay"] {
        let r = raw_request(
            proxy.addr,
            &format!("POST {target} HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(r.status, 200, "{target}");
    }
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn streaming_response_arrives_chunk_by_chunk() {
    let up = start_upstream().await;
    let (tx, rx) = mpsc::unbounded_channel();
    *up.state.stream_rx.lock().unwrap() = Some(rx);
    let proxy = start_proxy(up.addr, vec![], |_| {}).await;

    tx.send(Bytes::from_static(b"first chunk")).unwrap();
    let mut resp = within("stream head", client().get(proxy.url("/stream")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The second chunk does not exist yet: only a streaming proxy can deliver the first.
    let mut got = Vec::new();
    while got.len() < b"first chunk".len() {
        let chunk = within("first chunk", resp.chunk())
            .await
            .unwrap()
            .expect("more data");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"first chunk");

    tx.send(Bytes::from_static(b"second chunk")).unwrap();
    let mut got = Vec::new();
    while got.len() < b"second chunk".len() {
        let chunk = within("second chunk", resp.chunk())
            .await
            .unwrap()
            .expect("more data");
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"second chunk");
    drop(tx);
    assert!(within("end of body", resp.chunk()).await.unwrap().is_none());
}

#[tokio::test]
async fn large_upload_is_streamed_and_arrives_intact() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 320; // 20 MiB
    let up = start_upstream().await;
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    *up.state.upload_progress.lock().unwrap() = Some(progress_tx);
    let proxy = start_proxy(up.addr, vec![], |_| {}).await;

    // Deterministic pseudo-random data.
    let mut x: u32 = 0x1234_5678;
    let chunks: Vec<Bytes> = (0..CHUNKS)
        .map(|_| {
            let v: Vec<u8> = (0..CHUNK)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            Bytes::from(v)
        })
        .collect();
    let mut hasher = Sha256::new();
    for c in &chunks {
        hasher.update(c);
    }
    let expected = format!("{} {}", CHUNK * CHUNKS, hex(&hasher.finalize()));

    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let request = client()
        .post(proxy.url("/upload"))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let request = tokio::spawn(request);

    // Send the first chunk only and wait until the upstream has read it: the proxy streams
    // the request body instead of buffering it.
    body_tx.send(Ok(chunks[0].clone())).await.unwrap();
    within("upstream to see the first chunk", async {
        while let Some(n) = progress.recv().await {
            if n >= CHUNK as u64 {
                return;
            }
        }
        panic!("upload ended early");
    })
    .await;
    for c in &chunks[1..] {
        within("send chunk", body_tx.send(Ok(c.clone())))
            .await
            .unwrap();
    }
    drop(body_tx);

    let resp = within("upload response", request).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), expected);
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![pay_rule()], |_| {}).await;
    proxy.kill(&["checkout-payments"]);

    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let plan = [
        (Method::GET, "/one", 200),
        (Method::POST, "/api/pay", 503), // a blocked answer keeps the connection too
        (Method::GET, "/two?x=y", 200),
        (Method::DELETE, "/three", 200),
        (Method::GET, "/four", 200),
    ];
    for (method, path, status) in plan {
        within("connection ready", sender.ready()).await.unwrap();
        let req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header("host", "app.example")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = within("response", sender.send_request(req)).await.unwrap();
        assert_eq!(resp.status(), status, "{method} {path}");
        let body = within("body", resp.into_body().collect())
            .await
            .unwrap()
            .to_bytes();
        if status == 200 {
            assert_eq!(body, format!("upstream {method} {path} 0"));
        }
    }
    assert!(
        !conn.is_finished(),
        "client connection was closed by the proxy"
    );
    assert_eq!(proxy.metrics.requests_total.load(Ordering::Relaxed), 5);

    // Upstream connections are pooled: four sequential requests did not need four connections.
    let peers: BTreeSet<SocketAddr> = up.seen().iter().map(|s| s.peer).collect();
    assert_eq!(up.seen().len(), 4);
    assert!(peers.len() < 4, "no upstream connection reuse: {peers:?}");
}

#[tokio::test]
async fn websocket_upgrade_echoes_through_the_proxy() {
    let ws_up = start_ws_upstream().await;
    let proxy = start_proxy(ws_up, vec![ws_rule()], |_| {}).await;

    let (mut ws, resp) = within(
        "websocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", proxy.addr)),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        let text = format!("hello {i}");
        within("send", ws.send(Message::text(text.clone())))
            .await
            .unwrap();
        let msg = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(msg.to_text().unwrap(), text);
    }
    let blob = vec![7u8; 100_000];
    within("send binary", ws.send(Message::binary(blob.clone())))
        .await
        .unwrap();
    let msg = within("binary echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(msg.into_data().as_ref(), &blob[..]);
    within("close", ws.close(None)).await.unwrap();

    // An upgrade to a killed route is refused like any other request.
    proxy.kill(&["live-feed"]);
    let err = within(
        "killed handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws/killed", proxy.addr)),
    )
    .await
    .expect_err("killed websocket must not connect");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(resp.headers()["x-opsplane-killswitch"], "live-feed");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn upstream_down_gives_502_json() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }; // dropped: connections are refused
    let proxy = start_proxy(dead, vec![], |_| {}).await;
    let resp = within("502", client().get(proxy.url("/anything")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body = resp.text().await.unwrap();
    assert!(
        body.starts_with(r#"{"error":{"code":"UPSTREAM_UNAVAILABLE","message":""#),
        "{body}"
    );
    assert_eq!(
        proxy.metrics.upstream_errors_total.load(Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn upstream_header_timeout_gives_504() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |s| {
        s.upstream_header_timeout = Duration::from_millis(300)
    })
    .await;
    let resp = within("504", client().get(proxy.url("/hang")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains(r#""code":"UPSTREAM_TIMEOUT""#));
    assert_eq!(
        proxy
            .metrics
            .upstream_timeouts_total
            .load(Ordering::Relaxed),
        1
    );
    // With a body, the timeout starts once the body has been forwarded.
    let resp = within(
        "504 with body",
        client().post(proxy.url("/hang")).body("abc").send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        proxy
            .metrics
            .upstream_timeouts_total
            .load(Ordering::Relaxed),
        2
    );
}

#[tokio::test]
async fn slow_upload_is_not_an_upstream_timeout() {
    let up = start_upstream().await;
    let (progress_tx, mut progress) = mpsc::unbounded_channel();
    *up.state.upload_progress.lock().unwrap() = Some(progress_tx);
    let proxy = start_proxy(up.addr, vec![], |s| {
        s.upstream_header_timeout = Duration::from_millis(200)
    })
    .await;
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let request = tokio::spawn(
        client()
            .post(proxy.url("/upload"))
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    body_tx.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
    within("upstream to read the first part", async {
        while progress.recv().await.expect("upload running") < 3 {}
    })
    .await;
    // The client is deliberately slow (this sleep is the scenario, not synchronisation):
    // longer than the header timeout passes while the body is still coming.
    tokio::time::sleep(Duration::from_millis(600)).await;
    body_tx.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
    drop(body_tx);
    let resp = within("upload response", request).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let expected = format!("6 {}", hex(&Sha256::digest(b"abcdef")));
    assert_eq!(resp.text().await.unwrap(), expected);
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |s| s.max_header_bytes = 16 * 1024).await;
    let big = "a".repeat(64 * 1024);
    let r = raw_request(
        proxy.addr,
        &format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(r.status, 431);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn shutdown_returns_when_idle() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |_| {}).await;
    // An idle keep-alive connection must not hold shutdown up.
    let resp = within("warm-up", client().get(proxy.url("/x")).send())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    proxy.shutdown.cancel();
    within("serve to return", proxy.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(proxy.addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let up = start_upstream().await;
    let (tx, rx) = mpsc::unbounded_channel();
    *up.state.stream_rx.lock().unwrap() = Some(rx);
    let proxy = start_proxy(up.addr, vec![], |_| {}).await;

    tx.send(Bytes::from_static(b"a")).unwrap();
    let mut resp = within("stream head", client().get(proxy.url("/stream")).send())
        .await
        .unwrap();
    assert_eq!(within("first", resp.chunk()).await.unwrap().unwrap(), "a");

    proxy.shutdown.cancel();
    // New connections stop being accepted (await the condition, bounded).
    within("listener to close", async {
        loop {
            match TcpStream::connect(proxy.addr).await {
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    assert!(
        !proxy.task.is_finished(),
        "serve returned with a request in flight"
    );

    // The in-flight response still completes.
    tx.send(Bytes::from_static(b"b")).unwrap();
    drop(tx);
    let mut rest = Vec::new();
    while let Some(c) = within("rest", resp.chunk()).await.unwrap() {
        rest.extend_from_slice(&c);
    }
    assert_eq!(rest, b"b");
    within("serve to return", proxy.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_grace_bounds_a_stuck_request() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |s| {
        s.shutdown_grace = Duration::from_millis(200)
    })
    .await;
    let c = client();
    let url = proxy.url("/hang");
    let stuck = tokio::spawn(async move { c.get(url).send().await });
    within("upstream to see the request", async {
        while up.hits("/hang") == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    proxy.shutdown.cancel();
    within("serve to return", proxy.task)
        .await
        .unwrap()
        .unwrap();
    // The stuck client is disconnected rather than answered.
    assert!(within("stuck client", stuck).await.unwrap().is_err());
}

#[tokio::test]
async fn invalid_upstream_is_rejected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_tx, rx) = watch::channel(Arc::new(BTreeSet::new()));
    let err = serve(
        listener,
        ProxySettings::new("https://127.0.0.1:1".parse().unwrap()),
        Arc::new(vec![]),
        rx,
        Arc::new(ProxyMetrics::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn kill_closes_open_websocket_tunnels_on_the_killed_route_only() {
    let ws_up = start_ws_upstream().await;
    let proxy = start_proxy(ws_up, vec![ws_rule()], |_| {}).await;
    let connect = |path: &'static str| {
        tokio_tungstenite::connect_async(format!("ws://{}{}", proxy.addr, path))
    };
    let (mut doomed, _) = within("tunnel on the killed route", connect("/ws/killed/feed"))
        .await
        .unwrap();
    let (mut other, _) = within("tunnel on another route", connect("/ws/echo"))
        .await
        .unwrap();
    for ws in [&mut doomed, &mut other] {
        within("send", ws.send(Message::text("before")))
            .await
            .unwrap();
        let msg = within("echo", ws.next()).await.unwrap().unwrap();
        assert_eq!(msg.to_text().unwrap(), "before");
    }

    proxy.kill(&["live-feed"]);
    // The tunnel opened before the kill is closed by the proxy: the client's stream ends
    // (with an error or without a close frame), and nothing more reaches the app.
    within("the killed tunnel to close", async {
        loop {
            match doomed.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(m)) if m.is_close() => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(
        proxy
            .metrics
            .tunnels_closed_by_kill_total
            .load(Ordering::Relaxed),
        1
    );
    // The tunnel on a route the kill does not block carries on.
    within("send after kill", other.send(Message::text("after")))
        .await
        .unwrap();
    let msg = within("echo after kill", other.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.to_text().unwrap(), "after");
}

#[tokio::test]
async fn h2c_upgrade_is_never_forwarded() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |_| {}).await;
    let r = raw_request(
        proxy.addr,
        "GET /h2 HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    // Served as plain HTTP/1.1: the upgrade offer is dropped, not refused.
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/h2");
    assert!(seen.headers.get("upgrade").is_none(), "{:?}", seen.headers);
    assert!(seen.headers.get("http2-settings").is_none());
    assert!(seen.headers.get_all("connection").iter().all(|v| !v
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("upgrade")));
    // Settings sent without being named in Connection go too.
    let r = raw_request(
        proxy.addr,
        "GET /h2b HTTP/1.1\r\nHost: app\r\nConnection: upgrade, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.last();
    assert!(seen.headers.get("upgrade").is_none());
    assert!(seen.headers.get("http2-settings").is_none());
}

#[tokio::test]
async fn stalled_request_body_is_cut_with_408() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |s| {
        s.body_timeout = Duration::from_millis(300)
    })
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let buf = within("the proxy to cut the stalled body", async {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        buf
    })
    .await;
    let r = parse_response(&buf);
    assert_eq!(r.status, 408, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains(r#""code":"REQUEST_TIMEOUT""#));
    assert_eq!(proxy.metrics.body_timeouts_total.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn proxy_connections_past_the_cap_are_closed() {
    let up = start_upstream().await;
    let proxy = start_proxy(up.addr, vec![], |s| s.max_connections = 1).await;
    let held = TcpStream::connect(proxy.addr).await.unwrap();
    within("the first connection to be served", async {
        while proxy.metrics.connections_open.load(Ordering::Relaxed) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut second = TcpStream::connect(proxy.addr).await.unwrap();
    let _ = second
        .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let _ = within(
        "the second connection to close",
        second.read_to_end(&mut buf),
    )
    .await;
    assert!(buf.is_empty());
    assert_eq!(
        proxy
            .metrics
            .connections_refused_total
            .load(Ordering::Relaxed),
        1
    );
    assert!(up.seen().is_empty());
    drop(held);
}

#[tokio::test]
async fn websocket_tunnel_outlives_the_body_and_header_timeouts() {
    let ws_up = start_ws_upstream().await;
    let proxy = start_proxy(ws_up, vec![], |s| {
        s.body_timeout = Duration::from_millis(200);
        s.client_header_timeout = Duration::from_millis(200);
    })
    .await;
    let (mut ws, _) = within(
        "websocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", proxy.addr)),
    )
    .await
    .unwrap();
    // The tunnel stays quiet for three times both timeouts (this wait is the scenario).
    tokio::time::sleep(Duration::from_millis(600)).await;
    within("send", ws.send(Message::text("still here")))
        .await
        .unwrap();
    let msg = within("echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(msg.to_text().unwrap(), "still here");
    assert_eq!(proxy.metrics.body_timeouts_total.load(Ordering::Relaxed), 0);
}
