//! Opening a database: connection settings, the engine's tables, and the background WAL
//! checkpointer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;

use super::{db_err, memory, Inner, SqliteStore, DEFAULT_DEDUP_RETENTION, SCHEMA};
use crate::core::error::{Error, Result};

/// Adds what to check to an error that says SQLite cannot open or write the file: it is almost
/// always a missing folder or a permission (SQLite also creates `FILE-wal` and `FILE-shm`
/// beside the database, so the folder must be writable too).
fn with_permission_hint(e: Error, location: &str) -> Error {
    match e {
        Error::Database {
            op,
            mut message,
            retryable,
            cause,
        } => {
            let code = cause
                .as_deref()
                .and_then(|c| c.downcast_ref::<rusqlite::Error>())
                .and_then(rusqlite::Error::sqlite_error_code);
            if matches!(
                code,
                Some(
                    rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::ReadOnly
                        | rusqlite::ErrorCode::PermissionDenied
                )
            ) {
                message.push_str(&format!(
                    "; check that the file {location} and its folder exist and that this user may read and \
                     write both (SQLite creates {location}-wal and {location}-shm beside the file)"
                ));
            }
            Error::Database {
                op,
                message,
                retryable,
                cause,
            }
        }
        other => other,
    }
}

/// Sets up a connection: WAL, a busy timeout, and no automatic checkpoints (a background
/// thread checkpoints instead, so that no writer's commit pays for copying the WAL into the
/// database file; see `spawn_checkpointer`).
pub(super) fn configure(conn: &Connection, cache_pages: usize) -> Result<()> {
    let err = db_err("configuring the connection");
    conn.busy_timeout(Duration::from_secs(30)).map_err(&err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        tracing::warn!(mode, "SQLite did not switch to WAL mode");
    }
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;",
    )
    .map_err(&err)?;
    conn.pragma_update(None, "cache_size", cache_pages)
        .map_err(&err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// How often the background checkpointer looks for new writes.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints the WAL into the database file from its own thread and connection, after
/// writes, in PASSIVE mode (it never blocks readers or writers). It stops once the store is
/// dropped; SQLite also checkpoints when the last connection closes.
fn spawn_checkpointer(path: std::path::PathBuf, inner: std::sync::Weak<Inner>) {
    let spawned = std::thread::Builder::new().name("projectionist-sqlite-checkpoint".into()).spawn(move || {
        let conn = match Connection::open(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the checkpoint connection; the WAL is checkpointed when the database closes");
                return;
            }
        };
        let _ = conn.busy_timeout(Duration::from_millis(100));
        let mut seen = (u64::MAX, u64::MAX);
        loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            let Some(inner) = inner.upgrade() else { return };
            let now = (*inner.changes.borrow(), *inner.checkpoints.borrow());
            drop(inner);
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "WAL checkpoint did not run; retrying later");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the checkpoint thread");
    }
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and creates the engine's tables.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| Error::task("opening the database", e))?
    }

    /// [`open`](Self::open), for code that is not async.
    pub fn open_blocking(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        let hint = |e| with_permission_hint(e, &location);
        let open = |what: &'static str| {
            Connection::open(path).map_err(|e| Error::Database {
                op: what,
                message: format!("cannot open SQLite database {location}: {e}"),
                retryable: false,
                cause: Some(Box::new(e)),
            })
        };
        let writer = open("opening the database").map_err(hint)?;
        configure(&writer, memory::WRITER_CACHE_PAGES).map_err(hint)?;
        writer
            .execute_batch(SCHEMA)
            .map_err(db_err("creating the engine's tables"))
            .map_err(hint)?;
        let reader = open("opening the database for reads").map_err(hint)?;
        configure(&reader, memory::READER_CACHE_PAGES).map_err(hint)?;
        let store = Self::from_connections(location, writer, Some(reader));
        spawn_checkpointer(path.to_path_buf(), Arc::downgrade(&store.inner));
        Ok(store)
    }

    /// A private in-memory database (for tests and examples).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(db_err("opening an in-memory database"))?;
        configure(&conn, memory::WRITER_CACHE_PAGES)?;
        conn.execute_batch(SCHEMA)
            .map_err(db_err("creating the engine's tables"))?;
        Ok(Self::from_connections(":memory:".into(), conn, None))
    }

    fn from_connections(location: String, writer: Connection, reader: Option<Connection>) -> Self {
        SqliteStore {
            inner: Arc::new(Inner {
                location,
                writer: Mutex::new(writer),
                reader: reader.map(Mutex::new),
                changes: watch::channel(0).0,
                checkpoints: watch::channel(0).0,
                dedup_retention: AtomicU64::new(DEFAULT_DEDUP_RETENTION.as_secs()),
                last_prune: AtomicI64::new(0),
                pruning: AtomicBool::new(false),
            }),
        }
    }
}
