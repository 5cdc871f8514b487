//! The database files are private: data dir 0700 (unless it is a shared
//! sticky folder), database, WAL and shared-memory files 0600.

use std::path::{Path, PathBuf};

/// Creates `dir` (and parents) and makes it private (0700) when we created
/// it or it is open to others (a sticky shared folder such as /tmp is left
/// alone: chmod-ing it would break the machine; the files inside are private).
pub(super) fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 && mode & 0o1000 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates the database file as 0600 before SQLite opens it (SQLite gives
/// the WAL and shared-memory files the database file's mode).
pub(super) fn private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
    }
    Ok(())
}

/// Makes the database, WAL and shared-memory files 0600 (a database created
/// by an older version may be world-readable).
pub(super) fn restrict_db_files(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", path.display()));
            if p.exists() {
                if let Err(e) = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                {
                    tracing::warn!(error = %e, path = %p.display(), "cannot make a database file private");
                }
            }
        }
    }
}
