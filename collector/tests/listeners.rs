//! The collector's three listeners under hostile or careless clients: a full
//! status listener must not stop the admin plane, half-sent heads are closed
//! after the header timeout, a body far over the limit gets a readable 413, and
//! the admin `/metrics` can require a token. A collector runs in-process on
//! 127.0.0.1:0; every wait has a deadline, none is a sleep.

use collector::config::Settings;
use collector::kernel::Actor;
use collector::store;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

struct Collector {
    running: Option<collector::Running>,
    admin_token: String,
    _dir: tempfile::TempDir,
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown.cancel();
        }
    }
}

impl Collector {
    fn r(&self) -> &collector::Running {
        self.running.as_ref().unwrap()
    }
}

async fn start(tweak: impl FnOnce(&mut Settings)) -> Collector {
    let dir = tempfile::tempdir().unwrap();
    let init = collector::init::init(dir.path()).unwrap();
    let mut settings = Settings::with_data_dir(dir.path()).unwrap();
    settings.ingest_listen = "127.0.0.1:0".parse().unwrap();
    settings.admin_listen = "127.0.0.1:0".parse().unwrap();
    settings.status_listen = "127.0.0.1:0".parse().unwrap();
    tweak(&mut settings);
    let running = collector::start(settings).await.unwrap();
    running
        .ctx
        .store
        .write(|tx| {
            let a = Actor::system("system:test");
            store::killswitches::declare(tx, &a, "ks1", "test switch")?;
            Ok(())
        })
        .await
        .unwrap();
    Collector {
        running: Some(running),
        admin_token: init.admin_token,
        _dir: dir,
    }
}

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

async fn raw(addr: SocketAddr, request: &str) -> String {
    within("raw request", async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&read_until_closed(&mut s).await).to_string()
    })
    .await
}

fn kill_request(token: &str) -> String {
    let body = r#"{"environment":"dev","reason":"incident 42"}"#;
    format!(
        "POST /api/v1/killswitches/ks1/kill HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_full_status_listener_does_not_stop_the_admin_listener() {
    let c = start(|s| s.listeners.status.max_connections = 4).await;
    let status = c.r().status_addr;
    let stats = c.r().ctx.listeners.status.clone();
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(status).await.unwrap());
    }
    until("the status listener to be full", || {
        stats.connections_open.load(Ordering::Relaxed) == 4
    })
    .await;
    // More connections to the status page are closed at once and counted...
    for _ in 0..3 {
        let mut extra = TcpStream::connect(status).await.unwrap();
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: status\r\n\r\n")
            .await;
        let got = within(
            "the extra connection to close",
            read_until_closed(&mut extra),
        )
        .await;
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    assert_eq!(stats.connections_refused_total.load(Ordering::Relaxed), 3);
    // ...while the admin plane still kills at once.
    let resp = raw(c.r().admin_addr, &kill_request(&c.admin_token)).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let metrics = raw(
        c.r().admin_addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        metrics.contains(r#"opsplane_collector_connections_refused_total{listener="status"} 3"#),
        "{metrics}"
    );
    drop(idle);
}

#[tokio::test]
async fn half_sent_head_on_ingest_is_closed_after_the_header_timeout() {
    let c = start(|s| s.listeners.ingest.header_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(c.r().ingest_addr).await.unwrap();
    s.write_all(b"POST /v1/agent/heartbeat HTTP/1.1\r\nHost: collector\r\n")
        .await
        .unwrap();
    let got = within("the half-sent head to be closed", read_until_closed(&mut s)).await;
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let stats = c.r().ctx.listeners.ingest.clone();
    until("the header timeout to be counted", || {
        stats.header_timeouts_total.load(Ordering::Relaxed) == 1
    })
    .await;
}

#[tokio::test]
async fn slow_body_on_admin_is_cut_with_408() {
    let c = start(|s| s.listeners.admin.body_timeout = Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(c.r().admin_addr).await.unwrap();
    let head = format!(
        "POST /api/v1/killswitches/ks1/kill HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"environment\":",
        c.admin_token
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let got = within("the slow body to be cut", read_until_closed(&mut s)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains(r#""code":"REQUEST_TIMEOUT""#), "{text}");
}

#[tokio::test]
async fn an_8_mb_body_on_admin_gets_a_413_the_client_can_read() {
    let c = start(|_| {}).await;
    let body = vec![b' '; 8 * 1024 * 1024];
    let mut s = TcpStream::connect(c.r().admin_addr).await.unwrap();
    let head = format!(
        "POST /api/v1/killswitches/ks1/kill HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        c.admin_token,
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
}

#[tokio::test]
async fn admin_metrics_token() {
    let c = start(|s| s.listeners.metrics_token = Some("scrape-secret".into())).await;
    let admin = c.r().admin_addr;
    let get = |auth: &str| {
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
    };
    let resp = raw(admin, &get("")).await;
    assert!(resp.starts_with("HTTP/1.1 401 "), "{resp}");
    assert!(resp.contains(r#""code":"UNAUTHORIZED""#), "{resp}");
    let resp = raw(admin, &get("Authorization: Bearer wrong\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 401 "), "{resp}");
    let resp = raw(admin, &get("Authorization: Bearer scrape-secret\r\n")).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.contains("opsplane_collector_build_info"), "{resp}");

    // Without a token configured, /metrics stays open.
    let open = start(|_| {}).await;
    let resp = raw(open.r().admin_addr, &get("")).await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
}

#[test]
fn listener_keys_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("metrics.token");
    std::fs::write(&token, "scrape-secret\n").unwrap();
    let path = dir.path().join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = {data:?}\n[ingest]\nheader_timeout = \"45s\"\nmax_connections = 100\n[admin]\nbody_timeout = \"5s\"\nmetrics_token_file = {token:?}\n[status_page]\nidle_timeout = \"2s\"\nmax_connections = 10\n",
            data = dir.path()
        ),
    )
    .unwrap();
    let s = Settings::load(&path).unwrap();
    assert_eq!(s.listeners.ingest.header_timeout, Duration::from_secs(45));
    assert_eq!(s.listeners.ingest.max_connections, 100);
    assert_eq!(s.listeners.admin.body_timeout, Duration::from_secs(5));
    assert_eq!(s.listeners.admin.max_connections, 256);
    assert_eq!(s.listeners.status.idle_timeout, Duration::from_secs(2));
    assert_eq!(s.listeners.status.max_connections, 10);
    assert_eq!(s.listeners.metrics_token.as_deref(), Some("scrape-secret"));

    std::fs::write(
        &path,
        format!(
            "data_dir = {data:?}\n[status_page]\nmax_connections = 0\n[admin]\nheader_timeout = \"0s\"\n",
            data = dir.path()
        ),
    )
    .unwrap();
    let e = Settings::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("collector.toml:3: status_page.max_connections"),
        "{e}"
    );
    assert!(e.contains("collector.toml:5: admin.header_timeout"), "{e}");
}
