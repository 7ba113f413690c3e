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

use std::sync::Arc;

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::batch::{self, Origin, PgBatch, PipelineError, Queued, ReadRequest};
use super::error;
use crate::core::document::Row;
use crate::core::error::{Error, HandlerError};

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
}

impl<'t, 'c> Flusher<'t, 'c> {
    pub(crate) fn new(tx: &'t Transaction<'c>) -> Self {
        Flusher {
            tx,
            sent: 0,
            counts: Vec::new(),
            failed: None,
        }
    }

    /// How many statements were taken from the batch so far.
    pub(crate) fn sent(&self) -> usize {
        self.sent
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
            match batch::run(self.tx, &queued).await {
                Ok(counts) => self.counts.extend(counts),
                Err(mut e) => {
                    e.index += self.sent;
                    self.failed = Some(e);
                }
            }
        }
        self.sent += queued.len();
    }

    /// Drops the statements still queued in `batch` whose number is above `last`.
    pub(crate) fn keep_through(&self, batch: &PgBatch, last: usize) {
        batch.truncate((last + 1).saturating_sub(self.sent));
    }

    /// Runs `body` on a blocking thread with `batch` as its context, serving its queries in
    /// this transaction until it returns.
    pub(crate) async fn apply<R, F>(&mut self, batch: &Arc<PgBatch>, body: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&PgBatch) -> R + Send + 'static,
    {
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
                    return joined.map_err(|e| Error::Invalid(format!("a projection body panicked: {e}")));
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

/// The origin of the first failure, for callers that map it to an event.
pub(crate) fn failed_event(f: &PipelineError) -> Option<usize> {
    match f.origin {
        Origin::Event(i) => Some(i),
        _ => None,
    }
}
