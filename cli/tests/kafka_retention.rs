//! Retention on a Kafka source, against a real Kafka-protocol broker: a partition whose start
//! retention dropped is refused by `rebuild` (and by a new projection's first run) with the
//! documented error naming the partition and its low watermark, and `partial_history=accept`
//! rebuilds from the low watermark, exactly what remains.
//!
//! The shared test broker keeps its records in memory, where tansu 0.6 cannot delete any, so
//! this test starts a tansu broker of its own on PostgreSQL storage (a fresh schema, the tables
//! of `tansu/postgres_schema.sql`) on a free port, and kills it at the end. tansu lists a
//! partition's low watermark as its smallest stored offset, so deleting the first records of a
//! partition in its `record` table is what retention does. Needs the `tansu` binary and
//! PostgreSQL (required under `CI=true`, skipped loudly elsewhere).

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use projectionist::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use projectionist::kafka::rdkafka::client::DefaultClientContext;
use projectionist::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use projectionist::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use projectionist::kafka::rdkafka::ClientConfig;
use projectionist::sqlite::rusqlite::Connection;
use projectionist_testkit as kit;
use serde_json::json;

/// The tables of tansu 0.6's PostgreSQL storage engine (it creates none itself).
const TANSU_SCHEMA: &str = include_str!("tansu/postgres_schema.sql");

/// Records per partition, and the partitions.
const PER_PARTITION: i64 = 60;
const PARTITIONS: i32 = 2;
/// The offsets of partition 1 that retention drops: 0..DROPPED-1.
const DROPPED: i64 = 20;

const CONFIG: &str = r#"
[[projection]]
name = "ledger"
error_policy = "stop"
setup = "CREATE TABLE IF NOT EXISTS ledger (stream_id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
[projection.handlers]
Paid = "INSERT INTO ledger (stream_id, n) VALUES (:stream_id, :data.n)"
"#;

/// A tansu broker of the test's own, killed when dropped.
struct Broker {
    child: Child,
    brokers: String,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts tansu on a free port with its records in `schema` of the test database.
fn start_tansu(dir: &Path, schema: &str) -> Broker {
    let port = free_port();
    let listener = format!("tcp://127.0.0.1:{port}");
    let storage = kit::with_params(
        &kit::postgres_url(),
        &format!("sslmode=disable&options=-csearch_path%3D{schema}"),
    );
    let log = std::fs::File::create(dir.join("tansu.log")).expect("tansu log");
    let child = Command::new("tansu")
        .args(["broker", "--cluster-id", "projectionist-retention"])
        .args([
            "--listener-url",
            &listener,
            "--advertised-listener-url",
            &listener,
        ])
        .args(["--storage-engine", &storage])
        .stdout(log.try_clone().expect("tansu log"))
        .stderr(log)
        .spawn()
        .expect("start tansu");
    let mut broker = Broker {
        child,
        brokers: format!("127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while TcpStream::connect(&broker.brokers).is_err() {
        let exited = broker.child.try_wait().ok().flatten();
        assert!(
            exited.is_none() && started.elapsed() < Duration::from_secs(30),
            "tansu did not listen on {} within 30 s ({exited:?}): {}",
            broker.brokers,
            std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    broker
}

/// Every client reads uncommitted: tansu 0.6 answers a read-committed ListOffsets(latest) on
/// PostgreSQL storage with SQL that PostgreSQL 16 accepts and 15 refuses (a subquery without an
/// alias); its read-uncommitted query is plain. No producer here is transactional, so both
/// levels read the same records.
const ISOLATION: &str = "isolation.level=read_uncommitted";

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// Creates `topic` and produces [`PER_PARTITION`] records to each partition: record `i` (key
/// and stream `s{i}`, data `{"n": i}`) to partition `i % PARTITIONS`, in order.
async fn produce(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create().expect("admin client");
    for r in admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic")
    {
        r.expect("topic created");
    }
    let producer: FutureProducer = client(brokers)
        .set("acks", "all")
        // No retries, one request in flight: each record once, in order.
        .set("retries", "0")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .expect("producer");
    for i in 0..PER_PARTITION * i64::from(PARTITIONS) {
        let key = format!("s{i}");
        let value =
            json!({"stream_id": key, "stream_version": 1, "type": "Paid", "data": {"n": i}}).to_string();
        let record = FutureRecord::to(topic)
            .key(&key)
            .payload(&value)
            .partition((i % i64::from(PARTITIONS)) as i32);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .expect("delivered");
    }
}

/// The low and high watermarks the broker lists for `topic`'s `partition`.
fn watermarks(brokers: &str, topic: &str, partition: i32) -> (i64, i64) {
    let (level, value) = ISOLATION.split_once('=').expect("a setting");
    let consumer: BaseConsumer = client(brokers)
        .set("group.id", "projectionist-retention-probe")
        .set(level, value)
        .create()
        .expect("consumer");
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

fn cli(dir: &Path, source: &str, db: &str, args: &[&str]) -> Output {
    kit::binary!()
        .command(dir)
        .env("PROJECTIONIST_SOURCE", source)
        .args(["--database", db, "--config", "projectionist.toml"])
        .args(args)
        .output()
        .expect("run projectionist")
}

/// Checks that `o` succeeded; else fails with its output and the end of the broker's log.
fn succeeded(o: &Output, dir: &Path) {
    let log = std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default();
    let tail: String = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}\ntansu's log ends with:\n{tail}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The `n` of every row of the ledger.
fn ledger(db: &Path) -> BTreeSet<i64> {
    let conn = Connection::open(db).expect("open the read model");
    let mut st = conn.prepare("SELECT n FROM ledger").expect("ledger");
    let rows = st.query_map([], |r| r.get(0)).expect("ledger rows");
    rows.collect::<Result<_, _>>().expect("ledger rows")
}

/// Each partition's checkpoint of the ledger.
fn checkpoints(db: &Path) -> Vec<(i64, i64)> {
    let conn = Connection::open(db).expect("open the read model");
    let mut st = conn
        .prepare("SELECT partition, position FROM projection_checkpoints WHERE projection = 'ledger' ORDER BY partition")
        .expect("checkpoints");
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("checkpoint rows");
    rows.collect::<Result<_, _>>().expect("checkpoint rows")
}

/// The refusal: exit code 2 (a configuration error), naming the partition, its low watermark
/// and what was dropped, and saying how to accept a partial history.
fn assert_refused(o: &Output, topic: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
    for needle in [
        format!("Kafka partition {topic}[1] starts at offset {DROPPED} (its low watermark)"),
        format!("retention already dropped offsets 0..{}", DROPPED - 1),
        "projection ledger has not applied".to_owned(),
        "partial_history=accept".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "{needle:?} missing from: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_truncated_by_retention_is_refused_unless_a_partial_history_is_accepted() {
    const TEST: &str = "a_partition_truncated_by_retention_is_refused_unless_a_partial_history_is_accepted";
    let tansu = Command::new("tansu").arg("--version").output();
    let Some(_) = kit::require(
        TEST,
        "the tansu broker is not installed",
        "cargo install tansu --locked --features dynostore,postgres (scripts/test installs it)",
        tansu,
    ) else {
        return;
    };
    let Some((schema, pg)) = kit::postgres::fresh_schema("retention", "kafka_bench").await else {
        return;
    };
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema}; SET search_path = {schema}; {TANSU_SCHEMA}"
    ))
    .await
    .expect("tansu's tables");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("config");
    let broker = start_tansu(dir.path(), &schema);
    let topic = format!("retention-{}", uuid::Uuid::new_v4().simple());
    produce(&broker.brokers, &topic).await;
    let source = format!("kafka://{}?topic={topic}&{ISOLATION}", broker.brokers);
    let db = dir.path().join("rm.db");

    // Everything applied while the partitions are whole.
    succeeded(
        &cli(dir.path(), &source, "sqlite://rm.db", &["run", "--once"]),
        dir.path(),
    );
    let all: BTreeSet<i64> = (0..PER_PARTITION * i64::from(PARTITIONS)).collect();
    assert_eq!(ledger(&db), all);
    assert_eq!(checkpoints(&db), [(0, PER_PARTITION), (1, PER_PARTITION)]);

    // Retention drops partition 1's first records.
    pg.batch_execute(&format!(
        "SET search_path = {schema};
         DELETE FROM record r USING topition tp, topic t
          WHERE r.topition = tp.id AND tp.topic = t.id AND t.name = '{topic}'
            AND tp.partition = 1 AND r.offset_id < {DROPPED};
         UPDATE watermark w SET low = {DROPPED} FROM topition tp, topic t
          WHERE w.topition = tp.id AND tp.topic = t.id AND t.name = '{topic}' AND tp.partition = 1;"
    ))
    .await
    .expect("drop partition 1's first records");
    let (brokers, t) = (broker.brokers.clone(), topic.clone());
    let marks =
        tokio::task::spawn_blocking(move || [watermarks(&brokers, &t, 0), watermarks(&brokers, &t, 1)])
            .await
            .expect("watermarks");
    assert_eq!(
        marks,
        [(0, PER_PARTITION), (DROPPED, PER_PARTITION)],
        "the broker lists the truncated start"
    );

    // A rebuild is refused, and leaves the read model as it was.
    let refused = cli(
        dir.path(),
        &source,
        "sqlite://rm.db",
        &["rebuild", "ledger", "--yes"],
    );
    assert_refused(&refused, &topic);
    assert_eq!(ledger(&db), all, "a refused rebuild changes nothing");
    assert_eq!(checkpoints(&db), [(0, PER_PARTITION), (1, PER_PARTITION)]);

    // So is a new projection's first run (a fresh read model).
    let fresh = cli(dir.path(), &source, "sqlite://fresh.db", &["run", "--once"]);
    assert_refused(&fresh, &topic);

    // Accepting a partial history rebuilds from the low watermark: exactly what remains.
    let partial = format!("{source}&partial_history=accept");
    succeeded(
        &cli(
            dir.path(),
            &partial,
            "sqlite://rm.db",
            &["rebuild", "ledger", "--yes"],
        ),
        dir.path(),
    );
    let remaining: BTreeSet<i64> = all
        .iter()
        .copied()
        .filter(|n| n % 2 == 0 || n / 2 >= DROPPED)
        .collect();
    assert_eq!(remaining.len() as i64, 2 * PER_PARTITION - DROPPED);
    assert_eq!(ledger(&db), remaining, "rebuilt from the low watermark");
    assert_eq!(checkpoints(&db), [(0, PER_PARTITION), (1, PER_PARTITION)]);

    drop(broker);
    kit::postgres::drop_schema(&pg, &schema).await;
}
