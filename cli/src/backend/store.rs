//! The store of `--database`: opening it, appends and imports, read-model queries, and the
//! engine over it with the configured declarative projections.

use std::sync::Arc;

use anyhow::{Context, Result};
use projectionist::declarative::{Config, ProjectionDef};
#[cfg(feature = "postgres")]
use projectionist::postgres::PgStore;
use projectionist::sqlite::{SqliteStore, StreamAppend};
use projectionist::{Appended, Engine, ExpectedVersion, NewEvent, Source};

use super::{DatabaseUrl, Location};
use crate::exit::usage;
use crate::jsonl::ImportEvent;

/// An open backend.
#[derive(Clone)]
pub enum Backend {
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
            Location::SqliteMemory => Ok(Backend::Sqlite(SqliteStore::in_memory()?)),
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
        let appends = events.map(|item| {
            item.map(|e| StreamAppend {
                stream_id: e.stream_id,
                expected: e.expected,
                events: vec![e.event],
            })
        });
        match self {
            Backend::Sqlite(store) => store.import(appends, progress).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => store.import(appends, progress).await,
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
            Backend::Sqlite(store) => store.append(stream_id, expected, vec![event]).await,
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => store.append(stream_id, expected, vec![event]).await,
        }
    }

    /// Runs a read-only query on the read models and returns its rows as text.
    pub async fn query(&self, sql: &'static str) -> Result<Rows> {
        match self {
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
        }
    }
}

/// A database that keeps read models and is a source of its own events (one per backend).
pub trait CliStore: projectionist::Store + Source + Clone {
    /// The engine over the store's own events table, with the store's runner settings.
    fn database_engine(&self) -> Engine<Self, Self>;
    /// The declarative projection `def`, for this store.
    fn declarative(def: &ProjectionDef) -> projectionist::Projection<Self::Body>;
}

impl CliStore for SqliteStore {
    fn database_engine(&self) -> Engine<Self, Self> {
        self.engine()
    }

    fn declarative(def: &ProjectionDef) -> projectionist::Projection<Self::Body> {
        projectionist::declarative::projection(def)
    }
}

#[cfg(feature = "postgres")]
impl CliStore for PgStore {
    fn database_engine(&self) -> Engine<Self, Self> {
        self.engine()
    }

    fn declarative(def: &ProjectionDef) -> projectionist::Projection<Self::Body> {
        projectionist::declarative::projection(def)
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
