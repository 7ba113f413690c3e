//! Committing a batch: the checkpoint's compare-and-set, the statements the projection queued,
//! dead letters and counters, in one transaction (per event, or batch-wide for documents).

use deadpool_postgres::GenericClient;

use std::sync::Arc;

use super::apply::{self, Flusher};
use super::batch::{Origin, PipelineError};
use super::error::{self, db, db_err};
use super::listen::bump;
use super::{partition_i32, PgBatch, PgBody, PgParam, PgStore};
use crate::core::error::{BatchFailure, Error, HandlerError, Result};
use crate::core::projection::Applied;
use crate::core::store::{Commit, CommitError};

impl PgStore {
    pub(super) async fn commit_pg(&self, c: Commit<PgBody>) -> Result<(), CommitError> {
        if c.body.batch_wide() {
            return self.commit_batch_wide(c).await;
        }
        let inner = &self.inner;
        let sql = &inner.sql;
        let partition = partition_i32(c.partition)?;
        let batch = self.new_batch();
        let fence = c.fence.as_ref().map(|f| {
            let at = batch.store(
                sql.fence.clone(),
                params![c.projection.to_string(), partition, f.owner.to_string(), f.token],
            );
            // Before the compare-and-set, so the row carries its owner when it moves.
            batch.store(
                sql.mark_owner.clone(),
                params![c.projection.to_string(), partition, f.owner.to_string(), f.token],
            );
            at
        });
        let cas = batch.store(
            sql.cas_strict.clone(),
            params![
                c.projection.to_string(),
                partition,
                c.to.txid,
                c.to.position,
                c.expected.txid,
                c.expected.position
            ],
        );
        if c.events.get(c.range.clone()).is_none() {
            return Err(CommitError::Store(Error::InvalidInput(format!(
                "commit range {:?} is outside its {} events",
                c.range,
                c.events.len()
            ))));
        }
        let batch = Arc::new(batch);
        let mut client = self.client_for("beginning a batch").await?;
        let tx = client.transaction().await.map_err(db_err("beginning a batch"))?;
        let mut flusher = Flusher::new(&tx);
        // Bodies run per event, so that each queued statement is known by its event; a query
        // sends the statements queued before it.
        let (applied, early_failure) = apply::per_event(
            &mut flusher,
            &batch,
            c.body.clone(),
            c.events.clone(),
            c.range.clone(),
        )
        .await
        .map_err(CommitError::Store)?;
        let seen = if early_failure.is_some() {
            // Only check the checkpoint: a fenced or paused runner hears that first.
            flusher.keep_through(&batch, cas);
            None
        } else {
            self.queue_commit_tail(&batch, &c, partition, applied)
        };
        let outcome = flusher.finish(&batch).await;
        let cas_moved = match &outcome {
            Ok(counts) => counts.get(cas).copied().unwrap_or(0) > 0,
            Err(f) if f.index > cas => true,
            Err(_) => false,
        };
        match outcome {
            // The lease went to another node.
            Err(PipelineError { ref error, index, .. })
                if Some(index) == fence && error.code().is_some_and(|c| c.code() == "22012") =>
            {
                let _ = tx.rollback().await;
                Err(CommitError::LeaseLost)
            }
            // The strict compare-and-set moved nothing: fenced or not active.
            Err(PipelineError { ref error, index, .. })
                if index == cas && error.code().is_some_and(|c| c.code() == "22012") =>
            {
                let _ = tx.rollback().await;
                Err(self.diagnose(&client, &c.projection, partition).await)
            }
            Err(PipelineError { error, index, .. }) if index <= cas => {
                drop(tx);
                Err(CommitError::Store(db("moving the checkpoint", error)))
            }
            _ if !cas_moved => {
                let _ = tx.rollback().await;
                Err(self.diagnose(&client, &c.projection, partition).await)
            }
            Ok(_) => match early_failure {
                Some(f) => {
                    let _ = tx.rollback().await;
                    Err(CommitError::Handler(f))
                }
                None => {
                    tx.commit().await.map_err(db_err("committing a batch"))?;
                    bump(&inner.checkpoints);
                    Ok(())
                }
            },
            Err(f) if Some(f.index) == seen && is_unique_violation(&f.error) => {
                let _ = tx.rollback().await;
                Err(CommitError::Store(already_seen(&c.projection, f.error)))
            }
            Err(f) => {
                let _ = tx.rollback().await;
                let message = f.message();
                let PipelineError { error, origin, .. } = f;
                match origin {
                    Origin::Event(index) if !error::retryable(&error) => {
                        Err(CommitError::Handler(BatchFailure {
                            index,
                            error: HandlerError::msg(message),
                        }))
                    }
                    Origin::Event(_) => Err(CommitError::Store(db("applying a batch", error))),
                    _ => Err(CommitError::Store(db("committing a batch", error))),
                }
            }
        }
    }

    /// Queues what every commit ends with: dead letters, seen event ids, counters and the
    /// notification. Returns the index of the statement recording the seen ids, if any.
    fn queue_commit_tail(
        &self,
        batch: &PgBatch,
        c: &Commit<PgBody>,
        partition: i32,
        applied: Applied,
    ) -> Option<usize> {
        let sql = &self.inner.sql;
        for dl in &c.dead_letters {
            let e = &dl.event;
            batch.store(
                sql.insert_dead_letter.clone(),
                params![
                    c.projection.to_string(),
                    partition,
                    e.position,
                    e.txid,
                    e.stream_id.clone(),
                    e.stream_version,
                    e.event_type.clone(),
                    e.event_id,
                    e.data.to_string(),
                    e.metadata.to_string(),
                    e.recorded_at,
                    dl.error.clone(),
                    i32::try_from(dl.attempts).unwrap_or(i32::MAX),
                    dl.first_failed_at
                ],
            );
        }
        let seen = (!c.record_ids.is_empty()).then(|| {
            batch.store(
                sql.record_seen.clone(),
                params![c.projection.to_string(), c.record_ids.clone()],
            )
        });
        batch.store(
            sql.counters.clone(),
            params![
                c.projection.to_string(),
                partition,
                applied.handled as i64,
                (applied.ignored + c.stats.ignored) as i64,
                c.stats.errors as i64,
                c.stats.events_per_second,
                c.last_error.clone()
            ],
        );
        batch.store(
            "SELECT pg_notify($1, '')",
            params![sql.checkpoints_channel.clone()],
        );
        seen
    }

    /// A commit of a body that sees the whole batch at once (a document projection): in one
    /// transaction, the checkpoint's compare-and-set first, then one query per `prefetch`
    /// (`SELECT to_jsonb(t) FROM t WHERE key = ANY($1)`) whose rows the body reads through
    /// its `PgBatch`, then the body runs once for the batch and the statements it queued (one
    /// bulk upsert per table) are pipelined with the counters. A failure maps to the index of
    /// the failing event in `Commit::events` (the whole batch's first event when the failure
    /// is the bulk statement's), so the runner re-applies the prefix before it.
    async fn commit_batch_wide(&self, c: Commit<PgBody>) -> Result<(), CommitError> {
        let sql = &self.inner.sql;
        let partition = partition_i32(c.partition)?;
        let mut client = self.client_for("beginning a batch").await?;
        let tx = client.transaction().await.map_err(db_err("beginning a batch"))?;
        let cas_err = db_err("moving the checkpoint");
        let name = c.projection.to_string();
        if let Some(f) = &c.fence {
            let st = tx.prepare_cached(&sql.fence).await.map_err(&cas_err)?;
            match tx
                .query_one(&st, &[&name, &partition, &f.owner.as_ref(), &f.token])
                .await
            {
                Ok(_) => {}
                Err(e) if e.code().is_some_and(|c| c.code() == "22012") => {
                    let _ = tx.rollback().await;
                    return Err(CommitError::LeaseLost);
                }
                Err(e) => return Err(CommitError::Store(db("checking the partition's lease", e))),
            }
            let st = tx.prepare_cached(&sql.mark_owner).await.map_err(&cas_err)?;
            tx.execute(&st, &[&name, &partition, &f.owner.as_ref(), &f.token])
                .await
                .map_err(&cas_err)?;
        }
        let st = tx.prepare_cached(&sql.cas).await.map_err(&cas_err)?;
        let moved = tx
            .execute(
                &st,
                &[
                    &name,
                    &partition,
                    &c.to.txid,
                    &c.to.position,
                    &c.expected.txid,
                    &c.expected.position,
                ],
            )
            .await
            .map_err(&cas_err)?;
        if moved == 0 {
            let _ = tx.rollback().await;
            return Err(self.diagnose(&client, &c.projection, partition).await);
        }
        let batch = Arc::new(self.new_batch());
        let mut flusher = Flusher::new(&tx);
        let applied = match apply::batch_wide(
            &mut flusher,
            &batch,
            c.body.clone(),
            c.events.clone(),
            c.range.clone(),
        )
        .await
        .map_err(CommitError::Store)?
        {
            Ok(a) => a,
            Err(f) => {
                drop(flusher);
                drop(tx);
                return Err(CommitError::Handler(f));
            }
        };
        let seen = self.queue_commit_tail(&batch, &c, partition, applied);
        match flusher.finish(&batch).await {
            Ok(_) => {
                tx.commit().await.map_err(db_err("committing a batch"))?;
                bump(&self.inner.checkpoints);
                Ok(())
            }
            Err(f) if Some(f.index) == seen && is_unique_violation(&f.error) => {
                drop(tx);
                Err(CommitError::Store(already_seen(&c.projection, f.error)))
            }
            Err(f) => {
                drop(tx);
                match f.origin {
                    Origin::Event(index) if !error::retryable(&f.error) => {
                        Err(CommitError::Handler(BatchFailure {
                            index,
                            error: HandlerError::msg(f.message()),
                        }))
                    }
                    _ => Err(CommitError::Store(db("committing a batch", f.error))),
                }
            }
        }
    }

    /// Why a checkpoint's compare-and-set moved nothing.
    async fn diagnose(&self, client: &deadpool_postgres::Object, name: &str, partition: i32) -> CommitError {
        match self.load_record(client, name, partition).await {
            Err(e) => CommitError::Store(e),
            Ok(None) => CommitError::Store(Error::InvalidInput(format!(
                "projection {name} partition {partition} has no checkpoint; prepare it first"
            ))),
            Ok(Some(r)) if !r.state.is_active() => CommitError::NotActive { state: r.state },
            Ok(Some(r)) => CommitError::Fenced { actual: r.checkpoint },
        }
    }
}

fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// A commit recorded an event id that an earlier commit of the projection had recorded: a
/// redelivered event reached a commit. Retryable: nothing of the commit was written, and the
/// runner's re-read drops the event.
fn already_seen(projection: &str, e: tokio_postgres::Error) -> Error {
    Error::Database {
        op: "recording seen event ids",
        message: format!(
            "{}: an event id is already recorded as applied by projection {projection}: a redelivered \
             event reached a commit (another runner applied it first, or it came twice in one batch); \
             nothing of this commit was written, and a re-read drops it",
            error::describe(&e)
        ),
        retryable: true,
        cause: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use uuid::Uuid;

    use crate::core::event::{Checkpoint, Event};
    use crate::core::store::{Commit, CommitError, Store};
    use crate::postgres::{PgBody, PgHandlers, PgProjection, PgStore};

    fn commit(body: &Arc<PgBody>, position: i64, id: Uuid) -> Commit<PgBody> {
        let event = Event {
            position,
            txid: 0,
            stream_id: "s".into(),
            stream_version: position,
            event_type: "T".into(),
            event_id: id,
            data: Arc::from("{}"),
            metadata: Arc::from("{}"),
            recorded_at: chrono::Utc::now(),
        };
        Commit {
            projection: Arc::from("p"),
            partition: 0,
            body: body.clone(),
            events: Arc::from(vec![event]),
            range: 0..1,
            expected: Checkpoint::at(position - 1),
            to: Checkpoint::at(position),
            dead_letters: Vec::new(),
            stats: Default::default(),
            last_error: None,
            fence: None,
            record_ids: vec![id],
        }
    }

    #[tokio::test]
    async fn an_id_recorded_again_fails_the_commit_whole_and_retryably() {
        let Some((schema, admin)) =
            projectionist_testkit::postgres::fresh_schema("seen_twice", "pt_unit").await
        else {
            return;
        };
        let store = PgStore::builder(&projectionist_testkit::postgres_url())
            .unwrap()
            .schema(&schema)
            .connect()
            .await
            .unwrap();
        let body = PgProjection::new("p", PgHandlers::new()).body().clone();
        store.prepare("p", 0, body.clone()).await.unwrap();
        let id = Uuid::new_v4();
        store.commit(commit(&body, 1, id)).await.unwrap();
        match store.commit(commit(&body, 2, id)).await {
            Err(CommitError::Store(e)) => {
                let text = e.to_string();
                assert!(e.is_retryable(), "{e:?}");
                assert!(
                    text.contains("already recorded") && text.contains("23505"),
                    "{text}"
                );
                assert_eq!((e.sqlstate(), e.sqlite_code()), (Some("23505"), None));
            }
            other => panic!("expected a retryable store error, got {other:?}"),
        }
        let record = store.record("p", 0).await.unwrap().unwrap();
        assert_eq!(
            record.checkpoint,
            Checkpoint::at(1),
            "nothing of the second commit"
        );
        projectionist_testkit::postgres::drop_schema(&admin, &schema).await;
    }
}
