//! `sqlite://PATH`, `sqlite:PATH` or a bare path: the embedded SQLite store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use projectionist::backend::BoxFuture;
use projectionist::sqlite::SqliteStore;

use super::registry::Scratch;
use super::{BenchRun, Database, DatabaseUrl, StoreBackend};
use crate::bench;
use crate::exit::usage;

/// The SQLite store backend.
pub struct Sqlite;

/// Where a SQLite URL points.
enum Target {
    File(PathBuf),
    /// A private in-memory database (`sqlite://:memory:`), for experiments.
    Memory,
}

/// The path of `sqlite://PATH`, `sqlite:PATH` (any case) or a bare `PATH`.
fn path_of(url: &str) -> &str {
    let path = match url.get(..7) {
        Some(head) if head.eq_ignore_ascii_case("sqlite:") => &url[7..],
        _ => url,
    };
    let path = path.strip_prefix("//").unwrap_or(path);
    path.split(['?', '#']).next().unwrap_or_default()
}

fn target(url: &DatabaseUrl) -> Result<Target> {
    let path = path_of(url.expose());
    match path {
        "" => Err(usage(format!(
            "--database {url} names no file; give sqlite://PATH, e.g. sqlite://projectionist.db"
        ))),
        ":memory:" => Ok(Target::Memory),
        path => Ok(Target::File(PathBuf::from(path))),
    }
}

/// The database file and its WAL files.
fn files(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        out.push(PathBuf::from(s));
    }
    out
}

impl StoreBackend for Sqlite {
    fn check(&self, url: &DatabaseUrl) -> Result<()> {
        target(url).map(drop)
    }

    fn open<'a>(&'a self, url: &'a DatabaseUrl) -> BoxFuture<'a, Result<Database>> {
        Box::pin(async move {
            let path = match target(url)? {
                Target::Memory => return Ok(Database::new(SqliteStore::in_memory()?)),
                Target::File(path) => path,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    bail!(
                        "cannot open the database {url}: the folder {} does not exist; create it or pass another --database",
                        dir.display()
                    );
                }
            }
            let store = SqliteStore::open(&path)
                .await
                .with_context(|| format!("cannot open the database {url}"))?;
            Ok(Database::new(store))
        })
    }

    fn exists(&self, url: &DatabaseUrl) -> bool {
        match target(url) {
            Ok(Target::File(p)) => p.exists(),
            _ => true,
        }
    }

    fn files(&self, url: &DatabaseUrl) -> Vec<PathBuf> {
        match target(url) {
            Ok(Target::File(p)) => files(&p).into_iter().filter(|f| f.exists()).collect(),
            _ => Vec::new(),
        }
    }

    /// A database file in a temporary folder (whatever `url` names is never touched).
    fn scratch<'a>(&'a self, _url: &'a DatabaseUrl) -> BoxFuture<'a, Result<Scratch>> {
        Box::pin(async move {
            let dir = tempfile::tempdir().context("cannot create a temporary folder for a test database")?;
            let store = SqliteStore::open(&dir.path().join("test.db"))
                .await
                .context("cannot create a temporary SQLite database")?;
            Ok(Scratch {
                db: Database::new(store),
                keep: Some(dir),
                remove: None,
            })
        })
    }

    /// Benches a fresh database file: the one given, or a temporary one.
    fn bench<'a>(
        &'a self,
        url: &'a DatabaseUrl,
        given: bool,
        run: &'a BenchRun,
    ) -> BoxFuture<'a, Result<Vec<bench::Phase>>> {
        Box::pin(async move {
            let path = match target(url)? {
                Target::Memory => bail!(usage(
                    "the bench needs a database file (or no --database, for a temporary one)"
                )),
                Target::File(path) => path,
            };
            let path = given.then_some(path.as_path());
            let bench = bench::sqlite::open(path, run.batch_size).await?;
            bench::run(&bench, &run.settings, run.quiet).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::path_of;

    #[test]
    fn paths_follow_the_scheme_or_stand_alone() {
        assert_eq!(path_of("sqlite://x.db"), "x.db");
        assert_eq!(path_of("SQLite:x.db"), "x.db");
        assert_eq!(path_of("sqlite:///abs/x.db"), "/abs/x.db");
        assert_eq!(path_of("x.db?mode=rwc"), "x.db");
        assert_eq!(path_of("sqlite://:memory:"), ":memory:");
        assert_eq!(path_of("sqlite://"), "");
    }
}
