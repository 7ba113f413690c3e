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
    /// The URL is checked when it connects (the builder parses it).
    fn check(&self, _url: &DatabaseUrl) -> Result<()> {
        Ok(())
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
            Ok(Database::new(store))
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
