//! Running a synchronous body inside an asynchronous PostgreSQL transaction, with reads.
//!
//! Bodies are synchronous ([`Apply<PgBatch>`](crate::core::projection::Apply)) and
//! tokio-postgres is asynchronous. A body's writes are queued in its [`PgBatch`] and pipelined;
//! its reads cannot wait for the end of the batch. So the store runs the body on a blocking
//! thread while this side holds the transaction: when the body queries, the statements it
//! queued so far are sent (pipelined, in order), then the query runs, and its rows go back to
//! the body, which carries on. A body that never reads costs one hand-over to a blocking thread
//! per batch, and its statements go out in one pipeline at the end, as before.
//!
//! Statements are numbered in queue order across every flush, so that the caller can ask
//! whether the statement it queued as number `k` ran ([`Flusher::finish`]).

use std::ops::Range;
use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::batch::{self, Origin, PgBatch, PipelineError, Queued, ReadRequest};
use super::dispatch::{BatchDispatch, CallError, Step};
use super::error;
use crate::core::document::{quote_ident, JsonRow, Row};
use crate::core::error::{BatchFailure, Error, HandlerError};
use crate::core::event::Event;
use crate::core::projection::{Applied, Prefetch};

/// The statements of one transaction, sent in order over several flushes.
pub(crate) struct Flusher<'t, 'c> {
    tx: &'t Transaction<'c>,
    /// Statements sent (or skipped after a failure) so far: the number of the next one.
    sent: usize,
    /// Row counts of the statements sent, in order (complete while nothing failed).
    counts: Vec<u64>,
    /// The first failure: a statement, or a body's query (numbered as the statement after
    /// those sent before it). Once set, nothing more is sent: the transaction is aborted.
    failed: Option<PipelineError>,
    /// The most statements in flight at once.
    window: usize,
    /// The projection's batch function, for runs of statements it holds (see `dispatch`).
    dispatch: Option<Arc<BatchDispatch>>,
}

impl<'t, 'c> Flusher<'t, 'c> {
    pub(crate) fn new(tx: &'t Transaction<'c>) -> Self {
        Flusher {
            tx,
            sent: 0,
            counts: Vec::new(),
            failed: None,
            window: batch::PIPELINE_WINDOW,
            dispatch: None,
        }
    }

    /// Runs of statements that `dispatch`'s function holds go in one call of it.
    pub(crate) fn with_dispatch(mut self, dispatch: Option<Arc<BatchDispatch>>) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// At most `window` statements in flight (default [`batch::PIPELINE_WINDOW`]).
    pub(crate) fn with_window(mut self, window: usize) -> Self {
        self.window = window.max(1);
        self
    }

    /// Sends the statements queued in `batch` so far.
    pub(crate) async fn flush(&mut self, batch: &PgBatch) {
        let queued = batch.take();
        self.run(queued).await;
    }

    async fn run(&mut self, queued: Vec<Queued>) {
        if queued.is_empty() {
            return;
        }
        if self.failed.is_none() {
            let steps = self.dispatch.as_ref().and_then(|d| d.plan(&queued));
            match steps {
                None => self.pipeline(&queued, 0..queued.len(), self.window).await,
                Some(steps) => {
                    for step in steps {
                        if self.failed.is_some() {
                            break;
                        }
                        match step {
                            Step::Pipeline(r) => self.pipeline(&queued, r, self.window).await,
                            Step::Call(r) => self.call(&queued, r).await,
                        }
                    }
                }
            }
        }
        self.sent += queued.len();
    }

    /// Sends `queued[range]` pipelined, with at most `window` in flight.
    async fn pipeline(&mut self, queued: &[Queued], range: Range<usize>, window: usize) {
        let Some(run) = queued.get(range.clone()) else {
            return;
        };
        if run.is_empty() {
            return;
        }
        match batch::run_in_window(self.tx, run, window).await {
            Ok(counts) => self.counts.extend(counts),
            Err(mut e) => {
                e.index += self.sent + range.start;
                self.failed = Some(e);
            }
        }
    }

    /// Runs `queued[range]` in one call of the projection's function. Statements run that way
    /// report 0 rows. When one fails, the call's statements are undone and sent again the
    /// ordinary way, so that the failure is the driver's, for its event.
    async fn call(&mut self, queued: &[Queued], range: Range<usize>) {
        let Some(dispatch) = self.dispatch.clone() else {
            return self.pipeline(queued, range, self.window).await;
        };
        let (Some(f), Some(run)) = (dispatch.dispatcher(), queued.get(range.clone())) else {
            return self.pipeline(queued, range, self.window).await;
        };
        match f.call(self.tx, run).await {
            Ok(None) => self.counts.extend(std::iter::repeat_n(0, run.len())),
            Ok(Some(k)) => {
                let at = range.start + k.min(run.len());
                // Up to the failing statement pipelined, then one at a time: nothing is sent
                // behind the failure for the server to reject and log.
                self.pipeline(queued, range.start..at, self.window).await;
                if self.failed.is_none() {
                    self.pipeline(queued, at..range.end, 1).await;
                }
                if self.failed.is_none() {
                    // The function failed where the statements did not: stop using it.
                    dispatch.set_broken();
                }
            }
            // A value that does not encode: nothing was sent; the pipeline reports it for its
            // event.
            Err(CallError::Encode) => self.pipeline(queued, range, self.window).await,
            Err(CallError::Call(error)) => {
                if !error::retryable(&error) {
                    dispatch.set_broken();
                }
                self.failed = Some(PipelineError {
                    index: self.sent + range.start,
                    origin: Origin::Call,
                    error,
                    label: Some("a batch's statements in one call".to_owned()),
                });
            }
        }
    }

    /// The number, across flushes, of the statement at `index` of what is queued now.
    pub(crate) fn number_of(&self, index: usize) -> usize {
        self.sent + index
    }

    /// Sends what is queued in `batch` so far and waits for it: the row counts of every
    /// statement sent, in order, or the first failure. After a failure the transaction is
    /// aborted: end it.
    pub(crate) async fn sync(&mut self, batch: &PgBatch) -> Result<Vec<u64>, PipelineError> {
        self.flush(batch).await;
        match self.failed.take() {
            Some(f) => Err(f),
            None => Ok(self.counts.clone()),
        }
    }

    /// Runs `body` on a blocking thread with `batch` as its context, serving its queries in
    /// this transaction until it returns.
    pub(crate) async fn apply<R, F>(&mut self, batch: &Arc<PgBatch>, body: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&PgBatch) -> R + Send + 'static,
    {
        self.apply_reading(batch, true, body).await
    }

    /// [`apply`](Self::apply); a body that does not read (`reads == false`) runs in place,
    /// without a hand-over to a blocking thread (its queries would fail).
    pub(crate) async fn apply_reading<R, F>(
        &mut self,
        batch: &Arc<PgBatch>,
        reads: bool,
        body: F,
    ) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&PgBatch) -> R + Send + 'static,
    {
        if !reads {
            return Ok(body(batch));
        }
        let (reader, mut requests) = tokio::sync::mpsc::unbounded_channel::<ReadRequest>();
        batch.set_reader(Some(reader));
        let b = batch.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let out = body(&b);
            b.set_reader(None);
            out
        });
        loop {
            tokio::select! {
                biased;
                Some(request) = requests.recv() => self.serve(batch, request).await,
                joined = &mut task => {
                    batch.set_reader(None);
                    return joined.map_err(|e| Error::task("a projection body", e));
                }
            }
        }
    }

    async fn serve(&mut self, batch: &PgBatch, request: ReadRequest) {
        self.flush(batch).await;
        let answer = match &self.failed {
            Some(f) => Err(HandlerError::msg(format!(
                "an earlier statement of this batch failed, so the transaction cannot be read: {}",
                f.message()
            ))),
            None => match query(self.tx, &request.sql, &request.params).await {
                Ok(rows) => Ok(rows),
                Err(QueryError::Database(e)) => {
                    let message = format!("query: {}", error::describe(&e));
                    self.failed = Some(PipelineError {
                        index: self.sent,
                        origin: request.origin,
                        error: e,
                        label: Some("query".to_owned()),
                    });
                    Err(HandlerError::msg(message))
                }
                // A row that is not an object: the transaction is fine.
                Err(QueryError::Shape(message)) => Err(HandlerError::msg(message)),
            },
        };
        // The body may be gone (it panicked); nothing waits for the answer then.
        let _ = request.reply.send(answer);
    }

    /// Sends what is still queued; the row counts of every statement, or the first failure.
    pub(crate) async fn finish(mut self, batch: &PgBatch) -> Result<Vec<u64>, PipelineError> {
        self.flush(batch).await;
        match self.failed {
            Some(f) => Err(f),
            None => Ok(self.counts),
        }
    }
}

enum QueryError {
    Database(tokio_postgres::Error),
    Shape(String),
}

/// Runs a query whose single column is a JSON object per row.
async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[super::batch::PgParam],
) -> Result<Vec<Row>, QueryError> {
    let st = tx.prepare_cached(sql).await.map_err(QueryError::Database)?;
    let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
    let rows = tx.query(&st, &refs).await.map_err(QueryError::Database)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        match r.try_get::<_, Option<serde_json::Value>>(0) {
            Ok(Some(serde_json::Value::Object(m))) => out.push(m),
            Ok(other) => {
                return Err(QueryError::Shape(format!(
                    "a query row is not an object: {}",
                    other.unwrap_or_default()
                )))
            }
            Err(e) => return Err(QueryError::Shape(format!("a query row does not decode: {e}"))),
        }
    }
    Ok(out)
}

/// Applies `body` to `events[range]` one event at a time (so that each queued statement is
/// known by its event), on a blocking thread, serving its queries in `flusher`'s transaction.
/// Returns what it applied, and the first failing event if any (the events after it are not
/// applied).
pub(crate) async fn per_event(
    flusher: &mut Flusher<'_, '_>,
    batch: &Arc<PgBatch>,
    body: Arc<super::PgBody>,
    events: Arc<[Event]>,
    range: Range<usize>,
) -> Result<(Applied, Option<BatchFailure>), Error> {
    let reads = body.reads();
    flusher
        .apply_reading(batch, reads, move |b| {
            let mut applied = Applied::default();
            let mut failure = None;
            body.around(&mut || {
                for index in range.clone() {
                    let Some(ev) = events.get(index) else { break };
                    b.set_origin(Origin::Event(index));
                    match body.apply(b, std::slice::from_ref(ev)) {
                        Ok(a) => applied.add(a),
                        Err(f) => {
                            failure = Some(BatchFailure {
                                index,
                                error: f.error,
                            });
                            return;
                        }
                    }
                }
            });
            (applied, failure)
        })
        .await
}

/// Applies a batch-wide `body` (a fold by key) to `events[range]` in one call, after loading
/// its `prefetch` rows in `flusher`'s transaction. A failure carries the index, in `events`, of
/// the failing event.
pub(crate) async fn batch_wide(
    flusher: &mut Flusher<'_, '_>,
    batch: &Arc<PgBatch>,
    body: Arc<super::PgBody>,
    events: Arc<[Event]>,
    range: Range<usize>,
) -> Result<Result<Applied, BatchFailure>, Error> {
    let start = range.start;
    let Some(slice) = events.get(range.clone()) else {
        return Err(Error::InvalidInput(format!(
            "commit range {range:?} is outside its {} events",
            events.len()
        )));
    };
    if slice.is_empty() {
        return Ok(Ok(Applied::default()));
    }
    for p in body.prefetch(slice) {
        match flusher.load(&p).await {
            Ok(rows) => batch.set_prefetched(p.table, rows),
            Err(PrefetchError::Handler(error)) => return Ok(Err(BatchFailure { index: start, error })),
            Err(PrefetchError::Store(e)) => return Err(e),
        }
    }
    let len = slice.len();
    let reads = body.reads();
    flusher
        .apply_reading(batch, reads, move |b| {
            b.set_origin(Origin::Event(start));
            let slice = events.get(range).unwrap_or_default();
            body.apply(b, slice).map_err(|f| BatchFailure {
                index: start + f.index.min(len.saturating_sub(1)),
                error: f.error,
            })
        })
        .await
}

/// Why a prefetch did not load.
pub(crate) enum PrefetchError {
    /// The table or column is wrong: the batch's first event fails under its policy.
    Handler(HandlerError),
    /// The database failed.
    Store(Error),
}

/// The query that loads the rows of `table` whose `key_column` is one of `$1` (a text array),
/// each as one `jsonb` object: a prefetch, or a body's read of rows it did not prefetch.
pub(crate) fn prefetch_sql(table: &str, key_column: &str) -> String {
    format!(
        "SELECT to_jsonb(t) FROM {} t WHERE t.{} = ANY($1)",
        quote_ident(table),
        quote_ident(key_column)
    )
}

impl Flusher<'_, '_> {
    /// The rows of one prefetch, each as its key and JSON text, read in this transaction.
    pub(crate) async fn load(&mut self, p: &Prefetch) -> Result<Vec<JsonRow>, PrefetchError> {
        let q = super::document::prefetch_json_sql(&p.table, &p.key_column);
        let rows = match self.tx.query(&q, &[&p.keys]).await {
            Ok(rows) => rows,
            Err(e) if !error::retryable(&e) => {
                return Err(PrefetchError::Handler(HandlerError::msg(format!(
                    "loading rows of {}: {}",
                    p.table,
                    error::describe(&e)
                ))))
            }
            Err(e) => return Err(PrefetchError::Store(error::db("loading documents", e))),
        };
        let mut loaded = Vec::with_capacity(rows.len());
        for r in &rows {
            match (r.try_get::<_, String>(0), r.try_get::<_, String>(1)) {
                (Ok(key), Ok(json)) => loaded.push(JsonRow { key, json }),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(PrefetchError::Store(error::db("loading documents", e)))
                }
            }
        }
        Ok(loaded)
    }
}

/// Applies `body` to `events[range]`: per event, or in one call for a batch-wide body (after
/// its prefetch), serving its queries in `flusher`'s transaction.
pub(crate) async fn any_body(
    flusher: &mut Flusher<'_, '_>,
    batch: &Arc<PgBatch>,
    body: Arc<super::PgBody>,
    events: Arc<[Event]>,
    range: Range<usize>,
) -> Result<Result<Applied, BatchFailure>, Error> {
    if body.batch_wide() {
        return batch_wide(flusher, batch, body, events, range).await;
    }
    let (applied, failure) = per_event(flusher, batch, body, events, range).await?;
    Ok(match failure {
        Some(f) => Err(f),
        None => Ok(applied),
    })
}
