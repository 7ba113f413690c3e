//! The one place that turns a `--database` URL into a backend.
//!
//! Command logic is written against `projectionist::Engine<S, St>` for any `Source` and
//! `Store`; the [`with_engine!`] macro builds the engine over whichever source (`--source`, or
//! the database's events table) and store (`--database`) are in force, and registers the
//! configured declarative projections on it. Each store backend (SQLite, PostgreSQL) is one
//! variant of [`Location`] and [`Backend`] and one arm in each `match` below; each event
//! source is one variant of [`EventSource`], one arm in [`EventSource::open`] and one arm in
//! [`with_engine!`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use projectionist::declarative::{Config, ProjectionDef};
#[cfg(feature = "nats")]
use projectionist::nats::NatsSource;
#[cfg(feature = "postgres")]
use projectionist::postgres::PgStore;
#[cfg(feature = "rabbitmq")]
use projectionist::rabbitmq::{RabbitError, RabbitSource};
#[cfg(feature = "sqlite")]
use projectionist::sqlite::SqliteStore;
use projectionist::{Appended, Engine, ExpectedVersion, NewEvent, Source};

use crate::exit::usage;
use crate::jsonl::ImportEvent;

/// Where the database is, parsed from `--database`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A private in-memory SQLite database (`sqlite://:memory:`), for experiments.
    SqliteMemory,
    /// A PostgreSQL database: `postgres://user[:password]@host[:port]/db[?schema=NAME&…]`.
    Postgres(SecretUrl),
}

/// A URL that may hold a password: its `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password, to connect with. Never print it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// A parsed `--database` URL. Its `Display` never shows a password.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    pub location: Location,
    shown: String,
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `url` with any password replaced by `***`: the user-info password, and query parameters
/// that look secret (libpq-style URLs may carry `?password=`).
pub fn redact(url: &str) -> String {
    mask_query_secrets(&redact_userinfo(url))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let scheme = url[..scheme_end].to_ascii_lowercase();
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
    } else if matches!(scheme.as_str(), "nats" | "tls") {
        // A bare NATS user-info is a token.
        "***".to_owned()
    } else {
        user.to_owned()
    };
    format!("{}://{masked}{}", &url[..scheme_end], &rest[at..])
}

/// Masks the values of query parameters whose names look secret; drops any fragment.
fn mask_query_secrets(shown: &str) -> String {
    let Some((base, query)) = shown.split_once('?') else {
        return shown.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", masked.join("&"));
    if fragment.is_some() {
        // A fragment has no meaning to the database; it is not shown.
        out.push_str("#***");
    }
    out
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key"]
        .iter()
        .any(|s| k.contains(s))
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, a bare path, or `postgres://…` /
    /// `postgresql://…`. Other schemes are usage errors.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact(url);
        let url = url.trim();
        if url.is_empty() {
            return Err(usage(
                "--database is empty; give sqlite://PATH (for example sqlite://projectionist.db) or postgres://USER@HOST/DB",
            ));
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if let Some((scheme, _)) = url.split_once("://") {
            if matches!(scheme.to_ascii_lowercase().as_str(), "postgres" | "postgresql") {
                if !cfg!(feature = "postgres") {
                    return Err(usage(format!(
                        "--database {shown}: this build of projectionist has no PostgreSQL support \
                         (build it with the `postgres` feature); use sqlite://PATH"
                    )));
                }
                return Ok(DatabaseUrl {
                    location: Location::Postgres(SecretUrl(url.to_owned())),
                    shown,
                });
            }
            return Err(usage(format!(
                "unsupported database URL scheme `{scheme}` in --database {shown}; supported: \
                 sqlite://PATH (or a bare file path) and postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]"
            )));
        } else {
            url
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if path.is_empty() {
            return Err(usage(format!(
                "--database {shown} names no file; give sqlite://PATH, e.g. sqlite://projectionist.db"
            )));
        }
        let location = if path == ":memory:" {
            Location::SqliteMemory
        } else {
            Location::Sqlite(PathBuf::from(path))
        };
        Ok(DatabaseUrl { location, shown })
    }

    /// Whether the database already exists.
    pub fn exists(&self) -> bool {
        match &self.location {
            Location::Sqlite(p) => p.exists(),
            Location::SqliteMemory | Location::Postgres(_) => true,
        }
    }

    /// The files of an embedded database that exist (the database and its WAL files).
    pub fn existing_files(&self) -> Vec<PathBuf> {
        match &self.location {
            Location::Sqlite(p) => sqlite_files(p).into_iter().filter(|f| f.exists()).collect(),
            Location::SqliteMemory | Location::Postgres(_) => Vec::new(),
        }
    }
}

fn sqlite_files(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        out.push(PathBuf::from(s));
    }
    out
}

/// An open backend.
#[derive(Clone)]
pub enum Backend {
    #[cfg(feature = "sqlite")]
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
}

/// A read-model query's result: column names and rows of display text.
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Backend {
    /// Opens (creating if needed) the database and the engine's tables.
    pub async fn open(url: &DatabaseUrl) -> Result<Self> {
        match &url.location {
            #[cfg(feature = "sqlite")]
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if !dir.is_dir() {
                        anyhow::bail!(
                            "cannot open the database {url}: the folder {} does not exist; create it or pass another --database",
                            dir.display()
                        );
                    }
                }
                let store = SqliteStore::open(path)
                    .await
                    .with_context(|| format!("cannot open the database {url}"))?;
                Ok(Backend::Sqlite(store))
            }
            #[cfg(feature = "sqlite")]
            Location::SqliteMemory => Ok(Backend::Sqlite(SqliteStore::in_memory()?)),
            #[cfg(not(feature = "sqlite"))]
            Location::Sqlite(_) | Location::SqliteMemory => Err(usage(format!(
                "--database {url}: this build of projectionist has no SQLite support"
            ))),
            #[cfg(feature = "postgres")]
            Location::Postgres(secret) => {
                // The schema may come from the URL (`?schema=NAME`); errors show the URL
                // without its password.
                let store = PgStore::builder(secret.expose())
                    .map_err(|e| usage(format!("--database {url}: {e}")))?
                    .application_name("projectionist")
                    .connect()
                    .await
                    .with_context(|| format!("cannot open the database {url}"))?;
                Ok(Backend::Postgres(store))
            }
            #[cfg(not(feature = "postgres"))]
            Location::Postgres(_) => Err(usage(format!(
                "--database {url}: this build of projectionist has no PostgreSQL support"
            ))),
        }
    }

    /// Imports events in one transaction: all or nothing. `progress` gets the count so far.
    pub async fn import<I>(
        &self,
        events: I,
        progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    ) -> projectionist::Result<u64>
    where
        I: Iterator<Item = projectionist::Result<ImportEvent>> + Send + 'static,
    {
        match self {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => {
                let appends = events.map(|item| {
                    item.map(|e| projectionist::StreamAppend {
                        stream_id: e.stream_id,
                        expected: e.expected,
                        events: vec![e.event],
                    })
                });
                store.import(appends, progress).await
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => {
                let appends = events.map(|item| {
                    item.map(|e| projectionist::StreamAppend {
                        stream_id: e.stream_id,
                        expected: e.expected,
                        events: vec![e.event],
                    })
                });
                store.import(appends, progress).await
            }
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            _ => unreachable!("{NO_STORE}"),
        }
    }

    /// Appends one event.
    pub async fn append(
        &self,
        stream_id: String,
        expected: ExpectedVersion,
        event: NewEvent,
    ) -> projectionist::Result<Appended> {
        match self {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => store.append(stream_id, expected, vec![event]).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => store.append(stream_id, expected, vec![event]).await,
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            _ => unreachable!("{NO_STORE}"),
        }
    }

    /// Runs a read-only query on the read models and returns its rows as text.
    pub async fn query(&self, sql: &'static str) -> Result<Rows> {
        match self {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => {
                let rows = store
                    .read(move |conn| {
                        let mut st = conn.prepare(sql)?;
                        let columns: Vec<String> = st.column_names().into_iter().map(str::to_owned).collect();
                        let n = columns.len();
                        let rows = st
                            .query_map([], |row| {
                                (0..n)
                                    .map(|i| {
                                        use projectionist::sqlite::rusqlite::types::ValueRef;
                                        Ok(match row.get_ref(i)? {
                                            ValueRef::Null => String::new(),
                                            ValueRef::Integer(v) => v.to_string(),
                                            ValueRef::Real(v) => v.to_string(),
                                            ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                                            ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
                                        })
                                    })
                                    .collect::<projectionist::sqlite::rusqlite::Result<Vec<String>>>()
                            })?
                            .collect::<projectionist::sqlite::rusqlite::Result<Vec<_>>>()?;
                        Ok(Rows { columns, rows })
                    })
                    .await?;
                Ok(rows)
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => {
                use projectionist::postgres::tokio_postgres::SimpleQueryMessage;
                // The simple protocol returns every value as text.
                let client = store.client().await?;
                let messages = client.simple_query(sql).await?;
                let mut out = Rows {
                    columns: Vec::new(),
                    rows: Vec::new(),
                };
                for m in messages {
                    match m {
                        SimpleQueryMessage::RowDescription(cols) => {
                            out.columns = cols.iter().map(|c| c.name().to_owned()).collect();
                        }
                        SimpleQueryMessage::Row(r) => {
                            if out.columns.is_empty() {
                                out.columns = r.columns().iter().map(|c| c.name().to_owned()).collect();
                            }
                            out.rows.push(
                                (0..r.len())
                                    .map(|i| r.get(i).unwrap_or_default().to_owned())
                                    .collect(),
                            );
                        }
                        _ => {}
                    }
                }
                Ok(out)
            }
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            _ => unreachable!("{NO_STORE}"),
        }
    }
}

/// Why a build without a store never holds a [`Backend`]: [`Backend::open`] refuses every
/// `--database` first.
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
pub const NO_STORE: &str = "this build of projectionist has no store (SQLite or PostgreSQL)";

/// A database that keeps read models and is a source of its own events (one per backend).
pub trait CliStore: projectionist::Store + Source + Clone {
    /// The engine over the store's own events table, with the store's runner settings.
    fn database_engine(&self) -> Engine<Self, Self>;
    /// The declarative projection `def`, for this store.
    fn declarative(def: &ProjectionDef) -> projectionist::Projection<Self::Body>;
}

#[cfg(feature = "sqlite")]
impl CliStore for SqliteStore {
    fn database_engine(&self) -> Engine<Self, Self> {
        self.engine()
    }

    fn declarative(def: &ProjectionDef) -> projectionist::Projection<Self::Body> {
        projectionist::declarative::sqlite::projection(def)
    }
}

#[cfg(feature = "postgres")]
impl CliStore for PgStore {
    fn database_engine(&self) -> Engine<Self, Self> {
        self.engine()
    }

    fn declarative(def: &ProjectionDef) -> projectionist::Projection<Self::Body> {
        projectionist::declarative::postgres::projection(def)
    }
}

/// The engine that reads events from `source` and keeps the read models (and checkpoints) of
/// `config`'s projections in `store`, with the store's runner settings.
pub fn engine<S: Source, St: CliStore>(
    source: Arc<S>,
    store: &St,
    config: Option<&Config>,
) -> projectionist::Result<Engine<S, St>> {
    let settings = store.database_engine().runner_settings().clone();
    let mut engine = Engine::new(source, Arc::new(store.clone())).settings(settings);
    if let Some(config) = config {
        for def in &config.projections {
            engine.register(St::declarative(def))?;
        }
    }
    Ok(engine)
}

/// The SQLite engine (over its own events table) with the declarative projections of `config`.
#[cfg(feature = "sqlite")]
pub fn sqlite_engine(
    store: &SqliteStore,
    config: Option<&Config>,
) -> projectionist::Result<projectionist::sqlite::SqliteEngine> {
    engine(Arc::new(store.clone()), store, config)
}

/// The PostgreSQL engine (over its own events table) with the declarative projections of
/// `config`.
#[cfg(feature = "postgres")]
pub fn pg_engine(
    store: &PgStore,
    config: Option<&Config>,
) -> projectionist::Result<projectionist::postgres::PgEngine> {
    engine(Arc::new(store.clone()), store, config)
}

/// Where commands that read events take them from: `--source`, else the config's `source`,
/// else the database's own events table. Each broker is one variant here, one arm in
/// [`EventSource::open`] and one arm in [`with_engine!`].
#[derive(Clone)]
pub enum EventSource {
    /// The `--database`'s events table.
    Database,
    /// A NATS JetStream stream (`nats://…?stream=NAME`).
    #[cfg(feature = "nats")]
    Nats(Arc<NatsSource>),
    /// A RabbitMQ queue per projection (`amqp://…?exchange=NAME`).
    #[cfg(feature = "rabbitmq")]
    Rabbit(Arc<RabbitSource>),
}

impl EventSource {
    /// The source URL in force (`--source`, else the config's `source`), and where it comes
    /// from, for messages.
    pub fn url<'a>(flag: Option<&'a str>, config: Option<&'a Config>) -> Option<(&'a str, String)> {
        let given = |u: &&str| !u.trim().is_empty();
        match flag.filter(given) {
            Some(url) => Some((url.trim(), "--source".to_owned())),
            None => config.and_then(|c| {
                c.source
                    .as_deref()
                    .filter(given)
                    .map(|url| (url.trim(), format!("{}: key `source`", c.file)))
            }),
        }
    }

    /// Opens the source at `url` (`None`: the database) for the projections of `config`.
    /// A bad URL or setting is a usage error (exit 2); errors never show a password.
    #[cfg_attr(not(any(feature = "nats", feature = "rabbitmq")), allow(unused_variables))]
    pub async fn open(url: Option<(&str, String)>, config: Option<&Config>) -> Result<Self> {
        let Some((url, origin)) = url else {
            return Ok(EventSource::Database);
        };
        let shown = format!("{origin} {}", redact(url));
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            #[cfg(feature = "nats")]
            "nats" => {
                let mut builder = NatsSource::builder(url).map_err(|e| usage(format!("{shown}: {e}")))?;
                for def in config.map_or(&[][..], |c| &c.projections[..]) {
                    if def.partitions > 1 {
                        return Err(usage(format!(
                            "projection {} has partitions = {}, and a NATS source does not partition; set \
                             partitions = 1 (JetStream scales out with one process per projection)",
                            def.name, def.partitions
                        )));
                    }
                    if let Some(subject) = &def.subject {
                        builder = builder.subject(&def.name, subject);
                    }
                }
                match builder.connect().await {
                    Ok(source) => Ok(EventSource::Nats(Arc::new(source))),
                    Err(projectionist::Error::Invalid(m)) => Err(usage(format!("{shown}: {m}"))),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
                }
            }
            #[cfg(feature = "rabbitmq")]
            "amqp" | "amqps" => {
                let mut builder = RabbitSource::builder(url);
                for def in config.map_or(&[][..], |c| &c.projections[..]) {
                    if def.partitions > 1 {
                        return Err(usage(format!(
                            "projection {} has partitions = {}, and a RabbitMQ queue has no partitions; set \
                             partitions = 1 (one runner consumes each projection's queue, in order)",
                            def.name, def.partitions
                        )));
                    }
                    // Registering every projection declares its queue at once, so it keeps
                    // what is published before the first run.
                    builder = match &def.subject {
                        Some(subject) => builder.subject(&def.name, subject),
                        None => builder.projection(&def.name),
                    };
                }
                match builder.connect().await {
                    Ok(source) => Ok(EventSource::Rabbit(Arc::new(source))),
                    Err(e @ RabbitError::Config { .. }) => Err(usage(format!("{shown}: {e}"))),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
                }
            }
            _ => Err(usage(format!(
                "{shown}: unsupported source scheme `{scheme}`; supported: nats://HOST:4222?stream=NAME \
                 (NATS JetStream), amqp://USER:PASSWORD@HOST:5672/VHOST?exchange=NAME (RabbitMQ), or no \
                 source to read the database's events table"
            ))),
        }
    }

    /// What a broker source reads, without credentials, for logs (`None`: the database).
    pub fn describe(&self) -> Option<String> {
        match self {
            EventSource::Database => None,
            #[cfg(feature = "nats")]
            EventSource::Nats(source) => Some(format!("NATS JetStream {}", source.location())),
            #[cfg(feature = "rabbitmq")]
            EventSource::Rabbit(source) => Some(format!("RabbitMQ {}", source.url())),
        }
    }
}

/// Binds `$store` to the store of `$backend` and evaluates `$body` once per backend type.
macro_rules! with_store {
    ($backend:expr, |$store:ident| $body:expr) => {
        match $backend {
            #[cfg(feature = "sqlite")]
            $crate::backend::Backend::Sqlite($store) => $body,
            #[cfg(feature = "postgres")]
            $crate::backend::Backend::Postgres($store) => $body,
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            _ => unreachable!("{}", $crate::backend::NO_STORE),
        }
    };
}
pub(crate) use with_store;

/// Builds the engine that reads `$source` (an `&EventSource`) and keeps the read models of
/// `$config` (an `Option<&Config>`) in `$backend`'s store, binds it to `$engine`, and
/// evaluates `$body`. The body is compiled once per (source, store) pair, so command logic is
/// written once against `Engine<S, St>`. A new source is one arm here.
macro_rules! with_engine {
    ($backend:expr, $source:expr, $config:expr, |$engine:ident| $body:expr) => {
        $crate::backend::with_store!($backend, |store| match $source {
            $crate::backend::EventSource::Database => {
                #[allow(unused_mut)]
                let mut $engine =
                    $crate::backend::engine(std::sync::Arc::new(store.clone()), store, $config)?;
                $body
            }
            #[cfg(feature = "nats")]
            $crate::backend::EventSource::Nats(source) => {
                #[allow(unused_mut)]
                let mut $engine = $crate::backend::engine(source.clone(), store, $config)?;
                $body
            }
            #[cfg(feature = "rabbitmq")]
            $crate::backend::EventSource::Rabbit(source) => {
                #[allow(unused_mut)]
                let mut $engine = $crate::backend::engine(source.clone(), store, $config)?;
                $body
            }
        })
    };
}
pub(crate) use with_engine;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_secrets_are_masked() {
        assert_eq!(
            redact("sqlite://a.db?password=hunter2&mode=rwc"),
            "sqlite://a.db?password=***&mode=rwc"
        );
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(
            redact("postgres://u:pw@h/x?sslpassword=a#b"),
            "postgres://u:***@h/x?sslpassword=***#***"
        );
        assert_eq!(redact("x?api_key=1&a=b"), "x?api_key=***&a=b");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(redact("postgres://u:p@ss@h/x"), "postgres://u:***@h/x");
        assert_eq!(
            redact("nats://app:s3cret@h:4222?stream=EVENTS"),
            "nats://app:***@h:4222?stream=EVENTS"
        );
        assert_eq!(redact("nats://t0ken@h?stream=S"), "nats://***@h?stream=S");
    }

    #[test]
    fn the_source_flag_overrides_the_config() {
        let config = Config::parse(
            "source = \"nats://h?stream=A\"\n[[projection]]\nname = \"p\"\n[projection.handlers]\nT = \"SELECT 1\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            EventSource::url(Some("nats://k?stream=B"), Some(&config)),
            Some(("nats://k?stream=B", "--source".to_owned()))
        );
        assert_eq!(
            EventSource::url(Some("  "), Some(&config)),
            Some(("nats://h?stream=A", "p.toml: key `source`".to_owned()))
        );
        assert_eq!(EventSource::url(None, None), None);
    }

    #[test]
    fn urls_parse() {
        let p = |s: &str| DatabaseUrl::parse(s).map(|u| u.location);
        assert_eq!(p("sqlite://x.db").ok(), Some(Location::Sqlite("x.db".into())));
        assert_eq!(
            p("sqlite:///abs/x.db").ok(),
            Some(Location::Sqlite("/abs/x.db".into()))
        );
        assert_eq!(p("x.db").ok(), Some(Location::Sqlite("x.db".into())));
        assert_eq!(p("sqlite://:memory:").ok(), Some(Location::SqliteMemory));
        let pg = DatabaseUrl::parse("postgres://u:secret@h/db?schema=s1").unwrap();
        assert!(matches!(pg.location, Location::Postgres(_)));
        assert!(!pg.to_string().contains("secret"), "{pg}");
        assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
        assert!(DatabaseUrl::parse("postgresql://h/db").is_ok());
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}
