//! The agent's side of the spine: enrollment, the revision stream (pushed by
//! the collector, resumed from the last applied revision after any break,
//! with jittered exponential backoff), the last-known-good snapshot written
//! before each acknowledgement, and heartbeats.

use crate::disk::{self, Credential, StoredSnapshot};
use crate::metrics::Metrics;
use crate::state::{Shared, Snapshot, Source};
use common::wire::{self, Ack, EnrollRequest, EnrollResponse, ErrorBody, Heartbeat, StreamEvent};
use futures_util::StreamExt;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A stream silent for this long is considered dead (the collector pings every 10 s).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(35);
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest accepted stream line (one whole revision).
const MAX_LINE_BYTES: usize = 64 << 20;

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
    let builder = || {
        let mut b = reqwest::Client::builder()
            .user_agent(&user_agent)
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
    tracker.spawn(heartbeats(
        ctx.clone(),
        cred_rx.clone(),
        cfg.heartbeat_interval,
    ));
    tracker.spawn(persist_and_ack(ctx.clone(), persist_rx, cred_rx));

    let mut backoff = Backoff::new();
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let cred = ctx.cred_tx.borrow().clone();
        let cred = match cred {
            Some(c) => c,
            None => match enroll(&ctx, cfg.enroll_token.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    ctx.shared
                        .update_collector(|s| s.last_error = Some(e.clone()));
                    tracing::warn!(error = %e, "enrollment failed");
                    if !sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        match stream_once(&ctx, &cred, &persist_tx, &mut backoff).await {
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

async fn enroll(ctx: &Ctx, token: Option<&str>) -> Result<Credential, String> {
    let token = token.ok_or("no credential yet and no enrollment token configured (collector.token or collector.token_file)")?;
    let req = EnrollRequest {
        token: token.to_string(),
        identity: ctx.shared.identity.clone(),
    };
    let resp = ctx
        .http
        .post(format!("{}{}", ctx.url, wire::PATH_ENROLL))
        .json(&req)
        .send()
        .await
        .map_err(|e| format!("cannot reach the collector: {e}"))?;
    if !resp.status().is_success() {
        let (status, code, msg) = error_code(resp).await;
        return Err(format!("enrollment refused ({status} {code}): {msg}"));
    }
    let r: EnrollResponse = resp
        .json()
        .await
        .map_err(|e| format!("bad enrollment answer: {e}"))?;
    let cred = Credential {
        agent_id: r.agent_id,
        credential: r.credential,
        collector_url: ctx.url.clone(),
    };
    let path = ctx.shared.config.data_dir.join(disk::CREDENTIAL_FILE);
    let c2 = cred.clone();
    tokio::task::spawn_blocking(move || disk::write_json(&path, &c2, 0o600))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot store the agent credential: {e}"))?;
    tracing::info!(agent = %cred.agent_id, "enrolled with the collector");
    ctx.shared
        .update_collector(|s| s.agent_id = Some(cred.agent_id.clone()));
    ctx.cred_tx.send_replace(Some(cred.clone()));
    Ok(cred)
}

async fn stream_once(
    ctx: &Ctx,
    cred: &Credential,
    persist_tx: &watch::Sender<Option<Arc<Snapshot>>>,
    backoff: &mut Backoff,
) -> StreamEnd {
    let since = ctx
        .shared
        .snapshot
        .load()
        .as_ref()
        .filter(|s| s.source != Source::File)
        .map(|s| s.revision);
    let mut url = format!("{}{}", ctx.url, wire::PATH_STREAM);
    if let Some(s) = since {
        url.push_str(&format!("?since={s}"));
    }
    let req = ctx
        .stream_http
        .get(&url)
        .bearer_auth(&cred.credential)
        .header("x-opsplane-protocol", wire::PROTOCOL_VERSION.to_string())
        .send();
    let resp = tokio::select! {
        r = req => r,
        _ = ctx.shutdown.cancelled() => return StreamEnd::Shutdown,
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => return StreamEnd::Retry(format!("cannot reach the collector: {e}")),
    };
    if !resp.status().is_success() {
        let (status, code, msg) = error_code(resp).await;
        return match (status, code.as_str()) {
            (401, "AGENT_REVOKED") => StreamEnd::Revoked,
            (401, "UNKNOWN_AGENT") => StreamEnd::Unknown,
            _ => StreamEnd::Retry(format!("stream refused ({status} {code}): {msg}")),
        };
    }
    Metrics::inc(&ctx.shared.metrics.stream_connects);
    tracing::info!(since = ?since, "revision stream open");
    let mut body = resp.bytes_stream();
    let mut lines = LineSplitter::new(MAX_LINE_BYTES);
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(STREAM_IDLE_TIMEOUT, body.next()) => n,
            _ = ctx.shutdown.cancelled() => return StreamEnd::Shutdown,
        };
        let chunk = match next {
            Err(_) => return StreamEnd::Retry("no data from the collector for 35s".into()),
            Ok(None) => return StreamEnd::Retry("the collector closed the stream".into()),
            Ok(Some(Err(e))) => return StreamEnd::Retry(format!("stream read failed: {e}")),
            Ok(Some(Ok(c))) => c,
        };
        lines.push(&chunk);
        loop {
            let line = match lines.next_line() {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(LineTooLong) => return StreamEnd::Retry("stream line too long".into()),
            };
            let now = common::time::now_ms();
            ctx.shared.update_collector(|s| {
                s.connected = true;
                s.last_contact_ms = Some(now);
                s.last_error = None;
            });
            match serde_json::from_slice::<StreamEvent>(&line) {
                Ok(StreamEvent::Revision(rev)) => {
                    backoff.reset();
                    let n = rev.revision;
                    match ctx.shared.apply(rev, Source::Collector, now) {
                        Ok(snap) => {
                            tracing::info!(revision = n, killed = ?snap.killed, flags = snap.flags.len(), "revision applied");
                            persist_tx.send_replace(Some(snap));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "revision rejected; the previous one stays in force")
                        }
                    }
                }
                Ok(StreamEvent::Ping { latest }) => {
                    backoff.reset();
                    confirm_cached(&ctx.shared, latest, now);
                }
                Ok(StreamEvent::Revoked) => return StreamEnd::Revoked,
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable stream line"),
            }
        }
    }
}

/// A line longer than the limit arrived without its newline.
#[derive(Debug, PartialEq, Eq)]
pub struct LineTooLong;

/// Splits a byte stream into newline-terminated lines. Each byte is looked at
/// once: the search for the next newline starts where the last one stopped,
/// so a revision of many megabytes arriving in small chunks costs linear
/// time, not a rescan of the whole buffer per chunk.
pub struct LineSplitter {
    buf: Vec<u8>,
    /// Where the unconsumed bytes start.
    start: usize,
    /// Bytes before this offset are known to hold no newline (after `start`).
    scanned: usize,
    max_line_bytes: usize,
    /// Bytes searched for a newline so far (tests check this is linear).
    pub scanned_bytes_total: u64,
}

impl LineSplitter {
    pub fn new(max_line_bytes: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line_bytes,
            scanned_bytes_total: 0,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            // what is left after the lines taken is the tail of the last chunk
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole line (with its newline), `None` until more bytes come.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, LineTooLong> {
        let fresh = &self.buf[self.scanned..];
        let found = fresh.iter().position(|b| *b == b'\n');
        self.scanned_bytes_total += found.map_or(fresh.len(), |i| i + 1) as u64;
        let Some(i) = found else {
            self.scanned = self.buf.len();
            if self.buf.len() - self.start > self.max_line_bytes {
                return Err(LineTooLong);
            }
            return Ok(None);
        };
        let end = self.scanned + i + 1;
        if end - self.start > self.max_line_bytes {
            return Err(LineTooLong);
        }
        let line = if self.start == 0 && end == self.buf.len() {
            // the usual case: one line is the whole buffer, hand it over without a copy
            self.scanned = 0;
            std::mem::take(&mut self.buf)
        } else {
            let l = self.buf[self.start..end].to_vec();
            self.start = end;
            self.scanned = end;
            l
        };
        Ok(Some(line))
    }
}

/// The collector says `latest` is current: a snapshot served from the cache
/// with that number is now confirmed, so it counts as the collector's again.
fn confirm_cached(shared: &Shared, latest: u64, now: i64) {
    let snap = shared.snapshot.load_full();
    if let Some(s) = snap.filter(|s| s.source == Source::Cache && s.revision == latest) {
        if let Err(e) = shared.apply(s.full_doc(), Source::Collector, now) {
            tracing::warn!(error = %e, "cannot confirm the cached snapshot");
        }
    }
}

/// Writes each applied snapshot to disk, then acknowledges it. Coalesces:
/// when revisions arrive faster than the disk, only the newest is written.
async fn persist_and_ack(
    ctx: Arc<Ctx>,
    mut rx: watch::Receiver<Option<Arc<Snapshot>>>,
    cred_rx: watch::Receiver<Option<Credential>>,
) {
    let path = ctx.shared.config.data_dir.join(disk::SNAPSHOT_FILE);
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
        let Some(snap) = rx.borrow_and_update().clone() else {
            continue;
        };
        let stored = StoredSnapshot {
            revision: snap.full_doc(),
            received_ms: snap.received_ms,
        };
        let p = path.clone();
        match tokio::task::spawn_blocking(move || disk::write_json(&p, &stored, 0o600)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, path = %path.display(), "cannot write the last-known-good snapshot")
            }
            Err(e) => tracing::error!(error = %e, "snapshot writer failed"),
        }
        let cred = cred_rx.borrow().clone();
        if let Some(c) = cred {
            let r = ctx
                .http
                .post(format!("{}{}", ctx.url, wire::PATH_ACK))
                .bearer_auth(&c.credential)
                .json(&Ack {
                    revision: snap.revision,
                })
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => tracing::warn!(
                    status = resp.status().as_u16(),
                    revision = snap.revision,
                    "acknowledgement refused; the next heartbeat carries it"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, revision = snap.revision, "acknowledgement failed; the next heartbeat carries it")
                }
            }
        }
    }
}

async fn heartbeats(
    ctx: Arc<Ctx>,
    mut cred_rx: watch::Receiver<Option<Credential>>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            // a fresh credential: report at once
            r = cred_rx.changed() => if r.is_err() { return },
            _ = ctx.shutdown.cancelled() => return,
        }
        let Some(cred) = cred_rx.borrow_and_update().clone() else {
            continue;
        };
        if ctx.shared.collector_status().revoked {
            return;
        }
        let snap = ctx.shared.snapshot.load();
        let hb = Heartbeat {
            identity: ctx.shared.identity.clone(),
            revision: snap
                .as_ref()
                .filter(|s| s.source != Source::File)
                .map(|s| s.revision),
            killswitches: ctx
                .shared
                .config
                .killswitches
                .iter()
                .map(|k| k.name.clone())
                .collect(),
            uptime_s: ctx.shared.started.elapsed().as_secs(),
            flag_source: snap
                .as_ref()
                .map(|s| s.source.as_str())
                .unwrap_or("none")
                .into(),
        };
        let r = ctx
            .http
            .post(format!("{}{}", ctx.url, wire::PATH_HEARTBEAT))
            .bearer_auth(&cred.credential)
            .json(&hb)
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => {
                let now = common::time::now_ms();
                ctx.shared
                    .update_collector(|s| s.last_contact_ms = Some(now));
            }
            Ok(resp) => {
                let (status, code, msg) = error_code(resp).await;
                tracing::warn!(status, code = %code, message = %msg, "heartbeat refused");
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat failed"),
        }
    }
}

/// Loads the last-known-good snapshot from the data dir, if any.
pub fn load_cached(shared: &Shared) -> Option<u64> {
    let path = shared.config.data_dir.join(disk::SNAPSHOT_FILE);
    let stored: StoredSnapshot = disk::read_json(&path)?;
    if stored.revision.environment != shared.identity.environment {
        tracing::warn!(path = %path.display(), "cached snapshot is for another environment; ignoring it");
        return None;
    }
    let n = stored.revision.revision;
    match shared.apply(stored.revision, Source::Cache, stored.received_ms) {
        Ok(_) => {
            tracing::info!(
                revision = n,
                "serving the last-known-good snapshot until the collector answers"
            );
            Some(n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cached snapshot rejected");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut LineSplitter) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(l) = s.next_line().unwrap() {
            out.push(l);
        }
        out
    }

    #[test]
    fn a_big_line_in_small_chunks_is_scanned_once() {
        // a 6 MB revision line, then a ping, arriving in 1 KiB chunks
        let mut stream = vec![b'{'; 6 << 20];
        stream.push(b'\n');
        stream.extend_from_slice(b"{\"ping\":1}\n{\"ping\":2}\n");
        let mut s = LineSplitter::new(MAX_LINE_BYTES);
        let mut lines = Vec::new();
        for chunk in stream.chunks(1024) {
            s.push(chunk);
            lines.extend(drain(&mut s));
        }
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), (6 << 20) + 1);
        assert_eq!(lines[2], b"{\"ping\":2}\n");
        // every byte looked at once (a rescan per chunk would be ~18 GB here)
        assert_eq!(s.scanned_bytes_total, stream.len() as u64);
    }

    #[test]
    fn lines_split_anywhere_come_out_whole() {
        let text = b"a\nbb\n\nccc\nd";
        for size in 1..text.len() {
            let mut s = LineSplitter::new(100);
            let mut got = Vec::new();
            for c in text.chunks(size) {
                s.push(c);
                got.extend(drain(&mut s));
            }
            assert_eq!(
                got,
                vec![
                    b"a\n".to_vec(),
                    b"bb\n".to_vec(),
                    b"\n".to_vec(),
                    b"ccc\n".to_vec()
                ],
                "chunk size {size}"
            );
            assert_eq!(s.scanned_bytes_total, text.len() as u64);
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused() {
        let mut s = LineSplitter::new(8);
        s.push(b"0123456789");
        assert_eq!(s.next_line(), Err(LineTooLong));
        let mut s = LineSplitter::new(8);
        s.push(b"ok\n0123456789\n");
        assert_eq!(s.next_line(), Ok(Some(b"ok\n".to_vec())));
        assert_eq!(s.next_line(), Err(LineTooLong));
    }
}
