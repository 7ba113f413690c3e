//! Blue/green rebuilds on SQLite: build the new read model in a shadow database file while
//! the current one keeps serving (and its live runner keeps running), then swap the two in one
//! transaction on the main database.
//!
//! Readers never see an empty or partial read model: SQLite's WAL gives each reader a snapshot,
//! so a reader sees the old tables until the swap commits and the new ones after. The swap
//! holds the write lock while it copies the shadow tables in (readers are not blocked).
//! A crash before the swap leaves the current version untouched; running the blue/green
//! rebuild again resumes the shadow from its checkpoint, and `abandon_blue_green` drops it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rusqlite::{params, Connection, TransactionBehavior};
use tracing::info;

use super::connect::configure;
use super::{db_err, format_time, SqliteEngine, SqliteStore};
use crate::core::error::{Error, Result};
use crate::core::runner::{Mode, ProgressFn};
pub use crate::core::shadow::BlueGreenReport;
use crate::core::shadow::{build_shadow, shadow_catch_up};
use crate::core::source::Source;
use crate::core::store::{RunState, Store};

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

impl SqliteEngine {
    /// Rebuilds `name` blue/green: the new version is built in a shadow database while the
    /// current one keeps serving, then the two are swapped in one transaction and the shadow
    /// is dropped. Resumes an interrupted shadow build. Fails fast on the first failing event
    /// (the current version stays untouched).
    pub async fn rebuild_blue_green(
        &self,
        name: &str,
        progress: Option<ProgressFn>,
    ) -> Result<BlueGreenReport> {
        let started = Instant::now();
        let projection = self.projection(name)?.clone();
        let main = self.store().clone();
        let path = shadow_path(main.location(), name)?;
        let resuming = path.exists();
        let shadow = SqliteStore::open(&path).await?;
        let record = shadow.prepare(name, 0, projection.body().clone()).await?;
        if resuming && record.state == RunState::Rebuilding {
            info!(projection = name, checkpoint = %record.checkpoint, "resuming a blue/green shadow build");
        } else {
            info!(projection = name, shadow = %path.display(), "starting a blue/green shadow build");
            shadow.reset(name, projection.body().clone()).await?;
        }

        // Build to the head, then chase the head while appends keep coming, until the rest is
        // less than a batch (the live runner takes over from the swapped checkpoint).
        let source = self.source().clone();
        let shadow = Arc::new(shadow);
        let settings = self.runner_settings();
        let (mut events, _) = build_shadow(&source, &shadow, &projection, settings, progress.clone()).await?;
        let checkpoint;

        // Swap in one transaction on the main database. The swap takes the write lock first,
        // so no event can commit after the shadow's final catch-up: the new version goes in at
        // exactly the head, never behind what the live version already showed.
        let (locked_tx, locked_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<bool>();
        let main_path = PathBuf::from(main.location());
        let (shadow_file, name_owned) = (path.clone(), name.to_owned());
        let swapper = tokio::task::spawn_blocking(move || {
            swap(&main_path, &shadow_file, &name_owned, locked_tx, go_rx)
        });
        if locked_rx.await.is_err() {
            // The swapper failed before it held the lock; its error says why.
            return Err(swapper
                .await
                .map_err(|e| Error::task("the swap task", e))?
                .err()
                .unwrap_or(Error::Shutdown));
        }
        let final_catch_up = async {
            let target = source.head().await?;
            let mode = Mode::ToHead {
                target,
                progress: progress.clone(),
            };
            shadow_catch_up(&source, &shadow, &projection, settings, mode).await
        };
        match final_catch_up.await {
            Ok(report) => {
                events += report.events;
                checkpoint = report.checkpoint;
                let _ = go_tx.send(true);
            }
            Err(e) => {
                let _ = go_tx.send(false);
                let _ = swapper.await;
                return Err(e);
            }
        }
        let (swap_lock, tables) = swapper.await.map_err(|e| Error::task("the swap task", e))??;
        drop(shadow);
        remove_database_files(&path);
        crate::sqlite::Inner::bump(&main.inner.checkpoints);
        info!(projection = name, ?swap_lock, ?tables, "blue/green swap done");
        Ok(BlueGreenReport {
            projection: name.to_owned(),
            events,
            checkpoint,
            seconds: started.elapsed().as_secs_f64(),
            swap_lock,
            tables,
        })
    }

    /// Drops an interrupted blue/green shadow build of `name`. Returns whether there was one.
    /// The current version was never touched.
    pub async fn abandon_blue_green(&self, name: &str) -> Result<bool> {
        self.projection(name)?;
        let path = shadow_path(self.store().location(), name)?;
        let existed = path.exists();
        remove_database_files(&path);
        Ok(existed)
    }

    /// Whether a blue/green shadow build of `name` exists (an interrupted or running one).
    pub fn blue_green_in_progress(&self, name: &str) -> bool {
        shadow_path(self.store().location(), name).is_ok_and(|p| p.exists())
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
    let shadow_str = shadow.to_str().ok_or_else(|| {
        Error::Unsupported(format!(
            "shadow path {} is not UTF-8, which SQLite cannot attach; move the database to a UTF-8 path",
            shadow.display()
        ))
    })?;
    let mut conn = Connection::open(main).map_err(&err)?;
    configure(&conn)?;
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
                                        'projection_seen_events', 'sqlite_sequence')
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
