//! Every SQL statement of the collector lives under this module, behind a
//! typed API. SQLite in WAL mode: one writer thread owns the only write
//! connection (mutations and their audit entries commit together there), and a
//! small pool of read connections serves queries. Callers on the async runtime
//! use [`Store::write`] and [`Store::read`], which run the closure off the
//! executor's worker threads.
//!
//! The writer survives a failing job: each job runs under `catch_unwind` (a
//! panic is a bug, but in debug and test builds it must not take every later
//! write down with it; release builds abort on panic, so the real defence is
//! that nothing panics), its caller gets an error and the writer goes on.
//! [`Store::health`] says whether writes work: it is what `/readyz` answers.
//! The database files are private (0600, data dir 0700).
//!
//! A [`Store`] is one database file. [`Store::open`] opens the main file
//! (`opsplane.db`, the control data); [`Store::open_aux`] opens a
//! capability's own file (`<name>.db`, bulk data) with its own writer
//! thread, readers and schema versions, so its writes never queue in front
//! of the main file's. Schema versions per capability: [`schema`].

pub mod agents;
pub mod approvals;
pub mod audit;
mod files;
pub mod flags;
pub mod killswitches;
pub mod schema;
pub mod sessions;
pub mod tokens;
pub mod users;

use files::{private_dir, private_file, restrict_db_files};
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

pub const DB_FILE: &str = "opsplane.db";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the store is shut down")]
    Closed,
    #[error("the write failed unexpectedly; see the collector log")]
    Aborted,
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The file was written by a newer collector: a capability at a version
    /// this binary does not know, or a capability it does not know at all
    /// (`known` is `None`). Nothing was changed; the binary exits with 2.
    #[error("{}", too_new_message(.file, .capability, .found, .known))]
    TooNew {
        file: PathBuf,
        capability: String,
        found: i64,
        known: Option<u32>,
    },
}

fn too_new_message(file: &Path, capability: &str, found: &i64, known: &Option<u32>) -> String {
    let knows = match known {
        Some(k) => format!("knows up to version {k}"),
        None => "does not know this capability".into(),
    };
    format!(
        "{} was written by a newer collector: {capability} is at version {found}, \
         this collector ({}) {knows}; run a newer opsplane-collector (the file was left unchanged)",
        file.display(),
        common::VERSION
    )
}

/// The exit code a binary gives for `e`: 2 for a database newer than the
/// binary (the operator must act, retrying will not help), else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    let too_new = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<StoreError>(),
            Some(StoreError::TooNew { .. })
        )
    });
    if too_new {
        2
    } else {
        1
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The writer's transaction, as capabilities name it (no `rusqlite` outside the store).
pub type Tx<'a> = rusqlite::Transaction<'a>;

/// What the writer learns from a job: whether the database took the write.
enum JobOutcome {
    /// Committed, or refused for a reason that says nothing about the disk.
    Fine,
    /// The database could not be written (disk full, read-only, I/O error...).
    StorageFailed(String),
    /// A health probe: changes nothing.
    Probe,
}

type WriteJob = Box<dyn FnOnce(&mut Connection) -> JobOutcome + Send>;

/// Whether the writer can write; read by `/readyz`.
#[derive(Default)]
struct WriterHealth {
    alive: AtomicBool,
    /// Why the last write failed, when it failed for a storage reason (or a
    /// panic); cleared by the next write that works.
    last_failure: Mutex<Option<String>>,
}

impl WriterHealth {
    fn record(&self, outcome: JobOutcome) {
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            JobOutcome::Fine => *last = None,
            JobOutcome::StorageFailed(why) => *last = Some(why),
            JobOutcome::Probe => {}
        }
    }
}

/// Whether an error means the database cannot be written at all (as
/// opposed to a refused or conflicting change).
fn storage_failure<T>(r: &Result<T>) -> JobOutcome {
    use rusqlite::ErrorCode as C;
    match r {
        Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, msg))) => match e.code {
            C::DiskFull
            | C::ReadOnly
            | C::SystemIoFailure
            | C::CannotOpen
            | C::DatabaseCorrupt
            | C::NotADatabase
            | C::PermissionDenied
            | C::DatabaseBusy
            | C::DatabaseLocked
            | C::OutOfMemory => JobOutcome::StorageFailed(format!(
                "the database cannot be written: {}",
                msg.clone().unwrap_or_else(|| e.to_string())
            )),
            _ => JobOutcome::Fine,
        },
        _ => JobOutcome::Fine,
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    write_tx: Mutex<Option<mpsc::Sender<WriteJob>>>,
    readers: Mutex<Vec<Connection>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    health: Arc<WriterHealth>,
}

const MAX_IDLE_READERS: usize = 8;

fn open_conn(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the main database in `data_dir`, the
    /// control data of every capability of [`schema::MAIN`], and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_file(data_dir, DB_FILE, schema::MAIN, flags::WRITER_THREAD.into())
    }

    /// Opens (creating if needed) a capability's own database file,
    /// `<name>.db` in `data_dir`, holding the capabilities of `registry`:
    /// its own writer thread, readers, WAL and schema versions, so bulk
    /// writes there never make a write to the main database wait (see
    /// ARCHITECTURE.md, "Store").
    pub fn open_aux(data_dir: &Path, name: &str, registry: schema::Registry) -> Result<Self> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && format!("{name}.db") != DB_FILE;
        if !valid {
            return Err(StoreError::Invalid(format!(
                "{name:?} cannot name a database file (lowercase letters, digits, _)"
            )));
        }
        Self::open_file(
            data_dir,
            &format!("{name}.db"),
            registry,
            format!("{}-{name}", flags::WRITER_THREAD),
        )
    }

    fn open_file(
        data_dir: &Path,
        file: &str,
        registry: schema::Registry,
        writer_name: String,
    ) -> Result<Self> {
        private_dir(data_dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(file);
        private_file(&path)
            .map_err(|e| StoreError::Invalid(format!("cannot create {}: {e}", path.display())))?;
        let mut conn = open_conn(&path, false)?;
        schema::migrate(&mut conn, &path, registry)?;
        restrict_db_files(&path);
        let health = Arc::new(WriterHealth::default());
        health.alive.store(true, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let h = health.clone();
        let handle = std::thread::Builder::new()
            .name(writer_name)
            .spawn(move || {
                /// Marks the writer gone however the loop ends.
                struct Alive(Arc<WriterHealth>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.alive.store(false, Ordering::SeqCst);
                    }
                }
                let _alive = Alive(h.clone());
                while let Ok(job) = rx.recv() {
                    let conn_ref = &mut conn;
                    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        job(conn_ref)
                    })) {
                        Ok(outcome) => h.record(outcome),
                        Err(_) => {
                            // the job's transaction rolled back as it unwound;
                            // its caller sees `StoreError::Aborted`
                            tracing::error!("a store write panicked; the writer goes on");
                            if !conn.is_autocommit() {
                                let _ = conn.execute_batch("ROLLBACK");
                            }
                            h.record(JobOutcome::StorageFailed(
                                "the last write failed unexpectedly (see the collector log)".into(),
                            ));
                        }
                    }
                }
                let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
            })
            .map_err(|e| StoreError::Invalid(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                write_tx: Mutex::new(Some(tx)),
                readers: Mutex::new(Vec::new()),
                writer_thread: Mutex::new(Some(handle)),
                health,
            }),
        })
    }

    /// Whether `data_dir` already holds an initialised database.
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(DB_FILE).exists()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` inside one transaction on the writer thread; commits when it
    /// returns `Ok`, rolls back otherwise.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.submit(Box::new(move |conn: &mut Connection| {
            let r = run_tx(conn, f);
            let outcome = storage_failure(&r);
            let _ = tx.send(r);
            outcome
        }))?;
        rx.await.map_err(|_| self.lost_job())?
    }

    /// Why a job's answer never came: it panicked (the writer lives on) or
    /// the writer is gone.
    fn lost_job(&self) -> StoreError {
        if self.inner.health.alive.load(Ordering::SeqCst) {
            StoreError::Aborted
        } else {
            StoreError::Closed
        }
    }

    /// `Ok` when writes work: the writer runs, answers within `timeout`, and
    /// the last write did not fail for a storage reason. `Err` says why not.
    pub async fn health(&self, timeout: std::time::Duration) -> std::result::Result<(), String> {
        if !self.inner.health.alive.load(Ordering::SeqCst) {
            return Err("the store's writer has stopped".into());
        }
        let (tx, rx) = oneshot::channel();
        // a no-op job: proves the writer takes jobs without writing anything
        if self
            .submit_raw(Box::new(move |_: &mut Connection| {
                let _ = tx.send(());
                JobOutcome::Probe
            }))
            .is_err()
        {
            return Err("the store is shut down".into());
        }
        match tokio::time::timeout(timeout, rx).await {
            // jobs run in order: every earlier write's outcome is recorded
            Ok(Ok(())) => {
                if let Some(why) = self
                    .inner
                    .health
                    .last_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                {
                    return Err(why);
                }
                Ok(())
            }
            Ok(Err(_)) => Err("the store's writer has stopped".into()),
            Err(_) => Err(format!(
                "the store's writer did not answer within {} ms",
                timeout.as_millis()
            )),
        }
    }

    /// Blocking variant of [`Store::write`] for non-async callers (init, tests).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.submit(Box::new(move |conn: &mut Connection| {
            let r = run_tx(conn, f);
            let outcome = storage_failure(&r);
            let _ = tx.send(r);
            outcome
        }))?;
        rx.recv().map_err(|_| self.lost_job())?
    }

    fn submit(&self, job: WriteJob) -> Result<()> {
        self.submit_raw(job)
    }

    fn submit_raw(&self, job: WriteJob) -> Result<()> {
        let guard = self
            .inner
            .write_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read_blocking(f))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    pub fn read_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T>,
    {
        let conn = {
            let mut pool = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            pool.pop()
        };
        let conn = match conn {
            Some(c) => c,
            None => open_conn(&self.inner.path, true)?,
        };
        let out = f(&conn);
        let mut pool = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    /// Stops the writer after the queued jobs ran, and checkpoints the WAL.
    pub fn close(&self) {
        self.inner
            .write_tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(h) = self
            .inner
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
        self.inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

fn run_tx<T>(
    conn: &mut Connection,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// Runs `f` inside a savepoint of `tx` and always rolls it back: the same
/// store functions that make a change compute what it would change (the
/// diff a four-eyes request shows) without leaving anything behind.
pub fn dry_run<T>(
    tx: &rusqlite::Transaction<'_>,
    f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
) -> Result<T> {
    tx.execute_batch("SAVEPOINT dry_run")?;
    let out = f(tx);
    tx.execute_batch("ROLLBACK TO dry_run; RELEASE dry_run")?;
    out
}

/// `rusqlite::OptionalExtension` re-exported for the submodules.
pub(crate) use rusqlite::OptionalExtension;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn count_rows(store: &Store) -> i64 {
        store
            .read_blocking(|c| {
                Ok(c.query_row("SELECT COUNT(*) FROM killswitch_decl", [], |r| r.get(0))?)
            })
            .unwrap()
    }

    fn declare(store: &Store, name: &'static str) -> Result<()> {
        store.write_blocking(move |tx| {
            killswitches::declare(tx, &crate::auth::Actor::system("system:test"), name, "d")
        })
    }

    #[tokio::test]
    async fn the_writer_survives_a_panicking_job_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r: Result<()> = store
            .write(|tx| {
                killswitches::declare(tx, &crate::auth::Actor::system("t"), "half", "d")?;
                panic!("a bug in a job");
            })
            .await;
        assert!(matches!(r, Err(StoreError::Aborted)), "{r:?}");
        // nothing of the panicking job stayed
        assert_eq!(count_rows(&store), 0);
        let health = store.health(Duration::from_secs(5)).await;
        assert!(health.is_err(), "the failed write shows in the health");
        // the writer goes on, and a write that works clears the health
        declare(&store, "after").unwrap();
        store
            .write(|tx| killswitches::declare(tx, &crate::auth::Actor::system("t"), "again", "d"))
            .await
            .unwrap();
        assert_eq!(count_rows(&store), 2);
        assert_eq!(store.health(Duration::from_secs(5)).await, Ok(()));
        store.close();
        assert!(store.health(Duration::from_secs(5)).await.is_err());
    }

    #[tokio::test]
    async fn a_full_database_shows_in_the_health() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // SQLite's own "database or disk is full": no page may be added
        store
            .write(|tx| {
                let pages: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                tx.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
                Ok(())
            })
            .await
            .unwrap();
        let mut failed = None;
        for i in 0..200 {
            let r = store.write_blocking(move |tx| {
                killswitches::declare(
                    tx,
                    &crate::auth::Actor::system("t"),
                    &format!("switch-{i}"),
                    &"x".repeat(2000),
                )
            });
            if let Err(e) = r {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("the full database refuses a write");
        assert!(e.to_string().contains("full"), "{e}");
        let why = store.health(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            why.contains("cannot be written") && why.contains("full"),
            "{why}"
        );
        store.close();
    }

    #[cfg(unix)]
    #[test]
    fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let store = Store::open(&data).unwrap();
        declare(&store, "x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for f in [DB_FILE, "opsplane.db-wal", "opsplane.db-shm"] {
            let p = data.join(f);
            assert!(p.exists(), "{f}");
            assert_eq!(mode(&p), 0o600, "{f}");
        }
        store.close();
        // an older, world-readable database is made private at open
        std::fs::set_permissions(data.join(DB_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = Store::open(&data).unwrap();
        assert_eq!(mode(&data.join(DB_FILE)), 0o600);
        assert_eq!(mode(&data), 0o700);
        store.close();
    }
}
