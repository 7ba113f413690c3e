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

mod blue_green;
mod document;
mod schema;
mod sql_tx;

pub use blue_green::BlueGreenReport;

use std::collections::HashMap;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior};
use tokio::sync::watch;
use uuid::Uuid;

use crate::core::engine::Engine;
use crate::core::error::{BatchFailure, Error, HandlerError, Result};
use crate::core::event::{Appended, Checkpoint, Event, ExpectedVersion, NewEvent};
use crate::core::projection::{Apply, Handlers, Projection};
use crate::core::source::{Batch, Filter, Lag, Source};
use crate::core::store::{Commit, CommitError, DeadLetter, NewDeadLetter, ProjectionRecord, RunState, Store};

pub use rusqlite;
pub use schema::SCHEMA;

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

/// How long a [`SqliteStore`] keeps the ids of applied events from sources that redeliver,
/// unless [`SqliteStore::dedup_retention`] says otherwise: 24 hours.
pub const DEFAULT_DEDUP_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Seen ids are pruned in chunks of this many rows, one short transaction each.
const PRUNE_CHUNK: i64 = 10_000;

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

fn db_err(op: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| {
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        );
        Error::Database {
            op,
            message: e.to_string(),
            retryable,
        }
    }
}

/// Sets up a connection: WAL, a busy timeout, and no automatic checkpoints (a background
/// thread checkpoints instead, so that no writer's commit pays for copying the WAL into the
/// database file; see `spawn_checkpointer`).
fn configure(conn: &Connection) -> Result<()> {
    let err = db_err("configuring the connection");
    conn.busy_timeout(Duration::from_secs(30)).map_err(&err)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(&err)?;
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        tracing::warn!(mode, "SQLite did not switch to WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -65536; PRAGMA wal_autocheckpoint = 0;")
        .map_err(&err)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// How often the background checkpointer looks for new writes.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints the WAL into the database file from its own thread and connection, after
/// writes, in PASSIVE mode (it never blocks readers or writers). It stops once the store is
/// dropped; SQLite also checkpoints when the last connection closes.
fn spawn_checkpointer(path: std::path::PathBuf, inner: std::sync::Weak<Inner>) {
    let spawned = std::thread::Builder::new().name("projectionist-sqlite-checkpoint".into()).spawn(move || {
        let conn = match Connection::open(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the checkpoint connection; the WAL is checkpointed when the database closes");
                return;
            }
        };
        let _ = conn.busy_timeout(Duration::from_millis(100));
        let mut seen = (u64::MAX, u64::MAX);
        loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            let Some(inner) = inner.upgrade() else { return };
            let now = (*inner.changes.borrow(), *inner.checkpoints.borrow());
            drop(inner);
            if now == seen {
                continue;
            }
            seen = now;
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(error = %e, "WAL checkpoint did not run; retrying later");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the checkpoint thread");
    }
}

/// Whether seen ids are due for pruning: never pruned in this process, or the last prune was
/// an eighth of the retention window ago (at least 1 s, at most 10 minutes).
fn prune_due(last: i64, now: i64, window_secs: u64) -> bool {
    let every = (window_secs / 8).clamp(1, 600) as i64;
    last == 0 || now - last >= every
}

/// Deletes seen ids recorded before `cutoff` (Unix seconds), in chunks of short transactions
/// so that commits wait for one chunk at most.
fn prune_seen_before(inner: &Inner, cutoff: i64) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let n = inner
            .writer()
            .prepare_cached(
                "DELETE FROM projection_seen_events WHERE (projection, event_id) IN \
                 (SELECT projection, event_id FROM projection_seen_events WHERE seen_at < ?1 LIMIT ?2)",
            )
            .and_then(|mut st| st.execute(params![cutoff, PRUNE_CHUNK]))
            .map_err(db_err("pruning seen event ids"))?;
        total += n as u64;
        if (n as i64) < PRUNE_CHUNK {
            return Ok(total);
        }
    }
}

/// The format of timestamps in the database: RFC 3339, UTC, microseconds.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a stored timestamp: RFC 3339, or SQLite's own `YYYY-MM-DD HH:MM:SS[.fff]` (UTC).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

const EVENT_COLUMNS: &str =
    "position, stream_id, stream_version, event_type, event_id, data, metadata, recorded_at";

/// Reads an event from a row of `EVENT_COLUMNS` starting at column `at`.
fn event_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Event> {
    let text = |i: usize| -> rusqlite::Result<&str> {
        row.get_ref(at + i)?.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(at + i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let event_id = text(4)?;
    Ok(Event {
        position: row.get(at)?,
        txid: 0,
        stream_id: text(1)?.to_owned(),
        stream_version: row.get(at + 2)?,
        event_type: text(3)?.to_owned(),
        event_id: Uuid::parse_str(event_id).unwrap_or_else(|_| {
            tracing::warn!(event_id, "event_id is not a UUID; using the nil UUID");
            Uuid::nil()
        }),
        data: Arc::from(text(5)?),
        metadata: Arc::from(text(6)?),
        recorded_at: parse_time(text(7)?).unwrap_or_default(),
    })
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` and creates the engine's tables.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path))
            .await
            .map_err(|e| Error::Invalid(format!("opening the database panicked: {e}")))?
    }

    /// [`open`](Self::open), for code that is not async.
    pub fn open_blocking(path: &Path) -> Result<Self> {
        let location = path.display().to_string();
        let open = |what: &'static str| {
            Connection::open(path).map_err(|e| Error::Database {
                op: what,
                message: format!("cannot open SQLite database {location}: {e}"),
                retryable: false,
            })
        };
        let writer = open("opening the database")?;
        configure(&writer)?;
        writer
            .execute_batch(SCHEMA)
            .map_err(db_err("creating the engine's tables"))?;
        let reader = open("opening the database for reads")?;
        configure(&reader)?;
        let store = Self::from_connections(location, writer, Some(reader));
        spawn_checkpointer(path.to_path_buf(), Arc::downgrade(&store.inner));
        Ok(store)
    }

    /// A private in-memory database (for tests and examples).
    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory().map_err(db_err("opening an in-memory database"))?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA)
            .map_err(db_err("creating the engine's tables"))?;
        Ok(Self::from_connections(":memory:".into(), conn, None))
    }

    fn from_connections(location: String, writer: Connection, reader: Option<Connection>) -> Self {
        SqliteStore {
            inner: Arc::new(Inner {
                location,
                writer: Mutex::new(writer),
                reader: reader.map(Mutex::new),
                changes: watch::channel(0).0,
                checkpoints: watch::channel(0).0,
                dedup_retention: AtomicU64::new(DEFAULT_DEDUP_RETENTION.as_secs()),
                last_prune: AtomicI64::new(0),
                pruning: AtomicBool::new(false),
            }),
        }
    }

    /// Sets how long the ids of applied events are kept for deduplication (sources that may
    /// redeliver, such as RabbitMQ; see [`Batch::deduplicate`]). A redelivery that arrives
    /// later than this after the first delivery was applied is applied again, so choose it
    /// longer than the longest time a message can stay unacknowledged or be redelivered
    /// (consumer outages included). Default: [`DEFAULT_DEDUP_RETENTION`] (24 hours), at
    /// least one second. Applies to every clone of this store. Older ids are pruned in the
    /// background, about every eighth of the window (at most every 10 minutes).
    pub fn dedup_retention(self, window: Duration) -> Self {
        self.inner
            .dedup_retention
            .store(window.as_secs().max(1), Ordering::Relaxed);
        self
    }

    /// The dedup retention in force (see [`dedup_retention`](Self::dedup_retention)).
    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.inner.dedup_retention.load(Ordering::Relaxed))
    }

    /// Deletes the seen event ids older than the dedup retention now, and returns how many.
    /// Commits do this on their own periodically; this is for operators and tests.
    pub async fn prune_seen(&self) -> Result<u64> {
        let cutoff = Utc::now().timestamp() - self.dedup_window().as_secs() as i64;
        self.blocking(move |inner| prune_seen_before(inner, cutoff)).await
    }

    /// Starts a background prune of seen ids when one is due (see `prune_due`).
    fn maybe_prune(&self) {
        let now = Utc::now().timestamp();
        let window = self.inner.dedup_retention.load(Ordering::Relaxed);
        let last = self.inner.last_prune.load(Ordering::Relaxed);
        if !prune_due(last, now, window) || self.inner.pruning.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.last_prune.store(now, Ordering::Relaxed);
        let inner = self.inner.clone();
        let cutoff = now - window as i64;
        tokio::task::spawn_blocking(move || {
            match prune_seen_before(&inner, cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "pruned seen event ids older than the dedup retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "pruning seen event ids failed; retrying at the next interval")
                }
            }
            inner.pruning.store(false, Ordering::Release);
        });
    }

    /// Where the database is (a path, or `:memory:`).
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// An engine on this database, with no projections yet. SQLite serializes writers, so
    /// the engine applies one batch at a time, by priority.
    pub fn engine(&self) -> SqliteEngine {
        let settings = crate::core::runner::RunnerSettings {
            concurrency: 1,
            ..Default::default()
        };
        Engine::new(Arc::new(self.clone()), Arc::new(self.clone())).settings(settings)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Invalid(format!("a database task panicked: {e}")))?
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

    /// Appends events to one stream. `expected` is checked against the stream's current
    /// version; a mismatch is [`Error::Conflict`] naming the stream, the expected and the
    /// actual version.
    pub async fn append(
        &self,
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        Appended::only(
            self.append_many(vec![StreamAppend::new(stream_id, expected, events)])
                .await?,
        )
    }

    /// Appends to several streams in one transaction: all or nothing.
    pub async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        let out = self
            .blocking(move |inner| {
                let mut conn = inner.writer();
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_err("beginning an append"))?;
                let mut versions = Versions::new(&tx)?;
                let now = format_time(Utc::now());
                let mut out = Vec::with_capacity(appends.len());
                for a in &appends {
                    out.push(append_in(&tx, &mut versions, a, &now)?);
                }
                tx.commit().map_err(db_err("committing an append"))?;
                Ok(out)
            })
            .await?;
        Inner::bump(&self.inner.changes);
        Ok(out)
    }

    /// Appends, then applies the `inline` projections to everything up to the new head, all
    /// in one transaction. A failing inline handler rolls the whole append back.
    async fn append_inline(
        &self,
        appends: Vec<StreamAppend>,
        inline: Vec<SqliteProjection>,
    ) -> Result<Vec<Appended>> {
        let any_inline = !inline.is_empty();
        let out = self
            .blocking(move |inner| {
                let mut conn = inner.writer();
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_err("beginning an append"))?;
                let mut versions = Versions::new(&tx)?;
                let now = format_time(Utc::now());
                let mut out = Vec::with_capacity(appends.len());
                for a in &appends {
                    out.push(append_in(&tx, &mut versions, a, &now)?);
                }
                for p in &inline {
                    apply_inline(&tx, p)?;
                }
                tx.commit().map_err(db_err("committing an append"))?;
                Ok(out)
            })
            .await?;
        Inner::bump(&self.inner.changes);
        if any_inline {
            Inner::bump(&self.inner.checkpoints);
        }
        Ok(out)
    }

    /// Imports a stream of appends in one transaction: when any item is an error, or any
    /// append conflicts, nothing of the import is written and that error is returned.
    /// The iterator runs on a blocking thread, so it may read a file.
    pub async fn import<I>(&self, items: I, progress: Option<ImportProgress>) -> Result<u64>
    where
        I: Iterator<Item = Result<StreamAppend>> + Send + 'static,
    {
        let n = self
            .blocking(move |inner| {
                let mut conn = inner.writer();
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(db_err("beginning an import"))?;
                let mut versions = Versions::new(&tx)?;
                let now = format_time(Utc::now());
                let mut n = 0u64;
                for item in items {
                    let a = item?;
                    append_in(&tx, &mut versions, &a, &now)?;
                    let len = a.events.len() as u64;
                    n += len;
                    if let Some(p) = &progress {
                        if n % 4096 < len {
                            p(n);
                        }
                    }
                }
                tx.commit().map_err(db_err("committing an import"))?;
                if let Some(p) = &progress {
                    p(n);
                }
                Ok(n)
            })
            .await?;
        Inner::bump(&self.inner.changes);
        Ok(n)
    }

    /// Every event of one stream, in version order.
    pub async fn read_stream(&self, stream_id: impl Into<String>) -> Result<Vec<Event>> {
        let stream_id = stream_id.into();
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 ORDER BY stream_version"
            ))?;
            let rows = st.query_map([stream_id], |r| event_from_row(r, 0))?;
            rows.collect()
        })
        .await
    }

    /// The number of events stored.
    pub async fn event_count(&self) -> Result<u64> {
        self.read(|conn| conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n.max(0) as u64)
    }
}

/// Stream versions known inside one write transaction.
struct Versions {
    known: HashMap<String, i64>,
    /// The events table was empty when the transaction began: every stream starts at 0.
    started_empty: bool,
}

impl Versions {
    fn new(tx: &Connection) -> Result<Self> {
        let started_empty = tx
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))
            .map_err(db_err("reading the events table"))?;
        Ok(Versions {
            known: HashMap::new(),
            started_empty,
        })
    }

    /// Validates an append and returns its stream's current version.
    fn check(&mut self, tx: &Connection, a: &StreamAppend) -> Result<i64> {
        if a.events.is_empty() {
            return Err(Error::Invalid(format!(
                "nothing to append to stream {}",
                a.stream_id
            )));
        }
        if a.stream_id.is_empty() {
            return Err(Error::Invalid("stream_id must not be empty".into()));
        }
        let current = match self.known.get(&a.stream_id) {
            Some(v) => *v,
            None if self.started_empty => 0,
            None => tx
                .prepare_cached("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = ?1")
                .and_then(|mut st| st.query_row([&a.stream_id], |r| r.get::<_, i64>(0)))
                .map_err(db_err("reading the stream version"))?,
        };
        if !a.expected.admits(current) {
            return Err(Error::Conflict {
                stream: a.stream_id.clone(),
                expected: a.expected,
                actual: current,
            });
        }
        Ok(current)
    }

    fn set(&mut self, stream_id: &str, version: i64) {
        match self.known.get_mut(stream_id) {
            Some(v) => *v = version,
            None => {
                self.known.insert(stream_id.to_owned(), version);
            }
        }
    }
}

/// Appends one stream's events inside `tx`. `versions` caches stream versions across the
/// appends of one transaction.
fn append_in(tx: &Connection, versions: &mut Versions, a: &StreamAppend, now: &str) -> Result<Appended> {
    let current = versions.check(tx, a)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (stream_id, stream_version, event_type, event_id, data, metadata, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err("preparing the append"))?;
    let mut version = current;
    let mut first = 0;
    let mut last = 0;
    let mut id_buf = Uuid::encode_buffer();
    for ev in &a.events {
        version += 1;
        let (data, metadata) = (ev.data_json(), ev.metadata_json());
        let event_id: &str = ev.event_id.hyphenated().encode_lower(&mut id_buf);
        match insert.execute(params![
            a.stream_id,
            version,
            ev.event_type,
            event_id,
            data,
            metadata,
            now
        ]) {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                let msg = e.to_string();
                if msg.contains("event_id") {
                    return Err(Error::DuplicateEvent {
                        event_id: ev.event_id,
                    });
                }
                return Err(Error::Conflict {
                    stream: a.stream_id.clone(),
                    expected: a.expected,
                    actual: version,
                });
            }
            Err(e) => return Err(db_err("appending an event")(e)),
        }
        last = tx.last_insert_rowid();
        if first == 0 {
            first = last;
        }
    }
    versions.set(&a.stream_id, version);
    Ok(Appended {
        first_position: first,
        last_position: last,
        stream_version: version,
        token: Checkpoint::at(last),
    })
}

/// Reads up to `limit` admitted events after `after`, on any connection (inside a write
/// transaction it also sees that transaction's own appends).
fn read_batch(conn: &Connection, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
    let limit = limit.max(1);
    let err = db_err("reading events");
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        ))
        .map_err(&err)?;
    // Filtered-out rows are cheap (only two columns are read), so a read looks further than
    // `limit` to fill its batch.
    let scan = limit.saturating_mul(8) as i64;
    let mut rows = st.query(params![after.position, scan]).map_err(&err)?;
    let mut batch = Batch {
        events: Vec::with_capacity(limit.min(4096)),
        scanned_to: after,
        ignored: 0,
        deduplicate: false,
    };
    while let Some(row) = rows.next().map_err(&err)? {
        let position: i64 = row.get(0).map_err(&err)?;
        let admitted = match row.get_ref(3).map_err(&err)?.as_str() {
            Ok(t) => filter.admits(t),
            Err(_) => false,
        };
        batch.scanned_to = Checkpoint::at(position);
        if admitted {
            batch
                .events
                .push(event_from_row(row, 0).map_err(db_err("decoding an event row"))?);
            if batch.events.len() >= limit {
                break;
            }
        } else {
            batch.ignored += 1;
        }
    }
    Ok(batch)
}

impl Source for SqliteStore {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let filter = filter.clone();
        self.blocking(move |inner| read_batch(&inner.reader(), after, limit, &filter))
            .await
    }

    async fn head(&self) -> Result<Checkpoint> {
        self.read(|conn| conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| r.get(0)))
            .await
            .map(Checkpoint::at)
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        self.read(move |conn| {
            let head: i64 =
                conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| r.get(0))?;
            let oldest: Option<String> = conn
                .prepare_cached(
                    "SELECT recorded_at FROM events WHERE position > ?1 ORDER BY position LIMIT 1",
                )?
                .query_row([after.position], |r| r.get(0))
                .optional()?;
            // Positions are dense in SQLite (one writer at a time, no reuse), so the difference
            // is the count without a scan.
            Ok(Lag {
                events: (head - after.position).max(0) as u64,
                oldest: oldest.as_deref().and_then(parse_time),
            })
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

const RECORD_COLUMNS: &str = "c.projection, c.partition, c.txid, c.position, c.state, c.reason, c.applied, c.ignored, c.errors, \
     c.events_per_second, c.last_error, c.updated_at, \
     (SELECT count(*) FROM projection_dead_letters d WHERE d.projection = c.projection AND d.partition = c.partition)";

fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ProjectionRecord> {
    let state: String = row.get(4)?;
    let updated: Option<String> = row.get(11)?;
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(ProjectionRecord {
        name: row.get(0)?,
        partition: row.get(1)?,
        checkpoint: Checkpoint {
            txid: row.get(2)?,
            position: row.get(3)?,
        },
        state: RunState::parse(&state).unwrap_or(RunState::Stopped),
        reason: row.get(5)?,
        applied: count(6)?,
        ignored: count(7)?,
        errors: count(8)?,
        events_per_second: row.get(9)?,
        last_error: row.get(10)?,
        updated_at: updated.as_deref().and_then(parse_time),
        dead_letters: count(12)?,
    })
}

fn load_record(conn: &Connection, name: &str, partition: u32) -> rusqlite::Result<Option<ProjectionRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM projection_checkpoints c WHERE c.projection = ?1 AND c.partition = ?2"
    ))?
    .query_row(params![name, partition], record_from_row)
    .optional()
}

fn lifecycle<'a>(projection: &'a str, step: &'static str) -> impl Fn(HandlerError) -> Error + 'a {
    move |e| Error::Lifecycle {
        projection: projection.to_owned(),
        step,
        message: e.to_string(),
    }
}

/// Records event ids as seen by `projection`, inside the commit's transaction. An id that is
/// already recorded fails the commit (and so writes nothing of it).
fn record_seen(tx: &Connection, projection: &str, ids: &[Uuid], now: i64) -> Result<(), CommitError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO projection_seen_events (projection, event_id, seen_at) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err("recording seen event ids"))?;
    for id in ids {
        match st.execute(params![projection, id, now]) {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                return Err(CommitError::Store(Error::Database {
                    op: "recording seen event ids",
                    message: format!(
                        "event {id} is already recorded as applied by projection {projection}: a redelivered \
                         event reached a commit (another runner applied it first, or it came twice in one \
                         batch); nothing of this commit was written, and a re-read drops it"
                    ),
                    retryable: true,
                }))
            }
            Err(e) => return Err(CommitError::Store(db_err("recording seen event ids")(e))),
        }
    }
    Ok(())
}

fn insert_dead_letter(
    tx: &Connection,
    projection: &str,
    partition: u32,
    dl: &NewDeadLetter,
    now: &str,
) -> rusqlite::Result<()> {
    let e = &dl.event;
    tx.prepare_cached(
        "INSERT INTO projection_dead_letters (projection, partition, position, txid, stream_id, stream_version, \
         event_type, event_id, data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        projection,
        partition,
        e.position,
        e.txid,
        e.stream_id,
        e.stream_version,
        e.event_type,
        e.event_id.to_string(),
        &*e.data,
        &*e.metadata,
        format_time(e.recorded_at),
        dl.error,
        dl.attempts,
        format_time(dl.first_failed_at),
        now,
    ])?;
    Ok(())
}

const DEAD_LETTER_COLUMNS: &str =
    "id, projection, partition, position, stream_id, stream_version, event_type, event_id, \
     data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at, txid";

fn dead_letter_from_row(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let mut event = event_from_row(row, 3)?;
    event.txid = row.get(15)?;
    let first: String = row.get(13)?;
    let last: String = row.get(14)?;
    Ok(DeadLetter {
        id: row.get(0)?,
        projection: row.get(1)?,
        partition: row.get(2)?,
        event,
        error: row.get(11)?,
        attempts: row.get(12)?,
        first_failed_at: parse_time(&first).unwrap_or_default(),
        last_failed_at: parse_time(&last).unwrap_or_default(),
    })
}

impl Engine<SqliteStore, SqliteStore> {
    /// Appends events to one stream and applies every inline projection in the same
    /// transaction: when this returns, inline read models already show the events. A failing
    /// inline handler fails the append with [`Error::InlineProjection`], and nothing of it is
    /// written. Projections that are not inline are applied by runners, as usual.
    pub async fn append(
        &self,
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Appended> {
        Appended::only(
            self.append_many(vec![StreamAppend::new(stream_id, expected, events)])
                .await?,
        )
    }

    /// Appends to several streams, with the inline projections, in one transaction.
    pub async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        let inline: Vec<SqliteProjection> = self
            .projections()
            .iter()
            .filter(|p| p.options().inline)
            .cloned()
            .collect();
        self.store().append_inline(appends, inline).await
    }
}

impl Store for SqliteStore {
    type Body = SqliteBody;

    async fn prepare(&self, name: &str, partition: u32, body: Arc<SqliteBody>) -> Result<ProjectionRecord> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err("beginning setup"))?;
            body.setup(&tx).map_err(lifecycle(&name, "setup"))?;
            tx.prepare_cached(
                "INSERT OR IGNORE INTO projection_checkpoints (projection, partition) VALUES (?1, ?2)",
            )
            .and_then(|mut st| st.execute(params![name, partition]))
            .map_err(db_err("creating the checkpoint"))?;
            let record = load_record(&tx, &name, partition).map_err(db_err("reading the checkpoint"))?;
            tx.commit().map_err(db_err("committing setup"))?;
            record.ok_or_else(|| Error::Invalid(format!("checkpoint of {name} vanished during setup")))
        })
        .await
    }

    async fn record(&self, name: &str, partition: u32) -> Result<Option<ProjectionRecord>> {
        let name = name.to_owned();
        self.read(move |conn| load_record(conn, &name, partition)).await
    }

    async fn records(&self) -> Result<Vec<ProjectionRecord>> {
        self.read(|conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM projection_checkpoints c ORDER BY c.projection, c.partition"
            ))?;
            let rows = st.query_map([], record_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn commit(&self, commit: Commit<SqliteBody>) -> Result<(), CommitError> {
        let inner = self.inner.clone();
        let records_ids = !commit.record_ids.is_empty();
        let res = tokio::task::spawn_blocking(move || commit_blocking(&inner, commit))
            .await
            .map_err(|e| CommitError::Store(Error::Invalid(format!("a commit task panicked: {e}"))))?;
        if res.is_ok() {
            Inner::bump(&self.inner.checkpoints);
            if records_ids {
                self.maybe_prune();
            }
        }
        res
    }

    async fn seen(&self, projection: &str, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let projection = projection.to_owned();
        let ids = ids.to_vec();
        self.read(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT 1 FROM projection_seen_events WHERE projection = ?1 AND event_id = ?2",
            )?;
            let mut seen = HashSet::new();
            for id in ids {
                if st.exists(params![projection, id])? {
                    seen.insert(id);
                }
            }
            Ok(seen)
        })
        .await
    }

    async fn reset(&self, name: &str, body: Arc<SqliteBody>) -> Result<()> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err("beginning a reset"))?;
            body.reset(&tx).map_err(lifecycle(&name, "reset"))?;
            let err = db_err("resetting the checkpoint");
            tx.execute(
                "UPDATE projection_checkpoints SET txid = 0, position = 0, applied = 0, ignored = 0, errors = 0, \
                 events_per_second = 0, last_error = NULL, state = 'rebuilding', reason = 'rebuild in progress', \
                 updated_at = ?2 WHERE projection = ?1",
                params![name, format_time(Utc::now())],
            )
            .map_err(&err)?;
            tx.execute("DELETE FROM projection_dead_letters WHERE projection = ?1", [&name]).map_err(&err)?;
            tx.execute("DELETE FROM projection_seen_events WHERE projection = ?1", [&name]).map_err(&err)?;
            tx.commit().map_err(db_err("committing a reset"))?;
            Ok(())
        })
        .await?;
        Inner::bump(&self.inner.checkpoints);
        Ok(())
    }

    async fn set_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> Result<()> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let mut conn = inner.writer();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_err("beginning a state change"))?;
            let err = db_err("changing the projection state");
            tx.execute(
                "INSERT OR IGNORE INTO projection_checkpoints (projection, partition) VALUES (?1, ?2)",
                params![name, partition.unwrap_or(0)],
            )
            .map_err(&err)?;
            tx.execute(
                "UPDATE projection_checkpoints SET state = ?2, reason = ?3, updated_at = ?5 \
                 WHERE projection = ?1 AND (?4 IS NULL OR partition = ?4)",
                params![name, state.as_str(), reason, partition, format_time(Utc::now())],
            )
            .map_err(&err)?;
            tx.commit().map_err(db_err("committing a state change"))?;
            Ok(())
        })
        .await?;
        Inner::bump(&self.inner.checkpoints);
        Ok(())
    }

    async fn dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        let projection = projection.map(str::to_owned);
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM projection_dead_letters WHERE (?1 IS NULL OR projection = ?1) ORDER BY id"
            ))?;
            let rows = st.query_map([projection], dead_letter_from_row)?;
            rows.collect()
        })
        .await
    }

    async fn discard_dead_letter(&self, id: i64) -> Result<()> {
        let n = self
            .write(move |tx| tx.execute("DELETE FROM projection_dead_letters WHERE id = ?1", [id]))
            .await?;
        if n == 0 {
            return Err(Error::UnknownDeadLetter(id));
        }
        Ok(())
    }

    async fn retry_dead_letter(&self, id: i64, body: Arc<SqliteBody>) -> Result<Result<(), HandlerError>> {
        let out = self
            .blocking(move |inner| {
                let mut conn = inner.writer();
                let now = format_time(Utc::now());
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err("beginning a retry"))?;
                let dl = tx
                    .prepare_cached(&format!("SELECT {DEAD_LETTER_COLUMNS} FROM projection_dead_letters WHERE id = ?1"))
                    .and_then(|mut st| st.query_row([id], dead_letter_from_row).optional())
                    .map_err(db_err("reading the dead letter"))?
                    .ok_or(Error::UnknownDeadLetter(id))?;
                let err = db_err("retrying a dead letter");
                match body.apply(&tx, std::slice::from_ref(&dl.event)) {
                    Ok(applied) => {
                        tx.execute("DELETE FROM projection_dead_letters WHERE id = ?1", [id]).map_err(&err)?;
                        tx.execute(
                            "UPDATE projection_checkpoints SET applied = applied + ?3, ignored = ignored + ?4, updated_at = ?5 \
                             WHERE projection = ?1 AND partition = ?2",
                            params![dl.projection, dl.partition, applied.handled as i64, applied.ignored as i64, now],
                        )
                        .map_err(&err)?;
                        tx.commit().map_err(db_err("committing a retry"))?;
                        Ok(Ok(()))
                    }
                    Err(BatchFailure { error, .. }) => {
                        drop(tx);
                        conn.execute(
                            "UPDATE projection_dead_letters SET attempts = attempts + 1, error = ?2, last_failed_at = ?3 WHERE id = ?1",
                            params![id, error.to_string(), now],
                        )
                        .map_err(&err)?;
                        Ok(Err(error))
                    }
                }
            })
            .await?;
        Inner::bump(&self.inner.checkpoints);
        Ok(out)
    }

    fn checkpoint_changes(&self) -> watch::Receiver<u64> {
        self.inner.checkpoints.subscribe()
    }
}

/// Brings one inline projection to the head inside the append's transaction.
fn apply_inline(tx: &Connection, p: &SqliteProjection) -> Result<()> {
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
            Err(CommitError::Fenced { actual }) => {
                return Err(Error::Invalid(format!(
                    "inline projection {name}: checkpoint moved to {actual} inside the append"
                )))
            }
            // Inline commits carry no lease.
            Err(CommitError::NotActive { .. } | CommitError::LeaseLost) => return Ok(()),
        }
    }
}

fn commit_blocking(inner: &Inner, c: Commit<SqliteBody>) -> Result<(), CommitError> {
    let mut conn = inner.writer();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err("beginning a batch"))?;
    commit_in(&tx, &c)?;
    tx.commit().map_err(db_err("committing a batch"))?;
    Ok(())
}

/// The body of a commit, inside an open write transaction: compare-and-set the checkpoint,
/// apply the events, record dead letters, update the counters.
fn commit_in(tx: &Connection, c: &Commit<SqliteBody>) -> Result<(), CommitError> {
    let now = format_time(Utc::now());
    let err = db_err("moving the checkpoint");
    let moved = tx
        .prepare_cached(
            "UPDATE projection_checkpoints SET txid = ?3, position = ?4, updated_at = ?7 \
             WHERE projection = ?1 AND partition = ?2 AND txid = ?5 AND position = ?6 \
             AND state IN ('running', 'rebuilding')",
        )
        .and_then(|mut st| {
            st.execute(params![
                &*c.projection,
                c.partition,
                c.to.txid,
                c.to.position,
                c.expected.txid,
                c.expected.position,
                now
            ])
        })
        .map_err(&err)?;
    if moved == 0 {
        let record = load_record(tx, &c.projection, c.partition).map_err(&err)?;
        return Err(match record {
            None => CommitError::Store(Error::Invalid(format!(
                "projection {} partition {} has no checkpoint; prepare it first",
                c.projection, c.partition
            ))),
            Some(r) if !r.state.is_active() => CommitError::NotActive { state: r.state },
            Some(r) => CommitError::Fenced { actual: r.checkpoint },
        });
    }
    if !c.record_ids.is_empty() {
        record_seen(tx, &c.projection, &c.record_ids, Utc::now().timestamp())?;
    }
    let mut applied = crate::core::projection::Applied::default();
    if !c.range.is_empty() {
        let events = c
            .events
            .get(c.range.clone())
            .ok_or_else(|| CommitError::Store(Error::Invalid("commit range outside its events".into())))?;
        applied = c.body.apply(tx, events).map_err(|f| {
            CommitError::Handler(BatchFailure {
                index: c.range.start + f.index,
                error: f.error,
            })
        })?;
    }
    for dl in &c.dead_letters {
        insert_dead_letter(tx, &c.projection, c.partition, dl, &now)
            .map_err(db_err("recording a dead letter"))?;
    }
    tx.prepare_cached(
        "UPDATE projection_checkpoints SET applied = applied + ?3, ignored = ignored + ?4, errors = errors + ?5, \
         events_per_second = ?6, last_error = coalesce(?7, last_error) WHERE projection = ?1 AND partition = ?2",
    )
    .and_then(|mut st| {
        st.execute(params![
            &*c.projection,
            c.partition,
            applied.handled as i64,
            (applied.ignored + c.stats.ignored) as i64,
            c.stats.errors as i64,
            c.stats.events_per_second,
            c.last_error,
        ])
    })
    .map_err(db_err("updating the counters"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, id: Uuid) -> Event {
        Event {
            position,
            txid: 0,
            stream_id: "s-1".into(),
            stream_version: position,
            event_type: "Counted".into(),
            event_id: id,
            data: Arc::from("{}"),
            metadata: Arc::from("{}"),
            recorded_at: Utc::now(),
        }
    }

    /// A body that inserts each event's position into `applied`.
    fn body() -> Arc<SqliteBody> {
        let handlers = SqliteHandlers::new()
            .setup(|db| {
                db.execute_batch("CREATE TABLE IF NOT EXISTS applied (position INTEGER PRIMARY KEY)")?;
                Ok(())
            })
            .reset(|db| {
                db.execute("DELETE FROM applied", [])?;
                Ok(())
            })
            .on_json("Counted", |db, ev, _| {
                db.execute("INSERT INTO applied (position) VALUES (?1)", [ev.position])?;
                Ok(())
            });
        let p: SqliteProjection = Projection::new("p", handlers);
        p.body().clone()
    }

    fn commit(body: &Arc<SqliteBody>, events: Vec<Event>, expected: i64, dedup: bool) -> Commit<SqliteBody> {
        let to = Checkpoint::at(events.last().map_or(expected, |e| e.position));
        let record_ids = if dedup {
            events.iter().map(|e| e.event_id).collect()
        } else {
            Vec::new()
        };
        let events: Arc<[Event]> = events.into();
        Commit {
            projection: Arc::from("p"),
            partition: 0,
            body: body.clone(),
            range: 0..events.len(),
            events,
            expected: Checkpoint::at(expected),
            to,
            dead_letters: Vec::new(),
            stats: Default::default(),
            last_error: None,
            fence: None,
            record_ids,
        }
    }

    async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
        store
            .read(move |db| db.query_row(sql, [], |r| r.get(0)))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_commit_records_its_ids_and_a_recorded_id_fails_the_next_commit_whole() {
        let store = SqliteStore::in_memory().unwrap();
        let body = body();
        store.prepare("p", 0, body.clone()).await.unwrap();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        store
            .commit(commit(&body, vec![event(1, a), event(2, b)], 0, true))
            .await
            .unwrap();
        let seen = store.seen("p", &[a, b, c]).await.unwrap();
        assert_eq!(seen, HashSet::from([a, b]));
        assert!(
            store.seen("other", &[a]).await.unwrap().is_empty(),
            "ids are per projection"
        );

        // `b` again, with a fresh `c`: the whole commit fails and writes nothing.
        let err = store
            .commit(commit(&body, vec![event(3, c), event(4, b)], 2, true))
            .await
            .unwrap_err();
        match err {
            CommitError::Store(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&b.to_string()) && msg.contains("already recorded"),
                    "{msg}"
                );
                assert!(e.is_retryable());
            }
            other => panic!("expected a store error, got {other:?}"),
        }
        assert_eq!(count(&store, "SELECT count(*) FROM applied").await, 2);
        assert_eq!(
            count(&store, "SELECT count(*) FROM projection_seen_events").await,
            2
        );
        assert_eq!(
            store.record("p", 0).await.unwrap().unwrap().checkpoint,
            Checkpoint::at(2)
        );
        assert!(store.seen("p", &[c]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn commits_without_ids_record_nothing() {
        let store = SqliteStore::in_memory().unwrap();
        let body = body();
        store.prepare("p", 0, body.clone()).await.unwrap();
        let id = Uuid::new_v4();
        store
            .commit(commit(&body, vec![event(1, id)], 0, false))
            .await
            .unwrap();
        assert_eq!(
            count(&store, "SELECT count(*) FROM projection_seen_events").await,
            0
        );
        assert!(store.seen("p", &[id]).await.unwrap().is_empty());
        assert!(store.seen("p", &[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn pruning_removes_ids_older_than_the_retention_only() {
        let store = SqliteStore::in_memory()
            .unwrap()
            .dedup_retention(Duration::from_secs(3600));
        assert_eq!(store.dedup_window(), Duration::from_secs(3600));
        let body = body();
        store.prepare("p", 0, body.clone()).await.unwrap();
        let (old, fresh) = (Uuid::new_v4(), Uuid::new_v4());
        store
            .commit(commit(&body, vec![event(1, old)], 0, true))
            .await
            .unwrap();
        // Two hours ago.
        store
            .write(move |db| {
                db.execute(
                    "UPDATE projection_seen_events SET seen_at = seen_at - 7200 WHERE event_id = ?1",
                    [old],
                )
            })
            .await
            .unwrap();
        store
            .commit(commit(&body, vec![event(2, fresh)], 1, true))
            .await
            .unwrap();
        // Let any background prune started by the commits finish, then prune explicitly.
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.prune_seen().await.unwrap();
        assert_eq!(
            store.seen("p", &[old, fresh]).await.unwrap(),
            HashSet::from([fresh])
        );
        assert_eq!(store.prune_seen().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn commits_prune_in_the_background_when_due() {
        let store = SqliteStore::in_memory().unwrap();
        let body = body();
        store.prepare("p", 0, body.clone()).await.unwrap();
        let old = Uuid::new_v4();
        store
            .commit(commit(&body, vec![event(1, old)], 0, true))
            .await
            .unwrap();
        store
            .write(|db| {
                db.execute(
                    "UPDATE projection_seen_events SET seen_at = seen_at - 2 * 86400",
                    [],
                )
            })
            .await
            .unwrap();
        // The first prune of this process is due at once (the one the first commit started
        // found nothing old yet); pretend it never ran.
        while store.inner.pruning.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        store.inner.last_prune.store(0, Ordering::Relaxed);
        store
            .commit(commit(&body, vec![event(2, Uuid::new_v4())], 1, true))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !store.seen("p", &[old]).await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the background prune did not run"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            count(&store, "SELECT count(*) FROM projection_seen_events").await,
            1
        );
    }

    #[test]
    fn prunes_are_due_every_eighth_of_the_window_between_one_second_and_ten_minutes() {
        let day = 86_400;
        assert!(prune_due(0, 1_000, day));
        assert!(!prune_due(1_000, 1_599, day));
        assert!(prune_due(1_000, 1_600, day));
        assert!(!prune_due(1_000, 1_000, 80));
        assert!(prune_due(1_000, 1_010, 80));
        assert!(prune_due(1_000, 1_001, 1));
    }

    #[tokio::test]
    async fn reset_forgets_the_projections_seen_ids() {
        let store = SqliteStore::in_memory().unwrap();
        let body = body();
        store.prepare("p", 0, body.clone()).await.unwrap();
        let id = Uuid::new_v4();
        store
            .commit(commit(&body, vec![event(1, id)], 0, true))
            .await
            .unwrap();
        store
            .write(move |db| {
                db.execute(
                    "INSERT INTO projection_seen_events (projection, event_id, seen_at) VALUES ('q', ?1, 0)",
                    [id],
                )
            })
            .await
            .unwrap();
        store.reset("p", body.clone()).await.unwrap();
        assert!(store.seen("p", &[id]).await.unwrap().is_empty());
        assert_eq!(
            store.seen("q", &[id]).await.unwrap(),
            HashSet::from([id]),
            "other projections keep theirs"
        );
    }
}
