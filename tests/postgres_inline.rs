//! Consistency modes on PostgreSQL: inline projections (read-your-writes inside the append's
//! transaction, gap-free with concurrent appends and a live runner) and `wait_for` across
//! handles, woken by LISTEN/NOTIFY.

mod postgres_common;

use std::time::{Duration, Instant};

use postgres_common::*;
use projectionist::postgres::{PgHandlers, PgProjection, PgStore};
use projectionist::EventLog;
use projectionist::{Error, ExpectedVersion, HandlerError, NewEvent};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Deposit {
    amount: i64,
}

fn balances(name: &str, inline: bool) -> PgProjection {
    let table = format!("{name}_balance");
    let (t0, t1, t2) = (table.clone(), table.clone(), table);
    let h = PgHandlers::new()
        .setup(move |cx| {
            cx.batch_execute(format!(
                "CREATE TABLE IF NOT EXISTS {t0} (account text PRIMARY KEY, amount bigint NOT NULL, n bigint NOT NULL)"
            ));
            Ok(())
        })
        .reset(move |cx| {
            cx.batch_execute(format!("DELETE FROM {t1}"));
            Ok(())
        })
        .on("Deposited", move |cx, ev, d: Deposit| {
            if d.amount < 0 {
                return Err(HandlerError::msg("a deposit cannot be negative"));
            }
            cx.execute(
                format!(
                    "INSERT INTO {t2} VALUES ($1, $2, 1) ON CONFLICT (account) DO UPDATE \
                     SET amount = {t2}.amount + excluded.amount, n = {t2}.n + 1"
                ),
                (ev.stream_id.clone(), d.amount),
            );
            Ok(())
        });
    PgProjection::new(name, h).inline(inline)
}

async fn balance(store: &PgStore, table: &str, account: &str) -> Option<i64> {
    let c = store.client().await.unwrap();
    c.query_opt(
        &format!("SELECT amount FROM {table} WHERE account = $1"),
        &[&account],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

fn deposit(amount: i64) -> Vec<NewEvent> {
    vec![NewEvent::new("Deposited", json!({ "amount": amount }))]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_appends_read_their_writes_and_a_failure_writes_nothing() {
    let Some(schema) = schema("inline_ryw").await else {
        return;
    };
    let store = store(&schema, "inline").await;
    let engine = store.engine().with(balances("inl", true)).unwrap();
    engine.prepare().await.unwrap();
    for i in 1..=5 {
        engine
            .append("acc-1", ExpectedVersion::Any, deposit(i))
            .await
            .unwrap();
        // Read-your-writes: visible as soon as the append returns, with no runner.
        assert_eq!(
            balance(&store, "inl_balance", "acc-1").await,
            Some(i * (i + 1) / 2)
        );
    }
    let before = store.event_count().await.unwrap();
    let err = engine
        .append("acc-2", ExpectedVersion::NoStream, deposit(-1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InlineProjection { .. }), "{err}");
    assert_eq!(
        store.event_count().await.unwrap(),
        before,
        "nothing of the append is written"
    );
    assert_eq!(balance(&store, "inl_balance", "acc-2").await, None);
    let st = engine.status().await.unwrap();
    assert_eq!(st[0].lag_events, 0, "{st:?}");
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_appends_race_plain_appends_and_the_runner_without_gaps() {
    let Some(schema) = schema("inline_race").await else {
        return;
    };
    let store = store(&schema, "inline_race").await;
    let engine = std::sync::Arc::new(store.engine().with(balances("race", true)).unwrap());
    engine.prepare().await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run_until(projectionist::when_true(shutdown)).await })
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let engine = engine.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40 {
                let account = format!("acc-{w}-{}", i % 5);
                if (i + w) % 2 == 0 {
                    engine
                        .append(account, ExpectedVersion::Any, deposit(1))
                        .await
                        .unwrap();
                } else {
                    // Plain appends (no inline): only the runner applies them.
                    store
                        .append(account, ExpectedVersion::Any, deposit(1))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    caught_up(&schema, &store, "race", Duration::from_secs(30)).await;
    let _ = stop.send(true);
    runner.await.unwrap().unwrap();
    let c = store.client().await.unwrap();
    let r = c
        .query_one(
            "SELECT sum(amount)::bigint, sum(n)::bigint, count(*) FROM race_balance",
            &[],
        )
        .await
        .unwrap();
    // Every event applied exactly once: none skipped, none twice.
    assert_eq!(r.get::<_, i64>(0), 160);
    assert_eq!(r.get::<_, i64>(1), 160);
    assert_eq!(r.get::<_, i64>(2), 20);
    drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_wakes_on_another_handles_commit_and_times_out_with_the_lag() {
    let Some(schema) = schema("wait_for").await else {
        return;
    };
    // Two stores: the daemon's and the waiter's (as another process would have).
    let daemon = store(&schema, "daemon").await;
    let waiter_store = store(&schema, "waiter").await;
    let daemon_engine = std::sync::Arc::new(daemon.engine().with(balances("w", false)).unwrap());
    let waiter = waiter_store.engine().with(balances("w", false)).unwrap();
    daemon_engine.prepare().await.unwrap();
    let token = waiter_store
        .append("acc", ExpectedVersion::Any, deposit(3))
        .await
        .unwrap()
        .token;
    // No daemon yet: a timeout is its own error, with the lag.
    match waiter.wait_for("w", token, Duration::from_millis(100)).await {
        Err(Error::Timeout { lag_events, .. }) => assert_eq!(lag_events, 1),
        other => panic!("expected a timeout, got {other:?}"),
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let e = daemon_engine.clone();
        tokio::spawn(async move { e.run_until(projectionist::when_true(shutdown)).await })
    };
    waiter
        .wait_for("w", token, Duration::from_secs(10))
        .await
        .unwrap();
    // Steady state: the next append is seen by the waiter within milliseconds of the commit.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let token = waiter_store
            .append("acc", ExpectedVersion::Any, deposit(1))
            .await
            .unwrap()
            .token;
        let t = Instant::now();
        waiter.wait_for("w", token, Duration::from_secs(5)).await.unwrap();
        worst = worst.max(t.elapsed());
    }
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    eprintln!("wait_for across handles: worst {worst:?}");
    let _ = stop.send(true);
    runner.await.unwrap().unwrap();
    drop_schema(&schema).await;
}
