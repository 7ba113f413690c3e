//! Fresh PostgreSQL schemas and databases, one per test, named with the process id (nextest
//! runs each test in a process of its own), on the server of [`crate::postgres_url`].

use std::str::FromStr;
use std::time::Duration;

pub use tokio_postgres::{Client, Error};

use crate::Service;

/// The PostgreSQL URL with `?schema=NAME`: how the CLI and `PgStore::builder` take a schema.
pub fn url_with_schema(schema: &str) -> String {
    crate::with_params(&crate::postgres_url(), &format!("schema={schema}"))
}

/// A raw connection (not through the library), with `search_path` set to `schema` first when
/// given. Its connection task runs on the current tokio runtime.
pub async fn connect(search_path: Option<&str>) -> Result<Client, Error> {
    let mut config = tokio_postgres::Config::from_str(&crate::postgres_url())?;
    config.application_name("projectionist-test-raw");
    if let Some(s) = search_path {
        config.options(format!("-c search_path={s},public"));
    }
    config.connect_timeout(Duration::from_secs(5));
    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A fresh (absent) schema `{prefix}_{test}_{pid}` for `test`, with a connection to the
/// database; `None` after a loud SKIP when PostgreSQL is not reachable and skipping is allowed
/// (see [`crate::require_service`]).
pub async fn fresh_schema(test: &str, prefix: &str) -> Option<(String, Client)> {
    let client = crate::require_service(test, Service::Postgres, connect(None).await)?;
    let schema = format!("{prefix}_{test}_{}", std::process::id());
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop the schema left by an earlier run");
    Some((schema, client))
}

/// Drops `schema` and all in it, if it exists: the clean-up at a test's end, which ignores
/// errors (a fresh schema never depends on it).
pub async fn drop_schema(client: &Client, schema: &str) {
    let _ = client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
}

/// A new empty database `{name}_{pid}` on the same server (dropped first if it exists).
pub async fn fresh_database(client: &Client, name: &str) -> String {
    let database = format!("{name}_{}", std::process::id());
    drop_database(client, &database).await;
    client
        .batch_execute(&format!("CREATE DATABASE {database}"))
        .await
        .expect("create the test database");
    database
}

/// Drops `database`, ending its sessions, if it exists.
pub async fn drop_database(client: &Client, database: &str) {
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        .await
        .expect("drop the test database");
}
