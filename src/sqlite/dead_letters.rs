//! Dead letters: listing, discarding and retrying them.

use std::sync::Arc;

use chrono::Utc;
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::rows::{dead_letter_from_row, format_time, DEAD_LETTER_COLUMNS};
use super::{db_err, Inner, SqliteBody, SqliteStore};
use crate::core::error::{BatchFailure, Error, HandlerError, Result};
use crate::core::store::DeadLetter;

impl SqliteStore {
    /// The dead letters of one projection or all (`Store::dead_letters`).
    pub(super) async fn list_dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        let projection = projection.map(str::to_owned);
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM projection_dead_letters WHERE (?1 IS NULL OR projection = ?1) ORDER BY id"
            ))?;
            let rows = st.query_map([projection], dead_letter_from_row)?;
            rows.collect()
        })
        .await
    }

    /// Deletes one dead letter (`Store::discard_dead_letter`).
    pub(super) async fn discard_one_dead_letter(&self, id: i64) -> Result<()> {
        let n = self
            .write(move |tx| tx.execute("DELETE FROM projection_dead_letters WHERE id = ?1", [id]))
            .await?;
        if n == 0 {
            return Err(Error::UnknownDeadLetter(id));
        }
        Ok(())
    }

    /// Applies one dead letter again; on success it is deleted, on failure its attempt is
    /// counted (`Store::retry_dead_letter`).
    pub(super) async fn retry_one_dead_letter(
        &self,
        id: i64,
        body: Arc<SqliteBody>,
    ) -> Result<Result<(), HandlerError>> {
        let out = self
            .blocking(move |inner| {
                let mut conn = inner.writer();
                let now = format_time(Utc::now());
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err("beginning a retry"))?;
                let dl = tx
                    .prepare_cached(&format!("SELECT {DEAD_LETTER_COLUMNS} FROM projection_dead_letters WHERE id = ?1"))
                    .and_then(|mut st| st.query_row([id], dead_letter_from_row).optional())
                    .map_err(db_err("reading the dead letter"))?
                    .ok_or(Error::UnknownDeadLetter(id))?;
                let err = db_err("retrying a dead letter");
                match body.apply(&tx, std::slice::from_ref(&dl.event)) {
                    Ok(applied) => {
                        tx.execute("DELETE FROM projection_dead_letters WHERE id = ?1", [id]).map_err(&err)?;
                        // The failure is resolved: it leaves the error count, and once none of the
                        // partition's dead letters remain, so do the count and the last error.
                        tx.execute(
                            "UPDATE projection_checkpoints SET applied = applied + ?3, ignored = ignored + ?4, updated_at = ?5, \
                             errors = CASE WHEN EXISTS (SELECT 1 FROM projection_dead_letters d \
                                 WHERE d.projection = ?1 AND d.partition = ?2) THEN max(errors - 1, 0) ELSE 0 END, \
                             last_error = CASE WHEN EXISTS (SELECT 1 FROM projection_dead_letters d \
                                 WHERE d.projection = ?1 AND d.partition = ?2) THEN last_error END \
                             WHERE projection = ?1 AND partition = ?2",
                            params![dl.projection, dl.partition, applied.handled as i64, applied.ignored as i64, now],
                        )
                        .map_err(&err)?;
                        tx.commit().map_err(db_err("committing a retry"))?;
                        Ok(Ok(()))
                    }
                    Err(BatchFailure { error, .. }) => {
                        drop(tx);
                        conn.execute(
                            "UPDATE projection_dead_letters SET attempts = attempts + 1, error = ?2, last_failed_at = ?3 WHERE id = ?1",
                            params![id, error.to_string(), now],
                        )
                        .map_err(&err)?;
                        Ok(Err(error))
                    }
                }
            })
            .await?;
        Inner::bump(&self.inner.checkpoints);
        Ok(out)
    }
}
