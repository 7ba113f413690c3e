//! Connecting: the builder, the URL and its `schema=` parameter, and the redacted location
//! that errors and logs show instead of the URL.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use super::error::{db_err, pool as pool_err};
use super::sql::Sql;
use super::{listen, quote, schema, DocumentWrite, Inner, PgStore, Wake};
use crate::core::error::{Error, Result};

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

pub(super) fn valid_schema(schema: &str) -> bool {
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
    pub(super) also_search: Option<String>,
    seen_retention: Duration,
    server_batches: bool,
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

    /// The schema of the engine's tables, as set so far (`public` unless the URL or
    /// [`schema`](Self::schema) named one).
    pub fn schema_name(&self) -> &str {
        &self.schema
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

    /// How long the ids of applied events are kept to drop redeliveries (sources such as
    /// RabbitMQ that have no position to compare); default [`DEFAULT_SEEN_RETENTION`].
    pub fn seen_retention(mut self, window: Duration) -> Self {
        self.seen_retention = window;
        self
    }

    /// Whether a declarative projection applies a batch in one call of a PL/pgSQL function
    /// generated from its statements (default `true`; see docs/postgres.md), rather than
    /// sending its statements one per event.
    pub fn server_batches(mut self, yes: bool) -> Self {
        self.server_batches = yes;
        self
    }

    /// How document projections write their rows back (default
    /// [`DocumentWrite::Recordset`], which measured faster; see docs/postgres.md).
    pub fn document_write(mut self, w: DocumentWrite) -> Self {
        self.document_write = w;
        self
    }

    /// Connects, creates the engine's tables (idempotently), and starts listening.
    pub async fn connect(self) -> Result<PgStore> {
        if !valid_schema(&self.schema) {
            return Err(Error::Config(format!(
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
            .map_err(|e| Error::Internal(format!("cannot build the PostgreSQL connection pool: {e}")))?;

        let connect_err = |e: deadpool_postgres::PoolError| {
            let mut e = pool_err("connecting", e);
            if let Error::Database { message, .. } = &mut e {
                *message = format!("cannot connect to PostgreSQL at {location}: {}", message);
            }
            e
        };
        let created;
        {
            let mut client = pool.get().await.map_err(connect_err)?;
            let version: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db_err("checking the server version"))?;
            if version < 130_000 {
                return Err(Error::Unsupported(format!(
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
            let table = if self.read_models {
                "projection_checkpoints"
            } else {
                "events"
            };
            let existed: bool = tx
                .query_one(
                    "SELECT to_regclass(format('%I.%I', $1::text, $2::text)) IS NOT NULL",
                    &[&self.schema, &table],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(&err)?;
            created = !existed;
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
                created,
                seen_retention: self.seen_retention,
                last_prune: Mutex::new(None),
                server_fns: Default::default(),
                server_batches: self.server_batches,
                dispatchers: Default::default(),
                careful: Default::default(),
                _stop: stop,
            }),
        })
    }
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
            Error::Config(format!(
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
            server_batches: true,
        }
    }
}
