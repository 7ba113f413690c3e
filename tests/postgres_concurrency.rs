//! Guarantee 2 (no skipped events under concurrent appends) and exactly-once on PostgreSQL,
//! under concurrent writers (library and raw INSERTs, long-held and rolled-back
//! transactions), terminated backends, and two runners on one projection.
#![cfg(feature = "postgres")]

#[path = "postgres_common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use projectionist::postgres::{PgProjection, PgStore, StreamAppend};
use projectionist::EventLog;
use projectionist::{ExpectedVersion, NewEvent, RunnerSettings};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::watch;

const ROUNDS: usize = 20;
const WRITERS: usize = 10;
const OPS: usize = 6;

fn ev(t: &str, n: i64) -> NewEvent {
    NewEvent::new(t, json!({ "n": n }))
}

/// One writer's round. Returns the number of committed A/B events.
async fn writer(kind: usize, w: usize, round: usize, schema: String, lib: PgStore) -> i64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((round * 100 + w) as u64);
    let raw = common::raw(Some(&schema)).await.expect("writer connection");
    let stream = format!("r{round}-w{w}");
    let mut version = 0i64;
    let mut committed = 0i64;
    let insert = "INSERT INTO events (stream_id, stream_version, event_type, data) \
                  SELECT $1, $2::bigint + g, CASE WHEN g % 4 = 0 THEN 'Noise' ELSE 'A' END, jsonb_build_object('g', g) \
                  FROM generate_series(1, $3::int) g";
    let counted = |n: i64| (1..=n).filter(|g| g % 4 != 0).count() as i64;
    for op in 0..OPS {
        let n = rng.gen_range(1..=5i64);
        match kind {
            // The library's append.
            0 => {
                let events = (0..n)
                    .map(|i| ev(if i == 2 { "Noise" } else { "A" }, i))
                    .collect();
                lib.append(stream.clone(), ExpectedVersion::Exact(version), events)
                    .await
                    .unwrap();
                version += n;
                committed += if n >= 3 { n - 1 } else { n };
            }
            // Raw autocommit INSERTs, as an app in another language would do.
            1 => {
                raw.execute(insert, &[&stream, &version, &(n as i32)])
                    .await
                    .unwrap();
                version += n;
                committed += counted(n);
            }
            // Raw transactions held open with pg_sleep, inserting before and after the sleep.
            2 => {
                raw.batch_execute("BEGIN").await.unwrap();
                raw.execute(insert, &[&stream, &version, &(n as i32)])
                    .await
                    .unwrap();
                let ms = rng.gen_range(20..120) as f64 / 1000.0;
                raw.execute("SELECT pg_sleep($1)", &[&ms]).await.unwrap();
                raw.execute(insert, &[&stream, &(version + n), &(n as i32)])
                    .await
                    .unwrap();
                raw.batch_execute("COMMIT").await.unwrap();
                version += 2 * n;
                committed += 2 * counted(n);
            }
            // Raw transactions that roll back (some after sleeping), or commit.
            3 => {
                raw.batch_execute("BEGIN").await.unwrap();
                raw.execute(insert, &[&stream, &version, &(n as i32)])
                    .await
                    .unwrap();
                if op % 2 == 0 {
                    let ms = rng.gen_range(10..80) as f64 / 1000.0;
                    raw.execute("SELECT pg_sleep($1)", &[&ms]).await.unwrap();
                    raw.batch_execute("ROLLBACK").await.unwrap();
                } else {
                    raw.batch_execute("COMMIT").await.unwrap();
                    version += n;
                    committed += counted(n);
                }
            }
            // The library's multi-stream append, and a held library-style transaction.
            _ => {
                let other = format!("{stream}-x");
                lib.append_many(vec![
                    StreamAppend::new(
                        stream.clone(),
                        ExpectedVersion::Any,
                        (0..n).map(|i| ev("B", i)).collect(),
                    ),
                    StreamAppend::new(other, ExpectedVersion::Any, vec![ev("A", 1), ev("Noise", 2)]),
                ])
                .await
                .unwrap();
                committed += n + 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn torture_concurrent_writers_never_skip_or_duplicate() {
    let Some(schema) = common::schema("torture").await else {
        return;
    };
    let store = common::store(&schema, "pt-torture-runner").await;
    let lib_writer = PgStore::builder(&common::url())
        .unwrap()
        .schema(&schema)
        .listen(false)
        .pool_size(8)
        .connect()
        .await
        .unwrap();
    let engine = Arc::new(
        store
            .engine()
            .with(PgProjection::new("seen", common::counting_body()).batch_size(25))
            .unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let runner = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_until(projectionist::when_true(stop_rx)).await }
    });
    let models = common::raw(Some(&schema)).await.unwrap();
    let started = Instant::now();
    let mut total = 0i64;
    for round in 0..ROUNDS {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| tokio::spawn(writer(w % 5, w, round, schema.clone(), lib_writer.clone())))
            .collect();
        let mut committed = 0;
        for t in tasks {
            committed += t.await.unwrap();
        }
        total += committed;
        let waited = common::caught_up(&schema, &store, "seen", Duration::from_secs(60)).await;
        let t = common::tally(&schema, &models, &schema).await;
        eprintln!(
            "torture round {round:2}: {committed:3} events committed this round, {total:5} in all; \
             projection saw {} ({} duplicates, {} missing, {} out of order); round {:?}, caught up {:?} after the writers",
            t.seen, t.duplicates, t.missing, t.out_of_order, t0.elapsed(), waited
        );
        assert_eq!(
            t.committed, total,
            "the writers' own count disagrees with the events table"
        );
        assert_eq!(
            (t.seen, t.duplicates, t.missing, t.out_of_order),
            (total, 0, 0, 0),
            "round {round}"
        );
    }
    stop.send(true).unwrap();
    runner.await.unwrap().unwrap();
    let rolled_back: i64 = models
        .query_one(
            "SELECT count(*) FROM seen WHERE stream_id LIKE '%-w3' AND stream_version > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!(
        "torture: {ROUNDS} rounds x {WRITERS} writers, {total} committed A/B events projected exactly once \
         ({rolled_back} from the rolling-back writers' committed transactions) in {:?}",
        started.elapsed()
    );
    common::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminated_backends_do_not_break_exactly_once() {
    let Some(schema) = common::schema("faults").await else {
        return;
    };
    let app = format!("pt-faults-runner-{}", std::process::id());
    let store = common::store(&schema, &app).await;
    let writer = PgStore::builder(&common::url())
        .unwrap()
        .schema(&schema)
        .listen(false)
        .connect()
        .await
        .unwrap();
    let engine = Arc::new(
        store
            .engine()
            .settings(RunnerSettings {
                retry_min: Duration::from_millis(20),
                retry_max: Duration::from_millis(400),
                ..RunnerSettings::default()
            })
            .with(PgProjection::new("seen", common::counting_body()).batch_size(20))
            .unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let runner = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_until(projectionist::when_true(stop_rx)).await }
    });
    let writing = Arc::new(AtomicBool::new(true));
    let appended = Arc::new(AtomicU64::new(0));
    let w = tokio::spawn({
        let (writing, appended) = (writing.clone(), appended.clone());
        async move {
            let mut i = 0i64;
            while writing.load(Ordering::SeqCst) {
                writer
                    .append(
                        format!("F-{}", i % 17),
                        ExpectedVersion::Any,
                        vec![ev("A", i), ev("B", i)],
                    )
                    .await
                    .unwrap();
                appended.fetch_add(2, Ordering::SeqCst);
                i += 1;
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    let admin = common::raw(None).await.unwrap();
    let mut killed = 0i64;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .unwrap()
            .get(0);
        killed += n;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    writing.store(false, Ordering::SeqCst);
    w.await.unwrap();
    let waited = common::caught_up(&schema, &store, "seen", Duration::from_secs(60)).await;
    let models = common::raw(Some(&schema)).await.unwrap();
    let t = common::tally(&schema, &models, &schema).await;
    eprintln!(
        "faults: terminated {killed} runner backends in 6 rounds while {} events were appended; \
         caught up {waited:?} after the writer; {t:?}",
        appended.load(Ordering::SeqCst)
    );
    assert!(killed >= 6, "the runner's backends were not found");
    assert_eq!(t.committed as u64, appended.load(Ordering::SeqCst));
    assert_eq!(
        (t.seen, t.duplicates, t.missing, t.out_of_order),
        (t.committed, 0, 0, 0)
    );
    // The listener reconnected.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store.is_listening() {
        assert!(Instant::now() < deadline, "the listener did not reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    runner.await.unwrap().unwrap();
    common::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_on_one_projection_end_exact() {
    let Some(schema) = common::schema("tworunners").await else {
        return;
    };
    let stores = [
        common::store(&schema, "pt-two-a").await,
        common::store(&schema, "pt-two-b").await,
    ];
    let writer = PgStore::builder(&common::url())
        .unwrap()
        .schema(&schema)
        .listen(false)
        .connect()
        .await
        .unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let runners: Vec<_> = stores
        .iter()
        .map(|s| {
            let engine = s
                .engine()
                .with(PgProjection::new("seen", common::counting_body()).batch_size(15))
                .unwrap();
            let stop_rx = stop_rx.clone();
            tokio::spawn(async move { engine.run_until(projectionist::when_true(stop_rx)).await })
        })
        .collect();
    let writers: Vec<_> = (0..4)
        .map(|k| {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..150 {
                    writer
                        .append(
                            format!("T-{k}-{}", i % 5),
                            ExpectedVersion::Any,
                            vec![ev("A", i), ev("Noise", i)],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    common::caught_up(&schema, &stores[0], "seen", Duration::from_secs(60)).await;
    let models = common::raw(Some(&schema)).await.unwrap();
    let t = common::tally(&schema, &models, &schema).await;
    eprintln!("two runners: {t:?}");
    assert_eq!(t.committed, 600);
    assert_eq!((t.seen, t.duplicates, t.missing, t.out_of_order), (600, 0, 0, 0));
    stop.send(true).unwrap();
    for r in runners {
        r.await.unwrap().unwrap();
    }
    common::drop_schema(&schema).await;
}
