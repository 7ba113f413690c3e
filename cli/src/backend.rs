//! The one place that turns a `--database` URL into a backend.
//!
//! Command logic is written against `projectionist::Engine<S, St>` for any `Source` and
//! `Store`; the [`with_engine!`] macro builds the engine of whichever backend the URL names and
//! registers the configured declarative projections on it. Each backend (SQLite, PostgreSQL) is
//! one variant of [`Location`] and [`Backend`] and one arm in each `match` below.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
#[cfg(feature = "postgres")]
use projectionist::postgres::PgStore;
use projectionist::sqlite::{SqliteStore, StreamAppend};
use projectionist::{Appended, ExpectedVersion, NewEvent};

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
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
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
        match self {
            Backend::Sqlite(store) => {
                let appends = events.map(|item| {
                    item.map(|e| StreamAppend {
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
                    item.map(|e| StreamAppend {
                        stream_id: e.stream_id,
                        expected: e.expected,
                        events: vec![e.event],
                    })
                });
                store.import(appends, progress).await
            }
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

/// The SQLite engine with the declarative projections of `config`.
pub fn sqlite_engine(
    store: &SqliteStore,
    config: Option<&projectionist::declarative::Config>,
) -> projectionist::Result<projectionist::sqlite::SqliteEngine> {
    let mut engine = store.engine();
    if let Some(config) = config {
        for def in &config.projections {
            engine.register(projectionist::declarative::sqlite::projection(def))?;
        }
    }
    Ok(engine)
}

/// The PostgreSQL engine with the declarative projections of `config`.
#[cfg(feature = "postgres")]
pub fn pg_engine(
    store: &PgStore,
    config: Option<&projectionist::declarative::Config>,
) -> projectionist::Result<projectionist::postgres::PgEngine> {
    let mut engine = store.engine();
    if let Some(config) = config {
        for def in &config.projections {
            engine.register(projectionist::declarative::postgres::projection(def))?;
        }
    }
    Ok(engine)
}

/// Builds the engine of `$backend` with the declarative projections of `$config`
/// (an `Option<&Config>`), binds it to `$engine`, and evaluates `$body`.
macro_rules! with_engine {
    ($backend:expr, $config:expr, |$engine:ident| $body:expr) => {
        match $backend {
            $crate::backend::Backend::Sqlite(store) => {
                #[allow(unused_mut)]
                let mut $engine = $crate::backend::sqlite_engine(store, $config)?;
                $body
            }
            #[cfg(feature = "postgres")]
            $crate::backend::Backend::Postgres(store) => {
                #[allow(unused_mut)]
                let mut $engine = $crate::backend::pg_engine(store, $config)?;
                $body
            }
        }
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
