//! The agent against a collector that refuses its protocol version: every
//! request carries `X-Opsplane-Protocol`, the refusal is reported (status and
//! log) and the agent keeps serving its last-known-good snapshot without
//! asking again in a loop. The real collector cannot speak another protocol,
//! so a small server answers as a collector of protocol 2 would
//! (`docs/lifecycle.md`); the collector's side is tested in
//! `tests/tests/lifecycle.rs`.

use agent::config::{Config, File};
use agent::disk::{self, Credential, StoredSnapshot};
use axum::http::{HeaderMap, StatusCode};
use common::config::ConfigSource;
use common::wire::{ErrorBody, Revision};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the refusing collector saw: (path, protocol header) per request.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

async fn refusing_collector() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let s = s.clone();
        async move {
            let sent = headers
                .get("x-opsplane-protocol")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            s.lock()
                .unwrap()
                .push((uri.path().to_string(), sent.clone()));
            let body = ErrorBody::new(
                "PROTOCOL_MISMATCH",
                format!(
                    "the agent speaks protocol {:?} and this collector speaks protocol 2",
                    sent.unwrap_or_default()
                ),
            );
            (StatusCode::BAD_REQUEST, axum::Json(body))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let wait = async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!("timed out waiting for {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_protocol_is_reported_and_the_cached_snapshot_stays_in_force() {
    let (url, seen) = refusing_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // a last-known-good snapshot and a credential from earlier runs
    let rev = Revision {
        revision: 7,
        environment: "prod".into(),
        created_ms: 0,
        flags: serde_json::json!({"flags": {"banner": {"state": "ENABLED",
            "variants": {"red": "red"}, "defaultVariant": "red"}}}),
        killswitches: Vec::new(),
    };
    disk::write_json(
        &data.join(disk::SNAPSHOT_FILE),
        &StoredSnapshot {
            revision: rev,
            received_ms: 0,
        },
        0o600,
    )
    .unwrap();
    disk::write_json(
        &data.join(disk::CREDENTIAL_FILE),
        &Credential {
            agent_id: "ag_1".into(),
            credential: "opsa_x".into(),
            collector_url: url.clone(),
        },
        0o600,
    )
    .unwrap();
    let text = format!(
        "service = \"web\"\nenvironment = \"prod\"\ndata_dir = {data:?}\n[api]\nlisten = \"127.0.0.1:0\"\n[collector]\nurl = {url:?}\nheartbeat_interval = \"1h\"\n"
    );
    let src = ConfigSource {
        file: "agent.toml".into(),
        text,
    };
    let file: File = src.parse().unwrap();
    let running = agent::start(Config::resolve(&src, file).unwrap())
        .await
        .unwrap();
    let shared = running.shared.clone();

    until("the refusal reported", || {
        shared
            .collector_status()
            .last_error
            .is_some_and(|e| e.contains("PROTOCOL_MISMATCH"))
    })
    .await;
    let status = shared.collector_status();
    assert!(!status.connected && !status.revoked);
    let err = status.last_error.unwrap();
    assert!(err.contains("protocol 2") && err.contains("\"1\""), "{err}");

    // still serving the cached snapshot
    let api = format!("http://{}", running.api_addr);
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client.get(format!("{api}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let v: serde_json::Value = client
        .get(format!("{api}/v1/flags/banner"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["value"], "red", "{v}");
    let snap = shared.snapshot.load_full().unwrap();
    assert_eq!(snap.revision, 7);

    // every request said which protocol it speaks, and the stream was not
    // asked again at once (the next try is 15–30 s away)
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty());
    for (path, sent) in &seen {
        assert_eq!(sent.as_deref(), Some("1"), "{path}");
    }
    let streams = seen.iter().filter(|(p, _)| p == "/v1/agent/stream").count();
    assert_eq!(streams, 1, "{seen:?}");

    running.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("the agent stops");
}
