//! The source against the machine's real NATS server (`PROJECTIONIST_TEST_NATS_URL`, default
//! nats://127.0.0.1:4222, with JetStream). Without a reachable server the test kit's
//! CI-or-skip rule applies: a failure under `CI=true` and in the test script, else a loud
//! SKIP. Each test uses a stream of its own, named with the process id, and deletes it at the
//! end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use serde_json::json;

use super::*;
use crate::core::source::PartitionSlice;

fn url() -> String {
    projectionist_testkit::nats_url()
}

/// A stream of one test, deleted when dropped.
struct TestStream {
    name: String,
    prefix: String,
    js: jetstream::Context,
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot wait on the test's runtime (its connection runs there): delete through a
        // connection and a runtime of its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async move {
                    if let Ok(client) = async_nats::connect(url()).await {
                        let _ = jetstream::new(client).delete_stream(&name).await;
                    }
                });
            }
        })
        .join();
    }
}

impl TestStream {
    fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    fn url(&self) -> String {
        format!("{}?stream={}", url(), self.name)
    }

    async fn publish(&self, subject: &str, payload: impl Into<Vec<u8>>) {
        self.js
            .publish(self.subject(subject), payload.into().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    async fn event(&self, subject: &str, stream_id: &str, version: i64, ty: &str) {
        let text =
            json!({"stream_id": stream_id, "stream_version": version, "type": ty, "data": {"v": version}})
                .to_string();
        self.publish(subject, text).await;
    }

    async fn consumer(&self, name: &str) -> async_nats::jetstream::consumer::Info {
        let stream = self.js.get_stream(&self.name).await.expect("stream");
        let consumer: PullConsumer = stream.get_consumer(name).await.expect("consumer");
        consumer.cached_info().clone()
    }
}

/// A fresh stream for `test`, or `None` after a loud SKIP when NATS is unreachable and
/// skipping is allowed.
async fn stream(test: &str) -> Option<TestStream> {
    let connected = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(url())
        .await;
    let client =
        projectionist_testkit::require_service(test, projectionist_testkit::Service::Nats, connected)?;
    let js = jetstream::new(client);
    let name = format!("PT_{test}_{}", std::process::id());
    let prefix = format!("pt{}{}", std::process::id(), test.replace('_', ""));
    let _ = js.delete_stream(&name).await;
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: jetstream::stream::StorageType::Memory,
        ..Default::default()
    })
    .await
    .expect("create the test stream (is JetStream enabled?)");
    Some(TestStream { name, prefix, js })
}

fn filter(projection: &str) -> Filter {
    Filter::default().for_projection(Arc::from(projection))
}

/// Reads until the batch moves past `after` (the pull task fills the buffer in the
/// background), or fails after 10 s.
async fn read_some(source: &NatsSource, after: i64, limit: usize, filter: &Filter) -> Batch {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let batch = source
            .read(Checkpoint::at(after), limit, filter)
            .await
            .expect("read");
        if batch.scanned_to.position > after {
            return batch;
        }
        assert!(Instant::now() < deadline, "nothing readable after {after}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn positions(batch: &Batch) -> Vec<i64> {
    batch.events.iter().map(|e| e.position).collect()
}

#[tokio::test]
async fn rereads_after_a_failed_commit_acknowledges_after_commits_and_restarts_at_the_checkpoint() {
    let Some(s) = stream("reread").await else { return };
    for v in 1..=10 {
        s.event("orders", "ORDER-1", v, "ItemAdded").await;
    }
    let source = NatsSource::connect(&s.url()).await.expect("connect");
    let f = filter("p");
    let name = source.consumer_name("p");

    // A batch; its commit "fails": the same read serves the same events again.
    let mut first = read_some(&source, 0, 4, &f).await;
    while first.events.len() < 4 {
        first = read_some(&source, 0, 4, &f).await;
    }
    assert_eq!(positions(&first), [1, 2, 3, 4]);
    let again = read_some(&source, 0, 4, &f).await;
    assert_eq!(positions(&again), [1, 2, 3, 4]);
    assert_eq!(again.events[0].stream_version, 1);
    assert!(!again.deduplicate);

    // Nothing is acknowledged before a commit.
    let info = s.consumer(&name).await;
    assert_eq!(info.ack_floor.stream_sequence, 0, "{info:?}");
    assert!(info.num_ack_pending >= 4, "{info:?}");

    // The commit of 4: acknowledged; the next read goes on after it.
    source.acknowledge(&f, Checkpoint::at(4)).await.expect("ack");
    let next = read_some(&source, 4, 4, &f).await;
    assert_eq!(positions(&next), [5, 6, 7, 8]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.consumer(&name).await.ack_floor.stream_sequence != 4 {
        assert!(
            Instant::now() < deadline,
            "the acknowledgement did not reach the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The checkpoint moves back (a rebuild): the consumer is recreated and delivers from there.
    let replay = read_some(&source, 0, 100, &f).await;
    assert_eq!(replay.events.first().map(|e| e.position), Some(1));

    // A new process (a restart after a crash at checkpoint 6, with 7.. delivered and not
    // acknowledged): it resumes at 7 at once, not after the ack wait.
    drop(source);
    let restarted = NatsSource::builder(&s.url())
        .unwrap()
        .ack_wait(Duration::from_secs(60))
        .connect()
        .await
        .expect("connect");
    let started = Instant::now();
    let mut got = Vec::new();
    let mut after = 6;
    while after < 10 {
        let b = read_some(&restarted, after, 100, &f).await;
        got.extend(positions(&b));
        after = b.scanned_to.position;
        restarted.acknowledge(&f, b.scanned_to).await.expect("ack");
    }
    assert_eq!(got, [7, 8, 9, 10]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn subject_filters_types_malformed_envelopes_and_the_head() {
    let Some(s) = stream("filters").await else { return };
    s.event("a.x", "A-1", 1, "Created").await; // 1
    s.event("b.x", "B-1", 1, "Created").await; // 2
    s.publish("a.x", "not json".to_owned()).await; // 3
    s.event("a.y", "A-1", 2, "Renamed").await; // 4
    s.publish("a.y", br#"{"stream_id":"A-1","type":"X","data":{}}"#.as_slice())
        .await; // 5: no version
    s.event("b.y", "B-1", 2, "Renamed").await; // 6
    s.event("b.y", "B-1", 3, "Renamed").await; // 7

    let a_subject = s.subject("a.>");
    let source = NatsSource::builder(&s.url())
        .unwrap()
        .subject("a", a_subject.clone())
        .connect()
        .await
        .expect("connect");
    assert_eq!(source.subject_of("a"), Some(a_subject.as_str()));
    assert_eq!(source.subject_of("all"), None);
    assert_eq!(source.head().await.unwrap(), Checkpoint::at(7));
    let lag = source.lag(Checkpoint::at(2)).await.unwrap();
    assert_eq!(lag.events, 5);
    assert!(lag.oldest.is_some());
    assert_eq!(source.lag(Checkpoint::at(7)).await.unwrap(), Lag::default());

    // Projection a: its subject only; malformed envelopes passed over; it reaches the head (7)
    // although the stream's last messages are outside its subject.
    let fa = filter("a");
    let mut after = 0;
    let mut events = Vec::new();
    let mut ignored = 0;
    while after < 7 {
        let b = read_some(&source, after, 100, &fa).await;
        events.extend(positions(&b));
        ignored += b.ignored;
        after = b.scanned_to.position;
        source.acknowledge(&fa, b.scanned_to).await.unwrap();
    }
    assert_eq!(after, 7);
    assert_eq!(events, [1, 4]);
    assert_eq!(ignored, 2);
    assert_eq!(source.malformed(), 2);

    // Projection all: the whole stream, only the types it handles.
    let fall = Filter::types(Some(&["Renamed".to_owned()])).for_projection(Arc::from("all"));
    let mut after = 0;
    let mut events = Vec::new();
    while after < 7 {
        let b = read_some(&source, after, 3, &fall).await;
        assert!(
            b.scanned_to.position - after <= 3,
            "a batch looks at no more than its limit"
        );
        events.extend(b.events.iter().map(|e| (e.position, e.stream_id.clone())));
        after = b.scanned_to.position;
        source.acknowledge(&fall, b.scanned_to).await.unwrap();
    }
    assert_eq!(
        events,
        [
            (4, "A-1".to_owned()),
            (6, "B-1".to_owned()),
            (7, "B-1".to_owned())
        ]
    );

    // Live: a new message wakes the reader through changes().
    let mut changes = source.changes();
    changes.borrow_and_update();
    s.event("a.z", "A-1", 3, "Renamed").await; // 8
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .expect("a tick for the new message")
        .unwrap();
    let b = read_some(&source, 7, 100, &fa).await;
    assert_eq!(positions(&b), [8]);

    // Partitions are refused, with what to do.
    let partitioned = filter("a").in_partition(Some(PartitionSlice { index: 0, count: 2 }));
    let err = source
        .read(Checkpoint::START, 10, &partitioned)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partitions = 1"), "{err}");
    // A read for no projection (an inspection) reads the stream by sequence, from any point,
    // and makes no consumer.
    let peeked = source
        .read(Checkpoint::at(6), 100, &Filter::default())
        .await
        .unwrap();
    assert_eq!(peeked.events.first().map(|e| e.position), Some(7));
    assert_eq!(peeked.scanned_to, source.head().await.unwrap());

    assert!(source.delete_consumer("a").await.unwrap());
    assert!(!source.delete_consumer("a").await.unwrap());
}

#[tokio::test]
async fn bad_settings_fail_at_connect_with_what_to_do() {
    let Some(s) = stream("settings").await else { return };
    let err = NatsSource::connect(&format!("{}?stream=NOPE_{}", url(), std::process::id()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no JetStream stream") && err.contains("nats stream add"),
        "{err}"
    );
    let err = NatsSource::builder(&s.url())
        .unwrap()
        .subject("p", "elsewhere.>")
        .connect()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not within the subjects"), "{err}");
    let err = NatsSource::connect("nats://127.0.0.1:1?stream=S")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot connect"), "{err}");
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn an_engine_over_nats_and_sqlite_catches_up_exactly() {
    use crate::sqlite::{SqliteHandlers, SqliteProjection, SqliteStore};
    use crate::Engine;

    let Some(s) = stream("engine").await else { return };
    let n = 3_000;
    for i in 1..=n {
        let stream_id = format!("S-{}", i % 7);
        let version = (i - 1) / 7 + 1;
        s.event(
            if i % 2 == 0 { "even" } else { "odd" },
            &stream_id,
            version,
            "Counted",
        )
        .await;
    }
    let store = SqliteStore::in_memory().expect("store");
    let counter = |name: &str| {
        let table = format!("{name}_rows");
        let (t1, t2, t3) = (table.clone(), table.clone(), table);
        SqliteProjection::new(
            name,
            SqliteHandlers::new()
                .setup(move |db| {
                    db.execute_batch(&format!(
                        "CREATE TABLE IF NOT EXISTS {t1} (position INTEGER PRIMARY KEY, stream_id TEXT, version INTEGER)"
                    ))?;
                    Ok(())
                })
                .reset(move |db| {
                    db.execute_batch(&format!("DELETE FROM {t2}"))?;
                    Ok(())
                })
                .on_json("Counted", move |db, e, _| {
                    db.execute(
                        &format!("INSERT INTO {t3} (position, stream_id, version) VALUES (?1, ?2, ?3)"),
                        (e.position, &e.stream_id, e.stream_version),
                    )?;
                    Ok(())
                }),
        )
    };
    let source = NatsSource::builder(&s.url())
        .unwrap()
        .subject("odd", s.subject("odd"))
        .connect()
        .await
        .expect("connect");
    let engine = Engine::new(Arc::new(source.clone()), Arc::new(store.clone()))
        .with(counter("everything"))
        .unwrap()
        .with(counter("odd"))
        .unwrap();
    let reports = engine.catch_up().await.expect("catch up");
    assert!(
        reports.iter().all(|r| r.checkpoint == Checkpoint::at(n)),
        "{reports:?}"
    );
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            store
                .read(move |c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM everything_rows").await, n);
    assert_eq!(count("SELECT count(*) FROM odd_rows").await, n / 2);
    assert_eq!(
        count("SELECT count(*) FROM odd_rows WHERE position % 2 = 0").await,
        0
    );
    let status = engine.status().await.unwrap();
    assert!(
        status.iter().all(|st| st.lag_events == 0 && st.head == n),
        "{status:?}"
    );

    // A rebuild replays from the start through a recreated consumer.
    let report = engine.rebuild("odd").await.expect("rebuild");
    assert_eq!(report.checkpoint, Checkpoint::at(n));
    assert_eq!(count("SELECT count(*) FROM odd_rows").await, n / 2);
}

#[tokio::test]
async fn messages_redelivered_after_the_ack_wait_while_buffered_are_applied_once() {
    let Some(s) = stream("ackwait").await else { return };
    for v in 1..=12 {
        s.event("x", "S-1", v, "Counted").await;
    }
    let source = NatsSource::builder(&s.url())
        .unwrap()
        .ack_wait(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    let f = filter("p");
    let name = source.consumer_name("p");
    let first = read_some(&source, 0, 3, &f).await;
    let created = s.consumer(&name).await.created;
    // The buffer holds two batches; the server may redeliver them after the ack wait (when a
    // pull is outstanding), while the first batch's commit is slow.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got = positions(&first);
    let mut after = first.scanned_to.position;
    source.acknowledge(&f, first.scanned_to).await.unwrap();
    while after < 12 {
        let b = read_some(&source, after, 3, &f).await;
        got.extend(positions(&b));
        after = b.scanned_to.position;
        source.acknowledge(&f, b.scanned_to).await.unwrap();
    }
    // Each message once, in order, whether or not the server redelivered some meanwhile.
    assert_eq!(got, (1..=12).collect::<Vec<i64>>());
    let info = s.consumer(&name).await;
    if info.delivered.consumer_sequence <= 12 {
        eprintln!("note: the server redelivered nothing within the ack wait this time");
    }
    assert_eq!(info.created, created, "the consumer was recreated: {info:?}");
}

#[tokio::test]
async fn a_caught_up_durable_consumer_is_resumed_not_recreated() {
    let Some(s) = stream("resume").await else { return };
    for v in 1..=5 {
        s.event("x", "S-1", v, "Counted").await;
    }
    let subject = s.subject("x");
    let connect = || async {
        NatsSource::builder(&s.url())
            .unwrap()
            .subject("p", subject.clone())
            .connect()
            .await
            .expect("connect")
    };
    let f = filter("p");
    let first = connect().await;
    let b = read_some(&first, 0, 100, &f).await;
    assert_eq!(b.scanned_to, Checkpoint::at(5));
    first.acknowledge(&f, b.scanned_to).await.unwrap();
    let name = first.consumer_name("p");
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.consumer(&name).await.num_ack_pending > 0 {
        assert!(
            Instant::now() < deadline,
            "the acknowledgement did not reach the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let created = s.consumer(&name).await.created;
    drop(first);
    // The first source's waiting pull request goes with its connection (or expires).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.consumer(&name).await.num_waiting > 0 {
        assert!(Instant::now() < deadline, "the first source's pull request stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    s.event("x", "S-1", 6, "Counted").await;
    let second = connect().await;
    let b = read_some(&second, 5, 100, &f).await;
    assert_eq!(positions(&b), [6]);
    assert_eq!(
        s.consumer(&name).await.created,
        created,
        "the consumer was recreated"
    );
}
