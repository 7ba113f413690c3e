//! The PostgreSQL backend: appends and conflicts, the events table contract, the read plan,
//! filtering, dead letters, pause/resume, rebuild, status, split databases and the live tail.
#![cfg(feature = "postgres")]

#[path = "postgres_common/mod.rs"]
mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use projectionist::backend::{Filter, Source};
use projectionist::postgres::{PgHandlers, PgProjection, PgStore, StreamAppend};
use projectionist::EventLog;
use projectionist::{Checkpoint, Error, ErrorPolicy, ExpectedVersion, NewEvent, RunState, RunnerSettings};
use serde_json::json;
use tokio::sync::watch;

fn ev(t: &str, n: i64) -> NewEvent {
    NewEvent::new(t, json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_stream_and_conflicts() {
    let Some(schema) = common::schema("append").await else {
        return;
    };
    let store = common::store(&schema, "pt-append").await;

    let a = store
        .append("S-1", ExpectedVersion::NoStream, vec![ev("A", 1), ev("A", 2)])
        .await
        .unwrap();
    assert_eq!(a.stream_version, 2);
    assert!(a.first_position < a.last_position);
    assert!(a.token.txid > 0 && a.token.position == a.last_position);
    let b = store
        .append("S-1", ExpectedVersion::Exact(2), vec![ev("B", 3)])
        .await
        .unwrap();
    assert_eq!(b.stream_version, 3);
    let events = store.read_stream("S-1").await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(&*events[0].data, r#"{"n": 1}"#);

    // A stale expectation names the stream, the expected and the actual version.
    match store
        .append("S-1", ExpectedVersion::Exact(1), vec![ev("A", 4)])
        .await
    {
        Err(Error::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(
                (stream.as_str(), expected, actual),
                ("S-1", ExpectedVersion::Exact(1), 3)
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A duplicate event id.
    let dup = ev("A", 5);
    store
        .append("S-2", ExpectedVersion::Any, vec![dup.clone()])
        .await
        .unwrap();
    match store.append("S-3", ExpectedVersion::Any, vec![dup.clone()]).await {
        Err(Error::DuplicateEvent { event_id }) => assert_eq!(event_id, dup.event_id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    // append_many is all or nothing.
    let before = store.event_count().await.unwrap();
    let r = store
        .append_many(vec![
            StreamAppend::new("S-4", ExpectedVersion::NoStream, vec![ev("A", 1)]),
            StreamAppend::new("S-1", ExpectedVersion::Exact(99), vec![ev("A", 1)]),
        ])
        .await;
    assert!(matches!(r, Err(Error::Conflict { .. })), "{r:?}");
    assert_eq!(store.event_count().await.unwrap(), before);

    // Racing appends with the same expectation: exactly one wins, the other is a conflict
    // (the unique violation on (stream_id, stream_version) maps to Conflict).
    for i in 0..20 {
        let stream = format!("race-{i}");
        let (x, y) = tokio::join!(
            store.append(stream.clone(), ExpectedVersion::NoStream, vec![ev("A", 1)]),
            store.append(stream.clone(), ExpectedVersion::NoStream, vec![ev("A", 2)]),
        );
        let wins = [&x, &y].iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{x:?} {y:?}");
        for r in [x, y] {
            if let Err(e) = r {
                match e {
                    Error::Conflict {
                        stream: s, actual, ..
                    } => assert_eq!((s, actual), (stream.clone(), 1)),
                    other => panic!("expected a conflict, got {other:?}"),
                }
            }
        }
        // `Any` appends never conflict: they retry.
        let (x, y) = tokio::join!(
            store.append(stream.clone(), ExpectedVersion::Any, vec![ev("A", 1)]),
            store.append(stream.clone(), ExpectedVersion::Any, vec![ev("A", 2)]),
        );
        x.unwrap();
        y.unwrap();
        assert_eq!(store.read_stream(stream).await.unwrap().len(), 3);
    }

    // Import: all or nothing, naming the failure.
    let before = store.event_count().await.unwrap();
    let items = vec![
        Ok(StreamAppend::new(
            "I-1",
            ExpectedVersion::NoStream,
            vec![ev("A", 1)],
        )),
        Err(Error::InvalidInput("line 2: not JSON".into())),
    ];
    let r = store.import(items.into_iter(), None).await;
    assert!(
        matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("line 2")),
        "{r:?}"
    );
    assert_eq!(store.event_count().await.unwrap(), before);
    let items: Vec<_> = (1..=5000)
        .map(|i| {
            Ok(StreamAppend::new(
                format!("I-{}", i % 100),
                ExpectedVersion::Any,
                vec![ev("A", i)],
            ))
        })
        .collect();
    assert_eq!(store.import(items.into_iter(), None).await.unwrap(), 5000);
    assert_eq!(store.read_stream("I-7").await.unwrap().len(), 50);

    // An import of more streams than it remembers (65,536) reads forgotten streams' versions
    // from the table again, its own rows included.
    const STREAMS: i64 = 70_000;
    let one = |s: String, expected| Ok(StreamAppend::new(s, expected, vec![ev("A", 0)]));
    let items: Vec<_> = (0..STREAMS)
        .map(|i| one(format!("M-{i}"), ExpectedVersion::NoStream))
        .chain([one("M-0".into(), ExpectedVersion::Exact(1))])
        .collect();
    assert_eq!(
        store.import(items.into_iter(), None).await.unwrap(),
        STREAMS as u64 + 1
    );
    assert_eq!(store.read_stream("M-0").await.unwrap().len(), 2);
    let items: Vec<_> = (STREAMS..2 * STREAMS)
        .map(|i| one(format!("M-{i}"), ExpectedVersion::NoStream))
        .chain([one(format!("M-{STREAMS}"), ExpectedVersion::NoStream)])
        .collect();
    match store.import(items.into_iter(), None).await {
        Err(Error::Conflict { stream, actual, .. }) => {
            assert_eq!((stream, actual), (format!("M-{STREAMS}"), 1))
        }
        other => panic!("expected a conflict on M-{STREAMS}, got {other:?}"),
    }
    assert_eq!(
        store
            .read_stream(format!("M-{}", STREAMS + 1))
            .await
            .unwrap()
            .len(),
        0,
        "all or nothing"
    );

    // The location never shows a password.
    let secret = common::url().replacen("postgres@", "postgres:hunter2@", 1);
    let b = PgStore::builder(&secret).unwrap();
    assert!(!format!("{b:?}").contains("hunter2"));
    drop(store);
    common::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_inserts_get_defaults_and_are_projected() {
    let Some(schema) = common::schema("raw").await else {
        return;
    };
    let store = common::store(&schema, "pt-raw").await;
    let raw = common::raw(Some(&schema)).await.unwrap();
    // What an app in another language does: only the four required columns.
    raw.batch_execute(
        "INSERT INTO events (stream_id, stream_version, event_type, data) VALUES \
         ('R-1', 1, 'A', '{\"x\": 1}'), ('R-1', 2, 'B', '{\"x\": 2}'), ('R-2', 1, 'Noise', '{}')",
    )
    .await
    .unwrap();
    let row = raw
        .query_one(
            "SELECT count(*) FILTER (WHERE xid > 0 AND event_id IS NOT NULL AND recorded_at IS NOT NULL \
             AND metadata = '{}'::jsonb), count(DISTINCT xid) FROM events",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (3, 1));
    // The unique (stream_id, stream_version) holds for direct inserts too.
    let dup = raw
        .batch_execute(
            "INSERT INTO events (stream_id, stream_version, event_type, data) VALUES ('R-1', 2, 'A', '{}')",
        )
        .await;
    assert!(dup.is_err());

    let engine = store
        .engine()
        .with(PgProjection::new("seen", common::counting_body()))
        .unwrap();
    engine.catch_up().await.unwrap();
    let t = common::tally(&schema, &raw, &schema).await;
    assert_eq!((t.committed, t.seen, t.duplicates, t.missing), (2, 2, 0, 0));
    let status = engine.status().await.unwrap();
    assert_eq!(status[0].applied, 2);
    assert_eq!(status[0].ignored, 1);
    assert_eq!(status[0].lag_events, 0);
    common::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_query_is_an_index_range_scan_and_filters_in_sql() {
    let Some(schema) = common::schema("plan").await else {
        return;
    };
    let store = common::store(&schema, "pt-plan").await;
    let items: Vec<_> = (0..20_000)
        .map(|i| {
            let t = if i % 10 == 0 { "A" } else { "Noise" };
            Ok(StreamAppend::new(
                format!("P-{}", i % 500),
                ExpectedVersion::Any,
                vec![ev(t, i)],
            ))
        })
        .collect();
    store.import(items.into_iter(), None).await.unwrap();
    let raw = common::raw(Some(&schema)).await.unwrap();
    raw.batch_execute("ANALYZE events").await.unwrap();
    let head = store.head().await.unwrap();
    let mid = Checkpoint {
        txid: head.txid,
        position: head.position / 2,
    };
    for (what, filter) in [
        ("all types", Filter::default()),
        ("filtered", Filter::types(Some(&["A".to_owned()]))),
    ] {
        let plan = store.explain_read(mid, 1000, &filter).await.unwrap();
        eprintln!("EXPLAIN of the read ({what}):\n{plan}\n");
        assert!(
            plan.contains("Index Scan using events_xid_position_idx"),
            "{plan}"
        );
        assert!(plan.contains("Index Cond"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
        assert!(!plan.contains("Sort"), "{plan}");
    }

    // Filtering: a read scans `limit` rows, returns the admitted ones, and moves past all it
    // scanned (a batch that admits nothing still moves).
    let filter = Filter::types(Some(&["A".to_owned()]));
    // One in ten is an A: the first ten rows hold one.
    let b = store.read(Checkpoint::START, 10, &filter).await.unwrap();
    assert_eq!((b.events.len(), b.ignored), (1, 9));
    assert!(b.events.iter().all(|e| e.event_type == "A"));
    assert!(b.scanned_to > b.events[0].checkpoint());
    let next = store.read(b.scanned_to, 10, &filter).await.unwrap();
    assert_eq!((next.events.len(), next.ignored), (1, 9));
    assert!(next.events[0].checkpoint() > b.scanned_to);
    let only_noise = Filter::types(Some(&["Nothing".to_owned()]));
    let b = store.read(Checkpoint::START, 10, &only_noise).await.unwrap();
    assert!(b.events.is_empty());
    assert_eq!(b.ignored, 10);
    assert!(b.scanned_to > Checkpoint::START);
    // Lag is cheap and right.
    let lag = store.lag(Checkpoint::START).await.unwrap();
    assert_eq!(lag.events, 20_000);
    assert!(lag.oldest.is_some());
    assert_eq!(store.lag(head).await.unwrap().events, 0);
    common::drop_schema(&schema).await;
}

fn picky_body() -> PgHandlers {
    PgHandlers::new()
        .setup(|cx| {
            cx.batch_execute(
                "CREATE TABLE IF NOT EXISTS picky (stream_id text, n bigint CONSTRAINT n_small CHECK (n < 100))",
            );
            Ok(())
        })
        .reset(|cx| {
            cx.batch_execute("TRUNCATE picky");
            Ok(())
        })
        .on_json("A", |cx, e, v| {
            let n = v.get("n").and_then(|n| n.as_i64()).unwrap_or(0);
            cx.execute("INSERT INTO picky (stream_id, n) VALUES ($1, $2)", (e.stream_id.clone(), n));
            Ok(())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_pause_resume_rebuild_and_status() {
    let Some(schema) = common::schema("ops").await else {
        return;
    };
    let store = common::store(&schema, "pt-ops").await;
    let raw = common::raw(Some(&schema)).await.unwrap();
    let engine = Arc::new(
        store
            .engine()
            .settings(RunnerSettings {
                poll_min: Duration::from_millis(5),
                poll_max: Duration::from_millis(50),
                ..RunnerSettings::default()
            })
            .with(
                PgProjection::new("picky", picky_body())
                    .batch_size(10)
                    .error_policy(ErrorPolicy::DeadLetter),
            )
            .unwrap(),
    );
    for i in 0..30 {
        // Events 7 and 23 violate the read model's CHECK: a statement failure at execution.
        let n = if i == 7 || i == 23 { 500 } else { i };
        store
            .append(format!("O-{}", i % 3), ExpectedVersion::Any, vec![ev("A", n)])
            .await
            .unwrap();
    }
    engine.catch_up().await.unwrap();
    assert_eq!(
        count(&raw).await,
        28,
        "the prefix before a failure is committed, the rest goes on"
    );
    let dls = engine.dead_letters(Some("picky")).await.unwrap();
    assert_eq!(dls.len(), 2);
    assert!(dls[0].error.contains("n_small"), "{}", dls[0].error);
    let status = engine.status().await.unwrap();
    assert_eq!(
        (status[0].errors, status[0].dead_letters, status[0].applied),
        (2, 2, 28)
    );
    assert_eq!(status[0].state, RunState::Running);
    assert!(status[0].last_error.as_deref().unwrap_or("").contains("n_small"));

    // Retrying fails while the cause remains, and records the attempt.
    assert!(matches!(
        engine.retry_dead_letter(dls[0].id).await,
        Err(Error::RetryFailed { .. })
    ));
    assert_eq!(engine.dead_letters(None).await.unwrap()[0].attempts, 2);
    raw.batch_execute("ALTER TABLE picky DROP CONSTRAINT n_small")
        .await
        .unwrap();
    engine.retry_dead_letter(dls[0].id).await.unwrap();
    // The retried failure leaves the error count; the other dead letter keeps the last error.
    let status = engine.status().await.unwrap();
    assert_eq!((status[0].errors, status[0].dead_letters), (1, 1));
    assert!(status[0].last_error.is_some());
    engine.discard_dead_letter(dls[1].id).await.unwrap();
    assert!(matches!(
        engine.discard_dead_letter(dls[1].id).await,
        Err(Error::UnknownDeadLetter(_))
    ));
    assert!(engine.dead_letters(None).await.unwrap().is_empty());
    assert_eq!(count(&raw).await, 29);

    // Pause: a live runner applies nothing until resumed (from any process).
    let (stop, stop_rx) = watch::channel(false);
    let runner = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_until(projectionist::when_true(stop_rx)).await }
    });
    engine.pause("picky").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let paused = store
        .append("O-9", ExpectedVersion::Any, vec![ev("A", 1)])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&raw).await, 29);
    assert_eq!(engine.status().await.unwrap()[0].state, RunState::Paused);
    assert_eq!(engine.status().await.unwrap()[0].lag_events, 1);
    engine.resume("picky").await.unwrap();
    engine
        .wait_for("picky", paused.token, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(count(&raw).await, 30);
    stop.send(true).unwrap();
    runner.await.unwrap().unwrap();

    // Rebuild: the read model comes back the same, with the counters reset.
    let before: Vec<(String, i64)> = raw
        .query("SELECT stream_id, n FROM picky ORDER BY stream_id, n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let report = engine.rebuild("picky").await.unwrap();
    assert_eq!(report.state, RunState::Running);
    let after: Vec<(String, i64)> = raw
        .query("SELECT stream_id, n FROM picky ORDER BY stream_id, n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // The discarded event applies now that its cause is gone; nothing else changes.
    assert_eq!(after.len(), before.len() + 1);
    assert!(before.iter().all(|r| after.contains(r)));
    let status = engine.status().await.unwrap();
    assert_eq!(
        (status[0].applied, status[0].errors, status[0].state),
        (31, 0, RunState::Running)
    );
    common::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_read_models_in_different_databases() {
    let Some(schema) = common::schema("split").await else {
        return;
    };
    let admin = common::raw(None).await.unwrap();
    let dbname = projectionist_testkit::postgres::fresh_database(&admin, "pt_split").await;
    let mut models_config = tokio_postgres::Config::from_str(&common::url()).unwrap();
    models_config.dbname(&dbname);

    let events = PgStore::builder(&common::url())
        .unwrap()
        .schema(&schema)
        .read_models(false)
        .connect()
        .await
        .unwrap();
    let models = PgStore::builder_from_config(models_config.clone())
        .schema("models")
        .events(false)
        .connect()
        .await
        .unwrap();
    let engine = PgStore::engine_with(&events, &models)
        .with(PgProjection::new("seen", common::counting_body()).batch_size(7))
        .unwrap();
    for i in 0..50 {
        events
            .append(
                format!("X-{}", i % 4),
                ExpectedVersion::Any,
                vec![ev(if i % 5 == 0 { "Noise" } else { "A" }, i)],
            )
            .await
            .unwrap();
    }
    engine.catch_up().await.unwrap();
    let (mc, conn) = models_config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let t = common::tally(&schema, &mc, "models").await;
    assert_eq!((t.committed, t.seen, t.duplicates, t.missing), (40, 40, 0, 0));
    // The checkpoint lives with the read model, not with the events.
    let cp: i64 = mc
        .query_one("SELECT applied FROM models.projection_checkpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cp, 40);
    let none: bool = common::raw(None)
        .await
        .unwrap()
        .query_one(
            "SELECT to_regclass($1) IS NULL",
            &[&format!("{schema}.projection_checkpoints")],
        )
        .await
        .unwrap()
        .get(0);
    assert!(none);
    drop(engine);
    drop(models);
    drop(mc);
    projectionist_testkit::postgres::drop_database(&admin, &dbname).await;
    common::drop_schema(&schema).await;
}

async fn count(raw: &tokio_postgres::Client) -> i64 {
    raw.query_one("SELECT count(*) FROM picky", &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_tail_latency_with_listen_notify_and_polling_fallback() {
    let Some(schema) = common::schema("tail").await else {
        return;
    };
    // Three handles, as three processes would have: the writer, the runner, an observer.
    // Polling is slowed to 2 s, so only notifications can explain a fast wake-up.
    let runner_store = common::store(&schema, "pt-tail-runner").await;
    let writer = PgStore::builder(&common::url())
        .unwrap()
        .schema(&schema)
        .listen(false)
        .connect()
        .await
        .unwrap();
    let observer = common::store(&schema, "pt-tail-observer").await;
    let projection = PgProjection::new("seen", common::counting_body());
    let runner = Arc::new(
        runner_store
            .engine()
            .settings(RunnerSettings {
                poll_min: Duration::from_secs(2),
                poll_max: Duration::from_secs(2),
                ..RunnerSettings::default()
            })
            .with(projection.clone())
            .unwrap(),
    );
    let watcher = observer.engine().with(projection).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn({
        let runner = runner.clone();
        async move { runner.run_until(projectionist::when_true(stop_rx)).await }
    });
    while !runner_store.is_listening() || !observer.is_listening() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Warm up the runner's connections.
    let a = writer
        .append("warm", ExpectedVersion::Any, vec![ev("A", 0)])
        .await
        .unwrap();
    watcher
        .wait_for("seen", a.token, Duration::from_secs(10))
        .await
        .unwrap();

    let mut latencies = Vec::new();
    for i in 0..300 {
        tokio::time::sleep(Duration::from_millis(3)).await;
        let t0 = Instant::now();
        let a = writer
            .append(format!("L-{}", i % 10), ExpectedVersion::Any, vec![ev("A", i)])
            .await
            .unwrap();
        watcher
            .wait_for("seen", a.token, Duration::from_secs(10))
            .await
            .unwrap();
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    eprintln!(
        "append-to-visible latency over {} appends (LISTEN/NOTIFY, polling at 2 s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    assert!(
        p99 < Duration::from_millis(1000),
        "p99 {p99:?}: notifications did not wake the runner"
    );
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();

    // Without notifications, polling alone still finds every event.
    let polling_store = PgStore::builder(&common::url())
        .unwrap()
        .schema(&schema)
        .listen(false)
        .connect()
        .await
        .unwrap();
    let polling = Arc::new(
        polling_store
            .engine()
            .settings(RunnerSettings {
                poll_min: Duration::from_millis(20),
                poll_max: Duration::from_millis(100),
                ..RunnerSettings::default()
            })
            .with(PgProjection::new("seen", common::counting_body()))
            .unwrap(),
    );
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn({
        let polling = polling.clone();
        async move { polling.run_until(projectionist::when_true(stop_rx)).await }
    });
    for i in 0..10 {
        let t0 = Instant::now();
        let a = writer
            .append("poll", ExpectedVersion::Any, vec![ev("A", i)])
            .await
            .unwrap();
        watcher
            .wait_for("seen", a.token, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
    let raw = common::raw(Some(&schema)).await.unwrap();
    let t = common::tally(&schema, &raw, &schema).await;
    assert_eq!(
        (t.seen, t.duplicates, t.missing, t.out_of_order),
        (t.committed, 0, 0, 0)
    );
    common::drop_schema(&schema).await;
}
