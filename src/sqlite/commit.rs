//! Committing a batch: the checkpoint's compare-and-set, the events, seen ids, dead letters
//! and counters, in one write transaction.

use chrono::Utc;
use rusqlite::{params, Connection, TransactionBehavior};

use super::lifecycle::load_record;
use super::rows::format_time;
use super::seen::record_seen;
use super::{db_err, Inner, SqliteBody, SqliteStore};
use crate::core::error::{BatchFailure, Error};
use crate::core::store::{Commit, CommitError, NewDeadLetter};

impl SqliteStore {
    /// Commits a batch on a blocking thread (`Store::commit`).
    pub(super) async fn commit_sqlite(&self, commit: Commit<SqliteBody>) -> Result<(), CommitError> {
        let inner = self.inner.clone();
        let records_ids = !commit.record_ids.is_empty();
        let res = tokio::task::spawn_blocking(move || commit_blocking(&inner, commit))
            .await
            .map_err(|e| CommitError::Store(Error::task("a commit task", e)))?;
        if res.is_ok() {
            Inner::bump(&self.inner.checkpoints);
            if records_ids {
                self.maybe_prune();
            }
        }
        res
    }
}

fn commit_blocking(inner: &Inner, c: Commit<SqliteBody>) -> Result<(), CommitError> {
    let mut conn = inner.writer();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err("beginning a batch"))?;
    commit_in(&tx, &c)?;
    tx.commit().map_err(db_err("committing a batch"))?;
    Ok(())
}

/// The body of a commit, inside an open write transaction: compare-and-set the checkpoint,
/// apply the events, record dead letters, update the counters.
pub(super) fn commit_in(tx: &Connection, c: &Commit<SqliteBody>) -> Result<(), CommitError> {
    let now = format_time(Utc::now());
    let err = db_err("moving the checkpoint");
    let moved = tx
        .prepare_cached(
            "UPDATE projection_checkpoints SET txid = ?3, position = ?4, updated_at = ?7 \
             WHERE projection = ?1 AND partition = ?2 AND txid = ?5 AND position = ?6 \
             AND state IN ('running', 'rebuilding')",
        )
        .and_then(|mut st| {
            st.execute(params![
                &*c.projection,
                c.partition,
                c.to.txid,
                c.to.position,
                c.expected.txid,
                c.expected.position,
                now
            ])
        })
        .map_err(&err)?;
    if let Some(fence) = &c.fence {
        // After the compare-and-set, as on PostgreSQL: a runner that lost both its checkpoint
        // and its lease hears of the checkpoint.
        if moved > 0 {
            super::lease::check_fence(tx, &c.projection, c.partition, fence)?;
        }
    }
    if moved == 0 {
        let record = load_record(tx, &c.projection, c.partition).map_err(&err)?;
        return Err(match record {
            None => CommitError::Store(Error::InvalidInput(format!(
                "projection {} partition {} has no checkpoint; prepare it first",
                c.projection, c.partition
            ))),
            Some(r) if !r.state.is_active() => CommitError::NotActive { state: r.state },
            Some(r) => CommitError::Fenced { actual: r.checkpoint },
        });
    }
    if !c.record_ids.is_empty() {
        record_seen(tx, &c.projection, &c.record_ids, Utc::now().timestamp())?;
    }
    let mut applied = crate::core::projection::Applied::default();
    if !c.range.is_empty() {
        let events = c.events.get(c.range.clone()).ok_or_else(|| {
            CommitError::Store(Error::InvalidInput(format!(
                "commit range {:?} is outside its {} events",
                c.range,
                c.events.len()
            )))
        })?;
        applied = c.body.apply(tx, events).map_err(|f| {
            CommitError::Handler(BatchFailure {
                index: c.range.start + f.index,
                error: f.error,
            })
        })?;
    }
    for dl in &c.dead_letters {
        insert_dead_letter(tx, &c.projection, c.partition, dl, &now)
            .map_err(db_err("recording a dead letter"))?;
    }
    tx.prepare_cached(
        "UPDATE projection_checkpoints SET applied = applied + ?3, ignored = ignored + ?4, errors = errors + ?5, \
         events_per_second = ?6, last_error = coalesce(?7, last_error) WHERE projection = ?1 AND partition = ?2",
    )
    .and_then(|mut st| {
        st.execute(params![
            &*c.projection,
            c.partition,
            applied.handled as i64,
            (applied.ignored + c.stats.ignored) as i64,
            c.stats.errors as i64,
            c.stats.events_per_second,
            c.last_error,
        ])
    })
    .map_err(db_err("updating the counters"))?;
    Ok(())
}

fn insert_dead_letter(
    tx: &Connection,
    projection: &str,
    partition: u32,
    dl: &NewDeadLetter,
    now: &str,
) -> rusqlite::Result<()> {
    let e = &dl.event;
    tx.prepare_cached(
        "INSERT INTO projection_dead_letters (projection, partition, position, txid, stream_id, stream_version, \
         event_type, event_id, data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        projection,
        partition,
        e.position,
        e.txid,
        e.stream_id,
        e.stream_version,
        e.event_type,
        e.event_id.to_string(),
        &*e.data,
        &*e.metadata,
        format_time(e.recorded_at),
        dl.error,
        dl.attempts,
        format_time(dl.first_failed_at),
        now,
    ])?;
    Ok(())
}
