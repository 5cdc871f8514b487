//! The last-known-good snapshot on disk: loaded at start (before any
//! listener answers), confirmed by the collector's first ping when it is
//! still current, and written before each acknowledgement.

use super::Ctx;
use crate::disk::{self, Credential, StoredSnapshot};
use crate::state::{Shared, Snapshot, Source};
use common::wire::{self, Ack};
use std::sync::Arc;
use tokio::sync::watch;

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

/// The collector says `latest` is current: a snapshot served from the cache
/// with that number is now confirmed, so it counts as the collector's again.
pub(super) fn confirm_cached(shared: &Shared, latest: u64, now: i64) {
    let snap = shared.snapshot.load_full();
    if let Some(s) = snap.filter(|s| s.source == Source::Cache && s.revision == latest) {
        // already compiled when it was loaded: only its label changes
        shared.relabel(&s, Source::Collector, now);
        tracing::info!(revision = latest, "cached snapshot confirmed current");
    }
}

/// Writes each applied snapshot to disk, then acknowledges it. Coalesces:
/// when revisions arrive faster than the disk, only the newest is written.
pub(super) async fn persist_and_ack(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, File};
    use common::config::ConfigSource;

    fn shared() -> Shared {
        let src = ConfigSource {
            file: "agent.toml".into(),
            text: "service = \"web\"\nenvironment = \"prod\"\n[collector]\nurl = \"http://127.0.0.1:1\"\n"
                .into(),
        };
        let file: File = src.parse().unwrap();
        Shared::new(Arc::new(Config::resolve(&src, file).unwrap()), None)
    }

    /// A ping naming the cached revision confirms it without compiling it again.
    #[test]
    fn confirming_the_cached_snapshot_keeps_its_compiled_flags() {
        let s = shared();
        let rev = wire::Revision {
            revision: 4,
            environment: "prod".into(),
            created_ms: 0,
            flags: serde_json::json!({"flags": {"f": {"state": "ENABLED",
                "variants": {"on": true}, "defaultVariant": "on"}}}),
            killswitches: Vec::new(),
        };
        let cached = s.apply(rev, Source::Cache, 1).unwrap();
        confirm_cached(&s, 3, 5);
        assert_eq!(
            s.snapshot.load().as_ref().unwrap().source,
            Source::Cache,
            "another revision is not confirmed"
        );
        confirm_cached(&s, 4, 5);
        let now = s.snapshot.load_full().unwrap();
        assert_eq!(now.source, Source::Collector);
        assert_eq!(now.received_ms, 5);
        assert!(Arc::ptr_eq(&now.flags, &cached.flags), "compiled again");
        assert_eq!(
            s.metrics
                .revisions_applied
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
