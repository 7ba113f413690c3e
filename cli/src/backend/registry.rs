//! What a backend module provides: a [`StoreBackend`] or a [`SourceBackend`], listed as a
//! [`Kind`] in the registry (`STORES`, `SOURCES`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use projectionist::backend::BoxFuture;
use projectionist::backend::{AnySource, AnyStore, InlineAppend, ShadowStore, Source, SqlStore};
use projectionist::declarative::Config;
use projectionist::{EventLog, SqlTx};

use super::DatabaseUrl;
use crate::bench;
use crate::exit::usage;

/// A backend in the registry: its name, the cargo feature that builds it in, the URL schemes
/// it opens, an example URL for messages, and the backend itself when it is built in.
pub struct Kind<B: ?Sized + 'static> {
    pub name: &'static str,
    pub feature: &'static str,
    /// URL schemes, in lower case.
    pub schemes: &'static [&'static str],
    pub example: &'static str,
    pub backend: Option<&'static B>,
}

impl<B: ?Sized> Kind<B> {
    /// The backend of `scheme` (any case) in `kinds`.
    pub fn find(kinds: &'static [Kind<B>], scheme: &str) -> Option<&'static Kind<B>> {
        kinds
            .iter()
            .find(|k| k.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)))
    }

    /// The backend, or a usage error naming the feature that builds it in. `what` is the URL
    /// as messages show it.
    pub fn built(&self, what: &str) -> Result<&'static B> {
        self.backend.ok_or_else(|| {
            usage(format!(
                "{what}: this build of projectionist has no {} support (build it with the `{}` feature)",
                self.name, self.feature
            ))
        })
    }

    /// The example URLs of `kinds`, joined by `separator`.
    pub fn examples(kinds: &[Kind<B>], separator: &str) -> String {
        let examples: Vec<&str> = kinds.iter().map(|k| k.example).collect();
        examples.join(separator)
    }
}

/// An open database: the store of read models and checkpoints, and its own events table as a
/// source.
#[derive(Clone)]
pub struct Database {
    pub store: AnyStore,
    pub events: AnySource,
    /// Whether opening it created the engine's tables (`None`: the backend cannot tell, and
    /// whether the database existed before says it).
    pub created: Option<bool>,
}

impl Database {
    /// A store that is also the source of its own events.
    pub fn new<St>(store: St) -> Self
    where
        St: Source + Clone + SqlStore + EventLog + InlineAppend<St> + ShadowStore,
        St::Tx: SqlTx + Sized,
    {
        Database {
            store: AnyStore::new(store.clone()),
            events: AnySource::new(store),
            created: None,
        }
    }

    /// Says whether opening it created the engine's tables.
    #[cfg(feature = "postgres")]
    pub fn created(mut self, created: bool) -> Self {
        self.created = Some(created);
        self
    }
}

/// A throwaway database for `projectionist test` and `check`: a temporary SQLite file, or a
/// fresh PostgreSQL schema. [`Scratch::close`] removes it (a SQLite file also goes when the
/// value is dropped).
pub struct Scratch {
    pub db: Database,
    /// Keeps a temporary folder alive until the scratch database is dropped.
    pub keep: Option<tempfile::TempDir>,
    /// Removes the database (drops a PostgreSQL schema); runs only when awaited.
    pub remove: Option<BoxFuture<'static, Result<()>>>,
}

impl Scratch {
    /// Removes the throwaway database.
    pub async fn close(self) -> Result<()> {
        drop(self.db);
        if let Some(remove) = self.remove {
            remove.await?;
        }
        drop(self.keep);
        Ok(())
    }
}

/// What `projectionist bench` asks of a store backend.
pub struct BenchRun {
    pub settings: bench::Settings,
    /// `--batch-size`, if given.
    pub batch_size: Option<usize>,
    /// The results go out as JSON: no progress text.
    pub quiet: bool,
}

/// A store backend: how its `--database` URLs open.
pub trait StoreBackend: Sync {
    /// Checks a URL of this backend before anything opens it (a usage error when it is wrong).
    fn check(&self, url: &DatabaseUrl) -> Result<()>;

    /// Opens the database (creating it and the engine's tables if needed).
    fn open<'a>(&'a self, url: &'a DatabaseUrl) -> BoxFuture<'a, Result<Database>>;

    /// Whether the database exists already. Default: yes (a server's database).
    fn exists(&self, url: &DatabaseUrl) -> bool {
        let _ = url;
        true
    }

    /// The database's files that exist (an embedded database and its journals), which
    /// `quickstart --force` replaces. Default: none.
    fn files(&self, url: &DatabaseUrl) -> Vec<PathBuf> {
        let _ = url;
        Vec::new()
    }

    /// A throwaway database of this backend, beside `url` (same server), that nothing else
    /// uses. Default: not supported.
    fn scratch<'a>(&'a self, url: &'a DatabaseUrl) -> BoxFuture<'a, Result<Scratch>> {
        Box::pin(async move {
            bail!(usage(format!(
                "--database {url}: this database cannot give a throwaway copy for tests"
            )))
        })
    }

    /// Runs `projectionist bench` on this database; `given` is false when `--database` was not
    /// given (an embedded store then benches a temporary database). Default: not supported.
    fn bench<'a>(
        &'a self,
        url: &'a DatabaseUrl,
        given: bool,
        run: &'a BenchRun,
    ) -> BoxFuture<'a, Result<Vec<bench::Phase>>> {
        let _ = (given, run);
        Box::pin(async move {
            bail!(usage(format!(
                "--database {url}: the bench does not run on this database"
            )))
        })
    }
}

/// An event source that is open, and what it reads, for logs (no credentials).
pub struct OpenedSource {
    pub source: AnySource,
    pub describe: String,
}

/// Why a source did not open: a bad setting or something missing at the source (a stream, a
/// topic, a table) is the user's to fix (a usage error); anything else is the environment's.
pub fn not_opened(shown: &str, e: projectionist::Error) -> anyhow::Error {
    match e {
        projectionist::Error::Config(_) | projectionist::Error::Unsupported(_) => {
            usage(format!("{shown}: {e}"))
        }
        e => anyhow::Error::new(e).context(format!("cannot read events from {shown}")),
    }
}

/// An event source backend: how its URLs open.
pub trait SourceBackend: Sync {
    /// Opens the source at `url` for the projections of `config`. `shown` is where the URL
    /// comes from and the URL without credentials, for messages. A bad URL or setting is a
    /// usage error.
    fn open<'a>(
        &'a self,
        url: &'a str,
        shown: &'a str,
        config: Option<&'a Config>,
    ) -> BoxFuture<'a, Result<OpenedSource>>;
}
