//! Document (fold-by-key) projections on PostgreSQL: the same read model as per-event
//! handlers, one load query and one bulk upsert per batch, and a failing fold costs only its
//! own event. `bulk_write_benchmark` (ignored; run it with `--release --ignored`) measures the
//! two bulk writes.

mod postgres_common;
#[path = "support/read_ahead.rs"]
mod read_ahead;

use std::time::Instant;

use postgres_common::*;
use projectionist::postgres::{DocumentWrite, PgHandlers, PgProjection, PgStore};
use projectionist::EventLog;
use projectionist::{Documents, ErrorPolicy, ExpectedVersion, HandlerError, NewEvent, StreamAppend};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default, Serialize, Deserialize)]
struct Summary {
    order_id: String,
    customer_name: Option<String>,
    status: Option<String>,
    item_count: i64,
    total_cents: i64,
    carrier: Option<String>,
    tracking_number: Option<String>,
    version: i64,
}

#[derive(Deserialize)]
struct Created {
    customer_name: String,
}
#[derive(Deserialize)]
struct Item {
    quantity: i64,
    unit_price: f64,
}
#[derive(Deserialize)]
struct Shipped {
    carrier: String,
    tracking_number: String,
}
#[derive(Deserialize)]
struct Nothing {}

fn table_sql(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (order_id TEXT PRIMARY KEY, customer_name TEXT, status TEXT, \
         item_count BIGINT NOT NULL DEFAULT 0, total_cents BIGINT NOT NULL DEFAULT 0, carrier TEXT, \
         tracking_number TEXT, version BIGINT NOT NULL)"
    )
}

fn status(
    s: &'static str,
) -> impl Fn(&mut Summary, &projectionist::Event, Nothing) -> Result<(), HandlerError> {
    move |d, ev, _| {
        d.status = Some(s.into());
        d.version = ev.stream_version;
        Ok(())
    }
}

fn summary_documents(name: &str) -> PgProjection {
    let table = format!("{name}_summary");
    let docs = Documents::<Summary>::new(table.clone(), "order_id")
        .setup_sql(table_sql(&table))
        .on("OrderCreated", |d: &mut Summary, ev, e: Created| {
            d.customer_name = Some(e.customer_name);
            d.status = Some("created".into());
            d.version = ev.stream_version;
            Ok(())
        })
        .on("ItemAdded", |d: &mut Summary, ev, e: Item| {
            if e.quantity < 0 {
                return Err(HandlerError::msg("negative quantity"));
            }
            d.item_count += e.quantity;
            d.total_cents += (e.unit_price * 100.0).round() as i64 * e.quantity;
            d.version = ev.stream_version;
            Ok(())
        })
        .on("OrderConfirmed", status("confirmed"))
        .on("OrderShipped", |d: &mut Summary, ev, e: Shipped| {
            d.status = Some("shipped".into());
            d.carrier = Some(e.carrier);
            d.tracking_number = Some(e.tracking_number);
            d.version = ev.stream_version;
            Ok(())
        })
        .on("OrderDelivered", status("delivered"))
        .on("OrderCancelled", status("cancelled"));
    PgProjection::new(name, docs)
}

/// The same read model with per-event statements.
fn summary_handlers(name: &str) -> PgProjection {
    let table = format!("{name}_summary");
    let t = table.clone();
    let set_status = |t: &str, s: &'static str| {
        let sql = format!("UPDATE {t} SET status = '{s}', version = $2 WHERE order_id = $1");
        move |cx: &projectionist::postgres::PgBatch, ev: &projectionist::Event, _: Nothing| {
            cx.execute(sql.clone(), (ev.stream_id.clone(), ev.stream_version));
            Ok(())
        }
    };
    let (t1, t2, t3) = (t.clone(), t.clone(), t.clone());
    let body = PgHandlers::new()
        .setup(move |cx| {
            cx.batch_execute(table_sql(&t));
            Ok(())
        })
        .on("OrderCreated", move |cx, ev, e: Created| {
            cx.execute(
                format!(
                    "INSERT INTO {t1} (order_id, customer_name, status, version) VALUES ($1, $2, 'created', $3)"
                ),
                (ev.stream_id.clone(), e.customer_name, ev.stream_version),
            );
            Ok(())
        })
        .on("ItemAdded", move |cx, ev, e: Item| {
            cx.execute(
                format!(
                    "UPDATE {t2} SET item_count = item_count + $2, total_cents = total_cents + $3, version = $4 \
                     WHERE order_id = $1"
                ),
                (
                    ev.stream_id.clone(),
                    e.quantity,
                    (e.unit_price * 100.0).round() as i64 * e.quantity,
                    ev.stream_version,
                ),
            );
            Ok(())
        })
        .on("OrderConfirmed", set_status(&table, "confirmed"))
        .on("OrderShipped", move |cx, ev, e: Shipped| {
            cx.execute(
                format!(
                    "UPDATE {t3} SET status = 'shipped', carrier = $2, tracking_number = $3, version = $4 \
                     WHERE order_id = $1"
                ),
                (ev.stream_id.clone(), e.carrier, e.tracking_number, ev.stream_version),
            );
            Ok(())
        })
        .on("OrderDelivered", set_status(&table, "delivered"))
        .on("OrderCancelled", set_status(&table, "cancelled"));
    PgProjection::new(name, body)
}

async fn load_orders(store: &PgStore, seed: u64, n: u64) {
    let appends = projectionist::workload::Orders::new(seed, n).map(|e| {
        Ok(StreamAppend::new(
            e.stream_id.clone(),
            ExpectedVersion::Exact(e.stream_version - 1),
            vec![e.to_new_event()],
        ))
    });
    store.import(appends, None).await.unwrap();
}

async fn dump(schema: &str, table: &str) -> Vec<String> {
    let c = raw(Some(schema)).await.unwrap();
    c.query(
        &format!(
            "SELECT concat_ws('|', order_id, coalesce(customer_name, 'NULL'), coalesce(status, 'NULL'), item_count, \
             total_cents, coalesce(carrier, 'NULL'), coalesce(tracking_number, 'NULL'), version) \
             FROM {table} ORDER BY order_id"
        ),
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_equal_per_event_handlers_and_survive_a_rebuild() {
    let Some(schema) = schema("documents").await else {
        return;
    };
    let store = store(&schema, "documents").await;
    load_orders(&store, 5, 20_000).await;
    let engine = store
        .engine()
        .with(summary_handlers("typed").batch_size(500))
        .unwrap()
        .with(summary_documents("docs").batch_size(2_000))
        .unwrap();
    engine.catch_up().await.unwrap();
    let typed = dump(&schema, "typed_summary").await;
    assert!(typed.len() > 2_500, "{}", typed.len());
    assert_eq!(
        dump(&schema, "docs_summary").await,
        typed,
        "documents vs handlers"
    );

    // Live appends continue the same documents.
    for e in projectionist::workload::Orders::new(5, 20_500).skip(20_000) {
        store
            .append(
                &e.stream_id,
                ExpectedVersion::Exact(e.stream_version - 1),
                vec![e.to_new_event()],
            )
            .await
            .unwrap();
    }
    engine.catch_up().await.unwrap();
    let typed = dump(&schema, "typed_summary").await;
    assert_eq!(dump(&schema, "docs_summary").await, typed, "after live appends");
    engine.rebuild("docs").await.unwrap();
    assert_eq!(dump(&schema, "docs_summary").await, typed, "rebuilt documents");
    let st = engine.status().await.unwrap();
    assert!(st.iter().all(|s| s.errors == 0 && s.lag_events == 0), "{st:?}");
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_fold_costs_only_its_own_event() {
    let Some(schema) = schema("documents_fail").await else {
        return;
    };
    let store = store(&schema, "documents_fail").await;
    let engine = store
        .engine()
        .with(
            summary_documents("docs")
                .batch_size(100)
                .error_policy(ErrorPolicy::DeadLetter),
        )
        .unwrap();
    let ev = |t: &str, d: serde_json::Value| NewEvent::new(t, d);
    store
        .append(
            "A",
            ExpectedVersion::NoStream,
            vec![
                ev("OrderCreated", json!({"customer_name": "Ann"})),
                ev("ItemAdded", json!({"quantity": 2, "unit_price": 1.5})),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            "B",
            ExpectedVersion::NoStream,
            vec![
                ev("OrderCreated", json!({"customer_name": "Bo"})),
                ev("ItemAdded", json!({"quantity": -1, "unit_price": 1.0})),
                ev("ItemAdded", json!({"quantity": 1, "unit_price": 2.0})),
            ],
        )
        .await
        .unwrap();
    store
        .append(
            "A",
            ExpectedVersion::Exact(2),
            vec![ev("OrderConfirmed", json!({}))],
        )
        .await
        .unwrap();
    engine.catch_up().await.unwrap();
    assert_eq!(
        dump(&schema, "docs_summary").await,
        vec![
            "A|Ann|confirmed|2|300|NULL|NULL|3".to_owned(),
            "B|Bo|created|1|200|NULL|NULL|3".to_owned(),
        ]
    );
    let dls = engine.dead_letters(None).await.unwrap();
    assert_eq!(dls.len(), 1);
    assert_eq!(
        (dls[0].event.stream_id.as_str(), dls[0].event.stream_version),
        ("B", 2)
    );
    drop_schema(&schema).await;
}

/// Rebuilds `order_summary` as documents over the orders workload with each bulk write, and
/// prints events/s. `PROJECTIONIST_BENCH_EVENTS` (default 200,000) sets the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: cargo nextest run --release --run-ignored only --test postgres_documents"]
async fn bulk_write_benchmark() {
    let Some(schema) = schema("documents_bench").await else {
        return;
    };
    let n: u64 = std::env::var("PROJECTIONIST_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let base = store(&schema, "bench").await;
    load_orders(&base, 1, n).await;
    for write in [
        DocumentWrite::Recordset,
        DocumentWrite::CopyTemp,
        DocumentWrite::Recordset,
        DocumentWrite::CopyTemp,
    ] {
        let store = PgStore::builder(&url())
            .unwrap()
            .schema(&schema)
            .document_write(write)
            .connect()
            .await
            .unwrap();
        let engine = store
            .engine()
            .with(summary_documents("order").batch_size(2_000))
            .unwrap();
        engine.prepare().await.unwrap();
        let started = Instant::now();
        let report = engine.rebuild("order").await.unwrap();
        let s = started.elapsed().as_secs_f64();
        eprintln!(
            "BENCH documents rebuild, {write:?}: {} events in {s:.2} s = {:.0} events/s",
            report.events,
            report.events as f64 / s
        );
    }
    drop_schema(&schema).await;
}

/// Full batches read ahead, and a failing fold in the middle of one goes through its policy
/// (the scenario of `support/read_ahead.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_read_ahead_and_a_failing_fold_goes_through_its_policy() {
    let Some(schema) = schema("documents_ahead").await else {
        return;
    };
    let store = store(&schema, "documents_ahead").await;
    let engine = store
        .engine()
        .with(
            PgProjection::new("counts", read_ahead::counts("BIGINT"))
                .batch_size(read_ahead::BATCH_SIZE)
                .error_policy(ErrorPolicy::DeadLetter),
        )
        .unwrap();
    read_ahead::append(&store).await;
    engine.catch_up().await.unwrap();
    let c = raw(Some(&schema)).await.unwrap();
    let rows: Vec<String> = c
        .query(
            "SELECT concat_ws('|', k, n, coalesce(last, 'NULL')) FROM counts ORDER BY k",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    read_ahead::check(&rows, &engine.dead_letters(None).await.unwrap());
    let st = engine.status().await.unwrap();
    assert!(st.iter().all(|s| s.lag_events == 0), "{st:?}");
    drop_schema(&schema).await;
}
