//! The bench on the embedded SQLite backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use projectionist::declarative::Config;
use projectionist::sqlite::{rusqlite, SqliteHandlers, SqliteProjection, SqliteStore, StreamAppend};
use projectionist::workload::{Orders, WorkloadEvent};
use projectionist::EventLog;
use projectionist::{ExpectedVersion, HandlerError, ProgressFn};

use super::orders::{create_table, declarative_config, documents, Created, Item, Nothing, Shipped};
use super::{Backend, Mismatch, Style, COLUMNS, REFERENCE_TABLE};

/// The SQLite bench: a fresh database file.
pub struct SqliteBench {
    store: SqliteStore,
    path: PathBuf,
    /// Keeps a temporary folder alive when the bench made one.
    _dir: Option<tempfile::TempDir>,
    batch_size: Option<usize>,
}

impl SqliteBench {
    /// Opens a fresh database at `path`, or in a temporary folder when `path` is `None`.
    /// Refuses a database that already holds events: the bench needs its own.
    pub async fn open(path: Option<&Path>, batch_size: Option<usize>) -> Result<Self> {
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
                let config = Config::parse(
                    &declarative_config(
                        name,
                        table,
                        self.batch_size.unwrap_or(projectionist::DEFAULT_BATCH_SIZE),
                    ),
                    "bench",
                )?;
                let def = config
                    .projections
                    .first()
                    .context("the bench config has a projection")?;
                projectionist::declarative::projection(def)
            }
            Style::Documents => super::sized(SqliteProjection::new(name, documents(table)), self.batch_size),
            Style::Handlers => super::sized(SqliteProjection::new(name, handlers(table)), self.batch_size),
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

    async fn live(&self, events: Vec<WorkloadEvent>, rate: u32) -> Result<(Vec<Duration>, f64)> {
        let projection = super::sized(
            SqliteProjection::new(super::LIVE, handlers("bench_live_summary")),
            self.batch_size,
        );
        let engine = Arc::new(self.store.engine().with(projection)?);
        let store = self.store.clone();
        super::measure_live(engine, events, rate, move |e| {
            let store = store.clone();
            async move {
                store
                    .append(
                        e.stream_id.clone(),
                        ExpectedVersion::Exact(e.stream_version - 1),
                        vec![e.to_new_event()],
                    )
                    .await
            }
        })
        .await
    }
}
