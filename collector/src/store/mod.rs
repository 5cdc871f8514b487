//! Every SQL statement of the collector lives under this module, behind a
//! typed API. SQLite in WAL mode: one writer thread owns the only write
//! connection (mutations and their audit entries commit together there), and a
//! small pool of read connections serves queries. Callers on the async runtime
//! use [`Store::write`] and [`Store::read`], which run the closure off the
//! executor's worker threads.

pub mod agents;
pub mod approvals;
pub mod audit;
pub mod flags;
pub mod killswitches;
pub mod schema;
pub mod sessions;
pub mod tokens;
pub mod users;

use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
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
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

type WriteJob = Box<dyn FnOnce(&mut Connection) + Send>;

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
    /// Opens (creating if needed) the database in `data_dir` and migrates it.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Invalid(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DB_FILE);
        let mut conn = open_conn(&path, false)?;
        schema::migrate(&mut conn)?;
        let (tx, rx) = mpsc::channel::<WriteJob>();
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
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
            let _ = tx.send(run_tx(conn, f));
        }))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Blocking variant of [`Store::write`] for non-async callers (init, tests).
    pub fn write_blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.submit(Box::new(move |conn: &mut Connection| {
            let _ = tx.send(run_tx(conn, f));
        }))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn submit(&self, job: WriteJob) -> Result<()> {
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
