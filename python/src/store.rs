//! `Store`: an event store opened from a URL (the same URLs as the CLI), with appends and
//! imports. Projections run on it through an `Engine`.

use std::sync::Arc;

use projectionist::backend::{AnySource, AnyStore, Source};
use projectionist::postgres::PgStore;
use projectionist::sqlite::SqliteStore;
use projectionist::{Appended, Checkpoint, Dialect, EventLog, ExpectedVersion, NewEvent, StreamAppend};
use pyo3::prelude::*;
use pyo3::types::PyIterator;

use crate::errors::{ConfigError, InvalidInputError};
use crate::runtime::wait;

/// Where events are appended and read, and read models are kept.
#[pyclass(frozen, module = "projectionist._projectionist")]
pub struct Store {
    pub store: AnyStore,
    pub source: AnySource,
    pub dialect: Dialect,
    /// The URL without its password, for messages.
    shown: String,
}

/// The path of `sqlite://PATH`, `sqlite:PATH` or a bare `PATH`.
fn sqlite_path(url: &str) -> &str {
    let path = match url.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("sqlite:") => &url[7..],
        _ => url,
    };
    let path = path.strip_prefix("//").unwrap_or(path);
    path.split(['?', '#']).next().unwrap_or_default()
}

fn is_postgres(url: &str) -> bool {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("postgres://") || lower.starts_with("postgresql://")
}

/// `url` without the password of its user-info.
fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) if authority[..at].contains(':') => {
            let user = authority[..at].split(':').next().unwrap_or_default();
            format!("{}://{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        _ => url.to_owned(),
    }
}

impl Store {
    fn of<St>(store: St, dialect: Dialect, shown: String) -> Store
    where
        St: Source
            + Clone
            + projectionist::backend::SqlStore
            + EventLog
            + projectionist::backend::InlineAppend<St>
            + projectionist::backend::ShadowStore,
        St::Tx: projectionist::SqlTx + Sized,
    {
        Store {
            store: AnyStore::new(store.clone()),
            source: AnySource::new(store),
            dialect,
            shown,
        }
    }
}

/// An event to append, as the Python layer hands it over: type, payload JSON, metadata JSON,
/// event id.
type EventTuple = (String, String, Option<String>, Option<String>);

pub fn new_events(events: Vec<EventTuple>) -> PyResult<Vec<NewEvent>> {
    events
        .into_iter()
        .map(|(event_type, data, metadata, id)| {
            let mut e = NewEvent::from_json_text(event_type, data)
                .map_err(|e| InvalidInputError::new_err(format!("an event's data is not JSON: {e}")))?;
            if let Some(m) = metadata {
                e = e.with_metadata_text(m).map_err(|e| {
                    InvalidInputError::new_err(format!("an event's metadata is not JSON: {e}"))
                })?;
            }
            if let Some(id) = id {
                let id = uuid::Uuid::parse_str(&id)
                    .map_err(|e| InvalidInputError::new_err(format!("event_id {id:?} is not a UUID: {e}")))?;
                e = e.with_id(id);
            }
            Ok(e)
        })
        .collect()
}

/// One stream's append, as the Python layer hands it over.
pub type AppendTuple = (String, Option<i64>, Vec<EventTuple>);

pub fn stream_appends(appends: Vec<AppendTuple>) -> PyResult<Vec<StreamAppend>> {
    appends
        .into_iter()
        .map(|(stream, expected, events)| {
            Ok(StreamAppend::new(
                stream,
                ExpectedVersion::from_option(expected),
                new_events(events)?,
            ))
        })
        .collect()
}

/// Where an append landed. `str(token)` is the form `wait_for` and the CLI's `wait` take.
#[pyclass(frozen, module = "projectionist._projectionist")]
#[derive(Clone)]
pub struct Token {
    #[pyo3(get)]
    pub txid: i64,
    #[pyo3(get)]
    pub position: i64,
    #[pyo3(get)]
    pub first_position: i64,
    #[pyo3(get)]
    pub stream_version: i64,
}

impl From<Appended> for Token {
    fn from(a: Appended) -> Self {
        Token {
            txid: a.token.txid,
            position: a.token.position,
            first_position: a.first_position,
            stream_version: a.stream_version,
        }
    }
}

impl Token {
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            txid: self.txid,
            position: self.position,
        }
    }
}

#[pymethods]
impl Token {
    fn __str__(&self) -> String {
        self.checkpoint().to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "Token('{}', stream_version={})",
            self.checkpoint(),
            self.stream_version
        )
    }
}

/// A token from a `Token`, its text (`"POSITION"` or `"TXID:POSITION"`) or a position.
pub fn token_of(v: &Bound<'_, PyAny>) -> PyResult<Checkpoint> {
    if let Ok(t) = v.downcast::<Token>() {
        return Ok(t.get().checkpoint());
    }
    if let Ok(p) = v.extract::<i64>() {
        return Ok(Checkpoint::at(p));
    }
    let text: String = v.extract()?;
    Checkpoint::parse(&text).ok_or_else(|| {
        InvalidInputError::new_err(format!("{text:?} is not a token (POSITION or TXID:POSITION)"))
    })
}

/// Iterates a Python iterator of appends on the import's blocking thread, taking the GIL for
/// each item.
struct PyAppends(Py<PyIterator>);

impl Iterator for PyAppends {
    type Item = projectionist::Result<StreamAppend>;

    fn next(&mut self) -> Option<Self::Item> {
        Python::with_gil(|py| {
            let item = self.0.bind(py).clone().next()?;
            let one = item
                .and_then(|i| i.extract::<AppendTuple>())
                .and_then(|a| stream_appends(vec![a]))
                .map_err(|e| projectionist::Error::InvalidInput(format!("import: {e}")));
            Some(one.and_then(|mut v| {
                v.pop()
                    .ok_or_else(|| projectionist::Error::Internal("import: an empty append".into()))
            }))
        })
    }
}

#[pymethods]
impl Store {
    /// Opens a store: `sqlite:///path`, `sqlite://path` or a bare path (SQLite), or
    /// `postgresql://user@host/db[?schema=NAME]` (PostgreSQL). Creates the engine's tables.
    #[staticmethod]
    fn open(py: Python<'_>, url: &str) -> PyResult<Store> {
        if is_postgres(url) {
            let shown = redact(url);
            let builder = PgStore::builder(url).map_err(|e| ConfigError::new_err(format!("{shown}: {e}")))?;
            let store = wait(py, builder.application_name("projectionist-python").connect())?;
            return Ok(Store::of(store, Dialect::Postgres, shown));
        }
        if url.contains("://") && !url.get(..7).is_some_and(|h| h.eq_ignore_ascii_case("sqlite:")) {
            return Err(ConfigError::new_err(format!(
                "{}: unknown store; give sqlite:///PATH (or a bare path) or postgresql://USER@HOST/DB",
                redact(url)
            )));
        }
        let path = sqlite_path(url).to_owned();
        let store = match path.as_str() {
            "" => {
                return Err(ConfigError::new_err(format!(
                    "{url} names no file; give sqlite:///PATH"
                )))
            }
            ":memory:" => SqliteStore::in_memory().map_err(crate::errors::to_py)?,
            _ => wait(py, SqliteStore::open(path))?,
        };
        Ok(Store::of(store, Dialect::Sqlite, url.to_owned()))
    }

    /// `"sqlite"` or `"postgres"`.
    #[getter]
    fn dialect(&self) -> String {
        self.dialect.to_string()
    }

    #[getter]
    fn url(&self) -> &str {
        &self.shown
    }

    /// Appends to one stream (no inline projections: use `Engine.append` for those).
    #[pyo3(signature = (stream_id, events, expected_version = None))]
    fn append(
        &self,
        py: Python<'_>,
        stream_id: String,
        events: Vec<EventTuple>,
        expected_version: Option<i64>,
    ) -> PyResult<Token> {
        let events = new_events(events)?;
        let store = self.store.clone();
        let expected = ExpectedVersion::from_option(expected_version);
        Ok(wait(py, async move { store.append(stream_id, expected, events).await })?.into())
    }

    /// Appends to several streams in one transaction: all or nothing.
    fn append_many(&self, py: Python<'_>, appends: Vec<AppendTuple>) -> PyResult<Vec<Token>> {
        let appends = stream_appends(appends)?;
        let store = self.store.clone();
        let out = wait(py, async move { store.append_many(appends).await })?;
        Ok(out.into_iter().map(Token::from).collect())
    }

    /// Imports an iterable of appends in one transaction: all or nothing. Returns the number
    /// of events imported.
    fn import_(&self, py: Python<'_>, appends: &Bound<'_, PyAny>) -> PyResult<u64> {
        let iter = PyAppends(appends.try_iter()?.unbind());
        let store = self.store.clone();
        wait(py, async move { store.import(iter, None).await })
    }

    /// The position of the newest event.
    fn head(&self, py: Python<'_>) -> PyResult<i64> {
        let source = self.source.clone();
        Ok(wait(py, async move { source.head().await })?.position)
    }

    /// Runs a read-only query on the read models, outside any batch, and returns its rows as
    /// lists of text (NULL as an empty string), after the column names.
    fn query_text<'py>(&self, py: Python<'py>, sql: String) -> PyResult<(Vec<String>, Vec<Vec<String>>)> {
        use projectionist::backend::SqlStore;
        let store = self.store.clone();
        let rows = wait(py, async move { store.query_text(&sql).await })?;
        Ok((rows.columns, rows.rows))
    }
}

/// The store's engine parts, shared with an `Engine`.
pub fn parts(store: &Store) -> (Arc<AnySource>, Arc<AnyStore>) {
    (Arc::new(store.source.clone()), Arc::new(store.store.clone()))
}
