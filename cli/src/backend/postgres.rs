//! `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]`: a PostgreSQL store.

use anyhow::{Context, Result};
use projectionist::backend::BoxFuture;
use projectionist::postgres::PgStore;

use super::registry::Scratch;
use super::{BenchRun, Database, DatabaseUrl, StoreBackend};
use crate::bench;
use crate::exit::usage;

/// The PostgreSQL store backend.
pub struct Postgres;

impl StoreBackend for Postgres {
    /// The URL is checked when it connects (the builder parses it), but for its database
    /// name: without one, PostgreSQL would silently use the database named after the user.
    fn check(&self, url: &DatabaseUrl) -> Result<()> {
        if names_a_database(url.expose()) {
            return Ok(());
        }
        Err(usage(format!(
            "--database {url} names no database; add one, as in postgres://USER@HOST:5432/DB \
             (PostgreSQL would otherwise use the database named after the user)"
        )))
    }

    fn open<'a>(&'a self, url: &'a DatabaseUrl) -> BoxFuture<'a, Result<Database>> {
        Box::pin(async move {
            // The schema may come from the URL (`?schema=NAME`); errors show the URL without
            // its password.
            let store = PgStore::builder(url.expose())
                .map_err(|e| usage(format!("--database {url}: {e}")))?
                .application_name("projectionist")
                .connect()
                .await
                .with_context(|| format!("cannot open the database {url}"))?;
            let created = store.created_tables();
            Ok(Database::new(store).created(created))
        })
    }

    /// A fresh schema of its own on the same server, dropped by `Scratch::close`.
    fn scratch<'a>(&'a self, url: &'a DatabaseUrl) -> BoxFuture<'a, Result<Scratch>> {
        Box::pin(async move {
            let schema = format!(
                "projectionist_test_{}",
                &uuid::Uuid::new_v4().simple().to_string()[..16]
            );
            let store = PgStore::builder(url.expose())
                .map_err(|e| usage(format!("--database {url}: {e}")))?
                .schema(schema.clone())
                .application_name("projectionist test")
                .connect()
                .await
                .with_context(|| format!("cannot create a test schema in the database {url}"))?;
            let dropper = store.clone();
            let remove = Box::pin(async move {
                let client = dropper.client().await?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .await
                    .with_context(|| format!("cannot drop the test schema {schema}"))?;
                Ok(())
            });
            Ok(Scratch {
                db: Database::new(store),
                keep: None,
                remove: Some(remove),
            })
        })
    }

    /// Benches in a schema of its own, created fresh.
    fn bench<'a>(
        &'a self,
        url: &'a DatabaseUrl,
        _given: bool,
        run: &'a BenchRun,
    ) -> BoxFuture<'a, Result<Vec<bench::Phase>>> {
        Box::pin(async move {
            let bench = bench::postgres::open(url.expose(), url.to_string(), run.batch_size).await?;
            bench::run(&bench, &run.settings, run.quiet).await
        })
    }
}

/// Whether a `postgres://` URL names its database: a path after the host, or `dbname=` in the
/// query.
fn names_a_database(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = main.split_once('/').map_or("", |(_, p)| p);
    let in_query = query.split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == "dbname" && !v.is_empty())
    });
    !path.trim_matches('/').is_empty() || in_query
}

#[cfg(test)]
mod tests {
    use super::names_a_database;

    #[test]
    fn a_url_must_name_its_database() {
        assert!(names_a_database("postgres://u:p@h:5432/app"));
        assert!(names_a_database("postgresql://h/app?schema=s"));
        assert!(names_a_database("postgres://h?dbname=app"));
        assert!(!names_a_database("postgres://u@h:5432"));
        assert!(!names_a_database("postgres://u@h:5432/"));
        assert!(!names_a_database("postgres://h/?schema=s"));
        assert!(!names_a_database("postgres://h?dbname="));
    }
}
