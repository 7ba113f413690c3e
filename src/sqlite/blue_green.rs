//! Blue/green rebuilds on SQLite: build the new read model in a shadow database file while
//! the current one keeps serving (and its live runner keeps running), then swap the two in one
//! transaction on the main database.
//!
//! Readers never see an empty or partial read model: SQLite's WAL gives each reader a snapshot,
//! so a reader sees the old tables until the swap commits and the new ones after. The swap
//! holds the write lock while it copies the shadow tables in (readers are not blocked).
//! A crash before the swap leaves the current version untouched; running the blue/green
//! rebuild again resumes the shadow from its checkpoint, and `abandon_blue_green` drops it. The
//! build itself is the core's ([`ShadowStore`]).

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::{params, Connection, TransactionBehavior};
use tracing::info;

use super::connect::configure;
use super::{db_err, format_time, Inner, SqliteStore};
use crate::core::error::{Error, Result};
use crate::core::shadow::{ShadowStore, Swapped};

fn shadow_path(main: &str, projection: &str) -> Result<PathBuf> {
    if main == ":memory:" {
        return Err(Error::Unsupported(
            "blue/green rebuilds need a database file, not an in-memory database".into(),
        ));
    }
    let safe: String = projection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(PathBuf::from(format!("{main}.shadow-{safe}")))
}

fn remove_database_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

impl ShadowStore for SqliteStore {
    /// The shadow is a database file beside the main one, `<main>.shadow-<projection>`.
    async fn open_shadow(&self, projection: &str) -> Result<(Self, bool)> {
        let path = shadow_path(self.location(), projection)?;
        let existed = path.exists();
        if !existed {
            info!(projection, shadow = %path.display(), "creating a blue/green shadow database");
        }
        Ok((SqliteStore::open(&path).await?, existed))
    }

    async fn swap_in<T, F>(&self, projection: &str, catch_up: F) -> Result<(T, Swapped)>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let shadow = shadow_path(self.location(), projection)?;
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let main = PathBuf::from(self.location());
        let name = projection.to_owned();
        let swapper = tokio::task::spawn_blocking(move || swap(&main, &shadow, &name, locked_tx, go_rx));
        let panicked = |e: tokio::task::JoinError| Error::task("the swap task", e);
        if locked_rx.await.is_err() {
            // The swapper failed before it held the lock; its error says why.
            return Err(swapper.await.map_err(panicked)?.err().unwrap_or(Error::Shutdown));
        }
        let caught_up = match catch_up.await {
            Ok(t) => {
                let _ = go_tx.send(true);
                t
            }
            Err(e) => {
                let _ = go_tx.send(false);
                let _ = swapper.await;
                return Err(e);
            }
        };
        let (swap_lock, tables) = swapper.await.map_err(panicked)??;
        Inner::bump(&self.inner.checkpoints);
        Ok((caught_up, Swapped { swap_lock, tables }))
    }

    /// Removes the shadow database's files.
    async fn drop_shadow(&self, projection: &str) -> Result<bool> {
        let path = shadow_path(self.location(), projection)?;
        let existed = path.exists();
        remove_database_files(&path);
        Ok(existed)
    }

    async fn shadow_exists(&self, projection: &str) -> Result<bool> {
        Ok(shadow_path(self.location(), projection).is_ok_and(|p| p.exists()))
    }
}

/// On its own connection to the main database: attaches the shadow, takes the write lock,
/// says so on `locked`, waits for `go`, then copies the shadow's read-model tables (with their
/// indexes) over the main ones and moves the checkpoint, counters and dead letters, all in one
/// transaction. Returns how long it held the write lock and the tables swapped.
fn swap(
    main: &std::path::Path,
    shadow: &std::path::Path,
    projection: &str,
    locked: tokio::sync::oneshot::Sender<()>,
    go: std::sync::mpsc::Receiver<bool>,
) -> Result<(Duration, Vec<String>)> {
    let err = db_err("swapping in the rebuilt read model");
    let shadow_str = shadow
        .to_str()
        .ok_or_else(|| Error::Unsupported(format!("shadow path {} is not UTF-8", shadow.display())))?;
    let mut conn = Connection::open(main).map_err(&err)?;
    configure(&conn, super::memory::WRITER_CACHE_PAGES)?;
    conn.execute("ATTACH DATABASE ?1 AS shadow", [shadow_str])
        .map_err(&err)?;
    let out: Result<(Duration, Vec<String>)> = (|| {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(&err)?;
        // A deferred transaction, then a write on `main` only: BEGIN IMMEDIATE would also lock
        // the attached shadow, which the final catch-up still has to write.
        tx.execute(
            "INSERT OR IGNORE INTO main.projection_checkpoints (projection, partition) VALUES (?1, 0)",
            [projection],
        )
        .map_err(&err)?;
        tx.execute(
            "UPDATE main.projection_checkpoints SET updated_at = updated_at WHERE projection = ?1",
            [projection],
        )
        .map_err(&err)?;
        let locked_at = Instant::now();
        let _ = locked.send(());
        if !go.recv().unwrap_or(false) {
            return Err(Error::Shutdown);
        }
        let mut st = tx
            .prepare(
                "SELECT type, name, sql FROM shadow.sqlite_master
                 WHERE sql IS NOT NULL AND type IN ('table', 'index') AND name NOT LIKE 'sqlite_%'
                   AND tbl_name NOT IN ('events', 'projection_checkpoints', 'projection_dead_letters',
                                        'projection_seen_events', 'projection_leases',
                                        'projection_nodes', 'sqlite_sequence')
                 ORDER BY type = 'index', rowid",
            )
            .map_err(&err)?;
        let objects: Vec<(String, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(&err)?;
        drop(st);
        let mut tables = Vec::new();
        for (kind, name, sql) in &objects {
            let quoted = crate::core::document::quote_ident(name);
            if kind == "table" {
                tx.execute_batch(&format!("DROP TABLE IF EXISTS main.{quoted};"))
                    .map_err(&err)?;
                tx.execute_batch(sql).map_err(&err)?;
                tx.execute_batch(&format!(
                    "INSERT INTO main.{quoted} SELECT * FROM shadow.{quoted};"
                ))
                .map_err(&err)?;
                tables.push(name.clone());
            } else {
                tx.execute_batch(&format!("DROP INDEX IF EXISTS main.{quoted};"))
                    .map_err(&err)?;
                tx.execute_batch(sql).map_err(&err)?;
            }
        }
        // The checkpoint, counters and state of the new version.
        let now = format_time(Utc::now());
        tx.execute(
            "INSERT OR IGNORE INTO main.projection_checkpoints (projection, partition) VALUES (?1, 0)",
            [projection],
        )
        .map_err(&err)?;
        tx.execute(
            "UPDATE main.projection_checkpoints AS m SET txid = s.txid, position = s.position, applied = s.applied,
                 ignored = s.ignored, errors = s.errors, last_error = s.last_error, state = 'running',
                 reason = NULL, updated_at = ?2
             FROM shadow.projection_checkpoints AS s
             WHERE m.projection = ?1 AND s.projection = ?1 AND m.partition = s.partition",
            params![projection, now],
        )
        .map_err(&err)?;
        tx.execute(
            "DELETE FROM main.projection_dead_letters WHERE projection = ?1",
            [projection],
        )
        .map_err(&err)?;
        tx.execute(
            "INSERT INTO main.projection_dead_letters (projection, partition, position, txid, stream_id, stream_version,
                 event_type, event_id, data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at)
             SELECT projection, partition, position, txid, stream_id, stream_version, event_type, event_id, data,
                 metadata, recorded_at, error, attempts, first_failed_at, last_failed_at
             FROM shadow.projection_dead_letters WHERE projection = ?1",
            [projection],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok((locked_at.elapsed(), tables))
    })();
    let detached = conn.execute("DETACH DATABASE shadow", []);
    let out = out?;
    detached.map_err(&err)?;
    Ok(out)
}
