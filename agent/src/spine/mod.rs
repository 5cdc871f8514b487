//! The agent's side of the spine, composed here: enrollment (`enroll.rs`),
//! the revision stream pushed by the collector and resumed from the last
//! applied revision after any break, with jittered exponential backoff
//! (`stream.rs`), the last-known-good snapshot loaded at start, confirmed,
//! and written before each acknowledgement (`cache.rs`), and heartbeats
//! (`heartbeat.rs`). Every request carries `X-Opsplane-Protocol`; a
//! collector that refuses our protocol version is retried slowly while the
//! snapshot in force keeps being served.

mod cache;
mod enroll;
mod heartbeat;
mod stream;

pub use cache::load_cached;
pub use stream::{LineSplitter, LineTooLong, MAX_LINE_BYTES};

use crate::disk::{self, Credential};
use crate::state::{Shared, Snapshot};
use common::wire::{self, ErrorBody};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Full-jitter exponential backoff.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { attempt: 0 }
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let cap = BACKOFF_BASE
            .saturating_mul(1u32 << self.attempt.min(10))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        let ms = rand::thread_rng().gen_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
        Duration::from_millis(ms)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

enum StreamEnd {
    /// Broken or closed: reconnect after a backoff.
    Retry(String),
    /// The collector refuses our protocol version: retry at the slowest
    /// pace (only upgrading one side helps).
    Incompatible(String),
    /// The collector does not know our credential: enroll again.
    Unknown,
    Revoked,
    Shutdown,
}

struct Ctx {
    shared: Arc<Shared>,
    url: String,
    http: reqwest::Client,
    stream_http: reqwest::Client,
    cred_tx: watch::Sender<Option<Credential>>,
    shutdown: CancellationToken,
}

/// Runs until shutdown. Spawns the heartbeat and the persist-then-ack loops.
pub async fn run(
    shared: Arc<Shared>,
    tracker: tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
) {
    let Some(cfg) = shared.config.collector.clone() else {
        return;
    };
    let user_agent = format!("opsplane-agent/{}", common::VERSION);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        wire::PROTOCOL_HEADER,
        reqwest::header::HeaderValue::from(wire::PROTOCOL_VERSION),
    );
    let builder = || {
        let mut b = reqwest::Client::builder()
            .user_agent(&user_agent)
            .default_headers(headers.clone())
            .connect_timeout(Duration::from_secs(5));
        if let Some(pem) = &cfg.ca_pem {
            // validated when the config was loaded
            if let Ok(cert) = reqwest::Certificate::from_pem(pem) {
                b = b.add_root_certificate(cert);
            }
        }
        b
    };
    let (Ok(http), Ok(stream_http)) = (
        builder().timeout(Duration::from_secs(15)).build(),
        builder().tcp_keepalive(Duration::from_secs(15)).build(),
    ) else {
        tracing::error!("cannot build the HTTP client; not syncing");
        return;
    };
    let cred_path = shared.config.data_dir.join(disk::CREDENTIAL_FILE);
    let stored: Option<Credential> =
        disk::read_json(&cred_path).filter(|c: &Credential| c.collector_url == cfg.url);
    if let Some(c) = &stored {
        shared.update_collector(|s| s.agent_id = Some(c.agent_id.clone()));
    }
    let (cred_tx, cred_rx) = watch::channel(stored);
    let ctx = Arc::new(Ctx {
        shared: shared.clone(),
        url: cfg.url.clone(),
        http,
        stream_http,
        cred_tx,
        shutdown: shutdown.clone(),
    });
    let (persist_tx, persist_rx) = watch::channel::<Option<Arc<Snapshot>>>(None);
    tracker.spawn(heartbeat::heartbeats(
        ctx.clone(),
        cred_rx.clone(),
        cfg.heartbeat_interval,
    ));
    tracker.spawn(cache::persist_and_ack(ctx.clone(), persist_rx, cred_rx));

    let mut backoff = Backoff::new();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let cred = ctx.cred_tx.borrow().clone();
        let cred = match cred {
            Some(c) => c,
            None => match enroll::enroll(&ctx, cfg.enroll_token.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    ctx.shared
                        .update_collector(|s| s.last_error = Some(e.clone()));
                    let delay = if e.contains(wire::PROTOCOL_MISMATCH) {
                        tracing::error!(error = %e, retry_in_ms = BACKOFF_MAX.as_millis() as u64, "enrollment refused: the collector speaks another protocol version");
                        incompatible_delay()
                    } else {
                        tracing::warn!(error = %e, "enrollment failed");
                        backoff.next_delay()
                    };
                    if !sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        match stream::stream_once(&ctx, &cred, &persist_tx, &mut backoff).await {
            StreamEnd::Shutdown => return,
            StreamEnd::Revoked => {
                ctx.shared.update_collector(|s| {
                    s.connected = false;
                    s.revoked = true;
                    s.last_error = Some("this agent was revoked at the collector".into());
                });
                tracing::error!(agent = %cred.agent_id, "this agent was revoked; it keeps serving its last snapshot but no longer syncs");
                return;
            }
            StreamEnd::Unknown => {
                tracing::warn!(agent = %cred.agent_id, "the collector does not know this agent's credential; enrolling again");
                let _ = std::fs::remove_file(&cred_path);
                ctx.cred_tx.send_replace(None);
            }
            StreamEnd::Incompatible(why) => {
                ctx.shared.update_collector(|s| {
                    s.connected = false;
                    s.last_error = Some(why.clone());
                });
                let delay = incompatible_delay();
                tracing::error!(error = %why, retry_in_ms = delay.as_millis() as u64, "the collector refuses this agent's protocol version; serving the snapshot in force until one side is upgraded");
                if !sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
            StreamEnd::Retry(why) => {
                ctx.shared.update_collector(|s| {
                    s.connected = false;
                    s.last_error = Some(why.clone());
                });
                let delay = backoff.next_delay();
                tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "revision stream broken");
                if !sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// The wait before asking again a collector that refused our protocol
/// version: the longest backoff, jittered, never a tight loop.
fn incompatible_delay() -> Duration {
    let max = BACKOFF_MAX.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(max / 2..=max))
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

async fn error_code(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (status, b.error.code, b.error.message),
        Err(_) => (status, String::new(), text.chars().take(200).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incompatible_collector_is_asked_again_slowly() {
        for _ in 0..100 {
            let d = incompatible_delay();
            assert!(d >= BACKOFF_MAX / 2 && d <= BACKOFF_MAX, "{d:?}");
        }
    }
}
