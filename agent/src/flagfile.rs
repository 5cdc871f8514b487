//! Standalone mode: flags from a local flagd-format file, re-read when it
//! changes (polled by modification time, size and inode; cheap and immune to
//! editors that replace the file). A file that does not validate is logged
//! and the previous definitions stay in force.

use crate::state::{Shared, Source};
use common::wire::Revision;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

type Stamp = (i64, i64, u64, u64);

fn stamp(path: &PathBuf) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.len(), m.ino()))
}

/// Loads the file once; returns whether a snapshot was applied.
pub fn load(shared: &Shared, path: &PathBuf, revision: u64) -> Result<u64, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let flags: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{}:{}:{}: invalid JSON: {e}",
            path.display(),
            e.line(),
            e.column()
        )
    })?;
    let rev = Revision {
        revision,
        environment: shared.identity.environment.clone(),
        created_ms: common::time::now_ms(),
        flags,
        killswitches: Vec::new(),
    };
    shared
        .apply(rev, Source::File, common::time::now_ms())
        .map(|s| s.revision)
        .map_err(|e| format!("{}: {}", path.display(), e.reason))
}

pub async fn watch(shared: Arc<Shared>, path: PathBuf, shutdown: CancellationToken) {
    let mut last = stamp(&path);
    let mut revision = shared
        .snapshot
        .load()
        .as_ref()
        .map(|s| s.revision)
        .unwrap_or(0);
    let mut tick = tokio::time::interval(shared.config.flags_poll);
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = shutdown.cancelled() => return,
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        if now.is_none() {
            tracing::warn!(path = %path.display(), "flag file is gone; keeping the flags in force");
            continue;
        }
        let (s, p, next) = (shared.clone(), path.clone(), revision + 1);
        match tokio::task::spawn_blocking(move || load(&s, &p, next)).await {
            Ok(Ok(n)) => {
                revision = n;
                tracing::info!(path = %path.display(), revision = n, "flag file reloaded");
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "flag file rejected; the previous flags stay in force")
            }
            Err(e) => tracing::error!(error = %e, "flag file loader failed"),
        }
    }
}
