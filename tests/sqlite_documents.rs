//! Document (fold-by-key) projections on SQLite give the same read model as per-event
//! handlers, and a failing fold costs only its own event.

mod common;
#[path = "support/read_ahead.rs"]
mod read_ahead;

use common::*;
use projectionist::sqlite::{SqliteProjection, SqliteStore};
use projectionist::EventLog;
use projectionist::{Documents, ErrorPolicy, ExpectedVersion, HandlerError, NewEvent};
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

fn status(
    s: &'static str,
) -> impl Fn(&mut Summary, &projectionist::Event, Nothing) -> Result<(), HandlerError> {
    move |d, ev, _| {
        d.status = Some(s.into());
        d.version = ev.stream_version;
        Ok(())
    }
}

fn summary_documents(name: &str) -> SqliteProjection {
    let table = format!("{name}_summary");
    let docs = Documents::<Summary>::new(table.clone(), "order_id")
        .setup_sql(format!(
            "CREATE TABLE IF NOT EXISTS {table} (order_id TEXT PRIMARY KEY, customer_name TEXT, status TEXT,
             item_count INTEGER NOT NULL DEFAULT 0, total_cents INTEGER NOT NULL DEFAULT 0,
             carrier TEXT, tracking_number TEXT, version INTEGER NOT NULL)"
        ))
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
    SqliteProjection::new(name, docs)
}

#[tokio::test]
async fn documents_equal_per_event_handlers_and_survive_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("docs.db")).await.unwrap();
    load_orders(&store, 5, 30_000).await;
    let engine = store
        .engine()
        .with(order_summary("typed").batch_size(500))
        .unwrap()
        .with(summary_documents("docs").batch_size(2_000))
        .unwrap();
    engine.catch_up().await.unwrap();
    let typed = dump(&store, "typed_summary").await;
    assert!(typed.len() > 4_000);
    assert_same_rows(
        &dump(&store, "docs_summary").await,
        &typed,
        "documents vs handlers",
    );

    // Live appends continue the same documents.
    for e in projectionist::workload::Orders::new(5, 31_000).skip(30_000) {
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
    let typed = dump(&store, "typed_summary").await;
    assert_same_rows(
        &dump(&store, "docs_summary").await,
        &typed,
        "documents vs handlers after live appends",
    );
    engine.rebuild("docs").await.unwrap();
    assert_same_rows(
        &dump(&store, "docs_summary").await,
        &typed,
        "rebuilt documents vs handlers",
    );
    let st = engine.status().await.unwrap();
    assert!(st.iter().all(|s| s.errors == 0 && s.lag_events == 0), "{st:?}");
}

#[tokio::test]
async fn a_failing_fold_costs_only_its_own_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("docs.db")).await.unwrap();
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
        dump(&store, "docs_summary").await,
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
}

/// Full batches read ahead on the reader connection, and a failing fold in the middle of one
/// goes through its policy (the scenario of `support/read_ahead.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_batches_read_ahead_and_a_failing_fold_goes_through_its_policy() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("ahead.db")).await.unwrap();
    assert!(
        projectionist::backend::Source::reads_ahead(&store),
        "a file store reads ahead on its reader connection"
    );
    let engine = store
        .engine()
        .with(
            SqliteProjection::new("counts", read_ahead::counts("INTEGER"))
                .batch_size(read_ahead::BATCH_SIZE)
                .error_policy(ErrorPolicy::DeadLetter),
        )
        .unwrap();
    read_ahead::append(&store).await;
    engine.catch_up().await.unwrap();
    let rows = dump(&store, "counts").await;
    read_ahead::check(&rows, &engine.dead_letters(None).await.unwrap());
    let st = engine.status().await.unwrap();
    assert!(st.iter().all(|s| s.lag_events == 0), "{st:?}");
}
