//! Inline projections: applied inside the append's transaction, so the writer reads its own
//! write at once; a failing inline handler leaves neither the event nor its effects behind.

mod common;

use std::time::Duration;

use common::*;
use projectionist::sqlite::{SqliteHandlers, SqliteProjection};
use projectionist::EventLog;
use projectionist::{Error, ExpectedVersion, HandlerError, NewEvent, RunState};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Deposit {
    amount: i64,
}

fn balances() -> SqliteProjection {
    let h = SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch("CREATE TABLE IF NOT EXISTS balance (account TEXT PRIMARY KEY, amount INTEGER NOT NULL)")?;
            Ok(())
        })
        .reset(|db| {
            db.execute("DELETE FROM balance", [])?;
            Ok(())
        })
        .on("Deposited", |db, ev, d: Deposit| {
            if d.amount < 0 {
                return Err(HandlerError::msg("a deposit cannot be negative"));
            }
            db.execute(
                "INSERT INTO balance VALUES (?1, ?2) ON CONFLICT (account) DO UPDATE SET amount = amount + excluded.amount",
                (&ev.stream_id, d.amount),
            )?;
            Ok(())
        });
    SqliteProjection::new("balance", h).inline(true)
}

async fn balance(store: &projectionist::sqlite::SqliteStore, account: &'static str) -> Option<i64> {
    store
        .read(move |db| {
            db.query_row("SELECT amount FROM balance WHERE account = ?1", [account], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| {
                if matches!(e, projectionist::sqlite::rusqlite::Error::QueryReturnedNoRows) {
                    Ok(None)
                } else {
                    Err(e)
                }
            })
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn read_your_write_right_after_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let engine = store.engine().with(balances()).unwrap();
    engine.prepare().await.unwrap();
    for i in 1..=20 {
        let a = engine
            .append(
                "acct-1",
                ExpectedVersion::Any,
                vec![NewEvent::new("Deposited", json!({"amount": 5}))],
            )
            .await
            .unwrap();
        // No runner is running: the read model already shows the event.
        assert_eq!(balance(&store, "acct-1").await, Some(5 * i));
        let rec = engine.status().await.unwrap().remove(0);
        assert_eq!((rec.checkpoint, rec.lag_events), (a.last_position, 0));
    }
}

#[tokio::test]
async fn a_failing_inline_handler_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let engine = store.engine().with(balances()).unwrap();
    engine
        .append(
            "a",
            ExpectedVersion::Any,
            vec![NewEvent::new("Deposited", json!({"amount": 10}))],
        )
        .await
        .unwrap();
    let err = engine
        .append(
            "a",
            ExpectedVersion::Exact(1),
            vec![
                NewEvent::new("Deposited", json!({"amount": 1})),
                NewEvent::new("Deposited", json!({"amount": -3})),
            ],
        )
        .await
        .unwrap_err();
    match &err {
        Error::InlineProjection {
            projection,
            position,
            message,
        } => {
            assert_eq!((projection.as_str(), *position), ("balance", 3));
            assert!(message.contains("cannot be negative"));
        }
        other => panic!("expected an inline failure, got {other:?}"),
    }
    assert!(err.to_string().contains("rolled back"));
    // Neither the events nor their effects remain, and the stream version is unchanged.
    assert_eq!(store.read_stream("a").await.unwrap().len(), 1);
    assert_eq!(balance(&store, "a").await, Some(10));
    engine
        .append(
            "a",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new("Deposited", json!({"amount": 2}))],
        )
        .await
        .unwrap();
    assert_eq!(balance(&store, "a").await, Some(12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_projections_also_catch_up_on_events_appended_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(dir.path()).await;
    let engine = std::sync::Arc::new(store.engine().with(balances()).unwrap());
    engine.prepare().await.unwrap();
    // Appended without the engine (as another process or language would): not applied yet.
    store
        .append(
            "b",
            ExpectedVersion::Any,
            vec![NewEvent::new("Deposited", json!({"amount": 7}))],
        )
        .await
        .unwrap();
    assert_eq!(balance(&store, "b").await, None);
    // The next inline append applies everything up to its own events, exactly once.
    engine
        .append(
            "b",
            ExpectedVersion::Exact(1),
            vec![NewEvent::new("Deposited", json!({"amount": 1}))],
        )
        .await
        .unwrap();
    assert_eq!(balance(&store, "b").await, Some(8));

    // A runner on the same projection and inline appends interleave without double counting.
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let e = engine.clone();
    let runner = tokio::spawn(async move { e.run_until(projectionist::when_true(shutdown)).await });
    for i in 0..100 {
        if i % 2 == 0 {
            engine
                .append(
                    "c",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Deposited", json!({"amount": 1}))],
                )
                .await
                .unwrap();
        } else {
            store
                .append(
                    "c",
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Deposited", json!({"amount": 1}))],
                )
                .await
                .unwrap();
        }
    }
    let token = store
        .append(
            "c",
            ExpectedVersion::Any,
            vec![NewEvent::new("Deposited", json!({"amount": 0}))],
        )
        .await
        .unwrap()
        .token;
    engine
        .wait_for("balance", token, Duration::from_secs(5))
        .await
        .unwrap();
    stop.send(true).unwrap();
    runner.await.unwrap().unwrap();
    assert_eq!(balance(&store, "c").await, Some(100));
    let st = engine.status().await.unwrap().remove(0);
    assert_eq!((st.state, st.errors, st.applied), (RunState::Running, 0, 103));
}
