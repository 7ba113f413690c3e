//! Unit tests of the runner: retryable and fatal failures in each mode, on SQLite.
use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::core::engine::Engine;
use crate::core::event::{ExpectedVersion, NewEvent};
use crate::core::log::EventLog;
use crate::core::source::Lag;
use crate::sqlite::{SqliteHandlers, SqliteProjection, SqliteStore};

/// The store's own events, with failures served first by `read`.
struct Flaky {
    store: SqliteStore,
    failures: Mutex<VecDeque<Error>>,
    partitions: bool,
}

impl Source for Flaky {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let failure = self.failures.lock().map_or(None, |mut f| f.pop_front());
        match failure {
            Some(e) => Err(e),
            None => Source::read(&self.store, after, limit, filter).await,
        }
    }

    async fn head(&self) -> Result<Checkpoint> {
        Source::head(&self.store).await
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        Source::lag(&self.store, after).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        Source::changes(&self.store)
    }

    fn supports_partitions(&self) -> bool {
        self.partitions
    }
}

async fn engine(failures: Vec<Error>) -> (Engine<Flaky, SqliteStore>, SqliteStore) {
    engine_with(failures, 1).await
}

async fn engine_with(failures: Vec<Error>, partitions: u32) -> (Engine<Flaky, SqliteStore>, SqliteStore) {
    let store = SqliteStore::in_memory().unwrap();
    let events = (0..5).map(|n| NewEvent::new("Step", json!({ "n": n }))).collect();
    store.append("s", ExpectedVersion::Any, events).await.unwrap();
    let handlers = SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch("CREATE TABLE IF NOT EXISTS steps (n INTEGER PRIMARY KEY)")?;
            Ok(())
        })
        .on_json("Step", |db, _, v| {
            db.execute("INSERT INTO steps (n) VALUES (?1)", [v["n"].as_i64()])?;
            Ok(())
        });
    let source = Flaky {
        store: store.clone(),
        failures: Mutex::new(failures.into()),
        partitions: partitions > 1,
    };
    let engine = Engine::new(Arc::new(source), Arc::new(store.clone()))
        .settings(RunnerSettings {
            poll_min: Duration::from_millis(1),
            poll_max: Duration::from_millis(5),
            retry_min: Duration::from_millis(1),
            retry_max: Duration::from_millis(5),
            concurrency: 1,
            ..RunnerSettings::default()
        })
        .with(SqliteProjection::new("steps", handlers).partitions(partitions))
        .unwrap();
    (engine, store)
}

fn lost_connection() -> Error {
    Error::Database {
        op: "reading events",
        message: "connection lost".into(),
        retryable: true,
        cause: None,
    }
}

#[tokio::test]
async fn retryable_read_failures_are_retried_until_they_pass() {
    let failures = vec![
        lost_connection(),
        Error::Broker {
            broker: "NATS JetStream",
            message: "no servers".into(),
            retryable: true,
        },
    ];
    let (engine, _store) = engine(failures).await;
    let reports = engine.catch_up().await.unwrap();
    assert_eq!((reports[0].events, reports[0].checkpoint), (5, Checkpoint::at(5)));
}

#[tokio::test]
async fn a_fatal_read_failure_ends_a_catch_up_with_that_error() {
    let failures = vec![lost_connection(), Error::Config("no such stream".into())];
    let (engine, store) = engine(failures).await;
    let err = engine.catch_up().await.unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m == "no such stream"),
        "{err:?}"
    );
    assert_eq!(
        store.record("steps", 0).await.unwrap().unwrap().checkpoint,
        Checkpoint::START
    );
}

#[tokio::test]
async fn a_fatal_failure_ends_a_live_worker_instead_of_retrying_for_ever() {
    let failures = vec![Error::Unsupported("replaying this source".into())];
    let (engine, _store) = engine(failures).await;
    let (_keep, shutdown) = watch::channel(false);
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        engine.run_until(crate::when_true(shutdown)),
    )
    .await
    .expect("the worker ends by itself");
    assert!(matches!(outcome, Err(Error::Unsupported(_))), "{outcome:?}");
}

#[tokio::test]
async fn a_live_worker_retries_a_retryable_failure_and_goes_on() {
    let (engine, store) = engine(vec![lost_connection(), lost_connection()]).await;
    let (stop, shutdown) = watch::channel(false);
    let run = tokio::spawn(async move { engine.run_until(crate::when_true(shutdown)).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.record("steps", 0).await.unwrap().map(|r| r.checkpoint) != Some(Checkpoint::at(5)) {
        assert!(Instant::now() < deadline, "the worker never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    let reports = run.await.unwrap().unwrap();
    assert_eq!(reports[0].checkpoint, Checkpoint::at(5));
}

#[tokio::test]
async fn a_partition_group_whose_worker_fails_fatally_ends_with_that_error() {
    let failures = vec![
        Error::Unsupported("partitioned projections: reading this source".into()),
        Error::Unsupported("partitioned projections: reading this source".into()),
    ];
    let (engine, _store) = engine_with(failures, 2).await;
    let (_keep, shutdown) = watch::channel(false);
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        engine.run_until(crate::when_true(shutdown)),
    )
    .await
    .expect("the group ends by itself");
    assert!(
        matches!(&outcome, Err(Error::Unsupported(m)) if m.contains("partitioned projections")),
        "{outcome:?}"
    );
}
