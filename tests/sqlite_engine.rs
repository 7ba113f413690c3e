//! The core's guarantees on SQLite: fencing, error policies, dead letters, unknown types,
//! optimistic concurrency, upcasting, rebuilds, pause/resume, wait-for, graceful shutdown.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use projectionist::backend::Store;
use projectionist::sqlite::{rusqlite, SqliteHandlers, SqliteProjection, SqliteStore};
use projectionist::EventLog;
use projectionist::{
    Backoff, Checkpoint, Decision, Error, ErrorPolicy, ExpectedVersion, HandlerError, NewEvent, RunState,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Step {
    n: i64,
    #[serde(default)]
    poison: bool,
}

/// A projection that records each `Step` in `steps(n)` and fails on poison steps while
/// `broken` is set.
fn steps(name: &str, broken: Arc<AtomicBool>) -> SqliteProjection {
    SqliteProjection::new(name, step_handlers(broken)).batch_size(100)
}

/// The handlers of [`steps`].
fn step_handlers(broken: Arc<AtomicBool>) -> SqliteHandlers {
    SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS steps (n INTEGER PRIMARY KEY, position INTEGER NOT NULL)",
            )?;
            Ok(())
        })
        .reset(|db| {
            db.execute("DELETE FROM steps", [])?;
            Ok(())
        })
        .on("Step", move |db, ev, s: Step| {
            if s.poison && broken.load(Ordering::SeqCst) {
                return Err(HandlerError::msg(format!("step {} is poison", s.n)));
            }
            db.execute(
                "INSERT INTO steps (n, position) VALUES (?1, ?2)",
                (s.n, ev.position),
            )?;
            Ok(())
        })
}

async fn append_steps(store: &SqliteStore, stream: &str, range: std::ops::Range<i64>, poison: &[i64]) {
    let events = range
        .map(|n| NewEvent::new("Step", json!({"n": n, "poison": poison.contains(&n)})))
        .collect();
    store.append(stream, ExpectedVersion::Any, events).await.unwrap();
}

async fn step_numbers(store: &SqliteStore) -> Vec<i64> {
    store
        .read(|db| {
            db.prepare("SELECT n FROM steps ORDER BY n")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .unwrap()
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
    }
}

async fn setup(
    policy: ErrorPolicy,
) -> (
    tempfile::TempDir,
    SqliteStore,
    projectionist::sqlite::SqliteEngine,
    Arc<AtomicBool>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let broken = Arc::new(AtomicBool::new(true));
    let engine = store
        .engine()
        .with(steps("steps", broken.clone()).error_policy(policy))
        .unwrap();
    (dir, store, engine, broken)
}

fn all_but(range: std::ops::Range<i64>, except: &[i64]) -> Vec<i64> {
    range.filter(|n| !except.contains(n)).collect()
}

#[tokio::test]
async fn skip_policy_skips_and_counts() {
    let (_d, store, engine, _) = setup(ErrorPolicy::Skip).await;
    append_steps(&store, "s", 0..250, &[10, 150]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, all_but(0..250, &[10, 150]));
    let st = &engine.status().await.unwrap()[0];
    assert_eq!(
        (st.errors, st.dead_letters, st.lag_events, st.applied),
        (2, 0, 0, 248)
    );
    assert!(st.last_error.as_deref().unwrap().contains("step 150 is poison"));
}

#[tokio::test]
async fn dead_letter_policy_keeps_the_rest_of_the_batch() {
    let (_d, store, engine, broken) = setup(ErrorPolicy::DeadLetter).await;
    // One batch of 100 with a poison event in the middle: the 99 others are applied.
    append_steps(&store, "s", 0..100, &[42]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, all_but(0..100, &[42]));
    let dls = engine.dead_letters(None).await.unwrap();
    assert_eq!(dls.len(), 1);
    let dl = &dls[0];
    assert_eq!(
        (dl.projection.as_str(), dl.event.stream_version, dl.attempts),
        ("steps", 43, 1)
    );
    assert!(dl.error.contains("step 42 is poison"), "{}", dl.error);

    // Retrying while still broken keeps it, with one more attempt.
    assert!(matches!(
        engine.retry_dead_letter(dl.id).await,
        Err(Error::RetryFailed { .. })
    ));
    assert_eq!(engine.dead_letters(None).await.unwrap()[0].attempts, 2);

    // Fixed: the retry applies it and the dead letter is gone.
    broken.store(false, Ordering::SeqCst);
    engine.retry_dead_letter(dl.id).await.unwrap();
    assert!(engine.dead_letters(None).await.unwrap().is_empty());
    assert_eq!(step_numbers(&store).await, (0..100).collect::<Vec<_>>());
    assert!(matches!(
        engine.retry_dead_letter(dl.id).await,
        Err(Error::UnknownDeadLetter(_))
    ));
}

#[tokio::test]
async fn discard_removes_a_dead_letter_without_applying_it() {
    let (_d, store, engine, _) = setup(ErrorPolicy::DeadLetter).await;
    append_steps(&store, "s", 0..10, &[3, 4]).await;
    engine.catch_up().await.unwrap();
    let dls = engine.dead_letters(Some("steps")).await.unwrap();
    assert_eq!(
        dls.iter().map(|d| d.event.stream_version).collect::<Vec<_>>(),
        vec![4, 5]
    );
    engine.discard_dead_letter(dls[0].id).await.unwrap();
    assert_eq!(engine.dead_letters(None).await.unwrap().len(), 1);
    assert!(matches!(
        engine.discard_dead_letter(dls[0].id).await,
        Err(Error::UnknownDeadLetter(_))
    ));
    assert_eq!(step_numbers(&store).await, all_but(0..10, &[3, 4]));
    assert!(matches!(
        engine.dead_letters(Some("nope")).await,
        Err(Error::UnknownProjection { .. })
    ));
}

#[tokio::test]
async fn retry_heals_a_transient_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let failures = Arc::new(AtomicU32::new(0));
    let f = failures.clone();
    let h = SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch("CREATE TABLE IF NOT EXISTS steps (n INTEGER PRIMARY KEY)")?;
            Ok(())
        })
        .reset(|_| Ok(()))
        .on("Step", move |db, _, s: Step| {
            // Fails twice on the poison step, then succeeds.
            if s.poison && f.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(HandlerError::msg("transient"));
            }
            db.execute("INSERT INTO steps (n) VALUES (?1)", [s.n])?;
            Ok(())
        });
    let policy = ErrorPolicy::Retry {
        max_retries: 3,
        backoff: fast_backoff(),
    };
    let engine = store
        .engine()
        .with(SqliteProjection::new("steps", h).error_policy(policy))
        .unwrap();
    append_steps(&store, "s", 0..50, &[20]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, (0..50).collect::<Vec<_>>());
    assert_eq!(failures.load(Ordering::SeqCst), 3);
    let st = &engine.status().await.unwrap()[0];
    assert_eq!((st.errors, st.dead_letters, st.state), (1, 0, RunState::Running));
}

#[tokio::test]
async fn retry_exhausted_stops_the_projection_until_resumed() {
    let policy = ErrorPolicy::Retry {
        max_retries: 2,
        backoff: fast_backoff(),
    };
    let (_d, store, engine, broken) = setup(policy).await;
    append_steps(&store, "s", 0..60, &[30]).await;
    engine.catch_up().await.unwrap();
    // Everything before the poison event is committed; the projection is stopped on it.
    assert_eq!(step_numbers(&store).await, (0..30).collect::<Vec<_>>());
    let st = &engine.status().await.unwrap()[0];
    assert_eq!(st.state, RunState::Stopped);
    assert_eq!(st.checkpoint, 30);
    assert!(st.reason.as_deref().unwrap().contains("step 30 is poison"));

    // Still stopped: a catch-up does nothing.
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await.len(), 30);

    broken.store(false, Ordering::SeqCst);
    engine.resume("steps").await.unwrap();
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, (0..60).collect::<Vec<_>>());
    assert_eq!(engine.status().await.unwrap()[0].state, RunState::Running);
}

#[tokio::test]
async fn stop_policy_stops_at_once() {
    let (_d, store, engine, _) = setup(ErrorPolicy::Stop).await;
    append_steps(&store, "s", 0..10, &[5]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, (0..5).collect::<Vec<_>>());
    let st = &engine.status().await.unwrap()[0];
    assert_eq!((st.state, st.errors, st.checkpoint), (RunState::Stopped, 1, 5));
}

#[tokio::test]
async fn retry_then_dead_letter_records_every_attempt() {
    let policy = ErrorPolicy::RetryThenDeadLetter {
        max_retries: 2,
        backoff: fast_backoff(),
    };
    let (_d, store, engine, _) = setup(policy).await;
    append_steps(&store, "s", 0..20, &[7]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, all_but(0..20, &[7]));
    let dls = engine.dead_letters(None).await.unwrap();
    assert_eq!(dls.len(), 1);
    assert_eq!(dls[0].attempts, 3, "one try and two retries");
}

#[tokio::test]
async fn custom_policy_decides_per_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let broken = Arc::new(AtomicBool::new(true));
    // Decode failures become dead letters; other failures are skipped.
    let policy = |f: &projectionist::Failure<'_>| {
        if f.error.is_decode() {
            Decision::DeadLetter
        } else {
            Decision::Skip
        }
    };
    let engine = store
        .engine()
        .with(steps("steps", broken).error_handler(policy))
        .unwrap();
    append_steps(&store, "s", 0..5, &[1]).await;
    // A malformed payload: `n` is not a number.
    store
        .append(
            "s",
            ExpectedVersion::Any,
            vec![NewEvent::new("Step", json!({"n": "three"}))],
        )
        .await
        .unwrap();
    append_steps(&store, "s", 10..15, &[]).await;
    engine.catch_up().await.unwrap();

    assert_eq!(step_numbers(&store).await, vec![0, 2, 3, 4, 10, 11, 12, 13, 14]);
    let dls = engine.dead_letters(None).await.unwrap();
    assert_eq!(dls.len(), 1, "only the decode failure is dead-lettered");
    assert!(
        dls[0].error.contains("cannot decode Step event"),
        "{}",
        dls[0].error
    );
    assert_eq!(&*dls[0].event.data, r#"{"n":"three"}"#);
    assert_eq!(engine.status().await.unwrap()[0].errors, 2);
}

#[tokio::test]
async fn malformed_payload_is_dead_lettered_with_the_decode_error_and_the_batch_goes_on() {
    let (_d, store, engine, _) = setup(ErrorPolicy::retry_then_dead_letter(0)).await;
    append_steps(&store, "s", 0..10, &[]).await;
    store
        .append(
            "s",
            ExpectedVersion::Any,
            vec![NewEvent::new("Step", json!({"x": 1}))],
        )
        .await
        .unwrap();
    append_steps(&store, "s", 10..20, &[]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(step_numbers(&store).await, (0..20).collect::<Vec<_>>());
    let dls = engine.dead_letters(None).await.unwrap();
    assert_eq!(dls.len(), 1);
    assert!(dls[0].error.contains("missing field `n`"), "{}", dls[0].error);
}

#[tokio::test]
async fn unknown_event_types_are_ignored_and_counted() {
    let (_d, store, engine, _) = setup(ErrorPolicy::Stop).await;
    append_steps(&store, "s", 0..5, &[]).await;
    let others = (0..7)
        .map(|i| NewEvent::new("SomethingElse", json!({"i": i})))
        .collect();
    store
        .append("other", ExpectedVersion::NoStream, others)
        .await
        .unwrap();
    append_steps(&store, "s", 5..8, &[]).await;
    engine.catch_up().await.unwrap();
    let st = &engine.status().await.unwrap()[0];
    assert_eq!(
        (st.applied, st.ignored, st.errors, st.lag_events, st.state),
        (8, 7, 0, 0, RunState::Running)
    );
    assert_eq!(step_numbers(&store).await, (0..8).collect::<Vec<_>>());
}

#[tokio::test]
async fn optimistic_concurrency_conflicts_name_stream_expected_and_actual() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let ev = || vec![NewEvent::new("Step", json!({"n": 1}))];
    let a = store
        .append("order-1", ExpectedVersion::NoStream, ev())
        .await
        .unwrap();
    assert_eq!((a.stream_version, a.first_position), (1, 1));
    store
        .append("order-1", ExpectedVersion::Exact(1), ev())
        .await
        .unwrap();

    let err = store
        .append("order-1", ExpectedVersion::Exact(1), ev())
        .await
        .unwrap_err();
    match &err {
        Error::Conflict {
            stream,
            expected,
            actual,
        } => {
            assert_eq!(
                (stream.as_str(), *expected, *actual),
                ("order-1", ExpectedVersion::Exact(1), 2)
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("order-1") && msg.contains("expected version 1") && msg.contains("actual version 2"),
        "{msg}"
    );
    let err = store
        .append("order-1", ExpectedVersion::NoStream, ev())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 2, .. }));
    // Nothing of a failed append was written.
    assert_eq!(store.read_stream("order-1").await.unwrap().len(), 2);

    // A repeated event id is refused.
    let id = uuid::Uuid::new_v4();
    store
        .append(
            "order-2",
            ExpectedVersion::Any,
            vec![NewEvent::new("Step", json!({})).with_id(id)],
        )
        .await
        .unwrap();
    let err = store
        .append(
            "order-3",
            ExpectedVersion::Any,
            vec![NewEvent::new("Step", json!({})).with_id(id)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { event_id } if event_id == id));
}

#[tokio::test]
async fn upcasters_and_renames_evolve_old_event_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    #[derive(Deserialize)]
    struct Created {
        customer: String,
        currency: String,
    }
    let h = SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS c (pos INTEGER PRIMARY KEY, customer TEXT, currency TEXT)",
            )?;
            Ok(())
        })
        .reset(|db| {
            db.execute("DELETE FROM c", [])?;
            Ok(())
        })
        // v1 was called OrderPlaced and had `customer_name`; v2 renamed the field and added a currency.
        .rename("OrderPlaced", "OrderCreated")
        .upcast("OrderCreated", |mut v| {
            if let Some(name) = v.get("customer_name").cloned() {
                v["customer"] = name;
            }
            if v.get("currency").is_none() {
                v["currency"] = json!("EUR");
            }
            Ok(v)
        })
        .on("OrderCreated", |db, ev, e: Created| {
            db.execute(
                "INSERT INTO c VALUES (?1, ?2, ?3)",
                (ev.position, e.customer, e.currency),
            )?;
            Ok(())
        });
    let engine = store
        .engine()
        .with(SqliteProjection::new("c", h).error_policy(ErrorPolicy::Stop))
        .unwrap();
    store
        .append(
            "a",
            ExpectedVersion::Any,
            vec![NewEvent::new("OrderPlaced", json!({"customer_name": "Ann"}))],
        )
        .await
        .unwrap();
    store
        .append(
            "b",
            ExpectedVersion::Any,
            vec![NewEvent::new(
                "OrderCreated",
                json!({"customer": "Bo", "currency": "USD"}),
            )],
        )
        .await
        .unwrap();
    engine.catch_up().await.unwrap();
    assert_eq!(dump(&store, "c").await, vec!["1|Ann|EUR", "2|Bo|USD"]);
    assert_eq!(engine.status().await.unwrap()[0].ignored, 0);
}

#[tokio::test]
async fn fan_out_and_several_handlers_per_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let table = |name: &'static str| {
        SqliteHandlers::new()
            .setup(move |db| {
                db.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {name} (tag TEXT, n INTEGER)"
                ))?;
                Ok(())
            })
            .reset(move |db| {
                db.execute(&format!("DELETE FROM {name}"), [])?;
                Ok(())
            })
    };
    let a = table("fan_a")
        .on("Step", |db, _, s: Step| {
            db.execute("INSERT INTO fan_a VALUES ('first', ?1)", [s.n])?;
            Ok(())
        })
        .on("Step", |db, _, s: Step| {
            db.execute("INSERT INTO fan_a VALUES ('second', ?1)", [s.n])?;
            Ok(())
        });
    let b = table("fan_b").on("Step", |db, _, s: Step| {
        db.execute("INSERT INTO fan_b VALUES ('b', ?1)", [s.n])?;
        Ok(())
    });
    let engine = store
        .engine()
        .with(SqliteProjection::new("a", a))
        .unwrap()
        .with(SqliteProjection::new("b", b))
        .unwrap();
    append_steps(&store, "s", 0..3, &[]).await;
    engine.catch_up().await.unwrap();
    assert_eq!(dump(&store, "fan_a").await.len(), 6);
    assert_eq!(dump(&store, "fan_b").await, vec!["b|0", "b|1", "b|2"]);
    assert!(matches!(
        store
            .engine()
            .with(SqliteProjection::new("a", table("x")))
            .unwrap()
            .with(SqliteProjection::new("a", table("y"))),
        Err(Error::InvalidInput(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_on_one_projection_are_fenced_and_the_read_model_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fence.db");
    let writer = SqliteStore::open(&db).await.unwrap();
    load_orders(&writer, 3, 20_000).await;

    // Two independent runners (separate connections, as two processes would have) start on
    // the same projection at once, while a writer keeps appending.
    let a = SqliteStore::open(&db).await.unwrap();
    let b = SqliteStore::open(&db).await.unwrap();
    let ea = a.engine().with(strict_counter("strict").batch_size(200)).unwrap();
    let eb = b.engine().with(strict_counter("strict").batch_size(200)).unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (ra, rb) = (shutdown.clone(), shutdown.clone());
    let ta = tokio::spawn(async move { ea.run_until(projectionist::when_true(ra)).await });
    let tb = tokio::spawn(async move { eb.run_until(projectionist::when_true(rb)).await });
    for i in 0..50 {
        let events = (0..20)
            .map(|j| NewEvent::new("OrderCreated", json!({"i": i, "j": j})))
            .collect();
        writer
            .append(format!("live-{i}"), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let head = writer.event_count().await.unwrap() as i64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let cp = writer
            .record("strict", 0)
            .await
            .unwrap()
            .map_or(0, |r| r.checkpoint.position);
        if cp >= head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runners did not reach the head: {cp} of {head}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let ra = ta.await.unwrap().unwrap();
    let rb = tb.await.unwrap().unwrap();
    // One of them holds the projection's lease and runs it; the other waits as a standby
    // (and has no report, unless it took over).
    let events = |r: &[projectionist::WorkerReport]| r.iter().map(|w| w.events).sum::<u64>();
    let committed = events(&ra) + events(&rb);
    eprintln!(
        "runner a committed {} events, runner b {}",
        events(&ra),
        events(&rb)
    );
    // Each event was committed by exactly one of them.
    assert_eq!(committed, head as u64);
    assert_same_rows(
        &dump(&writer, "strict_counts").await,
        &stream_lengths(&writer).await,
        "counters vs streams",
    );
    let rec = writer.record("strict", 0).await.unwrap().unwrap();
    assert_eq!((rec.errors, rec.dead_letters, rec.applied), (0, 0, head as u64));
}

#[tokio::test]
async fn a_stale_checkpoint_is_refused_by_the_compare_and_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let broken = Arc::new(AtomicBool::new(false));
    let p = steps("steps", broken);
    append_steps(&store, "s", 0..3, &[]).await;
    store.prepare("steps", 0, p.body().clone()).await.unwrap();
    let events: Arc<[projectionist::Event]> = store.read_stream("s").await.unwrap().into();
    let commit = |expected: i64, to: i64| projectionist::backend::Commit {
        projection: Arc::from("steps"),
        partition: 0,
        body: p.body().clone(),
        events: events.clone(),
        range: 0..0,
        expected: Checkpoint::at(expected),
        to: Checkpoint::at(to),
        dead_letters: vec![],
        stats: Default::default(),
        last_error: None,
        fence: None,
        record_ids: Vec::new(),
    };
    store.commit(commit(0, 2)).await.unwrap();
    match store.commit(commit(0, 3)).await {
        Err(projectionist::backend::CommitError::Fenced { actual }) => assert_eq!(actual, Checkpoint::at(2)),
        other => panic!("expected a fenced commit, got {other:?}"),
    }
}

#[tokio::test]
async fn rebuild_equals_incremental_processing_and_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let engine = store
        .engine()
        .with(order_summary("orders").batch_size(300))
        .unwrap();
    // Incrementally, in several chunks.
    let all: Vec<_> = projectionist::workload::Orders::new(11, 12_000).collect();
    for chunk in all.chunks(4_000) {
        for e in chunk {
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
    }
    let incremental = dump(&store, "orders_summary").await;
    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = progress.clone();
    let report = engine
        .rebuild_with("orders", Some(Arc::new(move |x| p.lock().unwrap().push(x))))
        .await
        .unwrap();
    assert_eq!(report.events, 12_000);
    assert_same_rows(
        &dump(&store, "orders_summary").await,
        &incremental,
        "rebuild vs incremental",
    );
    let last = progress.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.position, last.target), (12_000, 12_000));

    // A poison event fails the rebuild fast, and the projection stays in the rebuilding state.
    store
        .append(
            "ORDER-0000001",
            ExpectedVersion::Any,
            vec![NewEvent::new("ItemAdded", json!({"bad": true}))],
        )
        .await
        .unwrap();
    let err = engine.rebuild("orders").await.unwrap_err();
    assert!(
        matches!(&err, Error::RebuildFailed { projection, .. } if projection == "orders"),
        "{err}"
    );
    assert!(err.to_string().contains("missing field"), "{err}");
    assert_eq!(
        store.record("orders", 0).await.unwrap().unwrap().state,
        RunState::Rebuilding
    );
    assert!(
        matches!(engine.rebuild("nope").await, Err(Error::UnknownProjection { known, .. }) if known == vec!["orders".to_owned()])
    );
}

#[tokio::test]
async fn rebuild_requires_a_reset_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let h = SqliteHandlers::new().on("Step", |_: &rusqlite::Connection, _, _: Step| Ok(()));
    let engine = store.engine().with(SqliteProjection::new("noreset", h)).unwrap();
    let err = engine.rebuild("noreset").await.unwrap_err();
    assert!(err.to_string().contains("no reset step"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_wait_for_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let broken = Arc::new(AtomicBool::new(false));
    let engine = Arc::new(store.engine().with(steps("steps", broken)).unwrap());
    engine.prepare().await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_until(projectionist::when_true(shutdown)).await })
    };

    // Live: an append wakes the runner, and wait_for gives read-your-writes.
    append_steps(&store, "s", 0..1, &[]).await;
    let token = store
        .append(
            "s",
            ExpectedVersion::Any,
            vec![NewEvent::new("Step", json!({"n": 1}))],
        )
        .await
        .unwrap()
        .token;
    let waited = engine
        .wait_for("steps", token, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    assert_eq!(step_numbers(&store).await, vec![0, 1]);

    // Paused: appends wait; wait_for times out with the lag.
    engine.pause("steps").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let token = store
        .append(
            "s",
            ExpectedVersion::Any,
            vec![NewEvent::new("Step", json!({"n": 2}))],
        )
        .await
        .unwrap()
        .token;
    match engine.wait_for("steps", token, Duration::from_millis(200)).await {
        Err(Error::Timeout {
            lag_events, target, ..
        }) => {
            assert_eq!((lag_events, target), (1, token));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(engine.status().await.unwrap()[0].state, RunState::Paused);
    engine.resume("steps").await.unwrap();
    engine
        .wait_for("steps", token, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(step_numbers(&store).await, vec![0, 1, 2]);

    // Shutdown ends the runner; everything committed stays, and nothing is half-applied.
    append_steps(&store, "s", 3..500, &[]).await;
    stop.send(true).unwrap();
    let reports = runner.await.unwrap().unwrap();
    let rec = store.record("steps", 0).await.unwrap().unwrap();
    assert_eq!(reports[0].checkpoint, rec.checkpoint);
    let applied = step_numbers(&store).await;
    // The read model holds exactly the events up to the checkpoint.
    let upto: i64 = store
        .read(move |db| {
            db.query_row(
                "SELECT count(*) FROM events WHERE position <= ?1",
                [rec.checkpoint.position],
                |r| r.get(0),
            )
        })
        .await
        .unwrap();
    assert_eq!(applied.len() as i64, upto);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_serves_higher_backlogs_first_without_starving_lower_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let served = |name: &'static str, priority: i32| {
        let h = SqliteHandlers::new()
            .setup(|db| {
                db.execute_batch("CREATE TABLE IF NOT EXISTS served (seq INTEGER PRIMARY KEY AUTOINCREMENT, projection TEXT)")?;
                Ok(())
            })
            .reset(|_| Ok(()))
            .on("Step", move |db, _, _: Step| {
                db.execute("INSERT INTO served (projection) VALUES (?1)", [name])?;
                // Priority orders the workers that wait for a permit; a worker reads its next
                // batch before it asks. A slow apply (30 ms a batch) lets every worker finish
                // that read and wait while the permit is held, however loaded the machine, so
                // that each grant is a real choice between all three backlogs.
                std::thread::sleep(std::time::Duration::from_millis(3));
                Ok(())
            });
        SqliteProjection::new(name, h).batch_size(10).priority(priority)
    };
    let engine = store
        .engine()
        .with(served("low", 0))
        .unwrap()
        .with(served("mid", 5))
        .unwrap()
        .with(served("high", 10))
        .unwrap();
    engine.prepare().await.unwrap();
    append_steps(&store, "s", 0..600, &[]).await;
    engine.catch_up().await.unwrap();

    let order: Vec<String> = store
        .read(|db| {
            db.prepare("SELECT projection FROM served ORDER BY seq")?
                .query_map([], |r| r.get(0))?
                .collect()
        })
        .await
        .unwrap();
    // Batches of 10 events: one entry per batch.
    let batches: Vec<&str> = order.chunks(10).map(|c| c[0].as_str()).collect();
    assert_eq!(batches.len(), 180);
    let last = |p: &str| batches.iter().rposition(|b| *b == p).unwrap();
    assert!(
        last("high") < last("mid") && last("mid") < last("low"),
        "{batches:?}"
    );
    // Fairness: while the others have backlogs, low waits at most (10 + 1) × 2 grants.
    let mut gap = 0;
    for b in &batches[..last("mid")] {
        gap = if *b == "low" { 0 } else { gap + 1 };
        assert!(gap <= 22, "low starved for {gap} batches: {batches:?}");
    }
}

/// An import of more streams than it remembers (65,536) forgets the oldest and reads their
/// versions from the table again: a forgotten stream's next version is right, and a second
/// `NoStream` append to it is a conflict naming its version, not a constraint error.
#[tokio::test]
async fn an_import_past_the_streams_it_remembers_still_checks_every_version() {
    const STREAMS: usize = 70_000;
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let one = |s: String, expected| {
        Ok(projectionist::StreamAppend::new(
            s,
            expected,
            vec![NewEvent::new("T", serde_json::json!({}))],
        ))
    };
    let items: Vec<_> = (0..STREAMS)
        .map(|i| one(format!("S-{i}"), ExpectedVersion::NoStream))
        .chain([one("S-0".into(), ExpectedVersion::Exact(1))])
        .collect();
    assert_eq!(
        store.import(items.into_iter(), None).await.unwrap(),
        STREAMS as u64 + 1
    );
    assert_eq!(store.read_stream("S-0").await.unwrap().len(), 2);

    let items: Vec<_> = (STREAMS..2 * STREAMS)
        .map(|i| one(format!("S-{i}"), ExpectedVersion::NoStream))
        .chain([one(format!("S-{STREAMS}"), ExpectedVersion::NoStream)])
        .collect();
    match store.import(items.into_iter(), None).await {
        Err(Error::Conflict { stream, actual, .. }) => {
            assert_eq!((stream, actual), (format!("S-{STREAMS}"), 1))
        }
        other => panic!("expected a conflict on S-{STREAMS}, got {other:?}"),
    }
    assert_eq!(
        store
            .read_stream(format!("S-{}", STREAMS + 1))
            .await
            .unwrap()
            .len(),
        0,
        "all or nothing"
    );
}

/// How many commits a rebuild of `projection` takes over the events in `store`.
async fn commits_of_a_rebuild(store: &SqliteStore, projection: SqliteProjection) -> usize {
    let name = projection.name().to_owned();
    let engine = store.engine().with(projection).unwrap();
    let commits = Arc::new(AtomicU32::new(0));
    let c = commits.clone();
    let report = engine
        .rebuild_with(
            &name,
            Some(Arc::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
            })),
        )
        .await
        .unwrap();
    assert_eq!(report.events, 12_000, "{name}: every event once");
    commits.load(Ordering::SeqCst) as usize
}

/// A per-event projection that does not set its batch size reads SQLite's own default, 5,000
/// events per batch; one that sets it, in code or in the projections file, keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_projections_take_the_stores_batch_size_unless_they_set_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    append_steps(&store, "s", 0..12_000, &[]).await;
    let handlers = || step_handlers(Arc::new(AtomicBool::new(false)));
    let unset = SqliteProjection::new("unset", handlers());
    assert_eq!(
        projectionist::sqlite::PER_EVENT_BATCH_SIZE,
        5_000,
        "the default this test counts with"
    );
    // 12,000 events: 5,000 + 5,000 + 2,000.
    assert_eq!(commits_of_a_rebuild(&store, unset).await, 3);
    let set = SqliteProjection::new("set", handlers()).batch_size(1_000);
    assert_eq!(commits_of_a_rebuild(&store, set).await, 12);
    let config = |extra: &str| {
        format!(
            "[[projection]]\nname = \"declared\"\n{extra}setup = \"CREATE TABLE IF NOT EXISTS d (n INTEGER PRIMARY KEY)\"\n\
             [projection.handlers]\nStep = \"INSERT OR IGNORE INTO d (n) VALUES (:data.n)\"\n"
        )
    };
    let declared = |text: String| {
        let parsed = projectionist::declarative::Config::parse(&text, "test").unwrap();
        projectionist::declarative::projection::<rusqlite::Connection>(&parsed.projections[0])
    };
    assert_eq!(commits_of_a_rebuild(&store, declared(config(""))).await, 3);
    assert_eq!(
        commits_of_a_rebuild(&store, declared(config("batch_size = 1000\n"))).await,
        12
    );
}
