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

mod batch;
mod blue_green;
mod error;
mod inline;
mod listen;
mod partition;
mod schema;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::core::engine::Engine;
use crate::core::error::{BatchFailure, Error, HandlerError, Result};
use crate::core::event::{Appended, Checkpoint, Event, ExpectedVersion, NewEvent};
use crate::core::lease::{Lease, LeaseInfo, Member, Membership};
use crate::core::projection::{Applied, Apply, Handlers, Projection};
use crate::core::source::{Batch, Filter, Lag, Source};
use crate::core::store::{Commit, CommitError, DeadLetter, ProjectionRecord, RunState, Store};

pub use batch::{DocumentWrite, PgBatch, PgParam, PgParams};
pub use blue_green::BlueGreenReport;
pub use deadpool_postgres;
pub use tokio_postgres;

use batch::{Origin, PipelineError};
use error::{db, db_err, pool as pool_err};
use listen::bump;

/// A projection body over PostgreSQL: it queues statements in a [`PgBatch`].
pub type PgBody = dyn Apply<PgBatch>;
/// A projection on PostgreSQL.
pub type PgProjection = Projection<PgBody>;
/// Typed per-event handlers on PostgreSQL.
pub type PgHandlers = Handlers<PgBatch>;
/// An engine whose events and read models live on PostgreSQL (one database or two).
pub type PgEngine = Engine<PgStore, PgStore>;

pub use crate::core::event::{ImportProgress, StreamAppend};

/// How many rows `Source::lag` counts before it estimates from positions instead.
const LAG_COUNT_CAP: i64 = 100_000;
/// Appends per statement during an import.
const IMPORT_CHUNK: usize = 2_000;

/// The SQL of one store, with its schema filled in.
struct Sql {
    read_all: String,
    read_filtered: String,
    blocked: String,
    head: String,
    lag: String,
    versions: String,
    insert_returning: String,
    insert: String,
    lock_events: String,
    cas: String,
    /// The compare-and-set that fails (division by zero, SQLSTATE 22012) when it moves
    /// nothing, so that a pipelined batch stops at once instead of running its writes (and
    /// taking row locks) before the store sees the miss.
    cas_strict: String,
    counters: String,
    insert_dead_letter: String,
    record: String,
    records: String,
    ensure_checkpoint: String,
    set_state: String,
    reset: String,
    delete_dead_letters: String,
    dead_letters: String,
    dead_letter: String,
    delete_dead_letter: String,
    dead_letter_attempt: String,
    retry_counters: String,
    events_channel: String,
    checkpoints_channel: String,
    /// Fails (SQLSTATE 22012) unless the partition's lease still has this owner and token, and
    /// holds the lease row (`FOR SHARE`) until the commit, so a takeover waits for it.
    fence: String,
    mark_owner: String,
    record_seen: String,
    seen: String,
    prune_seen: String,
    delete_seen: String,
}

const EVENT_COLUMNS: &str =
    "position, xid, stream_id, stream_version, event_type, event_id, data::text, metadata::text, recorded_at";
const READABLE: &str = "xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";
const RECORD_COLUMNS: &str = "c.projection, c.partition, c.txid, c.position, c.state, c.reason, c.applied, \
     c.ignored, c.errors, c.events_per_second, c.last_error, c.updated_at";
const DEAD_LETTER_COLUMNS: &str = "id, projection, partition, position, txid, stream_id, stream_version, \
     event_type, event_id, data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at";

impl Sql {
    fn new(schema: &str) -> Self {
        let s = quote(schema);
        let record_from = format!(
            "SELECT {RECORD_COLUMNS}, (SELECT count(*) FROM {s}.projection_dead_letters d \
             WHERE d.projection = c.projection AND d.partition = c.partition) \
             FROM {s}.projection_checkpoints c"
        );
        Sql {
            read_all: format!(
                "SELECT {EVENT_COLUMNS}, true FROM {s}.events \
                 WHERE xid >= $1 AND (xid, position) > ($1, $2) AND {READABLE} \
                 ORDER BY xid, position LIMIT $3"
            ),
            // Looks at up to $3 rows, returns the payload of admitted ones only, and stops
            // after the $5th admitted one, so that `scanned_to` covers the ignored rows too.
            // Scans exactly `limit` rows and sends payloads only for the admitted ones: a batch
            // of a filtering projection may hold fewer events, but it always moves past every
            // row it scanned. (Scanning further to fill the batch made every read of a
            // projection that handles most types pay for rows it then threw away.)
            read_filtered: format!(
                "SELECT s.position, s.xid, \
                   CASE WHEN s.admitted THEN s.stream_id END, \
                   CASE WHEN s.admitted THEN s.stream_version END, \
                   s.event_type, \
                   CASE WHEN s.admitted THEN s.event_id END, \
                   CASE WHEN s.admitted THEN s.data::text END, \
                   CASE WHEN s.admitted THEN s.metadata::text END, \
                   CASE WHEN s.admitted THEN s.recorded_at END, \
                   s.admitted \
                 FROM ( \
                   SELECT e.position, e.xid, e.stream_id, e.stream_version, e.event_type, e.event_id, \
                     e.data, e.metadata, e.recorded_at, e.event_type = ANY($4::text[]) AS admitted \
                   FROM {s}.events e \
                   WHERE e.xid >= $1 AND (e.xid, e.position) > ($1, $2) AND e.{READABLE} \
                   ORDER BY e.xid, e.position LIMIT $3 \
                 ) s ORDER BY s.xid, s.position"
            ),
            // A plain ordered probe, not `EXISTS (…)`: PostgreSQL drops the ORDER BY inside
            // EXISTS, and a generic plan then seq-scanned the whole table whenever nothing was
            // there (measured: 120 ms per probe on a million events, the whole live latency).
blocked: format!(
                "SELECT 1 FROM {s}.events WHERE xid >= $1 AND (xid, position) > ($1, $2) \
                 ORDER BY xid, position LIMIT 1"
            ),
            // The committed head, readable or not yet: a catch-up waits for events that sit
            // behind a transaction still open, instead of stopping short of them.
            head: format!("SELECT xid, position FROM {s}.events ORDER BY xid DESC, position DESC LIMIT 1"),
            lag: format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM {s}.events \
                         WHERE xid >= $1 AND (xid, position) > ($1, $2) ORDER BY xid, position LIMIT $3) c), \
                        (SELECT recorded_at FROM {s}.events WHERE xid >= $1 AND (xid, position) > ($1, $2) \
                         ORDER BY xid, position LIMIT 1), \
                        (SELECT coalesce(max(position), 0) FROM {s}.events)"
            ),
            versions: format!(
                "SELECT stream_id, max(stream_version) FROM {s}.events \
                 WHERE stream_id = ANY($1::text[]) GROUP BY stream_id"
            ),
            insert_returning: format!(
                "INSERT INTO {s}.events (stream_id, stream_version, event_type, event_id, data, metadata) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::text[]::jsonb[], $6::text[]::jsonb[]) \
                 RETURNING stream_id, stream_version, position, xid"
            ),
            insert: format!(
                "INSERT INTO {s}.events (stream_id, stream_version, event_type, event_id, data, metadata) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::text[]::jsonb[], $6::text[]::jsonb[])"
            ),
            lock_events: format!("LOCK TABLE {s}.events IN EXCLUSIVE MODE"),
            cas: format!(
                "UPDATE {s}.projection_checkpoints SET txid = $3, position = $4, updated_at = now() \
                 WHERE projection = $1 AND partition = $2 AND txid = $5 AND position = $6 \
                 AND state IN ('running', 'rebuilding')"
            ),
            cas_strict: format!(
                "WITH moved AS (UPDATE {s}.projection_checkpoints SET txid = $3, position = $4, updated_at = now() \
                 WHERE projection = $1 AND partition = $2 AND txid = $5 AND position = $6 \
                 AND state IN ('running', 'rebuilding') RETURNING 1) \
                 SELECT 1 / (SELECT count(*)::int FROM moved)"
            ),
            counters: format!(
                "UPDATE {s}.projection_checkpoints SET applied = applied + $3, ignored = ignored + $4, \
                 errors = errors + $5, events_per_second = $6, last_error = coalesce($7, last_error) \
                 WHERE projection = $1 AND partition = $2"
            ),
            insert_dead_letter: format!(
                "INSERT INTO {s}.projection_dead_letters (projection, partition, position, txid, stream_id, \
                 stream_version, event_type, event_id, data, metadata, recorded_at, error, attempts, \
                 first_failed_at, last_failed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now())"
            ),
            record: format!("{record_from} WHERE c.projection = $1 AND c.partition = $2"),
            records: format!("{record_from} ORDER BY c.projection, c.partition"),
            ensure_checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints (projection, partition) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING"
            ),
            set_state: format!(
                "UPDATE {s}.projection_checkpoints SET state = $2, reason = $3, updated_at = now() \
                 WHERE projection = $1 AND ($4::integer IS NULL OR partition = $4)"
            ),
            reset: format!(
                "UPDATE {s}.projection_checkpoints SET txid = 0, position = 0, applied = 0, ignored = 0, \
                 errors = 0, events_per_second = 0, last_error = NULL, state = 'rebuilding', \
                 reason = 'rebuild in progress', updated_at = now() WHERE projection = $1"
            ),
            delete_dead_letters: format!("DELETE FROM {s}.projection_dead_letters WHERE projection = $1"),
            dead_letters: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.projection_dead_letters \
                 WHERE ($1::text IS NULL OR projection = $1) ORDER BY id"
            ),
            dead_letter: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.projection_dead_letters WHERE id = $1 FOR UPDATE"
            ),
            delete_dead_letter: format!("DELETE FROM {s}.projection_dead_letters WHERE id = $1"),
            dead_letter_attempt: format!(
                "UPDATE {s}.projection_dead_letters SET attempts = attempts + 1, error = $2, \
                 last_failed_at = now() WHERE id = $1"
            ),
            retry_counters: format!(
                "UPDATE {s}.projection_checkpoints SET applied = applied + $3, ignored = ignored + $4, \
                 updated_at = now() WHERE projection = $1 AND partition = $2"
            ),
            events_channel: format!("{schema}.events"),
            checkpoints_channel: format!("{schema}.checkpoints"),
            fence: format!(
                "WITH l AS (SELECT 1 FROM {s}.projection_leases WHERE projection = $1 AND partition = $2 \
                 AND owner = $3 AND token = $4 FOR SHARE) SELECT 1 / (SELECT count(*)::int FROM l)"
            ),
            mark_owner: format!(
                "UPDATE {s}.projection_checkpoints SET owner = $3, lease_token = $4 \
                 WHERE projection = $1 AND partition = $2"
            ),
            record_seen: format!(
                "INSERT INTO {s}.projection_seen_events (projection, event_id) SELECT $1, unnest($2::uuid[])"
            ),
            seen: format!(
                "SELECT event_id FROM {s}.projection_seen_events WHERE projection = $1 AND event_id = ANY($2)"
            ),
            prune_seen: format!(
                "DELETE FROM {s}.projection_seen_events WHERE seen_at < now() - $1::float8 * interval '1 second'"
            ),
            delete_seen: format!("DELETE FROM {s}.projection_seen_events WHERE projection = $1"),
        }
    }
}

/// Takes the projectionist-specific `schema=NAME` query parameter out of a URL (libpq does not
/// know it). Returns the URL without it, and the schema.
pub(crate) fn split_schema_param(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let mut schema = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| match kv.split_once('=') {
            Some(("schema", v)) => {
                schema = Some(v.to_owned());
                false
            }
            _ => !kv.is_empty(),
        })
        .collect();
    let mut out = base.to_owned();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    (out, schema)
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 48
}

/// The connection target without secrets: `user@host:port/dbname`.
fn redacted(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or(""),
        hosts.join(","),
        config.get_dbname().unwrap_or("")
    )
}

/// Builds a [`PgStore`]: which database, which schema, which roles.
#[derive(Clone)]
pub struct PgBuilder {
    config: tokio_postgres::Config,
    schema: String,
    application_name: String,
    pool_size: usize,
    listen: bool,
    events: bool,
    read_models: bool,
    document_write: DocumentWrite,
    /// Schemas searched after `schema` (before `public`): a blue/green shadow store resolves
    /// unqualified names in the shadow first, then in the live schema.
    also_search: Option<String>,
    seen_retention: Duration,
}

/// How long the ids of applied events are kept for sources that redeliver (RabbitMQ), by
/// default: a redelivery later than this is applied again.
pub const DEFAULT_SEEN_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl std::fmt::Debug for PgBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBuilder")
            .field("location", &redacted(&self.config))
            .field("schema", &self.schema)
            .field("application_name", &self.application_name)
            .field("pool_size", &self.pool_size)
            .field("listen", &self.listen)
            .field("events", &self.events)
            .field("read_models", &self.read_models)
            .finish()
    }
}

impl PgBuilder {
    /// The schema of the engine's tables, and the `search_path` of the store's connections
    /// (default `public`). Lower-case letters, digits and `_`, at most 48 characters.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The `application_name` of the store's connections (default `projectionist`).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Connections in the pool (default 16).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Whether to LISTEN for notifications (default `true`). Without, runners only poll.
    pub fn listen(mut self, yes: bool) -> Self {
        self.listen = yes;
        self
    }

    /// Whether this database holds the events (creates the events table; default `true`).
    pub fn events(mut self, yes: bool) -> Self {
        self.events = yes;
        self
    }

    /// Whether this database holds read models (creates the checkpoint and dead-letter
    /// tables; default `true`).
    pub fn read_models(mut self, yes: bool) -> Self {
        self.read_models = yes;
        self
    }

    /// How document projections write their rows back (default
    /// [`DocumentWrite::Recordset`], which measured faster; see docs/postgres.md).
    /// How long the ids of applied events are kept to drop redeliveries (sources such as
    /// RabbitMQ that have no position to compare); default [`DEFAULT_SEEN_RETENTION`].
    pub fn seen_retention(mut self, window: Duration) -> Self {
        self.seen_retention = window;
        self
    }

    pub fn document_write(mut self, w: DocumentWrite) -> Self {
        self.document_write = w;
        self
    }

    /// Connects, creates the engine's tables (idempotently), and starts listening.
    pub async fn connect(self) -> Result<PgStore> {
        if !valid_schema(&self.schema) {
            return Err(Error::Invalid(format!(
                "invalid PostgreSQL schema name {:?}: use lower-case letters, digits and _, at most 48 characters",
                self.schema
            )));
        }
        let location = redacted(&self.config);
        let base_config = self.config.clone();
        let mut config = self.config.clone();
        config.application_name(&self.application_name);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // Server NOTICEs ("relation … already exists, skipping" from idempotent setup) are
        // noise in the logs: only warnings and above come back.
        let search_path = format!(
            "-c search_path={}{},public -c client_min_messages=warning",
            self.schema,
            self.also_search
                .as_deref()
                .map(|s| format!(",{s}"))
                .unwrap_or_default()
        );
        let options = match config.get_options() {
            Some(o) if !o.trim().is_empty() => format!("{o} {search_path}"),
            _ => search_path,
        };
        config.options(&options);

        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot build the PostgreSQL connection pool: {e}")))?;

        let connect_err = |e: deadpool_postgres::PoolError| {
            let mut e = pool_err("connecting", e);
            if let Error::Database { message, .. } = &mut e {
                *message = format!("cannot connect to PostgreSQL at {location}: {}", message);
            }
            e
        };
        {
            let mut client = pool.get().await.map_err(connect_err)?;
            let version: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db_err("checking the server version"))?;
            if version < 130_000 {
                return Err(Error::Invalid(format!(
                    "PostgreSQL at {location} is version {version}; projectionist needs 13 or later \
                     (for pg_current_xact_id and gen_random_uuid)"
                )));
            }
            let quoted = quote(&self.schema);
            let mut ddl = String::new();
            if self.events {
                ddl.push_str(&schema::render(schema::EVENTS, &quoted));
            }
            if self.read_models {
                ddl.push_str(&schema::render(schema::READ_MODELS, &quoted));
            }
            let err = db_err("creating the engine's tables");
            let tx = client.transaction().await.map_err(&err)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(1886547821, hashtext($1))",
                &[&self.schema],
            )
            .await
            .map_err(&err)?;
            tx.batch_execute(&ddl).await.map_err(&err)?;
            tx.commit().await.map_err(&err)?;
        }

        let sql = Sql::new(&self.schema);
        let changes = Arc::new(watch::channel(0).0);
        let checkpoints = Arc::new(watch::channel(0).0);
        let connected = Arc::new(AtomicBool::new(false));
        let (stop, stop_rx) = watch::channel(());
        let mut channels = Vec::new();
        if self.events {
            channels.push((sql.events_channel.clone(), changes.clone()));
        }
        if self.read_models {
            channels.push((sql.checkpoints_channel.clone(), checkpoints.clone()));
        }
        if self.listen && !channels.is_empty() {
            let mut listen_config = config.clone();
            listen_config.application_name(&self.application_name);
            let listener = listen::Listener {
                config: listen_config,
                channels,
                connected: connected.clone(),
                location: location.clone(),
            };
            tokio::spawn(listener.run(stop_rx));
        }
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                schema: self.schema,
                location,
                document_write: self.document_write,
                base_config,
                application_name: self.application_name.clone(),
                sql,
                changes,
                checkpoints,
                listening: connected,
                wake: Mutex::new(Wake {
                    pending: false,
                    delay: Duration::from_millis(1),
                }),
                partition_indexes: Mutex::new(HashSet::new()),
                seen_retention: self.seen_retention,
                last_prune: Mutex::new(None),
                _stop: stop,
            }),
        })
    }
}

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
    seen_retention: Duration,
    last_prune: Mutex<Option<std::time::Instant>>,
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
        Error::Invalid(format!(
            "partition {partition} is too large for PostgreSQL (max {})",
            i32::MAX
        ))
    })
}

macro_rules! params {
    ($($v:expr),* $(,)?) => { vec![$(Box::new($v) as PgParam),*] };
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`) with the defaults: schema
    /// `public`, events and read models in this database, listening for notifications.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url)?.connect().await
    }

    /// A builder for `url`. The URL's password never appears in errors or logs.
    ///
    /// Besides libpq's query parameters, the URL may name the schema of the engine's tables:
    /// `postgres://app@db/shop?schema=orders` (same as [`PgBuilder::schema`]).
    pub fn builder(url: &str) -> Result<PgBuilder> {
        let (url, schema) = split_schema_param(url);
        let config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            Error::Invalid(format!(
                "invalid PostgreSQL URL: {e}; expected postgres://user[:password]@host[:port]/database[?schema=NAME]"
            ))
        })?;
        let builder = Self::builder_from_config(config);
        Ok(match schema {
            Some(s) => builder.schema(s),
            None => builder,
        })
    }

    /// A builder from a parsed configuration.
    pub fn builder_from_config(config: tokio_postgres::Config) -> PgBuilder {
        PgBuilder {
            config,
            schema: "public".into(),
            application_name: "projectionist".into(),
            pool_size: 16,
            listen: true,
            events: true,
            read_models: true,
            document_write: DocumentWrite::default(),
            also_search: None,
            seen_retention: DEFAULT_SEEN_RETENTION,
        }
    }

    /// An engine whose events and read models are both in this database.
    pub fn engine(&self) -> PgEngine {
        Engine::new(Arc::new(self.clone()), Arc::new(self.clone()))
    }

    /// An engine reading events from `events` and keeping read models (and their
    /// checkpoints) in `read_models`, which may be another database.
    pub fn engine_with(events: &PgStore, read_models: &PgStore) -> PgEngine {
        Engine::new(Arc::new(events.clone()), Arc::new(read_models.clone()))
    }

    /// Where the database is, without the password.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The schema of the engine's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
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

    /// Appends events to one stream. `expected` is checked against the stream's current
    /// version; a mismatch, including one caused by a concurrent append, is
    /// [`Error::Conflict`] naming the stream, the expected and the actual version.
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

    /// Appends to several streams in one transaction: all or nothing. Appends that expect
    /// [`ExpectedVersion::Any`] are retried when a concurrent append takes their version.
    pub async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        for a in &appends {
            validate(a)?;
        }
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_append(&appends, &[]).await {
                Err(AppendError::Race) if attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(attempt as u64)).await;
                }
                Err(AppendError::Race) => {
                    return Err(Error::Database {
                        op: "appending events",
                        message: "concurrent appends kept taking the same stream versions; try again".into(),
                        retryable: true,
                    })
                }
                Err(AppendError::Fail(e)) => return Err(e),
                Ok(out) => {
                    bump(&self.inner.changes);
                    return Ok(out);
                }
            }
        }
    }

    /// Appends with the inline projections `inline` applied in the same transaction (see
    /// the `inline` module for why the checkpoint stays gap-free).
    pub(crate) async fn append_with_inline(
        &self,
        appends: Vec<StreamAppend>,
        inline: &[PgProjection],
    ) -> Result<Vec<Appended>> {
        for a in &appends {
            validate(a)?;
        }
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_append(&appends, inline).await {
                Err(AppendError::Race) if attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(attempt as u64)).await;
                }
                Err(AppendError::Race) => {
                    return Err(Error::Database {
                        op: "appending events",
                        message: "concurrent appends kept taking the same stream versions; try again".into(),
                        retryable: true,
                    })
                }
                Err(AppendError::Fail(e)) => return Err(e),
                Ok(out) => {
                    bump(&self.inner.changes);
                    bump(&self.inner.checkpoints);
                    return Ok(out);
                }
            }
        }
    }

    async fn try_append(
        &self,
        appends: &[StreamAppend],
        inline: &[PgProjection],
    ) -> Result<Vec<Appended>, AppendError> {
        let sql = &self.inner.sql;
        let mut client = self.client_for("appending events").await?;
        let err = db_err("appending events");
        let tx = client.transaction().await.map_err(&err)?;
        // Read every stream's version before the first insert, so that this transaction's id
        // (assigned at its first write) is newer than that of any append it has seen: stream
        // order then agrees with (xid, position) order.
        let mut versions = HashMap::new();
        load_versions(
            &tx,
            &sql.versions,
            appends.iter().map(|a| a.stream_id.as_str()),
            &mut versions,
        )
        .await?;
        let read_versions = versions.clone();
        let rows = Rows::build(appends, &mut versions)?;
        let st = tx.prepare_cached(&sql.insert_returning).await.map_err(&err)?;
        let inserted = match tx.query(&st, &rows.params()).await {
            Ok(r) => r,
            Err(e) => {
                drop(tx);
                return Err(self.append_failure(&client, e, appends, &read_versions).await);
            }
        };
        let mut positions: HashMap<(String, i64), (i64, i64)> = HashMap::with_capacity(inserted.len());
        for r in &inserted {
            let stream: String = r.try_get(0).map_err(&err)?;
            let version: i64 = r.try_get(1).map_err(&err)?;
            positions.insert(
                (stream, version),
                (r.try_get(2).map_err(&err)?, r.try_get(3).map_err(&err)?),
            );
        }
        if !inline.is_empty() {
            let xid = positions.values().map(|(_, x)| *x).max().unwrap_or(0);
            self.apply_inline(&tx, xid, inline).await?;
        }
        tx.commit().await.map_err(db_err("committing an append"))?;
        let mut out = Vec::with_capacity(appends.len());
        let mut next: HashMap<&str, i64> = read_versions.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for a in appends {
            let start = next.get(a.stream_id.as_str()).copied().unwrap_or(0);
            let (mut first, mut last, mut txid) = (i64::MAX, 0, 0);
            for v in start + 1..=start + a.events.len() as i64 {
                if let Some((pos, xid)) = positions.get(&(a.stream_id.clone(), v)) {
                    first = first.min(*pos);
                    last = last.max(*pos);
                    txid = *xid;
                }
            }
            let version = start + a.events.len() as i64;
            next.insert(a.stream_id.as_str(), version);
            out.push(Appended {
                first_position: if first == i64::MAX { last } else { first },
                last_position: last,
                stream_version: version,
                token: Checkpoint { txid, position: last },
            });
        }
        Ok(out)
    }

    /// Turns a failed insert into a conflict (naming the stream), a duplicate id, a race to
    /// retry, or a database error.
    async fn append_failure(
        &self,
        client: &deadpool_postgres::Object,
        e: tokio_postgres::Error,
        appends: &[StreamAppend],
        read: &HashMap<String, i64>,
    ) -> AppendError {
        let Some(dbe) = e.as_db_error() else {
            return AppendError::Fail(db("appending events", &e));
        };
        if dbe.code() != &tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            return AppendError::Fail(db("appending events", &e));
        }
        if dbe.constraint() == Some("events_event_id_key") {
            let event_id = dbe
                .detail()
                .and_then(|d| d.split("=(").nth(1))
                .and_then(|d| d.split(')').next())
                .and_then(|id| Uuid::parse_str(id).ok())
                .or_else(|| {
                    appends
                        .iter()
                        .flat_map(|a| a.events.first())
                        .map(|e| e.event_id)
                        .next()
                })
                .unwrap_or_default();
            return AppendError::Fail(Error::DuplicateEvent { event_id });
        }
        // A concurrent append took a version: find which stream moved.
        let mut now = HashMap::new();
        if let Err(e) = load_versions(
            client,
            &self.inner.sql.versions,
            appends.iter().map(|a| a.stream_id.as_str()),
            &mut now,
        )
        .await
        {
            return AppendError::Fail(e);
        }
        for a in appends {
            let before = read.get(&a.stream_id).copied().unwrap_or(0);
            let after = now.get(&a.stream_id).copied().unwrap_or(0);
            if before != after && a.expected != ExpectedVersion::Any {
                return AppendError::Fail(Error::Conflict {
                    stream: a.stream_id.clone(),
                    expected: a.expected,
                    actual: after,
                });
            }
        }
        AppendError::Race
    }

    /// Imports a stream of appends in one transaction: when any item is an error, or any
    /// append conflicts, nothing of the import is written and that error is returned. The
    /// iterator runs on a blocking thread, so it may read a file. Concurrent appends wait
    /// until the import commits (it locks the events table against writes, not reads).
    pub async fn import<I>(&self, items: I, progress: Option<ImportProgress>) -> Result<u64>
    where
        I: Iterator<Item = Result<StreamAppend>> + Send + 'static,
    {
        let sql = &self.inner.sql;
        let mut client = self.client_for("importing events").await?;
        let err = db_err("importing events");
        let tx = client.transaction().await.map_err(&err)?;
        tx.batch_execute(&sql.lock_events).await.map_err(&err)?;
        let insert = tx.prepare_cached(&sql.insert).await.map_err(&err)?;
        let mut versions: HashMap<String, i64> = HashMap::new();
        let mut iter = Some(items);
        let mut n = 0u64;
        loop {
            let Some(mut it) = iter.take() else { break };
            let (it, chunk) = tokio::task::spawn_blocking(move || {
                let chunk: Vec<Result<StreamAppend>> = it.by_ref().take(IMPORT_CHUNK).collect();
                (it, chunk)
            })
            .await
            .map_err(|e| Error::Invalid(format!("reading the import panicked: {e}")))?;
            if chunk.is_empty() {
                break;
            }
            iter = Some(it);
            let chunk: Vec<StreamAppend> = chunk.into_iter().collect::<Result<_>>()?;
            for a in &chunk {
                validate(a)?;
            }
            let unknown: HashSet<&str> = chunk
                .iter()
                .map(|a| a.stream_id.as_str())
                .filter(|s| !versions.contains_key(*s))
                .collect();
            load_versions(&tx, &sql.versions, unknown.into_iter(), &mut versions).await?;
            let rows = Rows::build(&chunk, &mut versions).map_err(AppendError::into_error)?;
            tx.execute(&insert, &rows.params()).await.map_err(|e| {
                match e.as_db_error().and_then(|d| d.constraint()) {
                    Some("events_event_id_key") => Error::DuplicateEvent {
                        event_id: e
                            .as_db_error()
                            .and_then(|d| d.detail())
                            .and_then(|d| d.split("=(").nth(1))
                            .and_then(|d| d.split(')').next())
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .unwrap_or_default(),
                    },
                    _ => db("importing events", &e),
                }
            })?;
            n += rows.len() as u64;
            if let Some(p) = &progress {
                p(n);
            }
        }
        tx.commit().await.map_err(db_err("committing an import"))?;
        bump(&self.inner.changes);
        Ok(n)
    }

    /// Every event of one stream, in version order.
    pub async fn read_stream(&self, stream_id: impl Into<String>) -> Result<Vec<Event>> {
        let stream_id = stream_id.into();
        let client = self.client_for("reading a stream").await?;
        let err = db_err("reading a stream");
        let st = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM {}.events WHERE stream_id = $1 ORDER BY stream_version",
                quote(&self.inner.schema)
            ))
            .await
            .map_err(&err)?;
        let rows = client.query(&st, &[&stream_id]).await.map_err(&err)?;
        rows.iter().map(|r| event_from_row(r).map_err(&err)).collect()
    }

    /// The number of events stored (visible to a new transaction).
    pub async fn event_count(&self) -> Result<u64> {
        let client = self.client_for("counting events").await?;
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}.events", quote(&self.inner.schema)),
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_err("counting events"))?;
        Ok(n.max(0) as u64)
    }

    /// The plan of the read query (`EXPLAIN`), for checking that it is an index range scan.
    pub async fn explain_read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<String> {
        let client = self.client_for("explaining the read").await?;
        let limit = limit.max(1) as i64;
        let err = db_err("explaining the read");
        let rows = match &filter.types {
            None => {
                client
                    .query(
                        &format!("EXPLAIN {}", self.inner.sql.read_all),
                        &[&after.txid, &after.position, &limit],
                    )
                    .await
            }
            Some(types) => {
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                client
                    .query(
                        &format!("EXPLAIN {}", self.inner.sql.read_filtered),
                        &[&after.txid, &after.position, &limit, &types],
                    )
                    .await
            }
        }
        .map_err(&err)?;
        let lines: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(lines.join("\n"))
    }

    /// Schedules a wake-up of the runners: used when a read found only events of transactions
    /// that are still open, which commit (or roll back) without a notification reaching the
    /// runners in every case. Backs off while the same transaction stays open.
    /// Nothing was readable after `after`. If committed events wait behind an open
    /// transaction, look again soon: that transaction may end without any notification (a
    /// rollback).
    async fn probe_blocked(&self, after: Checkpoint) -> Result<()> {
        let client = self.client_for("reading events").await?;
        let err = db_err("reading events");
        let st = client
            .prepare_cached(&self.inner.sql.blocked)
            .await
            .map_err(&err)?;
        let blocked = client
            .query_opt(&st, &[&after.txid, &after.position])
            .await
            .map_err(&err)?
            .is_some();
        if blocked {
            self.wake_later();
        }
        Ok(())
    }

    fn wake_later(&self) {
        let delay = {
            let mut w = self.inner.wake.lock().unwrap_or_else(|p| p.into_inner());
            if w.pending {
                return;
            }
            w.pending = true;
            let d = w.delay;
            w.delay = (d * 2).min(Duration::from_millis(100));
            d
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = weak.upgrade() {
                inner.wake.lock().unwrap_or_else(|p| p.into_inner()).pending = false;
                bump(&inner.changes);
            }
        });
    }

    fn reset_wake(&self) {
        self.inner.wake.lock().unwrap_or_else(|p| p.into_inner()).delay = Duration::from_millis(1);
    }

    async fn load_record(
        &self,
        client: &impl GenericClient,
        name: &str,
        partition: i32,
    ) -> Result<Option<ProjectionRecord>> {
        let err = db_err("reading the checkpoint");
        let st = client
            .prepare_cached(&self.inner.sql.record)
            .await
            .map_err(&err)?;
        let row = client.query_opt(&st, &[&name, &partition]).await.map_err(&err)?;
        row.as_ref().map(record_from_row).transpose().map_err(&err)
    }

    async fn commit_pg(&self, c: Commit<PgBody>) -> Result<(), CommitError> {
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
        let events = c
            .events
            .get(c.range.clone())
            .ok_or_else(|| CommitError::Store(Error::Invalid("commit range outside its events".into())))?;
        // Bodies run per event, so that each queued statement is known by its event.
        let mut applied = Applied::default();
        let mut early_failure = None;
        for (k, ev) in events.iter().enumerate() {
            let index = c.range.start + k;
            batch.set_origin(Origin::Event(index));
            match c.body.apply(&batch, std::slice::from_ref(ev)) {
                Ok(a) => applied.add(a),
                Err(f) => {
                    early_failure = Some(BatchFailure {
                        index,
                        error: f.error,
                    });
                    break;
                }
            }
        }
        if early_failure.is_some() {
            // Only check the checkpoint: a fenced or paused runner hears that first.
            batch.truncate(cas + 1);
        } else {
            self.queue_commit_tail(&batch, &c, partition, applied);
        }
        let queued = batch.take();

        let mut client = self.client_for("beginning a batch").await?;
        let tx = client.transaction().await.map_err(db_err("beginning a batch"))?;
        let outcome = batch::run(&tx, &queued).await;
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
                Err(CommitError::Store(db("moving the checkpoint", &error)))
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
                    Origin::Event(_) => Err(CommitError::Store(db("applying a batch", &error))),
                    _ => Err(CommitError::Store(db("committing a batch", &error))),
                }
            }
        }
    }

    /// The rows of one prefetch, as JSON objects.
    async fn prefetch_rows(
        &self,
        client: &impl GenericClient,
        p: &crate::core::projection::Prefetch,
    ) -> Result<Vec<crate::core::document::Row>> {
        let q = format!(
            "SELECT to_jsonb(t) FROM {} t WHERE t.{} = ANY($1)",
            crate::core::document::quote_ident(&p.table),
            crate::core::document::quote_ident(&p.key_column)
        );
        let err = db_err("loading documents");
        let rows = client.query(&q, &[&p.keys]).await.map_err(&err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if let serde_json::Value::Object(m) = r.try_get::<_, serde_json::Value>(0).map_err(&err)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn new_batch(&self) -> PgBatch {
        PgBatch::new(&self.inner.schema).with_document_write(self.inner.document_write)
    }

    /// Queues what every commit ends with: dead letters, counters and the notification.
    fn queue_commit_tail(&self, batch: &PgBatch, c: &Commit<PgBody>, partition: i32, applied: Applied) {
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
        if !c.record_ids.is_empty() {
            batch.store(
                sql.record_seen.clone(),
                params![c.projection.to_string(), c.record_ids.clone()],
            );
        }
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
        let events = c
            .events
            .get(c.range.clone())
            .ok_or_else(|| CommitError::Store(Error::Invalid("commit range outside its events".into())))?;
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
                Err(e) => return Err(CommitError::Store(db("checking the partition's lease", &e))),
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
        let at_start = |error: HandlerError| {
            CommitError::Handler(BatchFailure {
                index: c.range.start,
                error,
            })
        };
        let batch = self.new_batch();
        let mut applied = Applied::default();
        if !events.is_empty() {
            for p in c.body.prefetch(events) {
                let q = format!(
                    "SELECT to_jsonb(t) FROM {} t WHERE t.{} = ANY($1)",
                    crate::core::document::quote_ident(&p.table),
                    crate::core::document::quote_ident(&p.key_column)
                );
                let rows = match tx.query(&q, &[&p.keys]).await {
                    Ok(rows) => rows,
                    Err(e) if !error::retryable(&e) => {
                        drop(tx);
                        return Err(at_start(HandlerError::msg(format!(
                            "loading rows of {}: {}",
                            p.table,
                            error::describe(&e)
                        ))));
                    }
                    Err(e) => return Err(CommitError::Store(db("loading documents", &e))),
                };
                let mut loaded = Vec::with_capacity(rows.len());
                for r in &rows {
                    match r.try_get::<_, serde_json::Value>(0) {
                        Ok(serde_json::Value::Object(m)) => loaded.push(m),
                        Ok(_) => {}
                        Err(e) => return Err(CommitError::Store(db("loading documents", &e))),
                    }
                }
                batch.set_prefetched(p.table, loaded);
            }
            batch.set_origin(Origin::Event(c.range.start));
            match c.body.apply(&batch, events) {
                Ok(a) => applied = a,
                Err(f) => {
                    drop(tx);
                    return Err(CommitError::Handler(BatchFailure {
                        index: c.range.start + f.index.min(events.len().saturating_sub(1)),
                        error: f.error,
                    }));
                }
            }
        }
        self.queue_commit_tail(&batch, &c, partition, applied);
        let queued = batch.take();
        match batch::run(&tx, &queued).await {
            Ok(_) => {
                tx.commit().await.map_err(db_err("committing a batch"))?;
                bump(&self.inner.checkpoints);
                Ok(())
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
                    _ => Err(CommitError::Store(db("committing a batch", &f.error))),
                }
            }
        }
    }

    /// Why a checkpoint's compare-and-set moved nothing.
    async fn diagnose(&self, client: &deadpool_postgres::Object, name: &str, partition: i32) -> CommitError {
        match self.load_record(client, name, partition).await {
            Err(e) => CommitError::Store(e),
            Ok(None) => CommitError::Store(Error::Invalid(format!(
                "projection {name} partition {partition} has no checkpoint; prepare it first"
            ))),
            Ok(Some(r)) if !r.state.is_active() => CommitError::NotActive { state: r.state },
            Ok(Some(r)) => CommitError::Fenced { actual: r.checkpoint },
        }
    }

    /// Runs a body's lifecycle step (`setup`, `reset`) plus the store's own statements in one
    /// transaction, serialized per projection with an advisory lock.
    async fn lifecycle_tx(
        &self,
        name: &str,
        step: &'static str,
        run_body: impl FnOnce(&PgBatch) -> Result<(), HandlerError>,
        store_statements: impl FnOnce(&PgBatch),
    ) -> Result<deadpool_postgres::Object> {
        let batch = PgBatch::new(&self.inner.schema);
        batch.store(
            "SELECT pg_advisory_xact_lock(1886547822, hashtext($1))",
            params![format!("{}/{name}", self.inner.schema)],
        );
        batch.set_origin(Origin::Body);
        run_body(&batch).map_err(|e| Error::Lifecycle {
            projection: name.to_owned(),
            step,
            message: e.to_string(),
        })?;
        store_statements(&batch);
        let queued = batch.take();
        let mut client = self.client_for("changing a projection").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_err("changing a projection"))?;
        match batch::run(&tx, &queued).await {
            Ok(_) => {}
            Err(f) => {
                drop(tx);
                return Err(match f.origin {
                    Origin::Body if !error::retryable(&f.error) => Error::Lifecycle {
                        projection: name.to_owned(),
                        step,
                        message: f.message(),
                    },
                    _ => db("changing a projection", &f.error),
                });
            }
        }
        // Statements the body asked to check (declarative handlers): prepare each, inside a
        // savepoint so that a rejected one does not abort the transaction. An ambiguous type
        // (SQLSTATE 42725, 42P18) is not an error here: values are typed when bound.
        for check in batch.take_checks() {
            let err = db_err("checking a projection's statements");
            tx.batch_execute("SAVEPOINT projectionist_check")
                .await
                .map_err(&err)?;
            match tx.prepare(&check.sql).await {
                Ok(st) => {
                    tx.batch_execute("RELEASE SAVEPOINT projectionist_check")
                        .await
                        .map_err(&err)?;
                    if st.params().len() != check.params {
                        return Err(Error::Lifecycle {
                            projection: name.to_owned(),
                            step,
                            message: format!(
                                "{}: it uses a parameter that is not a named event parameter (such as $1)",
                                check.label
                            ),
                        });
                    }
                }
                Err(e) if error::retryable(&e) => return Err(db("checking a projection's statements", &e)),
                Err(e) => {
                    let ambiguous = e
                        .code()
                        .is_some_and(|c| c.code() == "42725" || c.code() == "42P18");
                    if !ambiguous {
                        return Err(Error::Lifecycle {
                            projection: name.to_owned(),
                            step,
                            message: format!("{}: {}", check.label, error::describe(&e)),
                        });
                    }
                    tx.batch_execute("ROLLBACK TO SAVEPOINT projectionist_check")
                        .await
                        .map_err(&err)?;
                }
            }
        }
        tx.commit()
            .await
            .map_err(db_err("committing a projection change"))?;
        Ok(client)
    }
}

enum AppendError {
    /// A concurrent append took a version that an `Any` append wanted: retry.
    Race,
    Fail(Error),
}

impl From<Error> for AppendError {
    fn from(e: Error) -> Self {
        AppendError::Fail(e)
    }
}

impl AppendError {
    fn into_error(self) -> Error {
        match self {
            AppendError::Fail(e) => e,
            AppendError::Race => Error::Invalid("a concurrent append raced the import".into()),
        }
    }
}

fn validate(a: &StreamAppend) -> Result<()> {
    if a.stream_id.is_empty() {
        return Err(Error::Invalid("stream_id must not be empty".into()));
    }
    if a.events.is_empty() {
        return Err(Error::Invalid(format!(
            "nothing to append to stream {}",
            a.stream_id
        )));
    }
    Ok(())
}

async fn load_versions<'a>(
    client: &impl GenericClient,
    sql: &str,
    streams: impl Iterator<Item = &'a str>,
    versions: &mut HashMap<String, i64>,
) -> Result<()> {
    let streams: Vec<&str> = streams.collect();
    if streams.is_empty() {
        return Ok(());
    }
    let err = db_err("reading stream versions");
    let st = client.prepare_cached(sql).await.map_err(&err)?;
    for s in &streams {
        versions.entry((*s).to_owned()).or_insert(0);
    }
    for r in client.query(&st, &[&streams]).await.map_err(&err)? {
        let s: String = r.try_get(0).map_err(&err)?;
        let v: Option<i64> = r.try_get(1).map_err(&err)?;
        versions.insert(s, v.unwrap_or(0));
    }
    Ok(())
}

/// The columns of a multi-row insert, as arrays for `unnest`.
#[derive(Default)]
struct Rows {
    stream_ids: Vec<String>,
    versions: Vec<i64>,
    types: Vec<String>,
    ids: Vec<Uuid>,
    data: Vec<String>,
    metadata: Vec<String>,
}

impl Rows {
    /// Checks each append's expected version against `versions` (advancing it) and lays out
    /// the rows.
    fn build(appends: &[StreamAppend], versions: &mut HashMap<String, i64>) -> Result<Rows, AppendError> {
        let mut rows = Rows::default();
        for a in appends {
            let current = versions.get(&a.stream_id).copied().unwrap_or(0);
            if !a.expected.admits(current) {
                return Err(AppendError::Fail(Error::Conflict {
                    stream: a.stream_id.clone(),
                    expected: a.expected,
                    actual: current,
                }));
            }
            let mut v = current;
            for e in &a.events {
                v += 1;
                rows.stream_ids.push(a.stream_id.clone());
                rows.versions.push(v);
                rows.types.push(e.event_type.clone());
                rows.ids.push(e.event_id);
                rows.data.push(e.data_json().to_owned());
                rows.metadata.push(e.metadata_json().to_owned());
            }
            versions.insert(a.stream_id.clone(), v);
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        self.versions.len()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.stream_ids,
            &self.versions,
            &self.types,
            &self.ids,
            &self.data,
            &self.metadata,
        ]
    }
}

fn event_from_row(r: &Row) -> Result<Event, tokio_postgres::Error> {
    let data: Option<String> = r.try_get(6)?;
    let metadata: Option<String> = r.try_get(7)?;
    Ok(Event {
        position: r.try_get(0)?,
        txid: r.try_get(1)?,
        stream_id: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        stream_version: r.try_get::<_, Option<i64>>(3)?.unwrap_or_default(),
        event_type: r.try_get(4)?,
        event_id: r.try_get::<_, Option<Uuid>>(5)?.unwrap_or_default(),
        data: Arc::from(data.as_deref().unwrap_or("null")),
        metadata: Arc::from(metadata.as_deref().unwrap_or("{}")),
        recorded_at: r.try_get::<_, Option<DateTime<Utc>>>(8)?.unwrap_or_default(),
    })
}

fn record_from_row(r: &Row) -> Result<ProjectionRecord, tokio_postgres::Error> {
    let state: String = r.try_get(4)?;
    let count =
        |i: usize| -> Result<u64, tokio_postgres::Error> { Ok(r.try_get::<_, i64>(i)?.max(0) as u64) };
    Ok(ProjectionRecord {
        name: r.try_get(0)?,
        partition: r.try_get::<_, i32>(1)?.max(0) as u32,
        checkpoint: Checkpoint {
            txid: r.try_get(2)?,
            position: r.try_get(3)?,
        },
        state: RunState::parse(&state).unwrap_or(RunState::Stopped),
        reason: r.try_get(5)?,
        applied: count(6)?,
        ignored: count(7)?,
        errors: count(8)?,
        events_per_second: r.try_get(9)?,
        last_error: r.try_get(10)?,
        updated_at: r.try_get(11)?,
        dead_letters: count(12)?,
    })
}

fn dead_letter_from_row(r: &Row) -> Result<DeadLetter, tokio_postgres::Error> {
    let data: String = r.try_get(9)?;
    let metadata: String = r.try_get(10)?;
    Ok(DeadLetter {
        id: r.try_get(0)?,
        projection: r.try_get(1)?,
        partition: r.try_get::<_, i32>(2)?.max(0) as u32,
        event: Event {
            position: r.try_get(3)?,
            txid: r.try_get(4)?,
            stream_id: r.try_get(5)?,
            stream_version: r.try_get(6)?,
            event_type: r.try_get(7)?,
            event_id: r.try_get(8)?,
            data: Arc::from(data),
            metadata: Arc::from(metadata),
            recorded_at: r.try_get(11)?,
        },
        error: r.try_get(12)?,
        attempts: r.try_get::<_, i32>(13)?.max(0) as u32,
        first_failed_at: r.try_get(14)?,
        last_failed_at: r.try_get(15)?,
    })
}

impl Source for PgStore {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        if let Some(slice) = filter.partition {
            let batch = self.read_partition(after, limit, filter, slice).await?;
            if batch.events.is_empty() && batch.scanned_to <= after {
                self.probe_blocked(after).await?;
            } else {
                self.reset_wake();
            }
            return Ok(batch);
        }
        let sql = &self.inner.sql;
        let client = self.client_for("reading events").await?;
        let err = db_err("reading events");
        let limit = limit.max(1) as i64;
        // Runs outside any transaction, so that this reader's own transaction never holds the
        // snapshot's xmin back.
        let rows = match &filter.types {
            None => {
                let st = client.prepare_cached(&sql.read_all).await.map_err(&err)?;
                client.query(&st, &[&after.txid, &after.position, &limit]).await
            }
            Some(types) => {
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                let st = client.prepare_cached(&sql.read_filtered).await.map_err(&err)?;
                client
                    .query(&st, &[&after.txid, &after.position, &limit, &types])
                    .await
            }
        }
        .map_err(&err)?;
        let mut batch = Batch {
            events: Vec::with_capacity(rows.len()),
            scanned_to: after,
            ignored: 0,
            deduplicate: false,
        };
        for r in &rows {
            let admitted: bool = r.try_get(9).map_err(&err)?;
            batch.scanned_to = Checkpoint {
                txid: r.try_get(1).map_err(&err)?,
                position: r.try_get(0).map_err(&err)?,
            };
            if admitted {
                batch.events.push(event_from_row(r).map_err(&err)?);
            } else {
                batch.ignored += 1;
            }
        }
        drop(client);
        if rows.is_empty() {
            self.probe_blocked(after).await?;
        } else {
            self.reset_wake();
        }
        Ok(batch)
    }

    async fn head(&self) -> Result<Checkpoint> {
        let client = self.client_for("reading the head").await?;
        let err = db_err("reading the head");
        let st = client.prepare_cached(&self.inner.sql.head).await.map_err(&err)?;
        match client.query_opt(&st, &[]).await.map_err(&err)? {
            None => Ok(Checkpoint::START),
            Some(r) => Ok(Checkpoint {
                txid: r.try_get(0).map_err(&err)?,
                position: r.try_get(1).map_err(&err)?,
            }),
        }
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let client = self.client_for("measuring lag").await?;
        let err = db_err("measuring lag");
        let st = client.prepare_cached(&self.inner.sql.lag).await.map_err(&err)?;
        let r = client
            .query_one(&st, &[&after.txid, &after.position, &LAG_COUNT_CAP])
            .await
            .map_err(&err)?;
        let counted: i64 = r.try_get(0).map_err(&err)?;
        let oldest: Option<DateTime<Utc>> = r.try_get(1).map_err(&err)?;
        let max_position: i64 = r.try_get(2).map_err(&err)?;
        // Past the cap, estimate from positions (positions have gaps after rollbacks, so this
        // is an upper bound).
        let events = if counted >= LAG_COUNT_CAP {
            counted.max(max_position - after.position)
        } else {
            counted
        };
        Ok(Lag {
            events: events.max(0) as u64,
            oldest,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn supports_partitions(&self) -> bool {
        true
    }

    async fn partition_lag(
        &self,
        after: Checkpoint,
        slice: crate::core::source::PartitionSlice,
    ) -> Result<Lag> {
        self.lag_of_partition(after, slice).await
    }
}

impl Store for PgStore {
    type Body = PgBody;

    async fn prepare(&self, name: &str, partition: u32, body: Arc<PgBody>) -> Result<ProjectionRecord> {
        let p = partition_i32(partition)?;
        let sql = &self.inner.sql;
        let client = self
            .lifecycle_tx(
                name,
                "setup",
                |b| body.setup(b),
                |b| {
                    b.store(sql.ensure_checkpoint.clone(), params![name.to_owned(), p]);
                },
            )
            .await?;
        self.load_record(&client, name, p)
            .await?
            .ok_or_else(|| Error::Invalid(format!("checkpoint of {name} vanished during setup")))
    }

    async fn record(&self, name: &str, partition: u32) -> Result<Option<ProjectionRecord>> {
        let p = partition_i32(partition)?;
        let client = self.client_for("reading the checkpoint").await?;
        self.load_record(&client, name, p).await
    }

    async fn records(&self) -> Result<Vec<ProjectionRecord>> {
        let client = self.client_for("reading checkpoints").await?;
        let err = db_err("reading checkpoints");
        let st = client
            .prepare_cached(&self.inner.sql.records)
            .await
            .map_err(&err)?;
        let rows = client.query(&st, &[]).await.map_err(&err)?;
        rows.iter().map(|r| record_from_row(r).map_err(&err)).collect()
    }

    async fn commit(&self, commit: Commit<PgBody>) -> Result<(), CommitError> {
        self.commit_pg(commit).await
    }

    async fn reset(&self, name: &str, body: Arc<PgBody>) -> Result<()> {
        let sql = &self.inner.sql;
        let _client = self
            .lifecycle_tx(
                name,
                "reset",
                |b| body.reset(b),
                |b| {
                    b.store(sql.reset.clone(), params![name.to_owned()]);
                    b.store(sql.delete_dead_letters.clone(), params![name.to_owned()]);
                    b.store(sql.delete_seen.clone(), params![name.to_owned()]);
                    b.store(
                        "SELECT pg_notify($1, '')",
                        params![sql.checkpoints_channel.clone()],
                    );
                },
            )
            .await?;
        bump(&self.inner.checkpoints);
        Ok(())
    }

    async fn set_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> Result<()> {
        let sql = &self.inner.sql;
        let p = partition.map(partition_i32).transpose()?;
        let batch = PgBatch::new(&self.inner.schema);
        batch.store(
            sql.ensure_checkpoint.clone(),
            params![name.to_owned(), p.unwrap_or(0)],
        );
        batch.store(
            sql.set_state.clone(),
            params![name.to_owned(), state.as_str(), reason, p],
        );
        batch.store(
            "SELECT pg_notify($1, '')",
            params![sql.checkpoints_channel.clone()],
        );
        let queued = batch.take();
        let mut client = self.client_for("changing the projection state").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_err("changing the projection state"))?;
        batch::run(&tx, &queued)
            .await
            .map_err(|f| db("changing the projection state", &f.error))?;
        tx.commit().await.map_err(db_err("committing a state change"))?;
        bump(&self.inner.checkpoints);
        Ok(())
    }

    async fn dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        let client = self.client_for("listing dead letters").await?;
        let err = db_err("listing dead letters");
        let st = client
            .prepare_cached(&self.inner.sql.dead_letters)
            .await
            .map_err(&err)?;
        let rows = client.query(&st, &[&projection]).await.map_err(&err)?;
        rows.iter()
            .map(|r| dead_letter_from_row(r).map_err(&err))
            .collect()
    }

    async fn discard_dead_letter(&self, id: i64) -> Result<()> {
        let client = self.client_for("discarding a dead letter").await?;
        let err = db_err("discarding a dead letter");
        let st = client
            .prepare_cached(&self.inner.sql.delete_dead_letter)
            .await
            .map_err(&err)?;
        let n = client.execute(&st, &[&id]).await.map_err(&err)?;
        if n == 0 {
            return Err(Error::UnknownDeadLetter(id));
        }
        Ok(())
    }

    async fn retry_dead_letter(&self, id: i64, body: Arc<PgBody>) -> Result<Result<(), HandlerError>> {
        let sql = &self.inner.sql;
        let err = db_err("retrying a dead letter");
        let mut client = self.client_for("retrying a dead letter").await?;
        let failure = {
            let tx = client.transaction().await.map_err(&err)?;
            let st = tx.prepare_cached(&sql.dead_letter).await.map_err(&err)?;
            let dl = match tx.query_opt(&st, &[&id]).await.map_err(&err)? {
                Some(r) => dead_letter_from_row(&r).map_err(&err)?,
                None => return Err(Error::UnknownDeadLetter(id)),
            };
            let batch = self.new_batch();
            batch.set_origin(Origin::Event(0));
            let events = std::slice::from_ref(&dl.event);
            for p in body.prefetch(events) {
                let rows = self.prefetch_rows(&tx, &p).await?;
                batch.set_prefetched(p.table, rows);
            }
            match body.apply(&batch, events) {
                Err(f) => Some(f.error),
                Ok(applied) => {
                    let partition = i32::try_from(dl.partition).unwrap_or(i32::MAX);
                    batch.store(sql.delete_dead_letter.clone(), params![id]);
                    batch.store(
                        sql.retry_counters.clone(),
                        params![
                            dl.projection.clone(),
                            partition,
                            applied.handled as i64,
                            applied.ignored as i64
                        ],
                    );
                    batch.store(
                        "SELECT pg_notify($1, '')",
                        params![sql.checkpoints_channel.clone()],
                    );
                    let queued = batch.take();
                    match batch::run(&tx, &queued).await {
                        Ok(_) => {
                            tx.commit().await.map_err(db_err("committing a retry"))?;
                            None
                        }
                        Err(
                            f @ PipelineError {
                                origin: Origin::Event(_),
                                ..
                            },
                        ) if !error::retryable(&f.error) => Some(HandlerError::msg(f.message())),
                        Err(f) => return Err(db("retrying a dead letter", &f.error)),
                    }
                }
            }
        };
        match failure {
            None => {
                bump(&self.inner.checkpoints);
                Ok(Ok(()))
            }
            Some(error) => {
                let st = client
                    .prepare_cached(&sql.dead_letter_attempt)
                    .await
                    .map_err(&err)?;
                client
                    .execute(&st, &[&id, &error.to_string()])
                    .await
                    .map_err(&err)?;
                Ok(Err(error))
            }
        }
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
}
