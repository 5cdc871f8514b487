//! Standalone mode: flags from a local flagd-format file, re-read when it
//! changes (polled by modification time, size and inode; cheap and immune to
//! editors that replace the file). A file that does not validate is logged
//! and the previous definitions stay in force; a file flagd would load with
//! problems (unknown operator, `$ref` to nothing, ...) is served, and each
//! problem is logged as a warning.

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
    let snap = shared
        .apply(rev, Source::File, common::time::now_ms())
        .map_err(|e| format!("{}: {}", path.display(), e.reason))?;
    for w in snap.flags.warnings() {
        tracing::warn!(path = %path.display(), problem = %w, "flag file loaded with a problem flagd also loads");
    }
    Ok(snap.revision)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, File};
    use common::config::ConfigSource;
    use std::io::Write;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_file_with_warnings_is_served_and_each_warning_logged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flags.json");
        std::fs::write(
            &path,
            r#"{"flags": {
                "ok": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"},
                "bad-op": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                           "targeting": {"invalid": [1]}},
                "bad-ref": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a",
                            "targeting": {"$ref": "nothing"}}
            }}"#,
        )
        .unwrap();
        let src = ConfigSource {
            file: "agent.toml".into(),
            text: format!(
                "service = \"web\"\nenvironment = \"prod\"\n[flags]\nfile = {:?}\n",
                path.display().to_string()
            ),
        };
        let file: File = src.parse().unwrap();
        let shared = Shared::new(Arc::new(Config::resolve(&src, file).unwrap()), None);
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let n = tracing::subscriber::with_default(subscriber, || load(&shared, &path, 1)).unwrap();
        assert_eq!(n, 1);
        let snap = shared.snapshot.load_full().unwrap();
        assert_eq!(snap.flags.len(), 3);
        let logged = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let warns: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warns.len(), 2, "{logged}");
        assert!(
            warns
                .iter()
                .any(|l| l.contains("bad-op") && l.contains("unknown operator")),
            "{logged}"
        );
        assert!(
            warns
                .iter()
                .any(|l| l.contains("bad-ref") && l.contains("nothing")),
            "{logged}"
        );
    }
}
