//! The revision stream: one connection of `GET /v1/agent/stream?since=N`,
//! read line by line; each revision is applied whole (or rejected whole) and
//! handed to the persist-then-ack loop, each ping confirms a cached snapshot.

use super::cache::confirm_cached;
use super::{error_code, Backoff, Ctx, StreamEnd};
use crate::disk::Credential;
use crate::metrics::Metrics;
use crate::state::{Snapshot, Source};
use common::wire::{self, StreamEvent};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A stream silent for this long is considered dead (the collector pings every 10 s).
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(35);
/// Longest accepted stream line (one whole revision).
pub const MAX_LINE_BYTES: usize = 64 << 20;

pub(super) async fn stream_once(
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
            (_, wire::PROTOCOL_MISMATCH) => {
                StreamEnd::Incompatible(format!("stream refused ({status} {code}): {msg}"))
            }
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
