use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;

use super::seen::prune_due;
use super::*;
use crate::core::event::{Checkpoint, Event};

fn event(position: i64, id: Uuid) -> Event {
    Event {
        position,
        txid: 0,
        stream_id: "s-1".into(),
        stream_version: position,
        event_type: "Counted".into(),
        event_id: id,
        data: Arc::from("{}"),
        metadata: Arc::from("{}"),
        recorded_at: Utc::now(),
    }
}

/// A body that inserts each event's position into `applied`.
fn body() -> Arc<SqliteBody> {
    let handlers = SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch("CREATE TABLE IF NOT EXISTS applied (position INTEGER PRIMARY KEY)")?;
            Ok(())
        })
        .reset(|db| {
            db.execute("DELETE FROM applied", [])?;
            Ok(())
        })
        .on_json("Counted", |db, ev, _| {
            db.execute("INSERT INTO applied (position) VALUES (?1)", [ev.position])?;
            Ok(())
        });
    let p: SqliteProjection = Projection::new("p", handlers);
    p.body().clone()
}

fn commit(body: &Arc<SqliteBody>, events: Vec<Event>, expected: i64, dedup: bool) -> Commit<SqliteBody> {
    let to = Checkpoint::at(events.last().map_or(expected, |e| e.position));
    let record_ids = if dedup {
        events.iter().map(|e| e.event_id).collect()
    } else {
        Vec::new()
    };
    let events: Arc<[Event]> = events.into();
    Commit {
        projection: Arc::from("p"),
        partition: 0,
        body: body.clone(),
        range: 0..events.len(),
        events,
        expected: Checkpoint::at(expected),
        to,
        dead_letters: Vec::new(),
        stats: Default::default(),
        last_error: None,
        fence: None,
        record_ids,
    }
}

async fn count(store: &SqliteStore, sql: &'static str) -> i64 {
    store
        .read(move |db| db.query_row(sql, [], |r| r.get(0)))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_commit_records_its_ids_and_a_recorded_id_fails_the_next_commit_whole() {
    let store = SqliteStore::in_memory().unwrap();
    let body = body();
    store.prepare("p", 0, body.clone()).await.unwrap();
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    store
        .commit(commit(&body, vec![event(1, a), event(2, b)], 0, true))
        .await
        .unwrap();
    let seen = store.seen("p", &[a, b, c]).await.unwrap();
    assert_eq!(seen, HashSet::from([a, b]));
    assert!(
        store.seen("other", &[a]).await.unwrap().is_empty(),
        "ids are per projection"
    );

    // `b` again, with a fresh `c`: the whole commit fails and writes nothing.
    let err = store
        .commit(commit(&body, vec![event(3, c), event(4, b)], 2, true))
        .await
        .unwrap_err();
    match err {
        CommitError::Store(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&b.to_string()) && msg.contains("already recorded"),
                "{msg}"
            );
            assert!(e.is_retryable());
        }
        other => panic!("expected a store error, got {other:?}"),
    }
    assert_eq!(count(&store, "SELECT count(*) FROM applied").await, 2);
    assert_eq!(
        count(&store, "SELECT count(*) FROM projection_seen_events").await,
        2
    );
    assert_eq!(
        store.record("p", 0).await.unwrap().unwrap().checkpoint,
        Checkpoint::at(2)
    );
    assert!(store.seen("p", &[c]).await.unwrap().is_empty());
}

#[tokio::test]
async fn commits_without_ids_record_nothing() {
    let store = SqliteStore::in_memory().unwrap();
    let body = body();
    store.prepare("p", 0, body.clone()).await.unwrap();
    let id = Uuid::new_v4();
    store
        .commit(commit(&body, vec![event(1, id)], 0, false))
        .await
        .unwrap();
    assert_eq!(
        count(&store, "SELECT count(*) FROM projection_seen_events").await,
        0
    );
    assert!(store.seen("p", &[id]).await.unwrap().is_empty());
    assert!(store.seen("p", &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn pruning_removes_ids_older_than_the_retention_only() {
    let store = SqliteStore::in_memory()
        .unwrap()
        .dedup_retention(Duration::from_secs(3600));
    assert_eq!(store.dedup_window(), Duration::from_secs(3600));
    let body = body();
    store.prepare("p", 0, body.clone()).await.unwrap();
    let (old, fresh) = (Uuid::new_v4(), Uuid::new_v4());
    store
        .commit(commit(&body, vec![event(1, old)], 0, true))
        .await
        .unwrap();
    // Two hours ago.
    store
        .write(move |db| {
            db.execute(
                "UPDATE projection_seen_events SET seen_at = seen_at - 7200 WHERE event_id = ?1",
                [old],
            )
        })
        .await
        .unwrap();
    store
        .commit(commit(&body, vec![event(2, fresh)], 1, true))
        .await
        .unwrap();
    // Let any background prune started by the commits finish, then prune explicitly.
    tokio::time::sleep(Duration::from_millis(50)).await;
    store.prune_seen().await.unwrap();
    assert_eq!(
        store.seen("p", &[old, fresh]).await.unwrap(),
        HashSet::from([fresh])
    );
    assert_eq!(store.prune_seen().await.unwrap(), 0);
}

#[tokio::test]
async fn commits_prune_in_the_background_when_due() {
    let store = SqliteStore::in_memory().unwrap();
    let body = body();
    store.prepare("p", 0, body.clone()).await.unwrap();
    let old = Uuid::new_v4();
    store
        .commit(commit(&body, vec![event(1, old)], 0, true))
        .await
        .unwrap();
    store
        .write(|db| {
            db.execute(
                "UPDATE projection_seen_events SET seen_at = seen_at - 2 * 86400",
                [],
            )
        })
        .await
        .unwrap();
    // The first prune of this process is due at once (the one the first commit started
    // found nothing old yet); pretend it never ran.
    while store.inner.pruning.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.inner.last_prune.store(0, Ordering::Relaxed);
    store
        .commit(commit(&body, vec![event(2, Uuid::new_v4())], 1, true))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.seen("p", &[old]).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the background prune did not run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        count(&store, "SELECT count(*) FROM projection_seen_events").await,
        1
    );
}

#[test]
fn prunes_are_due_every_eighth_of_the_window_between_one_second_and_ten_minutes() {
    let day = 86_400;
    assert!(prune_due(0, 1_000, day));
    assert!(!prune_due(1_000, 1_599, day));
    assert!(prune_due(1_000, 1_600, day));
    assert!(!prune_due(1_000, 1_000, 80));
    assert!(prune_due(1_000, 1_010, 80));
    assert!(prune_due(1_000, 1_001, 1));
}

#[tokio::test]
async fn reset_forgets_the_projections_seen_ids() {
    let store = SqliteStore::in_memory().unwrap();
    let body = body();
    store.prepare("p", 0, body.clone()).await.unwrap();
    let id = Uuid::new_v4();
    store
        .commit(commit(&body, vec![event(1, id)], 0, true))
        .await
        .unwrap();
    store
        .write(move |db| {
            db.execute(
                "INSERT INTO projection_seen_events (projection, event_id, seen_at) VALUES ('q', ?1, 0)",
                [id],
            )
        })
        .await
        .unwrap();
    store.reset("p", body.clone()).await.unwrap();
    assert!(store.seen("p", &[id]).await.unwrap().is_empty());
    assert_eq!(
        store.seen("q", &[id]).await.unwrap(),
        HashSet::from([id]),
        "other projections keep theirs"
    );
}

#[tokio::test]
async fn an_unknown_stored_state_is_an_error_naming_it_not_a_guess() {
    let store = SqliteStore::in_memory().unwrap();
    store.prepare("p", 0, body()).await.unwrap();
    store
        .write(|db| db.execute("UPDATE projection_checkpoints SET state = 'halted'", []))
        .await
        .unwrap();
    for outcome in [
        store.record("p", 0).await.map(|_| ()),
        store.records().await.map(|_| ()),
    ] {
        let err = outcome.unwrap_err();
        assert!(
            matches!(&err, Error::Database { retryable: false, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("projection p partition 0") && text.contains("\"halted\""),
            "{text}"
        );
    }
    // Setting a known state is the way out.
    store.set_state("p", None, RunState::Paused, None).await.unwrap();
    assert_eq!(
        store.record("p", 0).await.unwrap().unwrap().state,
        RunState::Paused
    );
}

#[tokio::test]
async fn a_database_error_keeps_sqlites_extended_code() {
    let store = SqliteStore::in_memory().unwrap();
    store
        .write(|db| db.execute_batch("CREATE TABLE u (x TEXT UNIQUE); INSERT INTO u VALUES ('a')"))
        .await
        .unwrap();
    let err = store
        .write(|db| db.execute("INSERT INTO u VALUES ('a')", []))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Database {
                op: "writing",
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.sqlite_code(), Some(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE));
    assert_eq!(err.sqlstate(), None);
    assert!(err.database_cause().is_some_and(|c| c.is::<rusqlite::Error>()));
    assert!(err.to_string().contains("UNIQUE constraint failed: u.x"), "{err}");
}

#[tokio::test]
async fn partition_leases_are_shared_taken_over_on_expiry_and_fence_the_old_holder() {
    use crate::core::lease::{Fence, Member};
    use crate::core::store::CommitError;
    let store = SqliteStore::in_memory().unwrap();
    let body = body();
    for partition in 0..8 {
        store.prepare("p", partition, body.clone()).await.unwrap();
    }
    let member = |node: &str, ttl_ms: u64| Member {
        projection: Arc::from("p"),
        node: Arc::from(node),
        partitions: 8,
        ttl: Duration::from_millis(ttl_ms),
    };
    let (a, b) = (member("a", 150), member("b", 60_000));
    let got_a = store.acquire(&a, 8).await.unwrap();
    assert_eq!(
        got_a.iter().map(|l| l.partition).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
    assert!(store.acquire(&b, 4).await.unwrap().is_empty(), "all held");
    store.release(&a, &got_a[4..]).await.unwrap();
    let got_b = store.acquire(&b, 8).await.unwrap();
    assert_eq!(
        got_b.iter().map(|l| l.partition).collect::<Vec<_>>(),
        [4, 5, 6, 7]
    );
    let held = store.heartbeat(&a).await.unwrap();
    assert_eq!(held.held, got_a[..4]);
    assert_eq!(store.heartbeat(&b).await.unwrap().live_nodes, 2);

    // a stops heartbeating: its leases expire and b takes them, with new tokens.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let taken = store.acquire(&b, 8).await.unwrap();
    assert_eq!(
        taken.iter().map(|l| l.partition).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert!(taken.iter().zip(&got_a).all(|(t, old)| t.token > old.token));
    assert_eq!(store.heartbeat(&b).await.unwrap().held.len(), 8);

    // a's late commit of partition 0 is fenced; b's commits.
    let fenced = |owner: &str, token| {
        let mut c = commit(&body, vec![event(1, Uuid::new_v4())], 0, false);
        c.fence = Some(Fence {
            owner: Arc::from(owner),
            token,
        });
        c
    };
    let late = store.commit(fenced("a", got_a[0].token)).await;
    assert!(matches!(late, Err(CommitError::LeaseLost)), "{late:?}");
    assert_eq!(count(&store, "SELECT count(*) FROM applied").await, 0);
    store.commit(fenced("b", taken[0].token)).await.unwrap();
    assert_eq!(count(&store, "SELECT count(*) FROM applied").await, 1);
}
