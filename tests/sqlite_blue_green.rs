//! Blue/green rebuilds on SQLite: the current version keeps serving while the new one is
//! built; readers never see an empty or partial read model; after the swap the read model
//! equals a clean rebuild; a crash mid-rebuild leaves the old version intact.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use projectionist::backend::Store;
use projectionist::sqlite::{SqliteEngine, SqliteStore};
use projectionist::workload::Orders;
use projectionist::EventLog;
use projectionist::{ExpectedVersion, RunState};

const CHILD_DB: &str = "PROJECTIONIST_TEST_BG_DB";

fn engine(store: &SqliteStore) -> SqliteEngine {
    store
        .engine()
        .with(order_summary("orders").batch_size(200))
        .unwrap()
}

async fn count_orders(store: &SqliteStore) -> i64 {
    store
        .read(|db| db.query_row("SELECT count(*) FROM orders_summary", [], |r| r.get(0)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_read_model_and_the_swap_equals_a_clean_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bg.db");
    let store = SqliteStore::open(&db).await.unwrap();
    let all: Vec<_> = Orders::new(21, 40_000).collect();
    let (first, rest) = all.split_at(30_000);
    for chunk in first.chunks(1000) {
        let appends = chunk
            .iter()
            .map(|e| {
                projectionist::sqlite::StreamAppend::new(
                    e.stream_id.clone(),
                    ExpectedVersion::Exact(e.stream_version - 1),
                    vec![e.to_new_event()],
                )
            })
            .collect();
        store.append_many(appends).await.unwrap();
    }
    let engine = Arc::new(engine(&store));
    engine.catch_up().await.unwrap();

    // The live projection keeps running, a writer keeps appending, a reader keeps reading.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let live = {
        let e = engine.clone();
        tokio::spawn(async move { e.run_until(projectionist::when_true(shutdown)).await })
    };
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, done) = (store.clone(), done.clone());
        let rest = rest.to_vec();
        tokio::spawn(async move {
            for e in rest {
                store
                    .append(
                        &e.stream_id,
                        ExpectedVersion::Exact(e.stream_version - 1),
                        vec![e.to_new_event()],
                    )
                    .await
                    .unwrap();
                if done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        })
    };
    let reader = {
        let reader_store = SqliteStore::open(&db).await.unwrap();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !done.load(Ordering::Relaxed) {
                seen.push(count_orders(&reader_store).await);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };

    let report = engine.rebuild_blue_green("orders", None).await.unwrap();
    done.store(true, Ordering::Relaxed);
    eprintln!(
        "blue/green: {} events into the shadow in {:.2}s; swap held the write lock {:?} for {:?}",
        report.events, report.seconds, report.swap_lock, report.tables
    );
    assert_eq!(report.tables, vec!["orders_summary".to_owned()]);
    assert!(!engine.blue_green_in_progress("orders").await.unwrap());

    let seen = reader.await.unwrap();
    assert!(
        seen.len() > 10,
        "the reader read throughout ({} reads)",
        seen.len()
    );
    assert!(seen[0] > 0);
    for w in seen.windows(2) {
        // New orders only ever add rows: a drop would mean an empty or partial read model.
        assert!(
            w[1] >= w[0],
            "the reader saw the read model shrink: {} -> {}",
            w[0],
            w[1]
        );
    }

    writer.await.unwrap();
    let head = store.event_count().await.unwrap() as i64;
    let token = projectionist::Checkpoint::at(head);
    engine
        .wait_for("orders", token, Duration::from_secs(30))
        .await
        .unwrap();
    stop.send(true).unwrap();
    live.await.unwrap().unwrap();
    let after_swap = dump(&store, "orders_summary").await;
    engine.rebuild("orders").await.unwrap();
    assert_same_rows(
        &after_swap,
        &dump(&store, "orders_summary").await,
        "blue/green vs clean rebuild",
    );
    let st = engine.status().await.unwrap().remove(0);
    assert_eq!((st.state, st.errors, st.lag_events), (RunState::Running, 0, 0));
}

#[test]
fn a_crash_mid_rebuild_leaves_the_old_version_serving_and_the_rebuild_resumes() {
    if let Ok(db) = std::env::var(CHILD_DB) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        return rt.block_on(async {
            let store = SqliteStore::open(&db).await.unwrap();
            let engine = store
                .engine()
                .with(order_summary("orders").batch_size(20))
                .unwrap();
            println!("CHILD READY");
            engine.rebuild_blue_green("orders", None).await.unwrap();
            println!("CHILD DONE");
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bg-crash.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        load_orders(&store, 9, 40_000).await;
        engine(&store).catch_up().await.unwrap();
        dump(&store, "orders_summary").await
    });

    let mut child = spawn_self(
        "a_crash_mid_rebuild_leaves_the_old_version_serving_and_the_rebuild_resumes",
        &[(CHILD_DB, db.to_str().unwrap())],
    );
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.map(|l| l.contains("CHILD READY")).unwrap_or(false)));
    std::thread::sleep(Duration::from_millis(400));
    child.kill().unwrap();
    child.wait().unwrap();

    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let engine = engine(&store);
        // The killed rebuild left its shadow, and the old version untouched and serving.
        assert!(
            engine.blue_green_in_progress("orders").await.unwrap(),
            "the child was killed before its shadow existed"
        );
        assert_same_rows(
            &dump(&store, "orders_summary").await,
            &before,
            "old version after the crash",
        );
        let rec = store.record("orders", 0).await.unwrap().unwrap();
        assert_eq!(rec.state, RunState::Running);

        // Resuming finishes it; the result equals the old (complete) version.
        let report = engine.rebuild_blue_green("orders", None).await.unwrap();
        assert!(
            report.events < 40_000,
            "resumed, not restarted: {} events",
            report.events
        );
        assert_same_rows(
            &dump(&store, "orders_summary").await,
            &before,
            "resumed blue/green vs incremental",
        );
        assert!(!engine.blue_green_in_progress("orders").await.unwrap());
        assert!(!engine.abandon_blue_green("orders").await.unwrap());
    });
}
