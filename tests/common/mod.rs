//! Shared test support: strict projections whose handlers reject duplicates and out-of-order
//! events, read-model dumps, workload loading, and child processes for crash tests.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};

use projectionist::sqlite::{rusqlite, SqliteHandlers, SqliteProjection, SqliteStore, StreamAppend};
use projectionist::workload::Orders;
use projectionist::EventLog;
use projectionist::{ExpectedVersion, HandlerError, NewEvent};
use serde::Deserialize;

/// A projection that counts events per stream and fails on any duplicate or out-of-order
/// event: `stream_counts(stream_id, events, last_version)` and `seen(position)`.
pub fn strict_counter(name: &str) -> SqliteProjection {
    let table = format!("{name}_counts");
    let seen = format!("{name}_seen");
    let (t1, t2, t3) = (table.clone(), table.clone(), table.clone());
    let (s1, s2, s3) = (seen.clone(), seen.clone(), seen.clone());
    let handlers = SqliteHandlers::new()
        .setup(move |db| {
            db.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t1} (stream_id TEXT PRIMARY KEY, events INTEGER NOT NULL, last_version INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS {s1} (position INTEGER PRIMARY KEY);"
            ))?;
            Ok(())
        })
        .reset(move |db| {
            db.execute_batch(&format!("DELETE FROM {t2}; DELETE FROM {s2};"))?;
            Ok(())
        });
    let mut handlers = handlers;
    for ty in ORDER_TYPES {
        let t = t3.clone();
        let s = s3.clone();
        handlers = handlers.on_json(*ty, move |db, ev, _| count_strictly(db, &t, &s, ev));
    }
    SqliteProjection::new(name, handlers)
}

pub const ORDER_TYPES: &[&str] = &projectionist::workload::EVENT_TYPES;

fn count_strictly(
    db: &rusqlite::Connection,
    table: &str,
    seen: &str,
    ev: &projectionist::Event,
) -> Result<(), HandlerError> {
    // A duplicate delivery violates the primary key.
    db.execute(
        &format!("INSERT INTO {seen} (position) VALUES (?1)"),
        [ev.position],
    )
    .map_err(|e| HandlerError::msg(format!("duplicate delivery of position {}: {e}", ev.position)))?;
    let last: Option<i64> = db
        .query_row(
            &format!("SELECT last_version FROM {table} WHERE stream_id = ?1"),
            [&ev.stream_id],
            |r| r.get(0),
        )
        .or_else(|e| {
            if matches!(e, rusqlite::Error::QueryReturnedNoRows) {
                Ok(None)
            } else {
                Err(e)
            }
        })?;
    let expected = last.unwrap_or(0) + 1;
    if ev.stream_version != expected {
        return Err(HandlerError::msg(format!(
            "out of order on {}: got version {}, expected {expected}",
            ev.stream_id, ev.stream_version
        )));
    }
    db.execute(
        &format!(
            "INSERT INTO {table} (stream_id, events, last_version) VALUES (?1, 1, ?2)
             ON CONFLICT (stream_id) DO UPDATE SET events = events + 1, last_version = excluded.last_version"
        ),
        (&ev.stream_id, ev.stream_version),
    )?;
    Ok(())
}

#[derive(Deserialize)]
struct Created {
    order_id: String,
    customer_name: String,
}
#[derive(Deserialize)]
struct Item {
    order_id: String,
    quantity: i64,
    unit_price: f64,
}
#[derive(Deserialize)]
struct Shipped {
    order_id: String,
    carrier: String,
    tracking_number: String,
}
#[derive(Deserialize)]
struct OrderRef {
    order_id: String,
}

/// The orders workload's `order_summary` read model, as typed handlers.
pub fn order_summary(name: &str) -> SqliteProjection {
    let t = format!("{name}_summary");
    let status = |t: String, s: &'static str| {
        move |db: &rusqlite::Connection, ev: &projectionist::Event, e: OrderRef| -> Result<(), HandlerError> {
            db.execute(
                &format!("UPDATE {t} SET status = ?2, version = ?3 WHERE order_id = ?1"),
                (&e.order_id, s, ev.stream_version),
            )?;
            Ok(())
        }
    };
    let (t1, t2, t3, t4, t5) = (t.clone(), t.clone(), t.clone(), t.clone(), t.clone());
    let handlers = SqliteHandlers::new()
        .setup(move |db| {
            db.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS {t1} (order_id TEXT PRIMARY KEY, customer_name TEXT, status TEXT,
                 item_count INTEGER NOT NULL DEFAULT 0, total_cents INTEGER NOT NULL DEFAULT 0,
                 carrier TEXT, tracking_number TEXT, version INTEGER NOT NULL)"
            ))?;
            Ok(())
        })
        .reset(move |db| {
            db.execute(&format!("DELETE FROM {t2}"), [])?;
            Ok(())
        })
        .on("OrderCreated", move |db, ev, e: Created| {
            db.execute(
                &format!("INSERT INTO {t3} (order_id, customer_name, status, version) VALUES (?1, ?2, 'created', ?3)"),
                (&e.order_id, &e.customer_name, ev.stream_version),
            )?;
            Ok(())
        })
        .on("ItemAdded", move |db, ev, e: Item| {
            let cents = (e.unit_price * 100.0).round() as i64 * e.quantity;
            db.execute(
                &format!("UPDATE {t4} SET item_count = item_count + ?2, total_cents = total_cents + ?3, version = ?4 WHERE order_id = ?1"),
                (&e.order_id, e.quantity, cents, ev.stream_version),
            )?;
            Ok(())
        })
        .on("OrderConfirmed", status(t.clone(), "confirmed"))
        .on("OrderShipped", move |db, ev, e: Shipped| {
            db.execute(
                &format!("UPDATE {t5} SET status = 'shipped', carrier = ?2, tracking_number = ?3, version = ?4 WHERE order_id = ?1"),
                (&e.order_id, &e.carrier, &e.tracking_number, ev.stream_version),
            )?;
            Ok(())
        })
        .on("OrderDelivered", status(t.clone(), "delivered"))
        .on("OrderCancelled", status(t.clone(), "cancelled"));
    SqliteProjection::new(name, handlers)
}

/// Every row of `table`, ordered, as text: for exact comparisons.
pub async fn dump(store: &SqliteStore, table: &str) -> Vec<String> {
    let sql = format!("SELECT * FROM {table} ORDER BY 1");
    store
        .read(move |db| {
            let mut st = db.prepare(&sql)?;
            let n = st.column_count();
            let rows = st.query_map([], |r| {
                let mut cols = Vec::with_capacity(n);
                for i in 0..n {
                    let v: rusqlite::types::Value = r.get(i)?;
                    cols.push(match v {
                        rusqlite::types::Value::Null => "NULL".to_owned(),
                        rusqlite::types::Value::Integer(n) => n.to_string(),
                        rusqlite::types::Value::Real(f) => format!("{f:.6}"),
                        rusqlite::types::Value::Text(t) => t,
                        rusqlite::types::Value::Blob(b) => format!("{b:?}"),
                    });
                }
                Ok(cols.join("|"))
            })?;
            rows.collect()
        })
        .await
        .expect("dump the read model")
}

/// Appends the first `n` events of the orders workload (seed `seed`), in chunks.
pub async fn load_orders(store: &SqliteStore, seed: u64, n: u64) {
    let items = Orders::new(seed, n).map(|e| {
        Ok(StreamAppend::new(
            e.stream_id.clone(),
            ExpectedVersion::Exact(e.stream_version - 1),
            vec![NewEvent::new(e.event_type, e.data)],
        ))
    });
    store.import(items, None).await.expect("load the orders workload");
}

/// The number of events per stream in the events table.
pub async fn stream_lengths(store: &SqliteStore) -> Vec<String> {
    store
        .read(|db| {
            let mut st = db.prepare(
                "SELECT stream_id, count(*), max(stream_version) FROM events GROUP BY stream_id ORDER BY 1",
            )?;
            let rows = st.query_map([], |r| {
                Ok(format!(
                    "{}|{}|{}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?
                ))
            })?;
            rows.collect()
        })
        .await
        .expect("stream lengths")
}

/// Re-runs this test binary as a child that executes only `test_name`, with `env` set, so
/// that the test body can act as the child. Works under cargo test and cargo-nextest.
pub fn spawn_self(test_name: &str, env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("current test executable");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn the child test process")
}

/// Opens a fresh database file in `dir`.
pub async fn fresh_store(dir: &Path) -> SqliteStore {
    SqliteStore::open(dir.join("test.db"))
        .await
        .expect("open the test database")
}

/// Asserts two row dumps are equal, reporting the sizes and the first difference only.
#[track_caller]
pub fn assert_same_rows(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual.iter().zip(expected).position(|(a, b)| a != b);
    match first {
        Some(i) => panic!(
            "{what}: first difference at row {i}: {:?} != {:?} ({} vs {} rows)",
            actual[i],
            expected[i],
            actual.len(),
            expected.len()
        ),
        None => panic!("{what}: {} rows, expected {}", actual.len(), expected.len()),
    }
}
