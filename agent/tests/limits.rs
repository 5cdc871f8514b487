//! The agent's local API listener under hostile or careless clients: header,
//! body and idle timeouts, the connection cap, a readable 413 for a body far
//! over the limit, the Host check and the `/metrics` token. Each test starts an
//! agent in-process on 127.0.0.1:0 with a local flag file and talks to it over
//! real sockets; every wait has a deadline, none is a sleep.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent::config::{Config, File};
use common::config::ConfigSource;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Polls `cond` until it holds, failing after [`DEADLINE`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

struct Agent {
    running: Option<agent::Running>,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
        }
    }
}

impl Agent {
    fn stats(&self) -> &common::serve::ListenerStats {
        &self.running.as_ref().unwrap().shared.metrics.api_listener
    }
}

/// Starts a standalone agent; `api_extra` is appended to its `[api]` section.
async fn start_agent(api_extra: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let flags = dir.path().join("flags.json");
    std::fs::write(
        &flags,
        r#"{"flags":{"f1":{"state":"ENABLED","variants":{"on":true,"off":false},"defaultVariant":"on"}}}"#,
    )
    .unwrap();
    let text = format!(
        "service = \"web\"\nenvironment = \"dev\"\ndata_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:0\"\n{api_extra}\n[flags]\nfile = {flags:?}\n",
        data = dir.path().join("data"),
    );
    let src = ConfigSource {
        file: "agent.toml".into(),
        text,
    };
    let file: File = src.parse().unwrap();
    let config = Config::resolve(&src, file).unwrap();
    let running = agent::start(config).await.unwrap();
    let addr = running.api_addr;
    Agent {
        running: Some(running),
        addr,
        _dir: dir,
    }
}

/// Reads until the server closes the connection (EOF or reset), returning what arrived.
async fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends a whole request asking for `Connection: close` and returns (status, body).
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    within("raw request", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let buf = read_until_closed(&mut s).await;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

#[tokio::test]
async fn half_sent_request_head_is_closed_after_the_header_timeout() {
    let agent = start_agent("header_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(agent.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let got = within(
        "the server to close a half-sent request",
        read_until_closed(&mut s),
    )
    .await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    until("the header timeout to be counted", || {
        agent.stats().header_timeouts_total.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[tokio::test]
async fn slow_request_body_is_cut_with_408() {
    let agent = start_agent("body_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(agent.addr).await.unwrap();
    s.write_all(
        b"POST /ofrep/v1/evaluate/flags/f1 HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"context\":",
    )
    .await
    .unwrap();
    let got = within("the server to cut a slow body", read_until_closed(&mut s)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.contains(r#"{"error":{"code":"REQUEST_TIMEOUT""#),
        "{text}"
    );
    assert_eq!(agent.stats().body_timeouts_total.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let agent = start_agent("idle_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(agent.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // The first response arrives and the connection stays open for more...
    let mut buf = Vec::new();
    within("the first response", async {
        let mut chunk = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).contains(r#"{"status":"ok"}"#) {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before answering");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    // ...until it has been idle for the idle timeout.
    let rest = within(
        "the idle connection to be closed",
        read_until_closed(&mut s),
    )
    .await;
    assert!(rest.is_empty());
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_counted() {
    let agent = start_agent("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(agent.addr).await.unwrap());
    }
    until("two connections open", || {
        agent.stats().connections_open.load(Ordering::Relaxed) == 2
    })
    .await;
    let mut third = TcpStream::connect(agent.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let got = within(
        "the third connection to be closed",
        read_until_closed(&mut third),
    )
    .await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert_eq!(
        agent
            .stats()
            .connections_refused_total
            .load(Ordering::Relaxed),
        1
    );
    // A freed slot serves again.
    drop(held.pop());
    until("the closed connection to free its slot", || {
        agent.stats().connections_open.load(Ordering::Relaxed) == 1
    })
    .await;
    let (status, _) = raw(agent.addr, &get("/healthz", "localhost", "")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_8_mb_body_gets_a_413_the_client_can_read() {
    let agent = start_agent("").await;
    // A plain client that writes its whole request before reading (as many
    // scripts do): the agent stops reading at 1 MB, answers 413 and must keep
    // draining, or the client's write fails with a broken pipe and the 413 is lost.
    let body = vec![b' '; 8 * 1024 * 1024];
    let mut s = TcpStream::connect(agent.addr).await.unwrap();
    let head = format!(
        "POST /ofrep/v1/evaluate/flags HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    within("the 8 MB request to be written", async {
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body)
            .await
            .expect("the whole request is written, no broken pipe");
    })
    .await;
    let got = within("the answer", read_until_closed(&mut s)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
    assert!(text.contains("larger than"), "{text}");

    // And an HTTP client library reads it too.
    let body = vec![b' '; 8 * 1024 * 1024];
    let resp = within(
        "the 413",
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{}/ofrep/v1/evaluate/flags", agent.addr))
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("the client reads an answer, not a broken pipe");
    assert_eq!(resp.status(), 413);
    let text = resp.text().await.unwrap();
    assert!(text.contains("larger than"), "{text}");
}

#[tokio::test]
async fn host_check_refuses_foreign_hosts() {
    let agent = start_agent("allowed_hosts = [\"agent.internal\", \"10.9.9.9\"]").await;
    let port = agent.addr.port();
    for host in [
        "localhost".to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "agent.internal".to_string(),
        format!("10.9.9.9:{port}"),
    ] {
        let (status, body) = raw(agent.addr, &get("/v1/flags", &host, "")).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        "10.1.1.1".to_string(),
    ] {
        let (status, body) = raw(agent.addr, &get("/v1/flags", &host, "")).await;
        assert_eq!(status, 403, "{host}: {body}");
        assert!(
            body.starts_with(r#"{"error":{"code":"HOST_NOT_ALLOWED","#),
            "{body}"
        );
    }
    // No Host at all is refused too.
    let (status, _) = raw(
        agent.addr,
        "GET /v1/flags HTTP/1.0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn metrics_token_guards_metrics_only() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, "scrape-secret\n").unwrap();
    let agent = start_agent(&format!(
        "token = \"api-secret\"\nmetrics_token_file = {token_file:?}"
    ))
    .await;
    let (status, body) = raw(agent.addr, &get("/metrics", "localhost", "")).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains(r#""code":"UNAUTHORIZED""#), "{body}");
    let (status, _) = raw(
        agent.addr,
        &get("/metrics", "localhost", "Authorization: Bearer wrong\r\n"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = raw(
        agent.addr,
        &get(
            "/metrics",
            "localhost",
            "Authorization: Bearer scrape-secret\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("opsplane_agent_build_info"), "{body}");
    assert!(
        body.contains(r#"opsplane_agent_connections_refused_total{listener="api"} 0"#),
        "{body}"
    );
    // The metrics token opens nothing else; the API token still works there.
    let (status, _) = raw(
        agent.addr,
        &get(
            "/v1/flags",
            "localhost",
            "Authorization: Bearer scrape-secret\r\n",
        ),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = raw(
        agent.addr,
        &get(
            "/v1/flags",
            "localhost",
            "Authorization: Bearer api-secret\r\n",
        ),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn metrics_are_open_without_a_metrics_token() {
    let agent = start_agent("").await;
    let (status, body) = raw(agent.addr, &get("/metrics", "localhost", "")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("opsplane_agent_build_info"), "{body}");
}
