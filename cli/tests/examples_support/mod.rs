//! Shared by the CLI tests of the example projections (`test`, `check`, `schema`, and the
//! tests that compare their read models across sources and backends): folders with the example
//! projections (and their example tests), the binary, and the example tables as sorted text
//! rows on PostgreSQL and SQLite (numbers rounded to 6 places, printed alike on both).
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use projectionist::postgres::tokio_postgres;
use projectionist::sqlite::rusqlite::{types::ValueRef, Connection};
use tempfile::TempDir;

/// The example projections (what `quickstart` writes as projectionist.toml).
pub const CONFIG: &str = include_str!("../../../examples/projectionist.toml");
/// Their example tests (what `quickstart` writes as projectionist.test.toml).
pub const TESTS: &str = include_str!("../../../examples/projectionist.test.toml");

/// The binary, to run in `dir`, with a two-minute timeout.
pub fn bin(dir: &Path) -> Command {
    let mut c = Command::from_std(projectionist_testkit::binary!().command(dir));
    c.timeout(Duration::from_secs(120));
    c
}

/// The output's stdout, after asserting that the command succeeded.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard output and standard error, as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temporary folder with the example projections and their example tests.
pub fn example_dir() -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("write config");
    std::fs::write(dir.path().join("projectionist.test.toml"), TESTS).expect("write tests");
    dir
}

/// The example config's tables and their columns; `round(x, 6)` rounds on both backends.
pub const TABLES: &[(&str, &str)] = &[
    (
        "order_summary",
        "order_id, customer_id, customer_name, status, item_count, round(total_amount, 6), carrier, tracking_number, version",
    ),
    ("order_items", "order_id, line, item_name, quantity, round(unit_price, 6)"),
    (
        "orders_by_customer",
        "customer_id, customer_name, orders, delivered, cancelled, round(ordered_value, 6)",
    ),
    ("revenue_by_carrier", "carrier, shipped, delivered, round(revenue, 6)"),
];

/// `table`'s `cols` in `schema`, sorted by the first two, as text.
pub async fn pg_rows(
    client: &tokio_postgres::Client,
    schema: &str,
    table: &str,
    cols: &str,
) -> Vec<Vec<String>> {
    let cols = cols.replace(", 6)", "::numeric, 6)");
    let sql = format!("SELECT {cols} FROM {schema}.{table} ORDER BY 1, 2");
    client
        .simple_query(&sql)
        .await
        .expect("query")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect())
            }
            _ => None,
        })
        .collect()
}

/// Every table of [`TABLES`] in `schema`.
pub async fn pg_all(client: &tokio_postgres::Client, schema: &str) -> Vec<Vec<Vec<String>>> {
    let mut all = Vec::new();
    for (table, cols) in TABLES {
        all.push(pg_rows(client, schema, table, cols).await);
    }
    all
}

/// `table`'s `cols` in the SQLite file `db`, sorted by the first two, as text.
pub fn sqlite_rows(db: &Path, table: &str, cols: &str) -> Vec<Vec<String>> {
    let conn = Connection::open(db).expect("open");
    let mut st = conn
        .prepare(&format!("SELECT {cols} FROM {table} ORDER BY 1, 2"))
        .expect("prepare");
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                Ok(match r.get_ref(i)? {
                    ValueRef::Null => String::new(),
                    ValueRef::Integer(v) => v.to_string(),
                    // Same rounding as PostgreSQL's numeric output.
                    ValueRef::Real(v) => format!("{v:.6}"),
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                    ValueRef::Blob(_) => "<blob>".into(),
                })
            })
            .collect::<Result<Vec<String>, _>>()
    })
    .expect("query")
    .collect::<Result<_, _>>()
    .expect("rows")
}

/// Every table of [`TABLES`] in the SQLite file `db`.
pub fn sqlite_all(db: &Path) -> Vec<Vec<Vec<String>>> {
    TABLES.iter().map(|(t, c)| sqlite_rows(db, t, c)).collect()
}
