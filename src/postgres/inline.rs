//! Inline projections on PostgreSQL: applied in the append's own transaction, so that the
//! writer reads its own write as soon as the append returns.
//!
//! # Why the checkpoint stays gap-free
//!
//! Readers take events in `(xid, position)` order, and only those whose transaction id is
//! below the snapshot's xmin (the oldest transaction still running); a checkpoint `(xid,
//! position)` says "everything up to here is applied". An append's transaction `X` gets its
//! id when it inserts its events. If the inline projection moved its checkpoint to `(X, p)`
//! while some older transaction `W < X` was still open, `W`'s events would commit *behind*
//! that checkpoint later, and the async runner (which continues from the checkpoint) would
//! skip them. So, after inserting its events and before touching the projection, the append
//! waits until the snapshot's xmin is `X` itself: every transaction older than `X` has ended,
//! and all that committed are visible to the next statement. Then, holding the checkpoint
//! row's lock (`FOR UPDATE`, which also waits out a runner's batch in flight), it applies
//! everything after the checkpoint with `xid <= X` — the older committed events the projection
//! had not applied yet, then its own — in `(xid, position)` order, and sets the checkpoint to
//! the last of them. Events with `xid > X` that already committed are left to the runner:
//! transactions between `X` and them may still be open. Every event that commits later has an
//! id above `X` (all older ones have ended), so the async runner neither skips nor re-applies
//! anything. Older transactions are short (appends, batches), so the wait is brief; a
//! transaction that stays open longer than [`OLDER_TX_WAIT`] fails the append (retryable).
//!
//! A failing inline handler fails the append with [`Error::InlineProjection`]; the transaction
//! rolls back, so nothing of the append is written.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;

use super::apply::{self, Flusher};
use super::batch::Origin;
use super::error::{self, db, db_err};
use super::rows::event_from_row;
use super::sql::EVENT_COLUMNS;
use super::{PgParam, PgProjection, PgStore};
use crate::core::error::{Error, Result};
use crate::core::event::{Appended, Checkpoint, Event, StreamAppend};
use crate::core::inline::InlineAppend;
use crate::core::log::EventLog;
use crate::core::projection::Applied;
use crate::core::store::RunState;

/// How long an inline append waits for older transactions to end.
pub(crate) const OLDER_TX_WAIT: Duration = Duration::from_secs(30);

impl InlineAppend<PgStore> for PgStore {
    /// The events and the inline read models must be in the same database and schema (one
    /// [`PgStore`], or two handles on it).
    async fn append_inline(
        &self,
        log: &PgStore,
        appends: Vec<StreamAppend>,
        inline: Vec<PgProjection>,
    ) -> Result<Vec<Appended>> {
        if inline.is_empty() {
            return log.append_many(appends).await;
        }
        if !Arc::ptr_eq(&log.inner, &self.inner)
            && (log.location() != self.location() || log.schema() != self.schema())
        {
            return Err(Error::Config(
                "inline projections need the events and the read models in the same PostgreSQL database and schema"
                    .into(),
            ));
        }
        log.append_with_inline(appends, &inline).await
    }
}

impl PgStore {
    /// Inside the append's transaction `tx`, whose id is `xid`: waits until every older
    /// transaction has ended, then brings each inline projection up to `xid` (see the module
    /// documentation).
    pub(crate) async fn apply_inline(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        xid: i64,
        inline: &[PgProjection],
    ) -> Result<()> {
        let err = db_err("waiting for older transactions");
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let xmin: i64 = tx
                .query_one(
                    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                    &[],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(&err)?;
            if xmin >= xid {
                break;
            }
            if started.elapsed() > OLDER_TX_WAIT {
                return Err(Error::Database {
                    op: "applying inline projections",
                    message: format!(
                        "a transaction older than this append (xid {xmin}) stayed open for more than {:?}; \
                         inline projections wait for older transactions so that no event is skipped",
                        OLDER_TX_WAIT
                    ),
                    retryable: true,
                    cause: None,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        for p in inline {
            self.inline_one(tx, xid, p).await?;
        }
        Ok(())
    }

    async fn inline_one(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        xid: i64,
        p: &PgProjection,
    ) -> Result<()> {
        let name = p.name();
        let sql = &self.inner.sql;
        let err = db_err("applying an inline projection");
        let lock = format!(
            "SELECT txid, position, state FROM {}.projection_checkpoints \
             WHERE projection = $1 AND partition = 0 FOR UPDATE",
            super::quote(&self.inner.schema)
        );
        let mut row = tx.query_opt(&lock, &[&name]).await.map_err(&err)?;
        if row.is_none() {
            // Not prepared yet: set it up here, in the append's transaction.
            let b = Arc::new(self.new_batch());
            let mut flusher = Flusher::new(tx);
            let body = p.body().clone();
            flusher
                .apply(&b, move |b| {
                    b.set_origin(Origin::Body);
                    body.setup(b)
                })
                .await?
                .map_err(|e| Error::Lifecycle {
                    projection: name.to_owned(),
                    step: "setup",
                    message: e.to_string(),
                })?;
            b.store(
                sql.ensure_checkpoint.clone(),
                vec![Box::new(name.to_owned()) as PgParam, Box::new(0_i32) as PgParam],
            );
            flusher.finish(&b).await.map_err(|f| Error::Lifecycle {
                projection: name.to_owned(),
                step: "setup",
                message: f.message(),
            })?;
            row = tx.query_opt(&lock, &[&name]).await.map_err(&err)?;
        }
        let Some(row) = row else { return Ok(()) };
        let state: String = row.try_get(2).map_err(&err)?;
        if RunState::stored(name, 0, &state)? != RunState::Running {
            // Paused, stopped or rebuilding: its runner catches up later.
            return Ok(());
        }
        let mut checkpoint = Checkpoint {
            txid: row.try_get(0).map_err(&err)?,
            position: row.try_get(1).map_err(&err)?,
        };
        let read = format!(
            "SELECT {EVENT_COLUMNS} FROM {}.events WHERE xid >= $1 AND (xid, position) > ($1, $2) AND xid <= $3 \
             ORDER BY xid, position LIMIT $4",
            super::quote(&self.inner.schema)
        );
        let limit = p.options().batch_size.max(1) as i64;
        let types = p.event_types();
        let mut applied = Applied::default();
        loop {
            let rows = tx
                .query(&read, &[&checkpoint.txid, &checkpoint.position, &xid, &limit])
                .await
                .map_err(&err)?;
            if rows.is_empty() {
                break;
            }
            let mut events = Vec::with_capacity(rows.len());
            for r in &rows {
                let e = event_from_row(r).map_err(&err)?;
                checkpoint = e.checkpoint();
                if types.is_none_or(|t| t.contains(&e.event_type)) {
                    events.push(e);
                } else {
                    applied.ignored += 1;
                }
            }
            applied.add(self.apply_events_in(tx, p, &events).await?);
            if (rows.len() as i64) < limit {
                break;
            }
        }
        let update = format!(
            "UPDATE {}.projection_checkpoints SET txid = $2, position = $3, applied = applied + $4, \
             ignored = ignored + $5, updated_at = now() WHERE projection = $1 AND partition = 0",
            super::quote(&self.inner.schema)
        );
        let params: [&(dyn ToSql + Sync); 5] = [
            &name,
            &checkpoint.txid,
            &checkpoint.position,
            &(applied.handled as i64),
            &(applied.ignored as i64),
        ];
        tx.execute(&update, &params).await.map_err(&err)?;
        tx.execute("SELECT pg_notify($1, '')", &[&sql.checkpoints_channel])
            .await
            .map_err(&err)?;
        Ok(())
    }

    /// Runs `p`'s body over `events` inside `tx` (per event, or once for a batch-wide body
    /// with its prefetch), and the statements it queued.
    async fn apply_events_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        p: &PgProjection,
        events: &[Event],
    ) -> Result<Applied> {
        if events.is_empty() {
            return Ok(Applied::default());
        }
        let name = p.name();
        let failed = |index: usize, message: String| Error::InlineProjection {
            projection: name.to_owned(),
            position: events.get(index).map_or(0, |e| e.position),
            message,
        };
        let b = Arc::new(self.new_batch());
        let mut flusher = Flusher::new(tx);
        let events: Arc<[Event]> = Arc::from(events);
        let applied = apply::any_body(
            &mut flusher,
            &b,
            p.body().clone(),
            events.clone(),
            0..events.len(),
        )
        .await?
        .map_err(|f| failed(f.index, f.error.to_string()))?;
        flusher.finish(&b).await.map_err(|f| match f.origin {
            Origin::Event(i) if !error::retryable(&f.error) => failed(i, f.message()),
            _ => db("applying an inline projection", f.error),
        })?;
        Ok(applied)
    }
}
