//! The PostgreSQL backend: a gap-free event store (the [`Source`]), and read models with their
//! checkpoints and dead letters (the [`Store`]).
//!
//! # Gap-free reading
//!
//! Each event records the id of the transaction that wrote it (`xid`, `pg_current_xact_id()`
//! as a `bigint`). Readers take only rows whose `xid` is below
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running, ordered by
//! `(xid, position)`, and a checkpoint is that pair. A transaction that is still open can
//! therefore never commit an event *behind* a checkpoint: no event is ever skipped, and nothing
//! depends on a clock. The read is an index range scan on `events (xid, position)`.
//!
//! # Exactly once
//!
//! Each batch is one transaction on the read models' database: a compare-and-set of the
//! checkpoint, the statements the projection queued (pipelined), dead letters and counters.
//! Events and read models may live in different databases: the [`Source`] and the [`Store`]
//! are separate [`PgStore`] handles, and the checkpoints always live with the read models.
//!
//! # Live tail
//!
//! A statement trigger on the events table `pg_notify`s `<schema>.events`, so that direct
//! `INSERT`s from any language wake the runners within milliseconds. A dedicated connection
//! listens, and reconnects with backoff; runners also poll, so a lost notification only
//! delays them.
//!
//! See docs/postgres.md for a guide and docs/events-table.md for the events table contract.
//!
//! # Layout
//!
//! `connect` builds a store, `sql` holds every statement, `append` writes events (the
//! [`EventLog`](crate::core::log::EventLog)), `read` reads them (the [`Source`]), `commit`
//! commits batches, `lifecycle` prepares, resets and pauses projections, `dead_letters` lists and
//! retries failures, `rows` decodes rows, `query` queries read models, `document` loads and
//! upserts the rows of document projections as JSON text; `partition`, `inline` and
//! `blue_green` are the partitioned, inline and blue/green features.

/// Boxes each value as a [`PgParam`] (which must be in scope where it is used).
macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$(Box::new($v) as PgParam),*] };
}

mod append;
mod apply;
mod batch;
mod blue_green;
mod commit;
mod connect;
mod dead_letters;
mod dispatch;
mod document;
pub(crate) mod error;
mod inline;
mod lifecycle;
mod listen;
mod partition;
mod query;
mod read;
mod rows;
mod schema;
mod server_batch;
mod sql;
mod sql_tx;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
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

pub use crate::core::shadow::BlueGreenReport;
pub use batch::{DocumentWrite, PgBatch, PgParam, PgParams};
pub use connect::{PgBuilder, DEFAULT_SEEN_RETENTION};
pub use deadpool_postgres;
pub use sql_tx::TextParam;
pub use tokio_postgres;

use error::pool as pool_err;
use sql::Sql;

/// A projection body over PostgreSQL: it queues statements in a [`PgBatch`].
pub type PgBody = dyn Apply<PgBatch>;
/// A projection on PostgreSQL.
pub type PgProjection = Projection<PgBody>;
/// Typed per-event handlers on PostgreSQL.
pub type PgHandlers = Handlers<PgBatch>;
/// An engine whose events and read models live on PostgreSQL (one database or two).
pub type PgEngine = Engine<PgStore, PgStore>;

pub use crate::core::event::{ImportProgress, StreamAppend};

struct Wake {
    pending: bool,
    delay: Duration,
}

struct Inner {
    pool: Pool,
    schema: String,
    location: String,
    document_write: DocumentWrite,
    /// The configuration as given (for sibling stores such as a blue/green shadow).
    base_config: tokio_postgres::Config,
    application_name: String,
    sql: Sql,
    changes: Arc<watch::Sender<u64>>,
    checkpoints: Arc<watch::Sender<u64>>,
    listening: Arc<AtomicBool>,
    /// A pending re-read after a read found only rows of still-open transactions.
    wake: Mutex<Wake>,
    /// Partition counts whose index this process has made sure of.
    partition_indexes: Mutex<HashSet<u32>>,
    /// The engine's tables did not exist before this handle connected (it created them).
    created: bool,
    seen_retention: Duration,
    last_prune: Mutex<Option<std::time::Instant>>,
    /// Declarative projections' server-side functions (see `server_batch`).
    server_fns: server_batch::ServerFns,
    /// Whether declarative projections and typed per-event handlers run a batch in one call
    /// of a generated function.
    server_batches: bool,
    /// Typed per-event handlers' batch functions (see `dispatch`).
    dispatchers: dispatch::Dispatchers,
    /// Projections (and partitions) whose batches send one statement at a time for a while
    /// after a failing event, with how many batches are left (see `commit`).
    careful: Mutex<std::collections::HashMap<(Arc<str>, u32), u32>>,
    /// Dropped with the last handle: stops the listener.
    _stop: watch::Sender<()>,
}

/// A PostgreSQL database holding events (a [`Source`]), read models (a [`Store`]), or both.
/// Cheap to clone. For events and read models in different databases, build two handles and
/// pass them to [`Engine::new`] (see [`PgStore::engine_with`]).
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.inner.location)
            .field("schema", &self.inner.schema)
            .finish()
    }
}

fn partition_i32(partition: u32) -> Result<i32> {
    i32::try_from(partition).map_err(|_| {
        Error::InvalidInput(format!(
            "partition {partition} is too large for PostgreSQL (max {})",
            i32::MAX
        ))
    })
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

impl PgStore {
    /// An engine whose events and read models are both in this database, with the store's
    /// runner settings.
    pub fn engine(&self) -> PgEngine {
        Self::engine_with(self, self)
    }

    /// An engine reading events from `events` and keeping read models (and their
    /// checkpoints) in `read_models`, which may be another database; with the runner settings
    /// of `read_models`, where the batches are applied.
    pub fn engine_with(events: &PgStore, read_models: &PgStore) -> PgEngine {
        Engine::new(Arc::new(events.clone()), Arc::new(read_models.clone()))
            .settings(read_models.runner_settings())
    }

    /// Where the database is, without the password.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The schema of the engine's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Whether this handle created the engine's tables when it connected (a fresh database or
    /// schema), rather than finding them there.
    pub fn created_tables(&self) -> bool {
        self.inner.created
    }

    /// The connection pool (its connections use the schema as `search_path`), for queries on
    /// read models.
    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// Whether the notification listener is connected right now.
    pub fn is_listening(&self) -> bool {
        self.inner.listening.load(Ordering::SeqCst)
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| pool_err("getting a connection", e))
    }

    async fn client_for(&self, op: &'static str) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(|e| pool_err(op, e))
    }

    fn new_batch(&self) -> PgBatch {
        PgBatch::new(&self.inner.schema).with_document_write(self.inner.document_write)
    }
}

impl Store for PgStore {
    type Body = PgBody;

    async fn prepare(&self, name: &str, partition: u32, body: Arc<PgBody>) -> Result<ProjectionRecord> {
        self.prepare_projection(name, partition, body).await
    }

    async fn check_setup(&self, name: &str, body: Arc<PgBody>) -> Result<()> {
        self.check_projection_setup(name, body).await
    }

    async fn record(&self, name: &str, partition: u32) -> Result<Option<ProjectionRecord>> {
        let p = partition_i32(partition)?;
        let client = self.client_for("reading the checkpoint").await?;
        self.load_record(&client, name, p).await
    }

    async fn records(&self) -> Result<Vec<ProjectionRecord>> {
        self.load_records().await
    }

    async fn commit(&self, commit: Commit<PgBody>) -> Result<(), CommitError> {
        self.commit_pg(commit).await
    }

    async fn reset(&self, name: &str, body: Arc<PgBody>) -> Result<()> {
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

    async fn retry_dead_letter(&self, id: i64, body: Arc<PgBody>) -> Result<Result<(), HandlerError>> {
        self.retry_one_dead_letter(id, body).await
    }

    async fn seen(&self, projection: &str, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        self.seen_ids(projection, ids).await
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

    fn checkpoint_changes(&self) -> watch::Receiver<u64> {
        self.inner.checkpoints.subscribe()
    }

    /// PostgreSQL runs transactions side by side, and a batch's time is mostly the server's
    /// (the runner waits on its statements): engines apply up to half the pool's connections
    /// of batches at once (8 of the default 16), leaving the rest for reads, leases and
    /// queries. With one permit per core instead, 8 partitions in one process ran 2 at a
    /// time, at a third of the same partitions over two processes.
    fn runner_settings(&self) -> RunnerSettings {
        let defaults = RunnerSettings::default();
        let half_pool = self.inner.pool.status().max_size / 2;
        RunnerSettings {
            concurrency: defaults.concurrency.max(half_pool),
            ..defaults
        }
    }
}
