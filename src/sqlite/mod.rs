//! The embedded SQLite backend: an event store, a source and a store in one file.
//!
//! Events, read models, checkpoints and dead letters share one database, so every batch is
//! applied exactly once: the read-model writes and the checkpoint's compare-and-set commit in
//! one transaction. The database runs in WAL mode; runners read through their own connection
//! while a writer appends.
//!
//! With a source that may redeliver (a broker such as RabbitMQ), the store also records the ids
//! of the events each projection applied, in the commit's transaction
//! (`projection_seen_events`), and the runner drops redelivered events whose id is recorded. Ids
//! are kept for the [dedup retention](SqliteStore::dedup_retention) (24 hours by default), then
//! pruned in the background.
//!
//! # Layout
//!
//! `connect` opens a database, `append` writes events (the
//! [`EventLog`](crate::core::log::EventLog)), `read` reads them (the [`Source`]), `query` queries
//! read models, `commit` commits batches, `lifecycle` prepares, resets and pauses projections,
//! `dead_letters` lists and retries failures, `seen` keeps and prunes the ids of applied
//! events, `rows` decodes rows; `inline`, `blue_green` and `document` are the inline,
//! blue/green and document features.

mod append;
mod blue_green;
mod commit;
mod connect;
mod dead_letters;
mod document;
mod inline;
mod lease;
mod lifecycle;
mod memory;
mod query;
mod read;
mod rows;
mod schema;
mod seen;
mod sql_tx;
pub mod testing;

pub use crate::core::shadow::BlueGreenReport;

use lifecycle::load_record;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::watch;
use uuid::Uuid;

use crate::core::engine::Engine;
use crate::core::error::{Error, HandlerError, Result};
use crate::core::lease::{Lease, LeaseInfo, Member, Membership};
use crate::core::projection::{Apply, Handlers, Projection};
use crate::core::runner::RunnerSettings;
#[cfg(doc)]
use crate::core::source::Source;
use crate::core::store::{Commit, CommitError, DeadLetter, ProjectionRecord, RunState, Store};

pub use memory::{PAGE_CACHE_PAGES, PAGE_SIZE};
pub use rows::{format_time, parse_time};
pub use rusqlite;
pub use schema::SCHEMA;
pub use seen::DEFAULT_DEDUP_RETENTION;

/// Events per batch of a per-event projection on SQLite that does not set its own size. Each
/// commit writes every page its batch dirtied to the WAL, so a page that every batch touches is
/// written once per batch: measured with `projectionist bench` at 1,000,000 events, 5,000
/// instead of 1,000 gave the declarative projection 1.16x and typed handlers 1.10x
/// (BENCHMARKS.md). PostgreSQL keeps 1,000, where larger batches measured slower.
pub const PER_EVENT_BATCH_SIZE: usize = 5_000;

/// A projection body over SQLite: it gets the connection that holds the batch's transaction.
pub type SqliteBody = dyn Apply<Connection>;
/// A projection on SQLite.
pub type SqliteProjection = Projection<SqliteBody>;
/// Typed per-event handlers on SQLite.
pub type SqliteHandlers = Handlers<Connection>;
/// An engine whose events and read models both live in one SQLite database.
pub type SqliteEngine = Engine<SqliteStore, SqliteStore>;

pub use crate::core::event::{ImportProgress, StreamAppend};

struct Inner {
    location: String,
    writer: Mutex<Connection>,
    /// A second connection for reads, so that runners read while a writer appends (WAL).
    /// `None` for in-memory databases, which cannot share.
    reader: Option<Mutex<Connection>>,
    changes: watch::Sender<u64>,
    checkpoints: watch::Sender<u64>,
    /// How long seen event ids are kept, in seconds.
    dedup_retention: AtomicU64,
    /// When seen ids were last pruned (Unix seconds; 0: not yet in this process).
    last_prune: AtomicI64,
    /// A prune is running.
    pruning: AtomicBool,
}

impl Inner {
    fn writer(&self) -> MutexGuard<'_, Connection> {
        // A poisoned lock only means a panic elsewhere while holding it; the connection itself
        // is still consistent (any open transaction was rolled back when it was dropped).
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        match &self.reader {
            Some(r) => r.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.writer(),
        }
    }

    fn bump(tx: &watch::Sender<u64>) {
        tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The SQLite event store, source and store. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.location)
            .finish()
    }
}

/// A database error during `op`. A row decoder's own error (an unknown stored value) travels
/// inside rusqlite's conversion error, and comes out as itself.
pub(crate) fn db_err(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| {
        let e = match e {
            rusqlite::Error::FromSqlConversionFailure(column, kind, cause) => match cause.downcast::<Error>()
            {
                Ok(ours) => return *ours,
                Err(cause) => rusqlite::Error::FromSqlConversionFailure(column, kind, cause),
            },
            other => other,
        };
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        );
        Error::Database {
            op,
            message: e.to_string(),
            retryable,
            cause: Some(Box::new(e)),
        }
    }
}

impl SqliteStore {
    /// Where the database is (a path, or `:memory:`).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// An engine on this database, with no projections yet, and the store's
    /// [runner settings](Store::runner_settings).
    pub fn engine(&self) -> SqliteEngine {
        Engine::new(Arc::new(self.clone()), Arc::new(self.clone())).settings(self.runner_settings())
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::task("a database task", e))?
    }

    /// Runs `f` on the read connection (for queries on read models). Not in a transaction.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.blocking(move |inner| f(&inner.reader()).map_err(db_err("reading")))
            .await
    }

    /// Runs `f` on the write connection inside a transaction that commits when `f` succeeds.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err("beginning a write"))?;
            let out = f(&tx).map_err(db_err("writing"))?;
            tx.commit().map_err(db_err("committing a write"))?;
            Ok(out)
        })
        .await
    }
}

impl Store for SqliteStore {
    type Body = SqliteBody;

    async fn prepare(&self, name: &str, partition: u32, body: Arc<SqliteBody>) -> Result<ProjectionRecord> {
        self.prepare_projection(name, partition, body).await
    }

    async fn check_setup(&self, name: &str, body: Arc<SqliteBody>) -> Result<()> {
        self.check_projection_setup(name, body).await
    }

    async fn record(&self, name: &str, partition: u32) -> Result<Option<ProjectionRecord>> {
        let name = name.to_owned();
        self.read(move |conn| load_record(conn, &name, partition)).await
    }

    async fn records(&self) -> Result<Vec<ProjectionRecord>> {
        self.load_records().await
    }

    async fn commit(&self, commit: Commit<SqliteBody>) -> Result<(), CommitError> {
        self.commit_sqlite(commit).await
    }

    async fn seen(&self, projection: &str, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        self.seen_ids(projection, ids).await
    }

    async fn reset(&self, name: &str, body: Arc<SqliteBody>) -> Result<()> {
        self.reset_projection(name, body).await
    }

    async fn set_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> Result<()> {
        self.set_run_state(name, partition, state, reason).await
    }

    async fn dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        self.list_dead_letters(projection).await
    }

    async fn discard_dead_letter(&self, id: i64) -> Result<()> {
        self.discard_one_dead_letter(id).await
    }

    async fn retry_dead_letter(&self, id: i64, body: Arc<SqliteBody>) -> Result<Result<(), HandlerError>> {
        self.retry_one_dead_letter(id, body).await
    }

    async fn heartbeat(&self, member: &Member) -> Result<Membership> {
        self.lease_heartbeat(member).await
    }

    async fn acquire(&self, member: &Member, max: u32) -> Result<Vec<Lease>> {
        self.lease_acquire(member, max).await
    }

    async fn release(&self, member: &Member, leases: &[Lease]) -> Result<()> {
        self.lease_release(member, leases).await
    }

    async fn leave(&self, member: &Member) -> Result<()> {
        self.lease_leave(member).await
    }

    async fn leases(&self, projection: &str) -> Result<Vec<LeaseInfo>> {
        self.lease_infos(projection).await
    }

    /// Processes on one file share nothing else: each projection runs under a lease, and a
    /// second `run` waits as a standby.
    fn leases_every_runner(&self) -> bool {
        true
    }

    fn checkpoint_changes(&self) -> watch::Receiver<u64> {
        self.inner.checkpoints.subscribe()
    }

    /// SQLite serializes writers, so engines apply one batch at a time, by priority; and
    /// per-event projections read 5,000 events per batch unless they set their own size.
    fn runner_settings(&self) -> RunnerSettings {
        RunnerSettings {
            concurrency: 1,
            per_event_batch_size: PER_EVENT_BATCH_SIZE,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests;
