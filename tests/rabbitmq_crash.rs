//! RabbitMQ to SQLite, against the real broker (`PROJECTIONIST_TEST_AMQP_URL`, default
//! amqp://guest:guest@127.0.0.1:5672/%2f; required under CI=true, skipped loudly outside CI):
//! exactly once in effect across SIGKILLs of the consumer, with redeliveries dropped by event
//! id; across a lost connection; malformed messages rejected to the dead-letter exchange
//! without stalling the queue; and a replay refused with a clear error.

#![cfg(feature = "rabbitmq")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use projectionist::backend::{Batch, Filter, Lag, PartitionSlice, Source, Store};
use projectionist::rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use projectionist::rabbitmq::lapin::publisher_confirm::Confirmation;
use projectionist::rabbitmq::lapin::types::{AMQPValue, FieldTable};
use projectionist::rabbitmq::lapin::{BasicProperties, Connection, ExchangeKind};
use projectionist::rabbitmq::{amqp_connection, Envelope, RabbitSource};
use projectionist::sqlite::{rusqlite, SqliteStore};
use projectionist::workload::Orders;
use projectionist::{Checkpoint, Engine, RunnerSettings};
use projectionist_testkit as kit;
use tokio::sync::watch;
use uuid::Uuid;

const CHILD_MODE: &str = "PROJECTIONIST_TEST_RABBIT_MODE";
const CHILD_DB: &str = "PROJECTIONIST_TEST_RABBIT_DB";
const CHILD_URL: &str = "PROJECTIONIST_TEST_RABBIT_URL";
const CHILD_HOLD: &str = "PROJECTIONIST_TEST_RABBIT_HOLD";

const EVENTS: u64 = 50_000;
const SEED: u64 = 11;
const PROJECTIONS: [&str; 2] = ["strict", "orders"];

/// The broker's URL when it answers; else the test kit's CI-or-skip rule (a failure, or `None`
/// after a loud SKIP).
async fn broker_or_skip(test: &str) -> Option<String> {
    let url = kit::amqp_url();
    let reached = match tokio::time::timeout(Duration::from_secs(5), amqp_connection(&url)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "probe").await;
            Ok(url)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    };
    kit::require_service(test, kit::Service::RabbitMq, reached)
}

/// Exchange and queue names unique to one test run.
struct Names {
    tag: String,
}

impl Names {
    fn new(test: &str) -> Self {
        Names {
            tag: format!("pt-{test}-{}", std::process::id()),
        }
    }
    fn exchange(&self) -> String {
        self.tag.clone()
    }
    fn queue(&self, projection: &str) -> String {
        format!("{}.{projection}", self.tag)
    }
    fn dlx(&self) -> String {
        format!("{}.dlx", self.tag)
    }
    fn dead(&self) -> String {
        format!("{}.dead", self.tag)
    }
    fn source_url(&self, base: &str) -> String {
        kit::with_params(
            base,
            &format!(
                "exchange={}&queue_prefix={}&prefetch=2000",
                self.exchange(),
                self.tag
            ),
        )
    }
}

/// Deletes the run's queues and exchanges (each on its own channel: a failure closes one).
async fn cleanup(base: &str, names: &Names, projections: &[&str]) {
    let Ok(conn) = amqp_connection(base).await else {
        return;
    };
    let mut queues: Vec<String> = projections.iter().map(|p| names.queue(p)).collect();
    queues.push(names.dead());
    for q in queues {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.queue_delete(&q, QueueDeleteOptions::default()).await;
        }
    }
    for x in [names.exchange(), names.dlx()] {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.exchange_delete(&x, ExchangeDeleteOptions::default()).await;
        }
    }
    let _ = conn.close(200, "cleanup").await;
}

/// Deletes the run's queues and exchanges when dropped, also when the test fails.
struct Leftovers {
    base: String,
    names: Names,
    projections: Vec<&'static str>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let (base, tag, projections) = (
            self.base.clone(),
            self.names.tag.clone(),
            self.projections.clone(),
        );
        // A thread of its own: this may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(cleanup(&base, &Names { tag }, &projections));
        })
        .join();
    }
}

/// Declares the projections' queues ahead of the source, with a dead-letter exchange whose
/// queue collects what the source rejects (the source then uses the queues as they are).
async fn declare_with_dead_letters(conn: &Connection, names: &Names, projections: &[&str]) {
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        &names.dlx(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(&names.dead(), durable, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        &names.dead(),
        &names.dlx(),
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for p in projections {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(names.dlx().into()),
        );
        ch.queue_declare(&names.queue(p), durable, args).await.unwrap();
    }
}

async fn message_count(conn: &Connection, queue: &str) -> u32 {
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queue, passive, FieldTable::default())
        .await
        .unwrap()
        .message_count()
}

/// One message: routing key, message id, body.
type Message = (String, Option<String>, Vec<u8>);

/// The orders workload as messages, each with a message id derived from its stream and
/// version (consecutive per stream), and `bad` malformed messages among them.
fn workload(seed: u64, events: u64) -> Vec<Message> {
    let mut out: Vec<Message> = Orders::new(seed, events)
        .map(|e| {
            let id = Uuid::new_v5(
                &Uuid::NAMESPACE_URL,
                format!("{}/{}", e.stream_id, e.stream_version).as_bytes(),
            );
            let body = Envelope::new(
                e.stream_id.clone(),
                e.stream_version,
                e.event_type,
                e.data.clone(),
            )
            .to_json();
            (format!("orders.{}", e.event_type), Some(id.to_string()), body)
        })
        .collect();
    // Not JSON; and an event without any identity: both rejected (to the dead letters).
    out.insert(
        out.len() / 50,
        (
            "orders.Garbage".into(),
            Some(Uuid::new_v4().to_string()),
            b"{not json".to_vec(),
        ),
    );
    let anonymous = Envelope::new(
        "BAD-1",
        1,
        "OrderCreated",
        serde_json::json!({"order_id": "BAD-1", "customer_id": "c", "customer_name": "x"}),
    );
    out.insert(
        out.len() * 3 / 5,
        ("orders.OrderCreated".into(), None, anonymous.to_json()),
    );
    // A type no projection handles: scanned over, acknowledged, never applied.
    let other = Envelope::new("MISC-1", 1, "SomethingElse", serde_json::json!({}));
    out.insert(
        out.len() / 3,
        (
            "orders.SomethingElse".into(),
            Some(Uuid::new_v4().to_string()),
            other.to_json(),
        ),
    );
    out
}

/// Publishes persistent messages with publisher confirms, on several channels at once. A
/// stream's messages all go through one channel, which keeps their order in the queues.
async fn publish(url: &str, exchange: &str, messages: Vec<Message>) {
    const CHANNELS: usize = 8;
    let conn = amqp_connection(url).await.unwrap();
    let mut lanes: Vec<Vec<Message>> = (0..CHANNELS).map(|_| Vec::new()).collect();
    for m in messages {
        // Messages are bodies of envelopes (or garbage): lane by stream id when there is one.
        let stream = serde_json::from_slice::<serde_json::Value>(&m.2)
            .ok()
            .and_then(|v| v.get("stream_id").and_then(|s| s.as_str()).map(str::to_owned))
            .unwrap_or_default();
        lanes[projectionist::stream_hash(&stream) as usize % CHANNELS].push(m);
    }
    let mut tasks = Vec::new();
    for lane in lanes {
        let ch = conn.create_channel().await.unwrap();
        let exchange = exchange.to_owned();
        tasks.push(tokio::spawn(async move {
            ch.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
            let mut pending = Vec::new();
            for (key, id, body) in lane {
                let mut props = BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into());
                if let Some(id) = id {
                    props = props.with_message_id(id.into());
                }
                let confirm = ch
                    .basic_publish(&exchange, &key, BasicPublishOptions::default(), &body, props)
                    .await
                    .unwrap();
                pending.push(confirm);
            }
            for c in pending {
                assert!(
                    matches!(c.await.unwrap(), Confirmation::Ack(_)),
                    "the broker refused a message"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let _ = conn.close(200, "published").await;
}

/// A source that counts the redelivered events the runner will drop (their ids are already
/// recorded), and can hold back acknowledgements: a consumer that committed but died before
/// acknowledging, as wide a window as a test needs.
struct Watched<S> {
    inner: Arc<S>,
    store: SqliteStore,
    hold: Box<dyn Fn() -> bool + Send + Sync>,
    print: bool,
    dropped: AtomicU64,
}

impl<S: Source> Source for Watched<S> {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> projectionist::Result<Batch> {
        let batch = self.inner.read(after, limit, filter).await?;
        if batch.deduplicate && !batch.events.is_empty() {
            let projection = filter.projection.as_deref().unwrap_or_default();
            let ids: Vec<Uuid> = batch.events.iter().map(|e| e.event_id).collect();
            let seen = self.store.seen(projection, &ids).await?;
            if !seen.is_empty() {
                self.dropped.fetch_add(seen.len() as u64, Ordering::Relaxed);
                if self.print {
                    println!("DROPPED {projection} {}", seen.len());
                }
            }
        }
        Ok(batch)
    }
    async fn head(&self) -> projectionist::Result<Checkpoint> {
        self.inner.head().await
    }
    async fn lag(&self, after: Checkpoint) -> projectionist::Result<Lag> {
        self.inner.lag(after).await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }
    async fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> projectionist::Result<()> {
        if (self.hold)() {
            return Ok(());
        }
        self.inner.acknowledge(filter, through).await
    }
}

fn engine<S: Source>(source: Arc<S>, store: &SqliteStore, batch: usize) -> Engine<S, SqliteStore> {
    let settings = RunnerSettings {
        concurrency: 1,
        ..Default::default()
    };
    let mut engine = Engine::new(source, Arc::new(store.clone())).settings(settings);
    engine
        .register(strict_counter("strict").batch_size(batch))
        .unwrap();
    engine
        .register(order_summary("orders").batch_size(batch))
        .unwrap();
    engine
}

/// The child: an engine on RabbitMQ and the SQLite file, live until killed (`run`), or
/// until the queues are drained (`drain`).
fn child(mode: &str) {
    let db = std::env::var(CHILD_DB).unwrap();
    let url = std::env::var(CHILD_URL).unwrap();
    let hold = PathBuf::from(std::env::var(CHILD_HOLD).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let source = Arc::new(
            RabbitSource::builder(&url)
                .subject("strict", "orders.#")
                .subject("orders", "orders.#")
                .connect()
                .await
                .unwrap(),
        );
        let watched = Arc::new(Watched {
            inner: source.clone(),
            store: store.clone(),
            hold: Box::new(move || hold.exists()),
            print: true,
            dropped: AtomicU64::new(0),
        });
        let engine = engine(watched, &store, 500);
        engine.prepare().await.unwrap();
        println!("CHILD READY");
        if mode == "run" {
            let (_keep, shutdown) = watch::channel(false);
            engine
                .run_until(projectionist::when_true(shutdown))
                .await
                .unwrap();
            return;
        }
        // Catch up until nothing is left in the queues or held (catch-ups end at the head
        // as it was when they started).
        let started = Instant::now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            engine.catch_up().await.unwrap();
            let mut left = 0;
            for p in PROJECTIONS {
                left += source.ready(p).await.unwrap();
                left += source.stats(p).map_or(0, |s| s.unacknowledged as u64);
            }
            if left == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the queues did not drain: {left} left"
            );
        }
        for p in PROJECTIONS {
            let s = source.stats(p).unwrap();
            println!(
                "STATS {p} delivered={} redelivered={} rejected={} rounds={rounds}",
                s.delivered, s.redelivered, s.rejected
            );
        }
        source.close().await;
        println!("CHILD DONE");
    });
}

/// The child process, with its stdout lines collected by a thread (so that it never blocks
/// on a full pipe).
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(test: &str, mode: &str, db: &Path, url: &str, hold: &Path) -> Self {
        let mut child = spawn_self(
            test,
            &[
                (CHILD_MODE, mode),
                (CHILD_DB, db.to_str().unwrap()),
                (CHILD_URL, url),
                (CHILD_HOLD, hold.to_str().unwrap()),
            ],
        );
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let running = Running {
            child,
            lines,
            reader: Some(reader),
        };
        running.wait_for_line("CHILD READY", Duration::from_secs(30));
        running
    }

    fn has_line(&self, text: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l.contains(text))
    }

    fn wait_for_line(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.has_line(text) {
            assert!(
                Instant::now() < deadline,
                "the child did not print {text:?} in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the child; returns its output.
    fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap(); // SIGKILL on Unix
        let status = self.child.wait().unwrap();
        assert!(!status.success(), "the child had already finished");
        self.finish()
    }

    /// Waits for the child to exit on its own; returns its output.
    fn wait(mut self) -> Vec<String> {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the child failed: {status}");
        self.finish()
    }

    fn finish(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// Events each projection (in `PROJECTIONS` order) has applied, read straight from the
/// child's database file.
fn applied(db: &Path) -> [u64; 2] {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return [0, 0];
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    PROJECTIONS.map(|p| {
        conn.query_row(
            "SELECT applied FROM projection_checkpoints WHERE projection = ?1",
            [p],
            |r| r.get::<_, i64>(0),
        )
        .map_or(0, |n| n as u64)
    })
}

/// Waits until every projection has applied at least its `at_least`.
fn wait_until_applied(db: &Path, at_least: [u64; 2], timeout: Duration) -> [u64; 2] {
    let deadline = Instant::now() + timeout;
    loop {
        let n = applied(db);
        if n.iter().zip(&at_least).all(|(n, want)| n >= want) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "the child applied {n:?} events, not {at_least:?}, in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn dropped(lines: &[String], projection: &str) -> u64 {
    let prefix = format!("DROPPED {projection} ");
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|n| n.trim().parse::<u64>().ok())
        .sum()
}

fn stat(lines: &[String], projection: &str, key: &str) -> u64 {
    let prefix = format!("STATS {projection} ");
    let line = lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no STATS line for {projection}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

#[test]
fn exactly_once_across_sigkills_with_redeliveries() {
    const TEST: &str = "exactly_once_across_sigkills_with_redeliveries";
    if let Ok(mode) = std::env::var(CHILD_MODE) {
        return child(&mode);
    }
    let started = Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(base) = rt.block_on(broker_or_skip(TEST)) else {
        return;
    };
    let names = Names::new("crash");
    let url = names.source_url(&base);
    let _leftovers = Leftovers {
        base: base.clone(),
        names: Names {
            tag: names.tag.clone(),
        },
        projections: PROJECTIONS.to_vec(),
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rabbit.db");
    let hold = dir.path().join("hold-acks");

    let messages = workload(SEED, EVENTS);
    let published = messages.len();
    rt.block_on(async {
        cleanup(&base, &names, &PROJECTIONS).await;
        let conn = amqp_connection(&base).await.unwrap();
        declare_with_dead_letters(&conn, &names, &PROJECTIONS).await;
        // The source declares the exchange and binds the queues before anything is published.
        let setup = RabbitSource::builder(&url)
            .subject("strict", "orders.#")
            .subject("orders", "orders.#")
            .connect()
            .await
            .unwrap();
        setup.close().await;
        let _ = conn.close(200, "setup").await;
    });
    // The consumer starts while the messages are published (with confirms; the queues keep
    // each channel's order), and the publisher is done before the final run.
    let publisher = {
        let (base, exchange) = (base.clone(), names.exchange());
        std::thread::spawn(move || {
            let t = Instant::now();
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(publish(&base, &exchange, messages));
            eprintln!("published {published} messages in {:?}", t.elapsed());
        })
    };

    // Run 1: after 15,000 events, the child stops acknowledging (as if it died between each
    // commit and its acknowledgement); once it has committed 1,000 more, SIGKILL. Those are
    // redelivered, and must be dropped as already applied.
    let t = Instant::now();
    let run = Running::start(TEST, "run", &db, &url, &hold);
    wait_until_applied(&db, [15_000, 15_000], Duration::from_secs(60));
    std::fs::write(&hold, b"").unwrap();
    let at_hold = applied(&db);
    let killed_at = wait_until_applied(&db, at_hold.map(|n| n + 1_000), Duration::from_secs(30));
    let mut lines = run.kill();
    std::fs::remove_file(&hold).unwrap();
    eprintln!(
        "run 1: held acknowledgements from {at_hold:?}, killed at {killed_at:?} after {:?}",
        t.elapsed()
    );

    // Run 2: a plain SIGKILL mid-run, with deliveries in flight.
    let t = Instant::now();
    let run = Running::start(TEST, "run", &db, &url, &hold);
    let before = applied(&db);
    let killed_at = wait_until_applied(&db, before.map(|n| n + 8_000), Duration::from_secs(60));
    lines.extend(run.kill());
    eprintln!(
        "run 2: {before:?} -> killed at {killed_at:?} after {:?}",
        t.elapsed()
    );
    assert!(
        killed_at.iter().all(|&n| n < EVENTS),
        "run 2 was not killed mid-run"
    );

    publisher.join().unwrap();

    // Run 3: to the end of the queues.
    let before_drain: u64 = applied(&db).iter().sum();
    let t = Instant::now();
    let run = Running::start(TEST, "drain", &db, &url, &hold);
    let last = run.wait();
    assert!(last.iter().any(|l| l.contains("CHILD DONE")));
    let drain_time = t.elapsed();
    lines.extend(last.iter().cloned());

    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let clean = SqliteStore::open(dir.path().join("clean.db")).await.unwrap();
        load_orders(&clean, SEED, EVENTS).await;
        engine(Arc::new(clean.clone()), &clean, 1000)
            .catch_up()
            .await
            .unwrap();

        // Every stream's counter equals its length (the strict handler fails on a duplicate
        // or a gap, and nothing was dead-lettered), and both read models equal a clean
        // projection of the same events from the events table.
        let counts = dump(&store, "strict_counts").await;
        assert_same_rows(
            &counts,
            &stream_lengths(&clean).await,
            "per-stream counters vs stream lengths",
        );
        assert_same_rows(
            &counts,
            &dump(&clean, "strict_counts").await,
            "strict counters vs clean",
        );
        assert_same_rows(
            &dump(&store, "orders_summary").await,
            &dump(&clean, "orders_summary").await,
            "order summaries vs clean",
        );
        assert_eq!(dump(&store, "strict_seen").await.len() as u64, EVENTS);
        for r in store.records().await.unwrap() {
            assert_eq!((r.errors, r.dead_letters), (0, 0), "{r:?}");
            assert!(r.ignored >= 1, "the unhandled type was scanned over: {r:?}");
        }
        let applied_count: i64 = store
            .read(|db| {
                db.query_row("SELECT sum(applied) FROM projection_checkpoints", [], |r| {
                    r.get(0)
                })
            })
            .await
            .unwrap();
        assert_eq!(
            applied_count as u64,
            2 * EVENTS,
            "each event applied once per projection"
        );

        // The queues are empty; the two malformed messages went to the dead letters, once per
        // projection queue.
        let conn = amqp_connection(&base).await.unwrap();
        for p in PROJECTIONS {
            assert_eq!(message_count(&conn, &names.queue(p)).await, 0, "queue of {p}");
        }
        assert_eq!(message_count(&conn, &names.dead()).await, 4, "rejected messages");
        let _ = conn.close(200, "checked").await;
    });

    // Redeliveries really happened and were dropped by id.
    for p in PROJECTIONS {
        let dropped = dropped(&lines, p);
        eprintln!("{p}: {dropped} redelivered events dropped as already applied");
        assert!(
            dropped >= 1_000,
            "{p}: only {dropped} redelivered events were dropped"
        );
    }
    assert!(stat(&lines, "strict", "delivered") > 0);
    eprintln!(
        "drain run: {} events (both projections, redeliveries included) in {drain_time:?}, including start-up; test total {:?}",
        2 * EVENTS - before_drain,
        started.elapsed()
    );
}

#[test]
fn survives_a_lost_connection_and_refuses_replays() {
    const TEST: &str = "survives_a_lost_connection_and_refuses_replays";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let Some(base) = broker_or_skip(TEST).await else {
            return;
        };
        const N: u64 = 6_000;
        let names = Names::new("lost");
        let url = names.source_url(&base);
        cleanup(&base, &names, &["strict"]).await;
        let _leftovers = Leftovers {
            base: base.clone(),
            names: Names {
                tag: names.tag.clone(),
            },
            projections: vec!["strict"],
        };
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("lost.db")).await.unwrap();
        let source = Arc::new(
            RabbitSource::builder(&url)
                .subject("strict", "orders.#")
                .connect()
                .await
                .unwrap(),
        );
        let messages: Vec<Message> = workload(3, N)
            .into_iter()
            .filter(|(k, id, _)| id.is_some() && k != "orders.Garbage")
            .collect();
        publish(&base, &names.exchange(), messages).await;

        let hold = Arc::new(AtomicBool::new(false));
        let holding = hold.clone();
        let watched = Arc::new(Watched {
            inner: source.clone(),
            store: store.clone(),
            hold: Box::new(move || holding.load(Ordering::Relaxed)),
            print: false,
            dropped: AtomicU64::new(0),
        });
        let mut engine = Engine::new(watched.clone(), Arc::new(store.clone())).settings(RunnerSettings {
            concurrency: 1,
            poll_max: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            ..Default::default()
        });
        engine.register(strict_counter("strict").batch_size(200)).unwrap();
        let engine = Arc::new(engine);
        let (stop, shutdown) = watch::channel(false);
        let running = engine.clone();
        let task = tokio::spawn(async move { running.run_until(projectionist::when_true(shutdown)).await });

        let applied = |store: SqliteStore| async move {
            store
                .read(|db| {
                    db.query_row("SELECT coalesce(sum(events), 0) FROM strict_counts", [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .await
                .unwrap_or(0) as u64
        };
        let wait = |at_least: u64| {
            let store = store.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let n = applied(store.clone()).await;
                    if n >= at_least {
                        return n;
                    }
                    assert!(Instant::now() < deadline, "applied {n}, not {at_least}");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        wait(1_500).await;
        // Committed but unacknowledged when the connection goes: redelivered, then dropped.
        hold.store(true, Ordering::Relaxed);
        let at = applied(store.clone()).await;
        wait(at + 400).await;
        source.interrupt().await;
        hold.store(false, Ordering::Relaxed);
        wait(N).await;
        let _ = stop.send(true);
        task.await.unwrap().unwrap();

        let clean = SqliteStore::open(dir.path().join("clean.db")).await.unwrap();
        load_orders(&clean, 3, N).await;
        assert_same_rows(
            &dump(&store, "strict_counts").await,
            &stream_lengths(&clean).await,
            "per-stream counters vs stream lengths",
        );
        let stats = source.stats("strict").unwrap();
        assert!(stats.redelivered > 0, "{stats:?}");
        assert!(watched.dropped.load(Ordering::Relaxed) >= 400, "{stats:?}");
        assert_eq!(source.ready("strict").await.unwrap(), 0);

        // A rebuild cannot replay a queue: reading from before what was acknowledged fails,
        // and says what to use instead.
        let filter = Filter::default().for_projection(Arc::from("strict"));
        let err = source
            .read(Checkpoint::START, 100, &filter)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot replay") && err.contains("NATS JetStream"),
            "{err}"
        );
        let partitioned = filter
            .clone()
            .in_partition(Some(PartitionSlice { index: 0, count: 2 }));
        let err = source
            .read(Checkpoint::START, 100, &partitioned)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("partitions = 1"), "{err}");
        let anonymous = source
            .read(Checkpoint::START, 100, &Filter::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(anonymous.contains("projection's name"), "{anonymous}");

        source.close().await;
    });
}

/// Throughput, RabbitMQ to SQLite, against the same events projected from SQLite's own events
/// table. Run it in release: `cargo test --release --features rabbitmq --test rabbitmq_crash
/// -- --ignored --nocapture throughput`.
#[test]
#[ignore = "a measurement; run it by name in release mode"]
fn throughput_rabbitmq_to_sqlite() {
    let events: u64 = std::env::var("PROJECTIONIST_BENCH_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let Some(base) = broker_or_skip("throughput").await else {
            return;
        };
        let names = Names::new("bench");
        let url = names.source_url(&base);
        cleanup(&base, &names, &["orders"]).await;
        let _leftovers = Leftovers {
            base: base.clone(),
            names: Names { tag: names.tag.clone() },
            projections: vec!["orders"],
        };
        let setup = RabbitSource::builder(&url).subject("orders", "orders.#").connect().await.unwrap();
        setup.close().await;
        let messages: Vec<Message> = workload(5, events)
            .into_iter()
            .filter(|(k, id, _)| id.is_some() && k.as_str() != "orders.Garbage")
            .collect();
        let t = Instant::now();
        publish(&base, &names.exchange(), messages).await;
        eprintln!("published {events} in {:?}", t.elapsed());

        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("bench.db")).await.unwrap();
        let source = Arc::new(RabbitSource::builder(&url).subject("orders", "orders.#").connect().await.unwrap());
        let mut engine = Engine::new(source.clone(), Arc::new(store.clone())).settings(RunnerSettings {
            concurrency: 1,
            ..Default::default()
        });
        engine.register(order_summary("orders")).unwrap();
        let t = Instant::now();
        loop {
            engine.catch_up().await.unwrap();
            if source.ready("orders").await.unwrap() == 0 && source.stats("orders").unwrap().unacknowledged == 0 {
                break;
            }
        }
        let broker = t.elapsed();
        source.close().await;

        let local = SqliteStore::open(dir.path().join("local.db")).await.unwrap();
        load_orders(&local, 5, events).await;
        let mut engine = local.engine();
        engine.register(order_summary("orders")).unwrap();
        let t = Instant::now();
        engine.catch_up().await.unwrap();
        let table = t.elapsed();
        assert_same_rows(
            &dump(&store, "orders_summary").await,
            &dump(&local, "orders_summary").await,
            "RabbitMQ vs events table",
        );
        let rate = |d: Duration| events as f64 / d.as_secs_f64();
        eprintln!(
            "order_summary over {events} events: RabbitMQ -> SQLite {:.0} events/s ({broker:?}); SQLite events table -> SQLite {:.0} events/s ({table:?}); ratio {:.2}",
            rate(broker),
            rate(table),
            rate(broker) / rate(table)
        );
    });
}
