//! A projection's lifecycle on the store: prepare (setup and checkpoint row), reset, run
//! state, and reading checkpoint records.

use std::sync::Arc;

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::rows::{format_time, record_from_row, RECORD_COLUMNS};
use super::{db_err, Inner, SqliteBody, SqliteStore};
use crate::core::error::{Error, HandlerError, Result};
use crate::core::store::{ProjectionRecord, RunState};

pub(super) fn load_record(
    conn: &Connection,
    name: &str,
    partition: u32,
) -> rusqlite::Result<Option<ProjectionRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM projection_checkpoints c WHERE c.projection = ?1 AND c.partition = ?2"
    ))?
    .query_row(params![name, partition], record_from_row)
    .optional()
}

pub(super) fn lifecycle<'a>(projection: &'a str, step: &'static str) -> impl Fn(HandlerError) -> Error + 'a {
    move |e| Error::Lifecycle {
        projection: projection.to_owned(),
        step,
        message: e.to_string(),
    }
}

impl SqliteStore {
    /// Every checkpoint record (`Store::records`).
    pub(super) async fn load_records(&self) -> Result<Vec<ProjectionRecord>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM projection_checkpoints c ORDER BY c.projection, c.partition"
            ))?;
            let rows = st.query_map([], record_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Runs the body's `setup` and makes sure the checkpoint row exists (`Store::prepare`).
    pub(super) async fn prepare_projection(
        &self,
        name: &str,
        partition: u32,
        body: Arc<SqliteBody>,
    ) -> Result<ProjectionRecord> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err("beginning setup"))?;
            body.setup(&tx).map_err(lifecycle(&name, "setup"))?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO projection_checkpoints (projection, partition) VALUES (?1, ?2)",
            )
            .and_then(|mut st| st.execute(params![name, partition]))
            .map_err(db_err("creating the checkpoint"))?;
            let record = load_record(&tx, &name, partition).map_err(db_err("reading the checkpoint"))?;
            tx.commit().map_err(db_err("committing setup"))?;
            record.ok_or_else(|| Error::Internal(format!("checkpoint of {name} vanished during setup")))
        })
        .await
    }

    /// Runs the body's `setup` (which prepares its statements), then rolls back
    /// (`Store::check_setup`).
    pub(super) async fn check_projection_setup(&self, name: &str, body: Arc<SqliteBody>) -> Result<()> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err("beginning a checked setup"))?;
            body.setup(&tx).map_err(lifecycle(&name, "setup"))?;
            tx.rollback().map_err(db_err("rolling back a checked setup"))
        })
        .await
    }

    /// Runs the body's `reset` and rewinds the checkpoint (`Store::reset`).
    pub(super) async fn reset_projection(&self, name: &str, body: Arc<SqliteBody>) -> Result<()> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err("beginning a reset"))?;
            body.reset(&tx).map_err(lifecycle(&name, "reset"))?;
            let err = db_err("resetting the checkpoint");
            tx.execute(
                "UPDATE projection_checkpoints SET txid = 0, position = 0, applied = 0, ignored = 0, errors = 0, \
                 events_per_second = 0, last_error = NULL, state = 'rebuilding', reason = 'rebuild in progress', \
                 updated_at = ?2 WHERE projection = ?1",
                params![name, format_time(Utc::now())],
            )
            .map_err(&err)?;
            tx.execute("DELETE FROM projection_dead_letters WHERE projection = ?1", [&name]).map_err(&err)?;
            tx.execute("DELETE FROM projection_seen_events WHERE projection = ?1", [&name]).map_err(&err)?;
            tx.commit().map_err(db_err("committing a reset"))?;
            Ok(())
        })
        .await?;
        Inner::bump(&self.inner.checkpoints);
        Ok(())
    }

    /// Sets the run state of one partition or all (`Store::set_state`).
    pub(super) async fn set_run_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> Result<()> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err("beginning a state change"))?;
            let err = db_err("changing the projection state");
            tx.execute(
                "INSERT OR IGNORE INTO projection_checkpoints (projection, partition) VALUES (?1, ?2)",
                params![name, partition.unwrap_or(0)],
            )
            .map_err(&err)?;
            tx.execute(
                "UPDATE projection_checkpoints SET state = ?2, reason = ?3, updated_at = ?5 \
                 WHERE projection = ?1 AND (?4 IS NULL OR partition = ?4)",
                params![name, state.as_str(), reason, partition, format_time(Utc::now())],
            )
            .map_err(&err)?;
            tx.commit().map_err(db_err("committing a state change"))?;
            Ok(())
        })
        .await?;
        Inner::bump(&self.inner.checkpoints);
        Ok(())
    }
}
