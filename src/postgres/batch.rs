//! `PgBatch`: the context PostgreSQL projection bodies write to.
//!
//! Bodies are synchronous (`Apply<PgBatch>`), while tokio-postgres is async. So a body does not
//! run statements itself: it queues them, with owned parameters, in a [`PgBatch`]. The store
//! then sends every queued statement of a batch at once (pipelined, prepared statements cached
//! per connection) inside the transaction that also moves the checkpoint, and maps a failing
//! statement back to the event that queued it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio_postgres::types::ToSql;

/// An owned statement parameter.
pub type PgParam = Box<dyn ToSql + Send + Sync>;

/// Statement parameters: `()`, a tuple of owned values (`(id, name, 3_i64)`, up to 16), or a
/// `Vec<PgParam>`. Values are always bound, never spliced into the SQL text.
pub trait PgParams {
    fn into_params(self) -> Vec<PgParam>;
}

impl PgParams for Vec<PgParam> {
    fn into_params(self) -> Vec<PgParam> {
        self
    }
}

impl PgParams for () {
    fn into_params(self) -> Vec<PgParam> {
        Vec::new()
    }
}

macro_rules! tuple_params {
    ($($name:ident),+) => {
        impl<$($name: ToSql + Send + Sync + 'static),+> PgParams for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_params(self) -> Vec<PgParam> {
                let ($($name,)+) = self;
                vec![$(Box::new($name) as PgParam),+]
            }
        }
    };
}

tuple_params!(A);
tuple_params!(A, B);
tuple_params!(A, B, C);
tuple_params!(A, B, C, D);
tuple_params!(A, B, C, D, E);
tuple_params!(A, B, C, D, E, F);
tuple_params!(A, B, C, D, E, F, G);
tuple_params!(A, B, C, D, E, F, G, H);
tuple_params!(A, B, C, D, E, F, G, H, I);
tuple_params!(A, B, C, D, E, F, G, H, I, J);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K, L);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K, L, M);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K, L, M, N);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, O);
tuple_params!(A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P);

/// Who queued a statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The body, while applying the event at this index of the commit's events.
    Event(usize),
    /// The body, outside any event (setup, reset).
    Body,
    /// The store itself (checkpoint, counters, dead letters).
    Store,
    /// The call of a projection's batch function (`dispatch`), which failed as a whole.
    Call,
}

pub(crate) enum Sql {
    /// Extended protocol: prepared (and cached per connection), with bound parameters.
    Prepared(Cow<'static, str>, Vec<PgParam>),
    /// Simple protocol: may hold several statements, takes no parameters (DDL).
    Simple(Cow<'static, str>),
    /// A document upsert through a binary `COPY` of the rows (as `jsonb`) into a temporary
    /// table, then one `INSERT … SELECT … ON CONFLICT`. Runs on its own, between pipelines.
    CopyUpsert {
        /// The `INSERT … SELECT` from the temporary table.
        insert: String,
        rows: Vec<serde_json::Value>,
    },
}

pub(crate) struct Queued {
    pub sql: Sql,
    pub origin: Origin,
    /// What the statement is, for error messages ("setup statement 2 of 3 …").
    pub label: Option<String>,
}

/// How document projections write their rows back (see `DocumentStorage for PgBatch`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DocumentWrite {
    /// One `INSERT … SELECT * FROM jsonb_populate_recordset(NULL::t, $1) ON CONFLICT … DO
    /// UPDATE` with the rows as one `jsonb` parameter (the default: measured faster).
    #[default]
    Recordset,
    /// A binary `COPY` of the rows into a temporary table, then `INSERT … SELECT … ON
    /// CONFLICT … DO UPDATE`.
    CopyTemp,
}

/// A statement to prepare (not run) at setup, so that SQL errors show before any event.
pub(crate) struct Check {
    pub sql: String,
    /// The same statement with plain placeholders, checked instead when `sql`'s inferred casts
    /// make it fail on types.
    pub untyped: Option<String>,
    /// How many parameters the statement must have.
    pub params: usize,
    pub label: String,
}

/// The statements a projection body queues for one transaction.
///
/// ```ignore
/// let body = PgHandlers::new()
///     .setup(|cx| { cx.batch_execute("CREATE TABLE IF NOT EXISTS totals (k text PRIMARY KEY, n bigint)"); Ok(()) })
///     .on("Added", |cx, ev, a: Added| {
///         cx.execute(
///             "INSERT INTO totals VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET n = totals.n + $2",
///             (ev.stream_id.clone(), a.n),
///         );
///         Ok(())
///     });
/// ```
///
/// Statements run in the order they were queued, after the body returns, inside the batch's
/// transaction. A statement's failure is the failure of the event that queued it, and goes to
/// the projection's error policy like any handler error. Parameter types must match what
/// PostgreSQL infers for the placeholder (`i64` for `bigint`, `i32` for `integer`, `String` or
/// `&'static str` for `text`, `serde_json::Value` for `jsonb`, …); cast in SQL (`$1::int`)
/// where needed.
pub struct PgBatch {
    queue: Mutex<Vec<Queued>>,
    origin: Mutex<Origin>,
    schema: String,
    /// Rows loaded before the body ran (its `prefetch`), by table, as JSON text.
    prefetched: Mutex<HashMap<String, Vec<crate::core::document::JsonRow>>>,
    checks: Mutex<Vec<Check>>,
    document_write: DocumentWrite,
    /// Where queries go while the store applies a body ([`super::apply`]): the async side that
    /// holds the transaction, flushes the queue and runs the query.
    reader: Mutex<Option<Reader>>,
}

/// A query from a body, for the async side that holds the batch's transaction.
pub(crate) struct ReadRequest {
    pub sql: String,
    pub params: Vec<PgParam>,
    /// The event being applied when the body queried.
    pub origin: Origin,
    pub reply: std::sync::mpsc::SyncSender<
        Result<Vec<crate::core::document::Row>, crate::core::error::HandlerError>,
    >,
}

/// The sending end of a body's queries.
pub(crate) type Reader = tokio::sync::mpsc::UnboundedSender<ReadRequest>;

impl std::fmt::Debug for PgBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBatch")
            .field("statements", &self.len())
            .field("schema", &self.schema)
            .finish()
    }
}

impl PgBatch {
    pub(crate) fn new(schema: &str) -> Self {
        PgBatch {
            queue: Mutex::new(Vec::new()),
            origin: Mutex::new(Origin::Body),
            schema: schema.to_owned(),
            prefetched: Mutex::new(HashMap::new()),
            checks: Mutex::new(Vec::new()),
            document_write: DocumentWrite::default(),
            reader: Mutex::new(None),
        }
    }

    /// Installs (or removes) the channel that serves the body's queries.
    pub(crate) fn set_reader(&self, reader: Option<Reader>) {
        *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = reader;
    }

    /// Runs a query in the batch's transaction, after the statements queued before it: sends it
    /// to the async side and waits for the rows. Only on the thread the store runs the body on.
    pub(crate) fn read_raw(
        &self,
        sql: String,
        params: Vec<PgParam>,
    ) -> Result<Vec<crate::core::document::Row>, crate::core::error::HandlerError> {
        use crate::core::error::HandlerError;
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(reader) = reader else {
            return Err(HandlerError::msg(
                "this PostgreSQL context cannot read here: queries run only while the store applies a batch",
            ));
        };
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        reader
            .send(ReadRequest {
                sql,
                params,
                origin,
                reply,
            })
            .map_err(|_| HandlerError::msg("the batch's transaction ended before the query could run"))?;
        answer
            .recv()
            .map_err(|_| HandlerError::msg("the batch's transaction ended before the query answered"))?
    }

    pub(crate) fn with_document_write(mut self, w: DocumentWrite) -> Self {
        self.document_write = w;
        self
    }

    /// Queues one statement with bound parameters and a label for its error messages.
    pub(crate) fn queue_labeled(
        &self,
        sql: impl Into<Cow<'static, str>>,
        params: Vec<PgParam>,
        label: String,
    ) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql: Sql::Prepared(sql.into(), params),
            origin,
            label: (!label.is_empty()).then_some(label),
        });
    }

    /// Queues SQL text without parameters, with a label for its error messages.
    pub(crate) fn queue_script_labeled(&self, sql: impl Into<Cow<'static, str>>, label: String) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql: Sql::Simple(sql.into()),
            origin,
            label: (!label.is_empty()).then_some(label),
        });
    }

    /// Asks the store to prepare `sql` at setup (without running it) and to check that it
    /// takes `params` parameters.
    pub(crate) fn check(&self, sql: String, untyped: Option<String>, params: usize, label: String) {
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).push(Check {
            sql,
            untyped,
            params,
            label,
        });
    }

    pub(crate) fn take_checks(&self) -> Vec<Check> {
        std::mem::take(&mut *self.checks.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Hands the body the rows of its prefetch.
    pub(crate) fn set_prefetched(&self, table: String, rows: Vec<crate::core::document::JsonRow>) {
        self.prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(table, rows);
    }

    fn has_prefetched(&self, table: &str) -> bool {
        self.prefetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(table)
    }

    /// The prefetched rows of `table` whose key is one of `keys`.
    fn prefetched_json(&self, table: &str, keys: &[&str]) -> Vec<crate::core::document::JsonRow> {
        let prefetched = self.prefetched.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rows) = prefetched.get(table) else {
            return Vec::new();
        };
        let wanted: std::collections::HashSet<&str> = keys.iter().copied().collect();
        rows.iter()
            .filter(|r| wanted.contains(r.key.as_str()))
            .cloned()
            .collect()
    }

    fn push_document_upsert(&self, sql: Sql) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql,
            origin,
            label: Some("document upsert".into()),
        });
    }

    /// Queues one statement with bound parameters (`$1`, `$2`, …).
    pub fn execute(&self, sql: impl Into<Cow<'static, str>>, params: impl PgParams) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql: Sql::Prepared(sql.into(), params.into_params()),
            origin,
            label: None,
        });
    }

    /// Queues SQL text without parameters, possibly several statements separated by `;`
    /// (for DDL in setup and reset).
    pub fn batch_execute(&self, sql: impl Into<Cow<'static, str>>) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql: Sql::Simple(sql.into()),
            origin,
            label: None,
        });
    }

    /// The schema the store's tables live in. The store's connections also use it as their
    /// `search_path`, so unqualified table names resolve there.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// How many statements are queued.
    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, q: Queued) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(q);
    }

    pub(crate) fn set_origin(&self, origin: Origin) {
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = origin;
    }

    /// Queues a statement of the store itself.
    pub(crate) fn store(&self, sql: impl Into<Cow<'static, str>>, params: Vec<PgParam>) -> usize {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.push(Queued {
            sql: Sql::Prepared(sql.into(), params),
            origin: Origin::Store,
            label: None,
        });
        q.len() - 1
    }

    pub(crate) fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The first failing statement of a pipeline.
pub(crate) struct PipelineError {
    pub index: usize,
    pub origin: Origin,
    pub error: tokio_postgres::Error,
    pub label: Option<String>,
}

impl PipelineError {
    /// The server's message, prefixed with the failing statement's label.
    pub fn message(&self) -> String {
        match &self.label {
            Some(l) => format!("{l}: {}", super::error::describe(&self.error)),
            None => super::error::describe(&self.error),
        }
    }
}

/// Runs `queued` in order inside `tx`: runs of ordinary statements are pipelined; a
/// `CopyUpsert` runs on its own between them. Returns each statement's row count, or the
/// first failure.
pub(crate) async fn run(
    tx: &deadpool_postgres::Transaction<'_>,
    queued: &[Queued],
) -> Result<Vec<u64>, PipelineError> {
    run_in_window(tx, queued, PIPELINE_WINDOW).await
}

/// [`run`] with at most `window` statements in flight (1: each waits for the one before it,
/// so that nothing is queued behind a failure for the server to reject and log).
pub(crate) async fn run_in_window(
    tx: &deadpool_postgres::Transaction<'_>,
    queued: &[Queued],
    window: usize,
) -> Result<Vec<u64>, PipelineError> {
    let mut counts = Vec::with_capacity(queued.len());
    let mut start = 0;
    while start < queued.len() {
        let end = queued[start..]
            .iter()
            .position(|q| matches!(q.sql, Sql::CopyUpsert { .. }))
            .map_or(queued.len(), |k| start + k);
        if end > start {
            let seg = run_pipeline(tx, &queued[start..end], window.max(1))
                .await
                .map_err(|e| PipelineError {
                    index: e.index + start,
                    ..e
                })?;
            counts.extend(seg);
        }
        if let Some(q) = queued.get(end) {
            if let Sql::CopyUpsert { insert, rows } = &q.sql {
                let n = copy_upsert(tx, insert, rows)
                    .await
                    .map_err(|error| PipelineError {
                        index: end,
                        origin: q.origin,
                        error,
                        label: q.label.clone(),
                    })?;
                counts.push(n);
            }
        }
        start = end + 1;
    }
    Ok(counts)
}

/// The temporary table of `DocumentWrite::CopyTemp`.
pub(super) const COPY_TABLE: &str = "projectionist_document_rows";

async fn copy_upsert(
    tx: &deadpool_postgres::Transaction<'_>,
    insert: &str,
    rows: &[serde_json::Value],
) -> Result<u64, tokio_postgres::Error> {
    use futures_util::pin_mut;
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {COPY_TABLE} (doc jsonb) ON COMMIT DELETE ROWS; \
         TRUNCATE {COPY_TABLE}"
    ))
    .await?;
    let sink = tx
        .copy_in(&format!("COPY {COPY_TABLE} (doc) FROM STDIN (FORMAT binary)"))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::JSONB]);
    pin_mut!(writer);
    for r in rows {
        writer.as_mut().write(&[r]).await?;
    }
    writer.finish().await?;
    tx.execute(insert, &[]).await
}

type StmtFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// The most statements of one transaction in flight at once. Once a statement fails, the server
/// answers every statement already sent behind it with "current transaction is aborted", and
/// logs each as an error: the window bounds those lines to `PIPELINE_WINDOW - 1` per failure
/// (a whole batch pipelined logged one per statement of the batch after the failure), and
/// nothing is sent after a failure is known. It is wide enough that the server rarely waits for
/// the client: on the debug bench (50,000 events), 8 in flight cost about a third of the
/// per-event rebuilds' speed; 64, refilled in halves, measured within the run-to-run noise of a
/// shared 2-core machine (declarative 16 % slower, typed per-event 7 % faster than a whole
/// batch pipelined, in one sitting).
pub(crate) const PIPELINE_WINDOW: usize = 64;

/// A statement sent: answered on its first poll, or still waiting.
enum InFlight<'a> {
    Done(Result<u64, tokio_postgres::Error>),
    Waiting(StmtFuture<'a>),
}

/// Runs `queued` in order inside `tx`, pipelined: up to `in_flight` statements are sent
/// before the first answer is awaited, and once half of them answered, the window is filled
/// again. Returns each statement's row count, or the first failure (the statements after it
/// that were not in flight are not sent).
async fn run_pipeline(
    tx: &deadpool_postgres::Transaction<'_>,
    queued: &[Queued],
    in_flight: usize,
) -> Result<Vec<u64>, PipelineError> {
    let fail = |index: usize, error: tokio_postgres::Error| PipelineError {
        index,
        origin: queued.get(index).map_or(Origin::Store, |q| q.origin),
        error,
        label: queued.get(index).and_then(|q| q.label.clone()),
    };
    // Prepare every distinct statement (cached per connection), one after the other: a
    // statement that does not prepare is the only one the server rejects.
    let mut distinct: Vec<&str> = Vec::new();
    let mut slot = Vec::with_capacity(queued.len());
    for q in queued {
        match &q.sql {
            Sql::Prepared(sql, _) => {
                let i = match distinct.iter().position(|s| *s == sql.as_ref()) {
                    Some(i) => i,
                    None => {
                        distinct.push(sql.as_ref());
                        distinct.len() - 1
                    }
                };
                slot.push(Some(i));
            }
            Sql::Simple(_) | Sql::CopyUpsert { .. } => slot.push(None),
        }
    }
    let mut statements = Vec::with_capacity(distinct.len());
    for (i, sql) in distinct.iter().enumerate() {
        match tx.prepare_cached(sql).await {
            Ok(st) => statements.push(st),
            Err(error) => {
                let index = slot.iter().position(|s| *s == Some(i)).unwrap_or(0);
                return Err(fail(index, error));
            }
        }
    }

    let params: Vec<Vec<&(dyn ToSql + Sync)>> = queued
        .iter()
        .map(|q| match &q.sql {
            Sql::Prepared(_, ps) => ps.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect(),
            Sql::Simple(_) | Sql::CopyUpsert { .. } => Vec::new(),
        })
        .collect();
    let mut futures = queued.iter().zip(&slot).zip(&params).map(|((q, s), ps)| {
        let fut: StmtFuture<'_> = match (&q.sql, s.and_then(|i| statements.get(i))) {
            (Sql::Prepared(..), Some(st)) => Box::pin(tx.execute(st, ps)),
            (Sql::Simple(sql), _) => {
                let sql = sql.as_ref();
                Box::pin(async move { tx.batch_execute(sql).await.map(|()| 0) })
            }
            (Sql::Prepared(sql, _), None) => {
                let sql = sql.as_ref();
                Box::pin(async move { tx.execute(sql, ps).await })
            }
            (Sql::CopyUpsert { insert, .. }, _) => {
                // Never reached: `run` splits pipelines at copies. Run the insert alone.
                let sql = insert.as_str();
                Box::pin(async move { tx.execute(sql, &[]).await })
            }
        };
        fut
    });

    let mut counts = Vec::with_capacity(queued.len());
    let mut window: std::collections::VecDeque<InFlight<'_>> = std::collections::VecDeque::new();
    loop {
        // Fill the window once half of it answered, so that requests go out several at a
        // time. A statement's request goes out on its first poll: polling each once as it
        // joins keeps them in queue order on the wire.
        if window.len() <= in_flight / 2 {
            let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
            while window.len() < in_flight {
                let Some(mut f) = futures.next() else { break };
                window.push_back(match f.as_mut().poll(&mut cx) {
                    Poll::Ready(r) => InFlight::Done(r),
                    Poll::Pending => InFlight::Waiting(f),
                });
            }
        }
        let answer = match window.pop_front() {
            None => return Ok(counts),
            Some(InFlight::Done(r)) => r,
            Some(InFlight::Waiting(f)) => f.await,
        };
        match answer {
            Ok(n) => counts.push(n),
            // The statements still in the window were sent; their answers are dropped.
            Err(error) => return Err(fail(counts.len(), error)),
        }
    }
}

impl crate::core::document::DocumentStorage for PgBatch {
    /// Serves the rows the store loaded for the body's `prefetch`, inside the batch's
    /// transaction, after the checkpoint's compare-and-set.
    fn load_rows(
        &self,
        table: &str,
        key_column: &str,
        keys: &[&str],
    ) -> Result<Vec<crate::core::document::Row>, crate::core::error::HandlerError> {
        if !self.has_prefetched(table) {
            // Not prefetched: read them now, in the batch's transaction.
            let sql = super::apply::prefetch_sql(table, key_column);
            let keys: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            return self.read_raw(sql, vec![Box::new(keys) as PgParam]);
        }
        self.prefetched_json(table, keys)
            .iter()
            .map(|r| serde_json::from_str(&r.json).map_err(Into::into))
            .collect()
    }

    /// Queues one bulk upsert of every row.
    fn upsert_rows(
        &self,
        table: &str,
        key_column: &str,
        rows: &[crate::core::document::Row],
    ) -> Result<(), crate::core::error::HandlerError> {
        let Some(first) = rows.first() else { return Ok(()) };
        let columns: Vec<String> = first.keys().cloned().collect();
        let docs: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::Value::Object(r.clone()))
            .collect();
        let sql = super::document::UpsertSql::new(table, key_column, &columns);
        match self.document_write {
            DocumentWrite::Recordset => self.push_document_upsert(Sql::Prepared(
                sql.recordset.into(),
                vec![Box::new(serde_json::Value::Array(docs)) as PgParam],
            )),
            DocumentWrite::CopyTemp => self.push_document_upsert(Sql::CopyUpsert {
                insert: sql.from_copy,
                rows: docs,
            }),
        }
        Ok(())
    }

    /// Rows go in and out as `jsonb` text: documents decode from, and encode to, it directly.
    fn speaks_json(&self) -> bool {
        true
    }

    fn load_json(
        &self,
        table: &str,
        key_column: &str,
        keys: &[&str],
    ) -> Result<Vec<crate::core::document::JsonRow>, crate::core::error::HandlerError> {
        if !self.has_prefetched(table) {
            let rows = self.load_rows(table, key_column, keys)?;
            return Ok(super::document::rows_to_json(key_column, rows));
        }
        Ok(self.prefetched_json(table, keys))
    }

    /// Queues one bulk upsert of the rows, sent as the text of one `json` parameter (with
    /// `DocumentWrite::CopyTemp`, as rows parsed from it).
    fn upsert_json(
        &self,
        table: &str,
        key_column: &str,
        rows: crate::core::document::JsonRows,
    ) -> Result<(), crate::core::error::HandlerError> {
        if rows.columns.is_empty() {
            return Ok(());
        }
        match self.document_write {
            DocumentWrite::Recordset => {
                let sql = super::document::UpsertSql::new(table, key_column, &rows.columns);
                self.push_document_upsert(Sql::Prepared(
                    sql.json_recordset.into(),
                    vec![Box::new(super::sql_tx::TextParam(Some(rows.array))) as PgParam],
                ));
                Ok(())
            }
            DocumentWrite::CopyTemp => {
                let parsed: Vec<crate::core::document::Row> = serde_json::from_str(&rows.array)?;
                self.upsert_rows(table, key_column, &parsed)
            }
        }
    }

    fn clear_table(&self, table: &str) -> Result<(), crate::core::error::HandlerError> {
        self.batch_execute(format!(
            "DELETE FROM {}",
            crate::core::document::quote_ident(table)
        ));
        Ok(())
    }

    fn execute_script(&self, sql: &str) -> Result<(), crate::core::error::HandlerError> {
        self.batch_execute(sql.to_owned());
        Ok(())
    }
}
