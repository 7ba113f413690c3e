//! Inline projections: applied inside the append's transaction, so that when an append
//! returns, their read models already show its events.

use std::sync::Arc;

use rusqlite::Connection;

use super::commit::commit_in;
use super::lifecycle::{lifecycle, load_record};
use super::read::read_batch;
use super::{db_err, SqliteProjection, SqliteStore};
use crate::core::error::{Error, Result};
use crate::core::event::{Appended, Event, StreamAppend};
use crate::core::inline::InlineAppend;
use crate::core::source::Filter;
use crate::core::store::{Commit, CommitError, RunState};

impl InlineAppend<SqliteStore> for SqliteStore {
    /// The events and the inline read models must be in the same database (one
    /// [`SqliteStore`], or two handles on one file).
    async fn append_inline(
        &self,
        log: &SqliteStore,
        appends: Vec<StreamAppend>,
        inline: Vec<SqliteProjection>,
    ) -> Result<Vec<Appended>> {
        let same = Arc::ptr_eq(&log.inner, &self.inner)
            || (log.location() == self.location() && self.location() != ":memory:");
        if !inline.is_empty() && !same {
            return Err(Error::Config(
                "inline projections need the events and the read models in the same SQLite database".into(),
            ));
        }
        log.append_with_inline(appends, inline).await
    }
}

/// Brings one inline projection to the head inside the append's transaction.
pub(super) fn apply_inline(tx: &Connection, p: &SqliteProjection) -> Result<()> {
    let name = p.name();
    let mut record = load_record(tx, name, 0).map_err(db_err("reading the checkpoint"))?;
    if record.is_none() {
        p.body().setup(tx).map_err(lifecycle(name, "setup"))?;
        tx.execute(
            "INSERT OR IGNORE INTO projection_checkpoints (projection, partition) VALUES (?1, 0)",
            [name],
        )
        .map_err(db_err("creating the checkpoint"))?;
        record = load_record(tx, name, 0).map_err(db_err("reading the checkpoint"))?;
    }
    let Some(record) = record else { return Ok(()) };
    if record.state != RunState::Running {
        // Paused, stopped or rebuilding: its runner catches up later.
        return Ok(());
    }
    let filter = Filter::types(p.event_types());
    let mut checkpoint = record.checkpoint;
    loop {
        let batch = read_batch(tx, checkpoint, p.options().batch_size, &filter)?;
        if batch.events.is_empty() && batch.scanned_to <= checkpoint {
            return Ok(());
        }
        let events: Arc<[Event]> = batch.events.into();
        let commit = Commit {
            projection: Arc::from(name),
            partition: 0,
            body: p.body().clone(),
            range: 0..events.len(),
            events: events.clone(),
            expected: checkpoint,
            to: batch.scanned_to,
            dead_letters: Vec::new(),
            stats: crate::core::store::CommitStats {
                ignored: batch.ignored,
                ..Default::default()
            },
            last_error: None,
            fence: None,
            record_ids: Vec::new(),
        };
        match commit_in(tx, &commit) {
            Ok(()) => checkpoint = batch.scanned_to,
            Err(CommitError::Handler(f)) => {
                return Err(Error::InlineProjection {
                    projection: name.to_owned(),
                    position: events.get(f.index).map_or(0, |e| e.position),
                    message: f.error.to_string(),
                })
            }
            Err(CommitError::Store(e)) => return Err(e),
            // The append holds the write lock from reading the checkpoint to this commit.
            Err(CommitError::Fenced { actual }) => {
                return Err(Error::Internal(format!(
                    "inline projection {name}: its checkpoint moved to {actual} inside the append, which holds the write lock"
                )))
            }
            // Inline commits carry no lease.
            Err(CommitError::NotActive { .. } | CommitError::LeaseLost) => return Ok(()),
        }
    }
}
