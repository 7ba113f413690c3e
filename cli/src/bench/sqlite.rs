//! The bench on the embedded SQLite backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use projectionist::declarative::Config;
use projectionist::sqlite::{rusqlite, SqliteHandlers, SqliteProjection, SqliteStore, StreamAppend};
use projectionist::workload::{Orders, WorkloadEvent};
use projectionist::{Documents, ExpectedVersion, HandlerError, ProgressFn, Store};
use serde::{Deserialize, Serialize};

use super::{Backend, Mismatch, Style, COLUMNS, REFERENCE_TABLE};

/// The SQLite bench: a fresh database file.
pub struct SqliteBench {
    store: SqliteStore,
    path: PathBuf,
    /// Keeps a temporary folder alive when the bench made one.
    _dir: Option<tempfile::TempDir>,
    batch_size: usize,
}

impl SqliteBench {
    /// Opens a fresh database at `path`, or in a temporary folder when `path` is `None`.
    /// Refuses a database that already holds events: the bench needs its own.
    pub async fn open(path: Option<&Path>, batch_size: usize) -> Result<Self> {
        let (dir, path) = match path {
            Some(p) => (None, p.to_path_buf()),
            None => {
                let dir =
                    tempfile::tempdir().context("creating a temporary folder for the bench database")?;
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
        Ok(SqliteBench {
            store,
            path,
            _dir: dir,
            batch_size,
        })
    }
}

fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            order_id        TEXT PRIMARY KEY,
            customer_name   TEXT,
            status          TEXT NOT NULL,
            item_count      INTEGER NOT NULL DEFAULT 0,
            total_amount    DOUBLE PRECISION NOT NULL DEFAULT 0,
            carrier         TEXT,
            tracking_number TEXT,
            version         INTEGER NOT NULL
        )"
    )
}

/// `order_summary` as a declarative SQL projection (the same statements as the example config,
/// without its extra `order_items` table).
pub fn declarative_config(name: &str, table: &str, batch_size: usize) -> String {
    format!(
        r#"
[[projection]]
name = "{name}"
batch_size = {batch_size}
error_policy = "stop"
setup = """{setup}"""

[projection.handlers]
OrderCreated = """
INSERT INTO {table} (order_id, customer_name, status, version)
VALUES (:stream_id, :data.customer_name, 'created', :stream_version)
ON CONFLICT (order_id) DO NOTHING"""
ItemAdded = """
UPDATE {table} SET item_count = item_count + :data.quantity,
       total_amount = total_amount + :data.quantity * :data.unit_price, version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderConfirmed = """
UPDATE {table} SET status = 'confirmed', version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderShipped = """
UPDATE {table} SET status = 'shipped', carrier = :data.carrier, tracking_number = :data.tracking_number,
       version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderDelivered = """
UPDATE {table} SET status = 'delivered', version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderCancelled = """
UPDATE {table} SET status = 'cancelled', version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
"#,
        setup = create_table(table)
    )
}

/// The document of `order_summary`.
#[derive(Default, Serialize, Deserialize)]
pub struct Summary {
    order_id: String,
    customer_name: Option<String>,
    status: String,
    item_count: i64,
    total_amount: f64,
    carrier: Option<String>,
    tracking_number: Option<String>,
    version: i64,
}

#[derive(Deserialize)]
pub struct Created {
    customer_name: String,
}
#[derive(Deserialize)]
pub struct Item {
    quantity: i64,
    unit_price: f64,
}
#[derive(Deserialize)]
pub struct Shipped {
    carrier: String,
    tracking_number: String,
}
#[derive(Deserialize)]
pub struct Nothing {}

/// `order_summary` as documents.
pub fn documents(table: &str) -> Documents<Summary> {
    fn status(
        s: &'static str,
    ) -> impl Fn(&mut Summary, &projectionist::Event, Nothing) -> Result<(), HandlerError> {
        move |d, ev, _| {
            d.status = s.into();
            d.version = ev.stream_version;
            Ok(())
        }
    }
    Documents::<Summary>::new(table, "order_id")
        .setup_sql(create_table(table))
        .on("OrderCreated", |d: &mut Summary, ev, e: Created| {
            d.customer_name = Some(e.customer_name);
            d.status = "created".into();
            d.version = ev.stream_version;
            Ok(())
        })
        .on("ItemAdded", |d: &mut Summary, ev, e: Item| {
            d.item_count += e.quantity;
            d.total_amount += e.quantity as f64 * e.unit_price;
            d.version = ev.stream_version;
            Ok(())
        })
        .on("OrderConfirmed", status("confirmed"))
        .on("OrderShipped", |d: &mut Summary, ev, e: Shipped| {
            d.status = "shipped".into();
            d.carrier = Some(e.carrier);
            d.tracking_number = Some(e.tracking_number);
            d.version = ev.stream_version;
            Ok(())
        })
        .on("OrderDelivered", status("delivered"))
        .on("OrderCancelled", status("cancelled"))
}

/// `order_summary` as typed per-event handlers.
fn handlers(table: &str) -> SqliteHandlers {
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

fn progress_to(bar: &ProgressBar) -> ProgressFn {
    let bar = bar.clone();
    Arc::new(move |p| bar.set_position(p.events))
}

impl SqliteBench {
    fn projection(&self, style: Style) -> Result<SqliteProjection> {
        let (name, table) = (style.projection(), style.table());
        Ok(match style {
            Style::Sql => {
                let config = Config::parse(&declarative_config(name, table, self.batch_size), "bench")?;
                let def = config
                    .projections
                    .first()
                    .context("the bench config has a projection")?;
                projectionist::declarative::sqlite::projection(def)
            }
            Style::Documents => SqliteProjection::new(name, documents(table)).batch_size(self.batch_size),
            Style::Handlers => SqliteProjection::new(name, handlers(table)).batch_size(self.batch_size),
        }
        .error_policy(projectionist::ErrorPolicy::Stop))
    }
}

impl Backend for SqliteBench {
    fn describe(&self) -> String {
        format!(
            "SQLite {} (embedded, {})",
            rusqlite::version(),
            self.path.display()
        )
    }

    async fn load(&self, events: Orders, progress: &ProgressBar) -> Result<()> {
        let bar = progress.clone();
        let items = events.map(|e| {
            Ok(StreamAppend::new(
                e.stream_id.clone(),
                ExpectedVersion::Exact(e.stream_version - 1),
                vec![e.to_new_event()],
            ))
        });
        self.store
            .import(items, Some(Arc::new(move |n| bar.set_position(n))))
            .await?;
        Ok(())
    }

    async fn reference(&self) -> Result<()> {
        let sql = format!(
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
        );
        self.store.write(move |db| db.execute_batch(&sql)).await?;
        Ok(())
    }

    async fn rebuild(&self, style: Style, progress: &ProgressBar) -> Result<u64> {
        let engine = self.store.engine().with(self.projection(style)?)?;
        let report = engine
            .rebuild(style.projection(), Some(progress_to(progress)))
            .await?;
        Ok(report.events)
    }

    async fn compare(&self, table: &str) -> Result<Mismatch> {
        let cols = "order_id, customer_name, status, item_count, round(total_amount, 2), carrier, tracking_number, version";
        let sql = format!(
            "SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM {REFERENCE_TABLE}),
                    (SELECT count(*) FROM (SELECT {cols} FROM {table} EXCEPT SELECT {cols} FROM {REFERENCE_TABLE}))
                  + (SELECT count(*) FROM (SELECT {cols} FROM {REFERENCE_TABLE} EXCEPT SELECT {cols} FROM {table}))"
        );
        let (rows, reference_rows, differing) = self
            .store
            .read(move |db| {
                db.query_row(&sql, [], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                })
            })
            .await?;
        Ok(Mismatch {
            rows: rows as u64,
            reference_rows: reference_rows as u64,
            differing: differing as u64,
        })
    }

    async fn live(&self, events: Vec<WorkloadEvent>, rate: u32) -> Result<Vec<Duration>> {
        let name = "bench_live";
        let projection =
            SqliteProjection::new(name, handlers("bench_live_summary")).batch_size(self.batch_size);
        let engine = Arc::new(self.store.engine().with(projection)?);
        engine.catch_up(&[], None).await?;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let runner = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.run(&[], shutdown).await })
        };

        // The watcher marks each appended position visible once the checkpoint passes it.
        let pending: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
        let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let total = events.len();
        // An append that the runner applied before the appender recorded it is found at once.
        let nudge = Arc::new(tokio::sync::Notify::new());
        let watcher = {
            let (store, pending, latencies) = (self.store.clone(), pending.clone(), latencies.clone());
            let mut changes = store.checkpoint_changes();
            let nudge = nudge.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = changes.changed() => {}
                        _ = nudge.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                    let cp = match store.record(name, 0).await {
                        Ok(Some(r)) => r.checkpoint.position,
                        _ => continue,
                    };
                    let now = Instant::now();
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                    p.retain(|pos, t0| {
                        if *pos <= cp {
                            l.push(now - *t0);
                            false
                        } else {
                            true
                        }
                    });
                    if l.len() >= total {
                        return;
                    }
                }
            })
        };

        let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for e in events {
            tick.tick().await;
            let t0 = Instant::now();
            let appended = self
                .store
                .append(
                    e.stream_id.clone(),
                    ExpectedVersion::Exact(e.stream_version - 1),
                    vec![e.to_new_event()],
                )
                .await?;
            pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(appended.last_position, t0);
            nudge.notify_one();
        }
        let finished = tokio::time::timeout(Duration::from_secs(30), watcher).await;
        let _ = stop.send(true);
        runner.await??;
        if finished.is_err() {
            bail!("the live projection did not catch up within 30 s of the last append");
        }
        let out = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(out)
    }
}
