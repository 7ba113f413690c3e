//! The bench on PostgreSQL: a dedicated schema, dropped and created fresh for each run.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use projectionist::declarative::Config;
use projectionist::postgres::{PgHandlers, PgProjection, PgStore};
use projectionist::workload::{Orders, WorkloadEvent};
use projectionist::EventLog;
use projectionist::{ExpectedVersion, ProgressFn, StreamAppend};

use super::orders::{create_table, declarative_config, documents, Created, Item, Nothing, Shipped};
use super::{Backend, Mismatch, Style, COLUMNS, REFERENCE_TABLE};

/// The schema the bench owns (dropped and created again at each run).
pub const SCHEMA: &str = "projectionist_bench";

pub struct PgBench {
    store: PgStore,
    shown: String,
    batch_size: Option<usize>,
}

impl PgBench {
    /// Connects to `url` (the password never shown) and recreates the bench's own schema.
    pub async fn open(url: &str, shown: String, batch_size: Option<usize>) -> Result<Self> {
        let admin = PgStore::builder(url)?
            .schema("public")
            .listen(false)
            .events(false)
            .read_models(false);
        let admin = admin
            .connect()
            .await
            .context("connecting to PostgreSQL for the bench")?;
        admin
            .client()
            .await?
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
            .await
            .context("dropping the previous bench schema")?;
        let store = PgStore::builder(url)?.schema(SCHEMA).connect().await?;
        Ok(PgBench {
            store,
            shown,
            batch_size,
        })
    }

    fn projection(&self, style: Style) -> Result<PgProjection> {
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
            Style::Documents => super::sized(PgProjection::new(name, documents(table)), self.batch_size),
            Style::Handlers => super::sized(PgProjection::new(name, handlers(table)), self.batch_size),
        }
        .error_policy(projectionist::ErrorPolicy::Stop))
    }
}

/// `order_summary` as typed per-event handlers, queuing pipelined statements.
fn handlers(table: &str) -> PgHandlers {
    let t = table.to_owned();
    let status = |s: &'static str| {
        let sql = format!("UPDATE {t} SET status = '{s}', version = $2 WHERE order_id = $1");
        move |db: &projectionist::postgres::PgBatch, ev: &projectionist::Event, _: Nothing| {
            db.execute(sql.clone(), (ev.stream_id.clone(), ev.stream_version as i32));
            Ok(())
        }
    };
    let (create, reset) = (create_table(table), format!("DELETE FROM {table}"));
    let insert =
        format!("INSERT INTO {t} (order_id, customer_name, status, version) VALUES ($1, $2, 'created', $3)");
    let item = format!(
        "UPDATE {t} SET item_count = item_count + $2, total_amount = total_amount + $3, version = $4 WHERE order_id = $1"
    );
    let ship = format!(
        "UPDATE {t} SET status = 'shipped', carrier = $2, tracking_number = $3, version = $4 WHERE order_id = $1"
    );
    PgHandlers::new()
        .setup(move |db| {
            db.batch_execute(create.clone());
            Ok(())
        })
        .reset(move |db| {
            db.batch_execute(reset.clone());
            Ok(())
        })
        .on("OrderCreated", move |db, ev, e: Created| {
            db.execute(
                insert.clone(),
                (ev.stream_id.clone(), e.customer_name, ev.stream_version as i32),
            );
            Ok(())
        })
        .on("ItemAdded", move |db, ev, e: Item| {
            let amount = e.quantity as f64 * e.unit_price;
            db.execute(
                item.clone(),
                (
                    ev.stream_id.clone(),
                    e.quantity as i32,
                    amount,
                    ev.stream_version as i32,
                ),
            );
            Ok(())
        })
        .on("OrderConfirmed", status("confirmed"))
        .on("OrderShipped", move |db, ev, e: Shipped| {
            db.execute(
                ship.clone(),
                (
                    ev.stream_id.clone(),
                    e.carrier,
                    e.tracking_number,
                    ev.stream_version as i32,
                ),
            );
            Ok(())
        })
        .on("OrderDelivered", status("delivered"))
        .on("OrderCancelled", status("cancelled"))
}

fn progress_to(bar: &ProgressBar) -> ProgressFn {
    let bar = bar.clone();
    Arc::new(move |p| bar.set_position(p.events))
}

impl Backend for PgBench {
    fn describe(&self) -> String {
        format!("PostgreSQL {} (schema {SCHEMA})", self.shown)
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
        self.store.client().await?.batch_execute("ANALYZE events").await?;
        Ok(())
    }

    async fn reference(&self) -> Result<()> {
        let sql = format!(
            "{create};
             TRUNCATE {REFERENCE_TABLE};
             INSERT INTO {REFERENCE_TABLE} ({COLUMNS})
             SELECT stream_id,
                    max(data ->> 'customer_name') FILTER (WHERE event_type = 'OrderCreated'),
                    CASE WHEN bool_or(event_type = 'OrderDelivered') THEN 'delivered'
                         WHEN bool_or(event_type = 'OrderCancelled') THEN 'cancelled'
                         WHEN bool_or(event_type = 'OrderShipped') THEN 'shipped'
                         WHEN bool_or(event_type = 'OrderConfirmed') THEN 'confirmed'
                         ELSE 'created' END,
                    coalesce(sum((data ->> 'quantity')::bigint) FILTER (WHERE event_type = 'ItemAdded'), 0),
                    coalesce(sum((data ->> 'quantity')::bigint * (data ->> 'unit_price')::float8)
                             FILTER (WHERE event_type = 'ItemAdded'), 0),
                    max(data ->> 'carrier') FILTER (WHERE event_type = 'OrderShipped'),
                    max(data ->> 'tracking_number') FILTER (WHERE event_type = 'OrderShipped'),
                    max(stream_version)
               FROM events GROUP BY stream_id",
            create = create_table(REFERENCE_TABLE)
        );
        self.store.client().await?.batch_execute(&sql).await?;
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
        let cols = "order_id, customer_name, status, item_count, round(total_amount::numeric, 2), carrier, tracking_number, version";
        let sql = format!(
            "SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM {REFERENCE_TABLE}),
                    (SELECT count(*) FROM (SELECT {cols} FROM {table} EXCEPT SELECT {cols} FROM {REFERENCE_TABLE}) a)
                  + (SELECT count(*) FROM (SELECT {cols} FROM {REFERENCE_TABLE} EXCEPT SELECT {cols} FROM {table}) b)"
        );
        let row = self.store.client().await?.query_one(&sql, &[]).await?;
        let get = |i: usize| -> Result<u64> { Ok(row.try_get::<_, i64>(i)?.max(0) as u64) };
        Ok(Mismatch {
            rows: get(0)?,
            reference_rows: get(1)?,
            differing: get(2)?,
        })
    }

    async fn live(&self, events: Vec<WorkloadEvent>, rate: u32) -> Result<(Vec<Duration>, f64)> {
        // Settle the tables first, so that an autovacuum ANALYZE of the rebuilt tables (which
        // takes a transaction id, holding back every reader's xmin) does not run during the
        // measurement. Long transactions anywhere in the cluster delay visibility: see
        // docs/postgres.md.
        let client = self.store.client().await?;
        client
            .batch_execute("VACUUM ANALYZE")
            .await
            .context("VACUUM ANALYZE before the live phase")?;
        // Flush the pages the load and the rebuilds dirtied, so that the checkpointer's writes
        // do not slow every commit's WAL flush during the measurement (needs the
        // pg_checkpoint role or a superuser; skipped otherwise).
        if let Err(e) = client.batch_execute("CHECKPOINT").await {
            tracing::info!(error = %e, "CHECKPOINT before the live phase was not allowed; measuring anyway");
        }
        let projection = super::sized(
            PgProjection::new(super::LIVE, handlers("bench_live_summary")),
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
