//! The bench on the embedded SQLite backend: a fresh database file.

use std::path::Path;

use anyhow::{bail, Context, Result};
use projectionist::sqlite::{rusqlite, SqliteHandlers, SqliteStore};
use projectionist::{HandlerError, Handlers};

use super::orders::{create_table, Created, Item, Nothing, Shipped};
use super::{Bench, BenchStore, COLUMNS, PER_EVENT_TABLE, REFERENCE_TABLE};

/// Opens a fresh database at `path`, or in a temporary folder when `path` is `None`. Refuses a
/// database that already holds events: the bench needs its own.
pub async fn open(path: Option<&Path>, batch_size: Option<usize>) -> Result<Bench<SqliteStore>> {
    let (dir, path) = match path {
        Some(p) => (None, p.to_path_buf()),
        None => {
            let dir = tempfile::tempdir().context("creating a temporary folder for the bench database")?;
            let path = dir.path().join("bench.db");
            (Some(dir), path)
        }
    };
    let store = SqliteStore::open(&path).await?;
    if store.event_count().await? > 0 {
        bail!(
            "{} already holds events; the bench needs a fresh database (give another --database, \
             or none for a temporary one)",
            path.display()
        );
    }
    let describe = format!("SQLite {} (embedded, {})", rusqlite::version(), path.display());
    Ok(Bench::new(store, describe, batch_size, dir))
}

impl BenchStore for SqliteStore {
    const ROUNDED_TOTAL: &'static str = "round(total_amount, 2)";

    fn handlers(table: &str) -> Handlers<rusqlite::Connection> {
        typed_handlers(table)
    }

    fn reference_sql() -> String {
        format!(
            "{create};
             DELETE FROM {REFERENCE_TABLE};
             INSERT INTO {REFERENCE_TABLE} ({COLUMNS})
             SELECT stream_id,
                    max(CASE WHEN event_type = 'OrderCreated' THEN data ->> '$.customer_name' END),
                    CASE WHEN max(event_type = 'OrderDelivered') THEN 'delivered'
                         WHEN max(event_type = 'OrderCancelled') THEN 'cancelled'
                         WHEN max(event_type = 'OrderShipped') THEN 'shipped'
                         WHEN max(event_type = 'OrderConfirmed') THEN 'confirmed'
                         ELSE 'created' END,
                    coalesce(sum(CASE WHEN event_type = 'ItemAdded' THEN data ->> '$.quantity' END), 0),
                    coalesce(sum(CASE WHEN event_type = 'ItemAdded'
                                      THEN (data ->> '$.quantity') * (data ->> '$.unit_price') END), 0),
                    max(CASE WHEN event_type = 'OrderShipped' THEN data ->> '$.carrier' END),
                    max(CASE WHEN event_type = 'OrderShipped' THEN data ->> '$.tracking_number' END),
                    max(stream_version)
               FROM events GROUP BY stream_id;",
            create = create_table(REFERENCE_TABLE)
        )
    }

    async fn execute(&self, sql: String) -> Result<()> {
        self.write(move |db| db.execute_batch(&sql)).await?;
        Ok(())
    }

    const PER_EVENT_LOOP: &'static str = "reference: per-event loop, prepared statements in-process";

    /// SQLite runs inside the process, so its per-event reference is the same statements run
    /// per event by this process: one transaction, one prepared `SELECT` over the events in
    /// position order, each event's payload decoded with serde_json and its statements run as
    /// cached prepared statements. No engine: no batches, checkpoints or policies.
    async fn per_event_loop(&self) -> Result<()> {
        self.write(per_event_loop).await?;
        Ok(())
    }
}

/// `order_summary` as typed per-event handlers.
fn typed_handlers(table: &str) -> SqliteHandlers {
    let t = table.to_owned();
    let status = |s: &'static str| {
        let sql = format!("UPDATE {t} SET status = '{s}', version = ?2 WHERE order_id = ?1");
        move |db: &rusqlite::Connection, ev: &projectionist::Event, _: Nothing| -> Result<(), HandlerError> {
            db.prepare_cached(&sql)?
                .execute((&ev.stream_id, ev.stream_version))?;
            Ok(())
        }
    };
    let (create, reset) = (create_table(table), format!("DELETE FROM {table}"));
    let insert =
        format!("INSERT INTO {t} (order_id, customer_name, status, version) VALUES (?1, ?2, 'created', ?3)");
    let item = format!(
        "UPDATE {t} SET item_count = item_count + ?2, total_amount = total_amount + ?3, version = ?4 WHERE order_id = ?1"
    );
    let ship = format!(
        "UPDATE {t} SET status = 'shipped', carrier = ?2, tracking_number = ?3, version = ?4 WHERE order_id = ?1"
    );
    SqliteHandlers::new()
        .setup(move |db| {
            db.execute_batch(&create)?;
            Ok(())
        })
        .reset(move |db| {
            db.execute(&reset, [])?;
            Ok(())
        })
        .on("OrderCreated", move |db, ev, e: Created| {
            db.prepare_cached(&insert)?
                .execute((&ev.stream_id, e.customer_name, ev.stream_version))?;
            Ok(())
        })
        .on("ItemAdded", move |db, ev, e: Item| {
            let amount = e.quantity as f64 * e.unit_price;
            db.prepare_cached(&item)?
                .execute((&ev.stream_id, e.quantity, amount, ev.stream_version))?;
            Ok(())
        })
        .on("OrderConfirmed", status("confirmed"))
        .on("OrderShipped", move |db, ev, e: Shipped| {
            db.prepare_cached(&ship)?.execute((
                &ev.stream_id,
                e.carrier,
                e.tracking_number,
                ev.stream_version,
            ))?;
            Ok(())
        })
        .on("OrderDelivered", status("delivered"))
        .on("OrderCancelled", status("cancelled"))
}

/// The declarative config's six `order_summary` statements, run per event over the events
/// table (see [`BenchStore::per_event_loop`]).
fn per_event_loop(db: &rusqlite::Connection) -> rusqlite::Result<u64> {
    let t = PER_EVENT_TABLE;
    db.execute_batch(&format!("{}; DELETE FROM {t};", create_table(t)))?;
    let insert = format!(
        "INSERT INTO {t} (order_id, customer_name, status, version) VALUES (?1, ?2, 'created', ?3)
         ON CONFLICT (order_id) DO NOTHING"
    );
    let item = format!(
        "UPDATE {t} SET item_count = item_count + ?2, total_amount = total_amount + ?2 * ?3, version = ?4
          WHERE order_id = ?1 AND version < ?4"
    );
    let ship = format!(
        "UPDATE {t} SET status = 'shipped', carrier = ?2, tracking_number = ?3, version = ?4
          WHERE order_id = ?1 AND version < ?4"
    );
    let status = format!("UPDATE {t} SET status = ?2, version = ?3 WHERE order_id = ?1 AND version < ?3");
    let mut events =
        db.prepare("SELECT stream_id, stream_version, event_type, data FROM events ORDER BY position")?;
    let mut rows = events.query([])?;
    let mut n = 0u64;
    let bad = |e: serde_json::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    while let Some(row) = rows.next()? {
        let stream: String = row.get(0)?;
        let version: i64 = row.get(1)?;
        let kind: String = row.get(2)?;
        let data: String = row.get(3)?;
        match kind.as_str() {
            "OrderCreated" => {
                let e: Created = serde_json::from_str(&data).map_err(bad)?;
                db.prepare_cached(&insert)?
                    .execute((&stream, e.customer_name, version))?;
            }
            "ItemAdded" => {
                let e: Item = serde_json::from_str(&data).map_err(bad)?;
                db.prepare_cached(&item)?
                    .execute((&stream, e.quantity, e.unit_price, version))?;
            }
            "OrderShipped" => {
                let e: Shipped = serde_json::from_str(&data).map_err(bad)?;
                db.prepare_cached(&ship)?
                    .execute((&stream, e.carrier, e.tracking_number, version))?;
            }
            "OrderConfirmed" | "OrderDelivered" | "OrderCancelled" => {
                let s = match kind.as_str() {
                    "OrderConfirmed" => "confirmed",
                    "OrderDelivered" => "delivered",
                    _ => "cancelled",
                };
                db.prepare_cached(&status)?.execute((&stream, s, version))?;
            }
            _ => {}
        }
        n += 1;
    }
    Ok(n)
}
