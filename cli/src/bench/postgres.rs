//! The bench on PostgreSQL: a dedicated schema, dropped and created fresh for each run.

use anyhow::{Context, Result};
use projectionist::postgres::{PgBatch, PgHandlers, PgStore};
use projectionist::Handlers;

use super::orders::{create_table, Created, Item, Nothing, Shipped};
use super::{Bench, BenchStore, COLUMNS, REFERENCE_TABLE};

/// The schema the bench owns (dropped and created again at each run), unless the URL names
/// another one with `?schema=NAME`.
pub const SCHEMA: &str = "projectionist_bench";

/// Connects to `url` (the password never shown; `shown` is the URL without it) and recreates
/// the bench's own schema: the URL's `?schema=` if it names one other than `public`, else
/// [`SCHEMA`].
pub async fn open(url: &str, shown: String, batch_size: Option<usize>) -> Result<Bench<PgStore>> {
    let builder = PgStore::builder(url)?;
    let schema = match builder.schema_name() {
        "public" => SCHEMA.to_owned(),
        named => named.to_owned(),
    };
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
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            schema.replace('"', "\"\"")
        ))
        .await
        .context("dropping the previous bench schema")?;
    let store = builder.schema(schema.clone()).connect().await?;
    let describe = format!("PostgreSQL {shown} (schema {schema})");
    Ok(Bench::new(store, describe, batch_size, None))
}

impl BenchStore for PgStore {
    const ROUNDED_TOTAL: &'static str = "round(total_amount::numeric, 2)";

    fn handlers(table: &str) -> Handlers<PgBatch> {
        typed_handlers(table)
    }

    fn reference_sql() -> String {
        format!(
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
        )
    }

    async fn execute(&self, sql: String) -> Result<()> {
        self.client().await?.batch_execute(&sql).await?;
        Ok(())
    }

    async fn after_load(&self) -> Result<()> {
        self.client().await?.batch_execute("ANALYZE events").await?;
        Ok(())
    }

    async fn before_live(&self) -> Result<()> {
        // Settle the tables first, so that an autovacuum ANALYZE of the rebuilt tables (which
        // takes a transaction id, holding back every reader's xmin) does not run during the
        // measurement. Long transactions anywhere in the cluster delay visibility: see
        // docs/postgres.md.
        let client = self.client().await?;
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
        Ok(())
    }
}

/// `order_summary` as typed per-event handlers, queuing pipelined statements.
fn typed_handlers(table: &str) -> PgHandlers {
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
