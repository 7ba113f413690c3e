//! Partitioned projections on PostgreSQL, in one process: partitions split the streams by the
//! documented hash (the same in Rust and in the database), read on their own index, and a
//! partitioned catch-up equals an unpartitioned one exactly. Leases spread the partitions over
//! nodes, rebalance when a node leaves, and a commit under a lost lease is refused.
//!
//! The multi-process test with SIGKILL is cli/tests/partitions.rs.

mod postgres_common;

use std::sync::Arc;
use std::time::Duration;

use postgres_common::*;
use projectionist::backend::{CommitError, Fence, Member, Store};
use projectionist::postgres::{PgProjection, PgStore};
use projectionist::EventLog;
use projectionist::{partition_of, stream_hash, ExpectedVersion, LeaseSettings, NewEvent, StreamAppend};
use serde_json::json;

async fn append_events(store: &PgStore, streams: usize, per_stream: usize) {
    for round in 0..per_stream {
        let appends: Vec<StreamAppend> = (0..streams)
            .map(|s| {
                let ty = if (s + round) % 5 == 0 { "Noise" } else { "A" };
                StreamAppend::new(
                    format!("s-{s}"),
                    ExpectedVersion::Any,
                    vec![NewEvent::new(ty, json!({ "round": round }))],
                )
            })
            .collect();
        store.append_many(appends).await.expect("append");
    }
}

fn counting(name: &str, partitions: u32) -> PgProjection {
    PgProjection::new(name, counting_body())
        .batch_size(97)
        .partitions(partitions)
}

async fn read_model(client: &tokio_postgres::Client, schema: &str) -> Vec<(String, i64, i64, i32)> {
    client
        .query(
            &format!(
                "SELECT stream_id, version, applied, out_of_order FROM {schema}.stream_progress ORDER BY stream_id"
            ),
            &[],
        )
        .await
        .expect("read model")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Waits (up to `within`) until each of the 8 partitions of `counting` in schema `s` has its
/// checkpoint at the newest event, then asserts that every event was seen exactly once, in
/// order, none missing.
async fn every_partition_at_the_head_exactly_once(store: &PgStore, s: &str, within: Duration) {
    let head = newest(s).await;
    let deadline = std::time::Instant::now() + within;
    for p in 0..8 {
        while store.record("counting", p).await.unwrap().unwrap().checkpoint < head {
            assert!(
                std::time::Instant::now() < deadline,
                "partition {p} did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let admin = raw(None).await.expect("admin");
    let t = tally(s, &admin, s).await;
    assert_eq!(
        (t.seen, t.duplicates, t.missing, t.out_of_order),
        (t.committed, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_catch_up_equals_the_unpartitioned_one() {
    let Some(events) = schema("part_events").await else {
        return;
    };
    let whole_schema = format!("{events}_whole");
    let split_schema = format!("{events}_split");
    drop_schema(&whole_schema).await;
    drop_schema(&split_schema).await;
    let store = store(&events, "part-events").await;
    append_events(&store, 120, 25).await;

    let models = |s: String| async move {
        PgStore::builder(&url())
            .expect("url")
            .schema(s)
            .events(false)
            .connect()
            .await
            .expect("connect")
    };
    let whole = models(whole_schema.clone()).await;
    let split = models(split_schema.clone()).await;
    let mut e1 = PgStore::engine_with(&store, &whole);
    e1.register(counting("counting", 1)).expect("register");
    let mut e8 = PgStore::engine_with(&store, &split);
    e8.register(counting("counting", 8)).expect("register");
    e1.catch_up().await.expect("catch up whole");
    // Before the catch-up, each partition's lag is its own events, not the whole log's.
    e8.prepare().await.expect("prepare");
    let status = e8.status().await.expect("status");
    assert_eq!(status.len(), 8, "{status:?}");
    for st in &status {
        let streams = (0..120)
            .filter(|s| partition_of(&format!("s-{s}"), 8) == st.partition)
            .count() as u64;
        assert_eq!(st.lag_events, streams * 25, "partition {}", st.partition);
        assert_eq!(st.partitions, 8);
    }
    let reports = e8.catch_up().await.expect("catch up split");
    assert_eq!(reports.len(), 8, "one worker per partition");

    let admin = raw(None).await.expect("admin");
    let expected = read_model(&admin, &whole_schema).await;
    assert_eq!(expected.len(), 120);
    assert_eq!(read_model(&admin, &split_schema).await, expected);
    let t = tally(&events, &admin, &split_schema).await;
    assert_eq!((t.duplicates, t.missing, t.out_of_order), (0, 0, 0), "{t:?}");
    assert_eq!(t.seen, t.committed);

    // Every partition reached the head, and applied only its own streams.
    let head = newest(&events).await;
    for p in 0..8u32 {
        let r = split
            .record("counting", p)
            .await
            .expect("record")
            .expect("exists");
        assert!(r.checkpoint >= head, "partition {p} at {} < {head}", r.checkpoint);
    }
    let per_partition: i64 = (0..120)
        .filter(|s| partition_of(&format!("s-{s}"), 8) == 3)
        .map(|s| (0..25).filter(|round| (s + round) % 5 != 0).count() as i64)
        .sum();
    let applied3 = split.record("counting", 3).await.unwrap().unwrap().applied as i64;
    assert_eq!(applied3, per_partition);

    // The stored hash is the documented one, and a partition read uses its index.
    let c = raw(Some(&events)).await.expect("raw");
    for s in ["s-1", "s-77", ""] {
        let h: Option<i64> = c
            .query_opt(
                "SELECT stream_hash FROM events WHERE stream_id = $1 LIMIT 1",
                &[&s],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        if let Some(h) = h {
            assert_eq!(h, i64::from(stream_hash(s)), "hash of {s:?}");
        }
    }
    let plan: Vec<String> = c
        .query(
            "EXPLAIN SELECT position FROM events WHERE stream_hash % 8 = 3 AND xid >= 0 \
             AND (xid, position) > (0, 0) ORDER BY xid, position LIMIT 100",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("events_partition_8_idx")),
        "partition reads use the partition index: {plan:#?}"
    );

    // The engine refuses another partition count on the same checkpoints.
    let mut e4 = PgStore::engine_with(&store, &split);
    e4.register(counting("counting", 4)).expect("register");
    let err = e4.catch_up().await.expect_err("another partition count");
    assert!(err.to_string().contains("Rebuild it"), "{err}");

    drop_schema(&whole_schema).await;
    drop_schema(&split_schema).await;
    drop_schema(&events).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_spread_rebalance_and_fence_commits() {
    let Some(s) = schema("part_leases").await else {
        return;
    };
    let store = store(&s, "part-leases").await;
    append_events(&store, 40, 5).await;
    let settings = LeaseSettings {
        takeover: Duration::from_millis(1500),
    };
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let mut e = store.engine().lease_settings(settings);
        e.register(counting("counting", 8)).expect("register");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let node = e.node().to_owned();
        let e = Arc::new(e);
        let runner = e.clone();
        let handle = tokio::spawn(async move { runner.run_until(projectionist::when_true(rx)).await });
        nodes.push((node, stop, handle));
    }
    let owners = |store: PgStore| async move {
        let leases = store.leases("counting").await.expect("leases");
        let mut by_owner = std::collections::BTreeMap::<String, usize>::new();
        for l in &leases {
            if let Some(o) = &l.owner {
                *by_owner.entry(o.clone()).or_default() += 1;
            }
        }
        by_owner
    };
    // Three nodes: 3 + 3 + 2.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = owners(store.clone()).await;
        let mut counts: Vec<usize> = o.values().copied().collect();
        counts.sort();
        if counts == vec![2, 3, 3] {
            break;
        }
        if let Some(i) = nodes.iter().position(|(_, _, h)| h.is_finished()) {
            let (_, _, h) = nodes.remove(i);
            panic!("a node stopped early: {:?}", h.await);
        }
        assert!(std::time::Instant::now() < deadline, "no 3/3/2 spread: {o:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // One node leaves cleanly: the two others take everything, 4 + 4.
    let (gone, stop, handle) = nodes.remove(0);
    stop.send(true).unwrap();
    handle.await.unwrap().expect("clean stop");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let o = owners(store.clone()).await;
        let counts: Vec<usize> = o.values().copied().collect();
        if !o.contains_key(&gone) && counts == vec![4, 4] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 4/4 spread after a node left: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Everything was applied exactly once.
    every_partition_at_the_head_exactly_once(&store, &s, Duration::from_secs(20)).await;

    // A commit under a token that is no longer the lease's is refused.
    let lease = store.leases("counting").await.unwrap()[0].clone();
    let record = store.record("counting", 0).await.unwrap().unwrap();
    let p = counting("counting", 8);
    let commit = projectionist::backend::Commit {
        projection: Arc::from("counting"),
        partition: 0,
        body: p.body().clone(),
        events: Arc::from(Vec::new()),
        range: 0..0,
        expected: record.checkpoint,
        to: record.checkpoint,
        dead_letters: vec![],
        stats: Default::default(),
        last_error: None,
        fence: Some(Fence {
            owner: Arc::from(lease.owner.clone().unwrap_or_default()),
            token: lease.token - 1,
        }),
        record_ids: vec![],
    };
    match store.commit(commit).await {
        Err(CommitError::LeaseLost) => {}
        other => panic!("a stale token must be refused, got {other:?}"),
    }
    // A node that is not a member holds nothing after a heartbeat.
    let stranger = Member {
        projection: Arc::from("counting"),
        node: Arc::from("stranger"),
        partitions: 8,
        ttl: Duration::from_secs(1),
    };
    assert!(store.heartbeat(&stranger).await.unwrap().held.is_empty());
    store.leave(&stranger).await.unwrap();

    for (_, stop, handle) in nodes {
        stop.send(true).unwrap();
        handle.await.unwrap().expect("clean stop");
    }
    let free = store.leases("counting").await.unwrap();
    assert!(
        free.iter().all(|l| l.owner.is_none()),
        "leaving releases leases: {free:?}"
    );
    drop_schema(&s).await;
}

/// A partitioned projection paused before its first run stays paused in every partition once
/// a `run` starts (whose partitions' checkpoints did not exist when it was paused), and a
/// resume then applies every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_before_the_first_run_holds_for_every_partition() {
    let Some(s) = schema("part_paused").await else {
        return;
    };
    let store = store(&s, "part-paused").await;
    append_events(&store, 60, 5).await;
    let settings = LeaseSettings {
        takeover: Duration::from_millis(1000),
    };
    let mut e = store.engine().lease_settings(settings);
    e.register(counting("counting", 8)).expect("register");
    e.pause("counting").await.expect("pause");
    let (stop, rx) = tokio::sync::watch::channel(false);
    let e = Arc::new(e);
    let runner = e.clone();
    let handle = tokio::spawn(async move { runner.run_until(projectionist::when_true(rx)).await });
    // Wait until the run holds every partition's lease, and then some: its workers are up.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store
        .leases("counting")
        .await
        .expect("leases")
        .iter()
        .filter(|l| l.owner.is_some())
        .count()
        < 8
    {
        assert!(std::time::Instant::now() < deadline, "the run took no leases");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for p in 0..8 {
        let r = store
            .record("counting", p)
            .await
            .expect("record")
            .expect("a record");
        assert_eq!(
            (r.state, r.checkpoint, r.applied),
            (
                projectionist::RunState::Paused,
                projectionist::Checkpoint::START,
                0
            ),
            "partition {p} ran while the projection was paused"
        );
    }
    e.resume("counting").await.expect("resume");
    every_partition_at_the_head_exactly_once(&store, &s, Duration::from_secs(30)).await;
    stop.send(true).expect("stop");
    handle.await.expect("join").expect("clean stop");
    drop_schema(&s).await;
}

/// Redelivering sources (RabbitMQ) record applied event ids in the commit's transaction:
/// `seen` finds them, recording one twice fails the whole commit, and a reset forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_event_ids_are_recorded_in_the_commit() {
    let Some(s) = schema("part_seen").await else {
        return;
    };
    let store = store(&s, "part-seen").await;
    append_events(&store, 3, 1).await;
    let p = counting("counting", 1);
    store.prepare("counting", 0, p.body().clone()).await.unwrap();
    let events: Arc<[projectionist::Event]> = store.read_stream("s-1").await.unwrap().into();
    let id = events[0].event_id;
    let commit =
        |expected: projectionist::Checkpoint, to: projectionist::Checkpoint| projectionist::backend::Commit {
            projection: Arc::from("counting"),
            partition: 0,
            body: p.body().clone(),
            events: events.clone(),
            range: 0..1,
            expected,
            to,
            dead_letters: vec![],
            stats: Default::default(),
            last_error: None,
            fence: None,
            record_ids: vec![id],
        };
    assert!(store.seen("counting", &[id]).await.unwrap().is_empty());
    let first = events[0].checkpoint();
    store
        .commit(commit(projectionist::Checkpoint::START, first))
        .await
        .expect("first commit");
    assert!(store.seen("counting", &[id]).await.unwrap().contains(&id));
    assert!(
        store.seen("other", &[id]).await.unwrap().is_empty(),
        "per projection"
    );
    // The same id again: the commit fails, and neither the checkpoint nor the model moves.
    let later = projectionist::Checkpoint {
        position: first.position + 100,
        ..first
    };
    assert!(matches!(
        store.commit(commit(first, later)).await,
        Err(CommitError::Store(_))
    ));
    assert_eq!(
        store.record("counting", 0).await.unwrap().unwrap().checkpoint,
        first
    );
    let admin = raw(None).await.unwrap();
    let n: i64 = admin
        .query_one(
            &format!("SELECT n::bigint FROM {s}.seen WHERE event_id = $1"),
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    store.reset("counting", p.body().clone()).await.unwrap();
    assert!(
        store.seen("counting", &[id]).await.unwrap().is_empty(),
        "a reset forgets seen ids"
    );
    drop_schema(&s).await;
}
