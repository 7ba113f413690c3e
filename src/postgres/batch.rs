//! `PgBatch`: the context PostgreSQL projection bodies write to.
//!
//! Bodies are synchronous (`Apply<PgBatch>`), while tokio-postgres is async. So a body does not
//! run statements itself: it queues them, with owned parameters, in a [`PgBatch`]. The store
//! then sends every queued statement of a batch at once (pipelined, prepared statements cached
//! per connection) inside the transaction that also moves the checkpoint, and maps a failing
//! statement back to the event that queued it.

use std::borrow::Cow;
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
}

pub(crate) enum Sql {
    /// Extended protocol: prepared (and cached per connection), with bound parameters.
    Prepared(Cow<'static, str>, Vec<PgParam>),
    /// Simple protocol: may hold several statements, takes no parameters (DDL).
    Simple(Cow<'static, str>),
}

pub(crate) struct Queued {
    pub sql: Sql,
    pub origin: Origin,
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
}

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
        }
    }

    /// Queues one statement with bound parameters (`$1`, `$2`, …).
    pub fn execute(&self, sql: impl Into<Cow<'static, str>>, params: impl PgParams) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql: Sql::Prepared(sql.into(), params.into_params()),
            origin,
        });
    }

    /// Queues SQL text without parameters, possibly several statements separated by `;`
    /// (for DDL in setup and reset).
    pub fn batch_execute(&self, sql: impl Into<Cow<'static, str>>) {
        let origin = *self.origin.lock().unwrap_or_else(|p| p.into_inner());
        self.push(Queued {
            sql: Sql::Simple(sql.into()),
            origin,
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
        });
        q.len() - 1
    }

    /// Drops the statements queued from `from` on.
    pub(crate) fn truncate(&self, from: usize) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .truncate(from);
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
}

type StmtFuture<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

/// Runs `queued` in order inside `tx`, pipelined: every statement is sent before the first
/// answer is awaited. Returns each statement's row count, or the first failure (in queue order:
/// the statements after a failure fail too, because the transaction is aborted).
pub(crate) async fn run(
    tx: &deadpool_postgres::Transaction<'_>,
    queued: &[Queued],
) -> Result<Vec<u64>, PipelineError> {
    // Prepare every distinct statement (cached per connection), pipelined too.
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
            Sql::Simple(_) => slot.push(None),
        }
    }
    let prepared = futures_util::future::join_all(distinct.iter().map(|sql| tx.prepare_cached(sql))).await;
    let mut statements = Vec::with_capacity(prepared.len());
    let mut failed = None;
    for (i, p) in prepared.into_iter().enumerate() {
        match p {
            Ok(st) => statements.push(Some(st)),
            Err(e) => {
                statements.push(None);
                failed.get_or_insert((i, e));
            }
        }
    }
    if let Some((bad, error)) = failed {
        let index = slot.iter().position(|s| *s == Some(bad)).unwrap_or(0);
        return Err(PipelineError {
            index,
            origin: queued.get(index).map_or(Origin::Store, |q| q.origin),
            error,
        });
    }

    let params: Vec<Vec<&(dyn ToSql + Sync)>> = queued
        .iter()
        .map(|q| match &q.sql {
            Sql::Prepared(_, ps) => ps.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect(),
            Sql::Simple(_) => Vec::new(),
        })
        .collect();
    let mut futures: Vec<StmtFuture<'_>> = Vec::with_capacity(queued.len());
    for ((q, s), ps) in queued.iter().zip(&slot).zip(&params) {
        let fut: StmtFuture<'_> = match (&q.sql, s.and_then(|i| statements.get(i)).and_then(Option::as_ref)) {
            (Sql::Prepared(..), Some(st)) => Box::pin(tx.execute(st, ps)),
            (Sql::Simple(sql), _) => {
                let sql = sql.as_ref();
                Box::pin(async move { tx.batch_execute(sql).await.map(|()| 0) })
            }
            (Sql::Prepared(sql, _), None) => {
                let sql = sql.as_ref();
                Box::pin(async move { tx.execute(sql, ps).await })
            }
        };
        futures.push(fut);
    }

    // Poll each future once, in queue order, so that the requests go out in that order; then
    // await them all.
    let mut done: Vec<Option<Result<u64, tokio_postgres::Error>>> = Vec::with_capacity(futures.len());
    {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        for f in futures.iter_mut() {
            done.push(match f.as_mut().poll(&mut cx) {
                Poll::Ready(r) => Some(r),
                Poll::Pending => None,
            });
        }
    }
    let pending: Vec<(usize, StmtFuture<'_>)> = futures
        .into_iter()
        .enumerate()
        .filter(|(i, _)| done.get(*i).is_some_and(Option::is_none))
        .collect();
    let finished =
        futures_util::future::join_all(pending.into_iter().map(|(i, f)| async move { (i, f.await) })).await;
    for (i, r) in finished {
        if let Some(d) = done.get_mut(i) {
            *d = Some(r);
        }
    }
    let mut counts = Vec::with_capacity(done.len());
    for (index, r) in done.into_iter().enumerate() {
        match r {
            Some(Ok(n)) => counts.push(n),
            Some(Err(error)) => {
                return Err(PipelineError {
                    index,
                    origin: queued.get(index).map_or(Origin::Store, |q| q.origin),
                    error,
                })
            }
            None => counts.push(0),
        }
    }
    Ok(counts)
}
