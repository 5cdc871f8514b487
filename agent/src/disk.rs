//! What the agent keeps in its data dir: the last-known-good revision, its
//! per-agent credential and the state its hooks last ran for. Every write goes
//! to a temporary file that is fsynced and renamed over the old one, so a
//! crash leaves either the old or the new file, never half of one.

use common::wire::Revision;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const SNAPSHOT_FILE: &str = "snapshot.json";
pub const CREDENTIAL_FILE: &str = "credential.json";
pub const HOOKS_FILE: &str = "hooks-state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub revision: Revision,
    pub received_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub agent_id: String,
    pub credential: String,
    pub collector_url: String,
}

/// Kill-switch name → the state (`true` = killed) its hooks last ran for.
pub type HookState = BTreeMap<String, bool>;

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // make the rename itself durable
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

pub fn write_json<T: Serialize>(path: &Path, v: &T, mode: u32) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    write_atomic(path, &bytes, mode)
}

/// Reads a JSON file; a file that does not parse is moved aside to
/// `NAME.corrupt` (kept for inspection) and reported as absent.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            let aside = path.with_extension("corrupt");
            tracing::warn!(path = %path.display(), error = %e, moved_to = %aside.display(), "ignoring unreadable state file");
            let _ = std::fs::rename(path, aside);
            None
        }
    }
}
