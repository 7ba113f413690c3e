//! The type-erased engine over SQLite: run, rebuild (in place and blue/green), inline appends,
//! import and read-model queries through `AnySource` and `AnyStore`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::{AnyEngine, AnySource, AnyStore};
use crate::core::error::{Error, HandlerError, Result};
use crate::core::event::{Checkpoint, ExpectedVersion, NewEvent, StreamAppend};
use crate::core::log::EventLog;
use crate::core::projection::{Handlers, Projection};
use crate::core::source::{Batch, Filter, Lag, Source};
use crate::core::sql::{SqlStore, SqlTx, SqlValue};
use crate::core::store::Store;
use crate::declarative::Config;
use crate::sqlite::SqliteStore;

const TOTALS: &str = r#"
[[projection]]
name = "totals"
setup = "CREATE TABLE IF NOT EXISTS totals (stream TEXT PRIMARY KEY, n INTEGER NOT NULL)"

[projection.handlers]
Counted = "INSERT INTO totals (stream, n) VALUES (:stream_id, 1) ON CONFLICT (stream) DO UPDATE SET n = n + 1"
"#;

fn totals() -> Projection<super::AnyBody> {
    let config = Config::parse(TOTALS, "test.toml").unwrap();
    crate::declarative::projection(&config.projections[0])
}

#[derive(Deserialize)]
struct Deposit {
    amount: i64,
}

/// Handlers written once over `dyn SqlTx`, applied inline.
fn balance() -> Projection<super::AnyBody> {
    let h = Handlers::<dyn SqlTx>::new()
        .setup(|db| {
            db.execute_script_labeled(
                "CREATE TABLE IF NOT EXISTS balance (account TEXT PRIMARY KEY, amount INTEGER NOT NULL)",
                "",
            )
        })
        .reset(|db| db.execute_script_labeled("DELETE FROM balance", ""))
        .on("Deposited", |db, ev, d: Deposit| {
            if d.amount < 0 {
                return Err(HandlerError::msg("a deposit cannot be negative"));
            }
            db.execute(
                "INSERT INTO balance VALUES (?1, ?2) ON CONFLICT (account) DO UPDATE SET amount = amount + excluded.amount",
                &[SqlValue::from(ev.stream_id.as_str()), SqlValue::from(d.amount)],
            )
        });
    Projection::new("balance", h).inline(true)
}

fn counted(streams: u32, each: u32) -> impl Iterator<Item = Result<StreamAppend>> + Send + 'static {
    (0..streams).map(move |s| {
        let events = (0..each).map(|_| NewEvent::new("Counted", json!({}))).collect();
        Ok(StreamAppend::new(
            format!("s-{s}"),
            ExpectedVersion::NoStream,
            events,
        ))
    })
}

fn engine(store: &SqliteStore) -> AnyEngine {
    let any = AnyStore::new(store.clone());
    let settings = any.runner_settings();
    AnyEngine::new(Arc::new(AnySource::new(store.clone())), Arc::new(any)).settings(settings)
}

async fn cell(store: &AnyStore, sql: &str) -> String {
    let rows = store.query_text(sql).await.unwrap();
    rows.rows[0][0].clone()
}

#[tokio::test]
async fn an_any_engine_imports_runs_rebuilds_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(dir.path().join("any.db")).await.unwrap();
    let engine = engine(&sqlite).with(totals()).unwrap();
    let store = engine.store().clone();
    assert_eq!(store.import(counted(20, 5), None).await.unwrap(), 100);
    engine.catch_up().await.unwrap();
    let rows = store
        .query_text("SELECT count(*) AS streams, sum(n) AS events FROM totals")
        .await
        .unwrap();
    assert_eq!(rows.columns, ["streams", "events"]);
    assert_eq!(rows.rows, [["20", "100"]]);

    let report = engine.rebuild("totals").await.unwrap();
    assert_eq!(report.events, 100);
    assert_eq!(cell(&store, "SELECT sum(n) FROM totals").await, "100");

    store
        .append(
            "s-0",
            ExpectedVersion::Exact(5),
            vec![NewEvent::new("Counted", json!({}))],
        )
        .await
        .unwrap();
    let bg = engine.rebuild_blue_green("totals", None).await.unwrap();
    assert_eq!((bg.events, bg.tables.clone()), (101, vec!["totals".to_owned()]));
    assert_eq!(cell(&store, "SELECT sum(n) FROM totals").await, "101");
    assert!(!engine.blue_green_in_progress("totals").await.unwrap());
    let status = engine.status().await.unwrap();
    assert_eq!((status[0].checkpoint, status[0].lag_events), (101, 0));
}

#[tokio::test]
async fn inline_handlers_over_sql_tx_apply_in_the_append() {
    let sqlite = SqliteStore::in_memory().unwrap();
    let engine = engine(&sqlite).with(balance()).unwrap();
    let deposit = |amount: i64| vec![NewEvent::new("Deposited", json!({ "amount": amount }))];
    engine
        .append("acc-1", ExpectedVersion::NoStream, deposit(5))
        .await
        .unwrap();
    engine
        .append("acc-1", ExpectedVersion::Exact(1), deposit(7))
        .await
        .unwrap();
    let store = engine.store();
    assert_eq!(cell(store, "SELECT amount FROM balance").await, "12");

    let err = engine
        .append("acc-1", ExpectedVersion::Exact(2), deposit(-1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InlineProjection { .. }), "{err}");
    assert_eq!(
        cell(store, "SELECT count(*) FROM events").await,
        "2",
        "nothing written"
    );
}

#[tokio::test]
async fn inline_appends_need_the_stores_own_events() {
    let events = SqliteStore::in_memory().unwrap();
    let read_models = SqliteStore::in_memory().unwrap();
    let engine = AnyEngine::new(
        Arc::new(AnySource::new(events)),
        Arc::new(AnyStore::new(read_models)),
    )
    .with(balance())
    .unwrap();
    let err = engine
        .append(
            "acc-1",
            ExpectedVersion::Any,
            vec![NewEvent::new("Deposited", json!({"amount": 1}))],
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same SQLite database"), "{err}");
}

/// The store's own events, as a source that deletes what it delivered.
struct Queue(SqliteStore);

impl Source for Queue {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        Source::read(&self.0, after, limit, filter).await
    }

    async fn head(&self) -> Result<Checkpoint> {
        self.0.head().await
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        self.0.lag(after).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.0.changes()
    }

    fn can_replay(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn a_source_that_cannot_replay_refuses_rebuilds_and_changes_nothing() {
    let sqlite = SqliteStore::in_memory().unwrap();
    let store = AnyStore::new(sqlite.clone());
    let engine = AnyEngine::new(Arc::new(AnySource::new(Queue(sqlite))), Arc::new(store.clone()))
        .with(totals())
        .unwrap();
    assert!(!engine.source().can_replay());
    store.import(counted(3, 2), None).await.unwrap();
    engine.catch_up().await.unwrap();
    for err in [
        engine.rebuild("totals").await.unwrap_err(),
        engine.rebuild_blue_green("totals", None).await.unwrap_err(),
    ] {
        assert!(err.to_string().contains("cannot replay"), "{err}");
    }
    assert_eq!(cell(&store, "SELECT sum(n) FROM totals").await, "6");
}
