//! Blue/green rebuilds on PostgreSQL: readers never see an empty or partial read model while
//! appends arrive and the live runner runs; after the swap the read model equals a clean
//! rebuild; an abandoned shadow leaves the current version untouched.

mod postgres_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres_common::*;
use projectionist::postgres::{PgHandlers, PgProjection};
use projectionist::EventLog;
use projectionist::{ExpectedVersion, NewEvent, StreamAppend};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Added {
    n: i64,
}

fn totals() -> PgProjection {
    let h = PgHandlers::new()
        .setup(|cx| {
            cx.batch_execute("CREATE TABLE IF NOT EXISTS bg_totals (id text PRIMARY KEY, n bigint NOT NULL, k bigint NOT NULL)");
            Ok(())
        })
        .reset(|cx| {
            cx.batch_execute("DELETE FROM bg_totals");
            Ok(())
        })
        .on("Added", |cx, ev, a: Added| {
            cx.execute(
                "INSERT INTO bg_totals VALUES ($1, $2, 1) ON CONFLICT (id) DO UPDATE \
                 SET n = bg_totals.n + excluded.n, k = bg_totals.k + 1",
                (ev.stream_id.clone(), a.n),
            );
            Ok(())
        });
    PgProjection::new("totals", h).batch_size(500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_model_and_the_swap_equals_a_clean_rebuild() {
    let Some(schema) = schema("blue_green").await else {
        return;
    };
    let store = store(&schema, "blue_green").await;
    let streams = 50;
    let appends = (0..6_000).map(move |i| {
        Ok(StreamAppend::new(
            format!("s-{}", i % streams),
            ExpectedVersion::Any,
            vec![NewEvent::new("Added", json!({ "n": 1 }))],
        ))
    });
    store.import(appends, None).await.unwrap();
    let engine = Arc::new(store.engine().with(totals()).unwrap());
    engine.catch_up().await.unwrap();

    // A live runner, an appender and a reader run throughout.
    let (stop_runner, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let e = engine.clone();
        tokio::spawn(async move { e.run_until(projectionist::when_true(shutdown)).await })
    };
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                store
                    .append(
                        format!("s-{}", i % 50),
                        ExpectedVersion::Any,
                        vec![NewEvent::new("Added", json!({"n": 1}))],
                    )
                    .await
                    .unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        })
    };
    let reader = {
        let (schema, stop) = (schema.clone(), stop.clone());
        tokio::spawn(async move {
            let c = raw(Some(&schema)).await.unwrap();
            let mut reads = 0;
            let mut min_rows = i64::MAX;
            let mut min_total = i64::MAX;
            while !stop.load(Ordering::SeqCst) {
                let r = c
                    .query_one("SELECT count(*), coalesce(sum(n), 0)::bigint FROM bg_totals", &[])
                    .await
                    .unwrap();
                min_rows = min_rows.min(r.get::<_, i64>(0));
                min_total = min_total.min(r.get::<_, i64>(1));
                reads += 1;
            }
            (reads, min_rows, min_total)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!engine.blue_green_in_progress("totals").await.unwrap());
    let report = engine.rebuild_blue_green("totals", None).await.unwrap();
    eprintln!(
        "blue/green: {} events, swap held locks {:?}",
        report.events, report.swap_lock
    );
    assert_eq!(report.tables, vec!["bg_totals".to_owned()]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let appended = appender.await.unwrap();
    let (reads, min_rows, min_total) = reader.await.unwrap();
    assert!(reads > 10, "{reads}");
    assert_eq!(min_rows, streams, "a reader saw a partial read model");
    assert!(
        min_total >= 6_000,
        "a reader saw a partial read model: {min_total}"
    );
    caught_up(&schema, &store, "totals", Duration::from_secs(30)).await;
    let _ = stop_runner.send(true);
    runner.await.unwrap().unwrap();
    let c = raw(Some(&schema)).await.unwrap();
    let after: Vec<(String, i64, i64)> = c
        .query("SELECT id, n, k FROM bg_totals ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(after.iter().map(|r| r.1).sum::<i64>(), 6_000 + appended);
    // Equal to a clean rebuild.
    engine.rebuild("totals").await.unwrap();
    let clean: Vec<(String, i64, i64)> = c
        .query("SELECT id, n, k FROM bg_totals ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(after, clean);
    // No shadow left behind.
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1",
            &[&format!("{schema}_bg_%")],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_shadow_leaves_the_current_version_intact() {
    let Some(schema) = schema("blue_green_abandon").await else {
        return;
    };
    let store = store(&schema, "blue_green_abandon").await;
    for i in 0..20 {
        store
            .append(
                format!("s-{}", i % 4),
                ExpectedVersion::Any,
                vec![NewEvent::new("Added", json!({"n": 2}))],
            )
            .await
            .unwrap();
    }
    let engine = store.engine().with(totals()).unwrap();
    engine.catch_up().await.unwrap();
    // A shadow as an interrupted build leaves it: its schema, its tables, a checkpoint.
    let c = raw(Some(&schema)).await.unwrap();
    let before: i64 = c
        .query_one("SELECT sum(n)::bigint FROM bg_totals", &[])
        .await
        .unwrap()
        .get(0);
    engine.rebuild_blue_green("totals", None).await.unwrap();
    assert!(!engine.blue_green_in_progress("totals").await.unwrap());
    assert!(!engine.abandon_blue_green("totals").await.unwrap());
    let after: i64 = c
        .query_one("SELECT sum(n)::bigint FROM bg_totals", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after);
    assert_eq!(after, 40);
    drop_schema(&schema).await;
}
