//! Handlers that read in their transaction, written once over `SqlTx`, on SQLite and on
//! PostgreSQL: a lookup of a row that an earlier event of the same batch wrote, a lookup in
//! another read model, then a write; and a failing query in the middle of a batch.

#[path = "support/reading.rs"]
mod reading;

#[cfg(feature = "postgres")]
#[path = "postgres_common/mod.rs"]
mod common;

use std::collections::BTreeMap;

use projectionist::workload::Orders;
use projectionist::EventLog;
use projectionist::{ExpectedVersion, StreamAppend};

const EVENTS: u64 = 3_000;

fn appends() -> impl Iterator<Item = projectionist::Result<StreamAppend>> + Send + 'static {
    Orders::new(11, EVENTS).map(|e| {
        Ok(StreamAppend::new(
            e.stream_id.clone(),
            ExpectedVersion::from_option(Some(e.stream_version - 1)),
            vec![e.to_new_event()],
        ))
    })
}

/// Items per customer name and events per order, folded straight from the workload.
fn expected() -> (BTreeMap<String, (i64, i64)>, BTreeMap<String, i64>) {
    let mut customer_of = BTreeMap::new();
    let mut items: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for e in Orders::new(11, EVENTS) {
        versions.insert(e.stream_id.clone(), e.stream_version);
        match e.event_type {
            "OrderCreated" => {
                customer_of.insert(
                    e.stream_id.clone(),
                    e.data["customer_name"].as_str().unwrap_or_default().to_owned(),
                );
            }
            "ItemAdded" => {
                let name = customer_of.get(&e.stream_id).cloned().unwrap_or_default();
                let slot = items.entry(name).or_default();
                slot.0 += e.data["quantity"].as_i64().unwrap_or(0);
                slot.1 += 1;
            }
            _ => {}
        }
    }
    (items, versions)
}

#[tokio::test]
async fn sqlite_handlers_read_what_the_batch_wrote_and_another_read_model() {
    use projectionist::sqlite::{SqliteProjection, SqliteStore};
    let store = SqliteStore::in_memory().unwrap();
    let n = store.import(appends(), None).await.unwrap();
    assert!(n >= EVENTS);
    let engine = store
        .engine()
        .with(SqliteProjection::new(
            "customers",
            reading::customers("customers"),
        ))
        .unwrap()
        .with(SqliteProjection::new("ledger", reading::ledger("l_", "customers")).batch_size(500))
        .unwrap();
    engine.catch_up_only(["customers"]).await.unwrap();
    engine.catch_up_only(["ledger"]).await.unwrap();
    let status = engine.status().await.unwrap();
    assert!(
        status.iter().all(|s| s.errors == 0 && s.lag_events == 0),
        "{status:#?}"
    );

    let (items, versions) = expected();
    let got: BTreeMap<String, (i64, i64)> = store
        .read(|db| {
            let mut st = db.prepare("SELECT customer, items, events FROM l_items")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?;
            rows.collect::<rusqlite::Result<_>>()
        })
        .await
        .unwrap();
    assert_eq!(got, items);
    let got: BTreeMap<String, i64> = store
        .read(|db| {
            let mut st = db.prepare("SELECT order_id, version FROM l_orders")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()
        })
        .await
        .unwrap();
    assert_eq!(got, versions);
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use projectionist::postgres::{PgHandlers, PgProjection};
    use projectionist::sql::{SqlTx, SqlValue};
    use projectionist::{ErrorPolicy, HandlerError, NewEvent};
    use serde_json::json;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_handlers_read_what_the_batch_wrote_and_another_read_model() {
        let Some(schema) = common::schema("sqltx_reads").await else {
            return;
        };
        let store = common::store(&schema, "pt-sqltx-reads").await;
        let n = store.import(appends(), None).await.unwrap();
        assert!(n >= EVENTS);
        let engine = store
            .engine()
            .with(PgProjection::new("customers", reading::customers("customers")))
            .unwrap()
            .with(PgProjection::new("ledger", reading::ledger("l_", "customers")).batch_size(500))
            .unwrap();
        engine.catch_up_only(["customers"]).await.unwrap();
        engine.catch_up_only(["ledger"]).await.unwrap();
        let status = engine.status().await.unwrap();
        assert!(
            status.iter().all(|s| s.errors == 0 && s.lag_events == 0),
            "{status:#?}"
        );

        let (items, versions) = expected();
        let raw = common::raw(Some(&schema)).await.unwrap();
        let got: BTreeMap<String, (i64, i64)> = raw
            .query("SELECT customer, items, events FROM l_items", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        assert_eq!(got, items);
        let got: BTreeMap<String, i64> = raw
            .query("SELECT order_id, version FROM l_orders", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got, versions);
        common::drop_schema(&schema).await;
    }

    /// A query that fails in the middle of a batch: the events before it are committed, the
    /// failing one becomes a dead letter, the rest of the batch follows; its retry applies it
    /// once the table it reads exists.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_query_mid_batch_costs_only_its_event() {
        let Some(schema) = common::schema("sqltx_failing_query").await else {
            return;
        };
        let store = common::store(&schema, "pt-sqltx-failing").await;
        for i in 0..10 {
            store
                .append(
                    "S-1",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Tick", json!({"n": i, "lookup": i == 4}))],
                )
                .await
                .unwrap();
        }
        let body = PgHandlers::new()
            .setup(|cx| {
                cx.execute_script_labeled(
                    "CREATE TABLE IF NOT EXISTS ticks (n bigint PRIMARY KEY, seen bigint NOT NULL)",
                    "",
                )
            })
            .reset(|cx| cx.execute_script_labeled("DELETE FROM ticks", ""))
            .on_json("Tick", |cx, _ev, v| {
                let n = v["n"].as_i64().unwrap_or(-1);
                // Reads what the earlier events of the batch wrote.
                let before = cx.query("SELECT count(*) AS c FROM ticks", &[])?;
                let seen: i64 = projectionist::sql::column(&before[0], "c")?;
                if v["lookup"].as_bool() == Some(true) {
                    cx.query("SELECT * FROM lookup_table WHERE n = $1", &[SqlValue::Int(n)])?;
                }
                SqlTx::execute(
                    cx,
                    "INSERT INTO ticks (n, seen) VALUES ($1, $2)",
                    &[SqlValue::Int(n), SqlValue::Int(seen)],
                )
                .map_err(|e: HandlerError| e)
            });
        let engine = store
            .engine()
            .with(
                PgProjection::new("ticks", body)
                    .batch_size(100)
                    .error_policy(ErrorPolicy::DeadLetter),
            )
            .unwrap();
        engine.catch_up().await.unwrap();
        let raw = common::raw(Some(&schema)).await.unwrap();
        let rows: Vec<(i64, i64)> = raw
            .query("SELECT n, seen FROM ticks ORDER BY n", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let expected: Vec<(i64, i64)> = (0..10)
            .filter(|n| *n != 4)
            .map(|n| (n, if n < 4 { n } else { n - 1 }))
            .collect();
        assert_eq!(rows, expected);
        let dead = engine.dead_letters(Some("ticks")).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert!(dead[0].error.contains("lookup_table"), "{}", dead[0].error);
        assert_eq!(
            dead[0].event.data_value().ok().and_then(|v| v["n"].as_i64()),
            Some(4)
        );

        raw.batch_execute("CREATE TABLE lookup_table (n bigint)")
            .await
            .unwrap();
        engine.retry_dead_letter(dead[0].id).await.unwrap();
        let seen: i64 = raw
            .query_one("SELECT seen FROM ticks WHERE n = 4", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(seen, 9, "the retry read the nine rows applied before it");
        assert!(engine.dead_letters(Some("ticks")).await.unwrap().is_empty());
        common::drop_schema(&schema).await;
    }
}
