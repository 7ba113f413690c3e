//! Committing a batch: the checkpoint's compare-and-set, the statements the projection queued,
//! dead letters and counters, in one transaction (per event, or batch-wide for documents).

use deadpool_postgres::GenericClient;

use std::sync::Arc;

use super::apply::{self, Flusher};
use super::batch::{Origin, PipelineError, PIPELINE_WINDOW};
use super::error::{self, db, db_err};
use super::listen::bump;
use super::server_batch::{NotEligible, ServerFn};
use super::{partition_i32, PgBatch, PgBody, PgParam, PgStore};
use crate::core::error::{BatchFailure, Error, HandlerError, Result};
use crate::core::projection::Applied;
use crate::core::store::{Commit, CommitError};
use crate::declarative::SqlBody;

/// After a batch failed on an event, how many of the projection's next batches (per
/// partition) run with one statement in flight; each batch that commits counts one down.
const CAREFUL_BATCHES: u32 = 16;

impl PgStore {
    pub(super) async fn commit_pg(&self, c: Commit<PgBody>) -> Result<(), CommitError> {
        if c.body.batch_wide() {
            return self.commit_batch_wide(c).await;
        }
        let key = (c.projection.clone(), c.partition);
        let careful = self.careful().get(&key).copied().unwrap_or(0) > 0;
        let window = if careful { 1 } else { PIPELINE_WINDOW };
        let outcome = self.commit_per_event(c, window).await;
        let mut after = self.careful();
        match &outcome {
            // A failing event: the next batches of this projection send one statement at a
            // time, so that a failure leaves nothing queued behind it that the server would
            // reject and log (see docs/operations.md).
            Err(CommitError::Handler(_)) => {
                after.insert(key, CAREFUL_BATCHES);
            }
            Ok(()) => {
                if let Some(n) = after.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        after.remove(&key);
                    }
                }
            }
            Err(_) => {}
        }
        outcome
    }

    fn careful(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(Arc<str>, u32), u32>> {
        self.inner.careful.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A commit of a per-event body, with at most `window` statements in flight.
    async fn commit_per_event(&self, c: Commit<PgBody>, window: usize) -> Result<(), CommitError> {
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
            sql.cas.clone(),
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
        let server = match c.body.declarative() {
            Some(body) => self.server_fn(&mut client, body).await?,
            None => None,
        };
        // Typed statements (a body not run by a declarative function) may run in one call of
        // the projection's batch function (see `dispatch`).
        let dispatch = if self.inner.server_batches && server.is_none() {
            self.inner.dispatchers.for_batch(&c.projection)
        } else {
            None
        };
        let tx = client.transaction().await.map_err(db_err("beginning a batch"))?;
        let mut flusher = Flusher::new(&tx)
            .with_window(window)
            .with_dispatch(dispatch.clone());
        // The lease check and the checkpoint's compare-and-set go first, on their own: a fenced
        // runner learns it from their row counts before it sends any write (so it takes no row
        // lock, and no statement fails: the server logs nothing for a fenced batch).
        let head = match flusher.sync(&batch).await {
            Ok(counts) => counts,
            Err(PipelineError { error, .. }) => {
                drop(tx);
                return Err(CommitError::Store(db("moving the checkpoint", error)));
            }
        };
        let moved = |at: usize| head.get(at).copied().unwrap_or(0) > 0;
        if fence.is_some_and(|at| !moved(at)) {
            // The lease went to another node.
            let _ = tx.rollback().await;
            return Err(CommitError::LeaseLost);
        }
        if !moved(cas) {
            // The compare-and-set moved nothing: fenced or not active.
            let _ = tx.rollback().await;
            return Err(self.diagnose(&client, &c.projection, partition).await);
        }
        let (applied, early_failure) = match (&server, c.body.declarative()) {
            // A declarative body: the batch in one call of its function.
            (Some(f), Some(body)) => {
                let events = c.events.get(c.range.clone()).unwrap_or_default();
                match f.apply(&tx, body, events, c.range.start).await {
                    Ok(Ok(applied)) => (applied, None),
                    Ok(Err(failure)) => (Applied::default(), Some(failure)),
                    Err(e) => {
                        drop(flusher);
                        let _ = tx.rollback().await;
                        // Its function may be gone (a dropped schema): made again next time.
                        self.forget_server_fn(body);
                        return Err(CommitError::Store(e));
                    }
                }
            }
            // Bodies run per event, so that each queued statement is known by its event; a
            // query sends the statements queued before it.
            _ => {
                let applied = apply::per_event(
                    &mut flusher,
                    &batch,
                    c.body.clone(),
                    c.events.clone(),
                    c.range.clone(),
                )
                .await;
                match applied {
                    Ok(applied) => applied,
                    Err(e) => {
                        drop(flusher);
                        let _ = tx.rollback().await;
                        self.learn(&mut client, &c.projection, dispatch.as_ref()).await;
                        return Err(CommitError::Store(e));
                    }
                }
            }
        };
        if let Some(f) = early_failure {
            let _ = tx.rollback().await;
            self.learn(&mut client, &c.projection, dispatch.as_ref()).await;
            return Err(CommitError::Handler(f));
        }
        let outcome = self.finish(flusher, &batch, &c, partition, applied).await;
        let ended = self.end(tx, outcome).await;
        self.learn(&mut client, &c.projection, dispatch.as_ref()).await;
        ended
    }

    /// After a batch's transaction ended, however it ended: stops using the projection's batch
    /// function if its call broke (else a batch that failed for it would fail the same way at
    /// every retry), or makes one for the statements the batch met.
    async fn learn(
        &self,
        client: &mut deadpool_postgres::Object,
        projection: &Arc<str>,
        dispatch: Option<&Arc<super::dispatch::BatchDispatch>>,
    ) {
        if let Some(d) = dispatch {
            self.inner
                .dispatchers
                .learn(client, &self.inner.schema, projection, d)
                .await;
        }
    }

    /// The function that applies `body`'s batches in one call, made once per process (see
    /// `server_batch`); `None` when the body stays on the per-event path.
    async fn server_fn(
        &self,
        client: &mut deadpool_postgres::Object,
        body: &SqlBody,
    ) -> Result<Option<Arc<ServerFn>>> {
        if !self.inner.server_batches {
            return Ok(None);
        }
        let key = body.fingerprint();
        if let Some(f) = self.server_fns().get(key) {
            return Ok(f.clone());
        }
        let made = match ServerFn::ensure(client, &self.inner.schema, body).await? {
            Ok(f) => Some(Arc::new(f)),
            Err(NotEligible(why)) => {
                tracing::info!(
                    projection = %body.def().name,
                    "applying events one statement at a time, not in one call per batch: {why}"
                );
                None
            }
        };
        self.server_fns().insert(key.to_owned(), made.clone());
        Ok(made)
    }

    fn forget_server_fn(&self, body: &SqlBody) {
        self.server_fns().remove(body.fingerprint());
    }

    fn server_fns(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Option<Arc<ServerFn>>>> {
        self.inner.server_fns.lock().unwrap_or_else(|p| p.into_inner())
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
            let held = tx
                .execute(&st, &[&name, &partition, &f.owner.as_ref(), &f.token])
                .await
                .map_err(|e| CommitError::Store(db("checking the partition's lease", e)))?;
            if held == 0 {
                let _ = tx.rollback().await;
                return Err(CommitError::LeaseLost);
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
        let outcome = self.finish(flusher, &batch, &c, partition, applied).await;
        self.end(tx, outcome).await
    }

    /// Queues the commit's tail, and sends what is still queued: `Ok` when every statement
    /// ran; else the first failure, as a redelivered event id, a failing event (by its index
    /// in `Commit::events`), or the store's error.
    async fn finish(
        &self,
        flusher: Flusher<'_, '_>,
        batch: &PgBatch,
        c: &Commit<PgBody>,
        partition: i32,
        applied: Applied,
    ) -> Result<(), CommitError> {
        let seen = self
            .queue_commit_tail(batch, c, partition, applied)
            .map(|at| flusher.number_of(at));
        match flusher.finish(batch).await {
            Ok(_) => Ok(()),
            Err(f) if Some(f.index) == seen && is_unique_violation(&f.error) => {
                Err(CommitError::Store(already_seen(&c.projection, f.error)))
            }
            Err(f) => {
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
                    Origin::Call => Err(CommitError::Store(call_failed(error))),
                    _ => Err(CommitError::Store(db("committing a batch", error))),
                }
            }
        }
    }

    /// Commits the transaction when `outcome` is `Ok` (and wakes the checkpoint's waiters),
    /// else rolls it back.
    async fn end(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        outcome: Result<(), CommitError>,
    ) -> Result<(), CommitError> {
        match outcome {
            Ok(()) => {
                tx.commit().await.map_err(db_err("committing a batch"))?;
                bump(&self.inner.checkpoints);
                Ok(())
            }
            Err(e) => {
                let _ = tx.rollback().await;
                Err(e)
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

/// A failed call of a batch function: retryable, since the process pipelines the
/// projection's statements from then on when retrying the call would not help.
fn call_failed(e: tokio_postgres::Error) -> Error {
    let retryable = error::retryable(&e);
    let mut message = error::describe(&e);
    message.push_str(if retryable {
        " (transient: retrying later may succeed)"
    } else {
        " (this process sends the projection's statements one by one from now on: retrying will)"
    });
    Error::Database {
        op: "applying a batch in one call",
        message,
        retryable: true,
        cause: Some(Box::new(e)),
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
