//! Exactly-once across `kill -9`: a child process (this test binary, re-run) projects the
//! orders workload into PostgreSQL and is killed at random moments; after a final run the read
//! model equals a clean rebuild, and each stream's applied-event counter equals its length.
#![cfg(feature = "postgres")]

#[path = "postgres_common/mod.rs"]
mod common;

#[path = "support/reading.rs"]
mod reading;

use std::time::{Duration, Instant};

use projectionist::backend::Store;
use projectionist::postgres::{PgHandlers, PgProjection, PgStore, StreamAppend};
use projectionist::workload::Orders;
use projectionist::EventLog;
use projectionist::ExpectedVersion;
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "PROJECTIONIST_PG_CRASH_CHILD_SCHEMA";
const TEST_NAME: &str = "sigkill_at_random_moments_keeps_exactly_once";
const EVENTS: u64 = 50_000;

/// An order summary plus a per-stream applied counter, in tables prefixed by `prefix`.
fn orders_body(prefix: &'static str) -> PgHandlers {
    let t = |s: &str| s.replace("T_", prefix);
    let upsert = t(
        "INSERT INTO T_summary AS o (order_id, customer_name, status, item_count, total_amount, carrier, applied) \
         VALUES ($1, $2, $3, $4, $5, $6, 1) \
         ON CONFLICT (order_id) DO UPDATE SET \
           customer_name = coalesce(excluded.customer_name, o.customer_name), \
           status = coalesce(excluded.status, o.status), \
           item_count = o.item_count + excluded.item_count, \
           total_amount = o.total_amount + excluded.total_amount, \
           carrier = coalesce(excluded.carrier, o.carrier), \
           applied = o.applied + 1",
    );
    let mut h = PgHandlers::new()
        .setup({
            let ddl = t(
                "CREATE TABLE IF NOT EXISTS T_summary (order_id text PRIMARY KEY, customer_name text, \
                 status text, item_count bigint NOT NULL, total_amount bigint NOT NULL, carrier text, \
                 applied bigint NOT NULL)",
            );
            move |cx| {
                cx.batch_execute(ddl.clone());
                Ok(())
            }
        })
        .reset({
            let sql = t("TRUNCATE T_summary");
            move |cx| {
                cx.batch_execute(sql.clone());
                Ok(())
            }
        });
    for ty in projectionist::workload::EVENT_TYPES {
        let upsert = upsert.clone();
        h = h.on_json(ty, move |cx, ev, v| {
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
            let i = |k: &str| v.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
            let status = match ev.event_type.as_str() {
                "OrderCreated" => Some("created".to_owned()),
                "ItemAdded" => None,
                "OrderConfirmed" => Some("confirmed".to_owned()),
                "OrderShipped" => Some("shipped".to_owned()),
                "OrderDelivered" => Some("delivered".to_owned()),
                _ => Some("cancelled".to_owned()),
            };
            let items = if ev.event_type == "ItemAdded" {
                i("quantity")
            } else {
                0
            };
            let amount = items * i("unit_price");
            cx.execute(
                upsert.clone(),
                (
                    ev.stream_id.clone(),
                    s("customer_name"),
                    status,
                    items,
                    amount,
                    s("carrier"),
                ),
            );
            Ok(())
        });
    }
    h
}

async fn child(schema: &str) {
    let store = PgStore::builder(&common::url())
        .unwrap()
        .schema(schema)
        .application_name("pt-crash-child")
        .connect()
        .await
        .unwrap();
    let engine = store
        .engine()
        .with(PgProjection::new("orders", orders_body("crash_")).batch_size(20))
        .unwrap()
        .with(PgProjection::new("customers", reading::customers("customers")))
        .unwrap()
        // Reads before it writes: its order's row (maybe written earlier in the same batch)
        // and the `customers` read model; fails on any duplicate or out-of-order event.
        .with(PgProjection::new("ledger", reading::ledger("crash_l_", "customers")).batch_size(50))
        .unwrap();
    engine.catch_up_only(["orders", "ledger"]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_keeps_exactly_once() {
    if let Ok(schema) = std::env::var(CHILD_ENV) {
        child(&schema).await;
        return;
    }
    let Some(schema) = common::schema("crash").await else {
        return;
    };
    let store = common::store(&schema, "pt-crash-parent").await;
    let items = Orders::new(7, EVENTS).map(|e| {
        Ok(StreamAppend::new(
            e.stream_id.clone(),
            ExpectedVersion::from_option(Some(e.stream_version - 1)),
            vec![e.to_new_event()],
        ))
    });
    let t0 = Instant::now();
    let n = store.import(items, None).await.unwrap();
    eprintln!("crash: imported {n} events in {:?}", t0.elapsed());
    assert!(n >= EVENTS);

    // The other read model that the reading projection looks up, complete before the children.
    store
        .engine()
        .with(PgProjection::new("customers", reading::customers("customers")))
        .unwrap()
        .catch_up()
        .await
        .unwrap();

    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["--exact", TEST_NAME, "--nocapture"])
            .env(CHILD_ENV, &schema)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(std::process::id() as u64);
    let mut kills = 0;
    let mut checkpoints = Vec::new();
    while kills < 5 {
        let mut c = spawn();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..500))).await;
        if c.try_wait().unwrap().is_some() {
            panic!("the child finished before it could be killed; make the workload larger");
        }
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        kills += 1;
        let cp = store
            .record("orders", 0)
            .await
            .unwrap()
            .map(|r| r.checkpoint.position)
            .unwrap_or(0);
        checkpoints.push(cp);
    }
    eprintln!("crash: killed the child {kills} times with SIGKILL; checkpoint positions after each kill: {checkpoints:?}");
    assert!(
        checkpoints.last().copied().unwrap_or(0) > 0,
        "the child never committed"
    );
    let status = spawn().wait().unwrap();
    assert!(status.success(), "final run failed: {status}");
    let record = store.record("orders", 0).await.unwrap().unwrap();
    assert_eq!(
        record.checkpoint,
        projectionist::backend::Source::head(&store).await.unwrap()
    );
    assert_eq!(record.applied, n, "applied counter");
    let ledger = store.record("ledger", 0).await.unwrap().unwrap();
    assert_eq!(ledger.checkpoint, record.checkpoint);
    assert_eq!(
        (ledger.applied, ledger.errors, ledger.dead_letters),
        (n, 0, 0),
        "reading projection"
    );

    // A clean rebuild into other tables, then compare.
    let clean = store
        .engine()
        .with(PgProjection::new("orders_clean", orders_body("clean_")).batch_size(1000))
        .unwrap()
        .with(PgProjection::new("ledger_clean", reading::ledger("clean_l_", "customers")).batch_size(1000))
        .unwrap();
    clean.catch_up().await.unwrap();
    let raw = common::raw(Some(&schema)).await.unwrap();
    let diff: i64 = raw
        .query_one(
            "SELECT count(*) FROM ((SELECT * FROM crash_summary EXCEPT SELECT * FROM clean_summary) \
             UNION ALL (SELECT * FROM clean_summary EXCEPT SELECT * FROM crash_summary)) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(diff, 0, "the crashed read model differs from a clean rebuild");
    for table in ["orders", "items"] {
        let diff: i64 = raw
            .query_one(
                &format!(
                    "SELECT count(*) FROM ((SELECT * FROM crash_l_{table} EXCEPT SELECT * FROM clean_l_{table}) \
                     UNION ALL (SELECT * FROM clean_l_{table} EXCEPT SELECT * FROM crash_l_{table})) d"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            diff, 0,
            "the reading projection's {table} differs from a clean rebuild"
        );
    }
    let wrong: i64 = raw
        .query_one(
            "SELECT count(*) FROM crash_summary s JOIN (SELECT stream_id, count(*) AS n FROM events GROUP BY stream_id) e \
             ON e.stream_id = s.order_id WHERE s.applied <> e.n",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows: i64 = raw
        .query_one("SELECT count(*) FROM crash_summary", &[])
        .await
        .unwrap()
        .get(0);
    let streams: i64 = raw
        .query_one("SELECT count(DISTINCT stream_id) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "crash: {rows} orders, {wrong} with a wrong applied counter, read model equals a clean rebuild"
    );
    assert_eq!(rows, streams);
    assert_eq!(wrong, 0);
    common::drop_schema(&schema).await;
}
