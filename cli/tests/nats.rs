//! Drives the real `projectionist` binary on a NATS JetStream source (`--source nats://…`),
//! with read models and checkpoints in SQLite. The server comes from
//! `PROJECTIONIST_TEST_NATS_URL` (default nats://127.0.0.1:4222, with JetStream). Without a
//! reachable server the test kit's CI-or-skip rule applies: a failure under `CI=true` and in
//! the test script, else a loud SKIP. Each test publishes to a stream of its own (named with
//! the process id), deleted at the end.

#![cfg(feature = "nats")]

mod examples_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use examples_support::ok;
use projectionist::nats::async_nats::{self, jetstream};
use projectionist::sqlite::rusqlite::{Connection, OpenFlags};
use projectionist::workload::Orders;
use projectionist_testkit as kit;
use serde_json::{json, Value};
use tempfile::TempDir;

fn nats_url() -> String {
    kit::nats_url()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// One test's stream, deleted when dropped.
struct TestStream {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    name: String,
    prefix: String,
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        let _ = self.rt.block_on(async move { js.delete_stream(&name).await });
    }
}

/// A fresh stream for `test` on subjects `PREFIX.>`, or `None` after a loud SKIP when NATS is
/// unreachable and skipping is allowed (the test kit's CI-or-skip rule).
fn stream(test: &str) -> Option<TestStream> {
    let rt = runtime();
    let connected = rt.block_on(
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(nats_url()),
    );
    let client = kit::require_service(test, kit::Service::Nats, connected)?;
    let js = {
        let _in_runtime = rt.enter();
        jetstream::new(client)
    };
    let name = format!("PCLI_{test}_{}", std::process::id());
    let prefix = format!("pcli{}{}", std::process::id(), test.replace('_', ""));
    rt.block_on(async {
        let _ = js.delete_stream(&name).await;
        js.create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            ..Default::default()
        })
        .await
        .expect("create the test stream (is JetStream enabled on the server?)");
    });
    Some(TestStream { rt, js, name, prefix })
}

impl TestStream {
    fn source(&self) -> String {
        format!("{}?stream={}", nats_url(), self.name)
    }

    fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.prefix)
    }

    /// Publishes `(subject, payload)` in order, with up to 1,000 acknowledgements in flight.
    fn publish(&self, messages: Vec<(String, Vec<u8>)>) {
        let js = self.js.clone();
        self.rt.block_on(async move {
            let mut pending = Vec::with_capacity(1000);
            for (subject, payload) in messages {
                pending.push(js.publish(subject, payload.into()).await.expect("publish"));
                if pending.len() == 1000 {
                    for ack in pending.drain(..) {
                        ack.await.expect("publish acknowledged");
                    }
                }
            }
            for ack in pending {
                ack.await.expect("publish acknowledged");
            }
        });
    }

    /// How many consumers the stream has.
    fn consumer_count(&self) -> usize {
        let (js, stream) = (self.js.clone(), self.name.clone());
        self.rt.block_on(async move {
            let mut stream = js.get_stream(&stream).await.expect("stream");
            stream.info().await.expect("stream info").state.consumer_count
        })
    }

    fn consumer(&self, name: &str) -> jetstream::consumer::Info {
        let (js, stream) = (self.js.clone(), self.name.clone());
        let name = name.to_owned();
        self.rt.block_on(async move {
            js.get_stream(&stream)
                .await
                .expect("stream")
                .consumer_info(&name)
                .await
                .expect("consumer info")
        })
    }
}

fn envelope(stream_id: &str, version: i64, ty: &str, data: &Value) -> Vec<u8> {
    json!({"stream_id": stream_id, "stream_version": version, "type": ty, "data": data})
        .to_string()
        .into_bytes()
}

fn bin(dir: &Path) -> Command {
    let mut c = Command::from_std(kit::binary!().command(dir));
    c.timeout(Duration::from_secs(120));
    c
}

/// `projectionist run` in the background, logging into `log`.
fn spawn_run(dir: &Path, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    kit::binary!()
        .command(dir)
        .arg("run")
        .args(args)
        .env("PROJECTIONIST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log.try_clone().expect("log file"))
        .spawn()
        .expect("start projectionist run")
}

/// The checkpoint and state of `projection`, read straight from the SQLite file.
fn checkpoint(db: &Path, projection: &str) -> Option<(i64, String, Option<String>)> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    c.busy_timeout(Duration::from_secs(2)).ok()?;
    c.query_row(
        "SELECT position, state, last_error FROM projection_checkpoints WHERE projection = ?1 AND partition = 0",
        [projection],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .ok()
}

/// Waits until `projection`'s checkpoint reaches `target`; fails when it stops or stalls.
fn wait_for_checkpoint(db: &Path, projection: &str, target: i64, within: Duration, log: &Path) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        if let Some((position, state, last_error)) = checkpoint(db, projection) {
            assert_eq!(
                state,
                "running",
                "{projection} left the running state at {position}: {last_error:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            if position >= target {
                return position;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{projection} did not reach {target} within {within:?} (at {:?})\n{}",
            checkpoint(db, projection),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every row of `table`, ordered, as text.
fn rows(db: &Path, table: &str, order: &str) -> Vec<Vec<String>> {
    let c = Connection::open(db).expect("open");
    let mut st = c
        .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
        .expect("prepare");
    let n = st.column_count();
    st.query_map([], |r| {
        (0..n)
            .map(|i| {
                r.get::<_, projectionist::sqlite::rusqlite::types::Value>(i)
                    .map(|v| format!("{v:?}"))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .expect("query")
    .collect::<Result<Vec<_>, _>>()
    .expect("rows")
}

/// A projection that makes duplicates and out-of-order events fail (and, with the `stop`
/// policy, stop the projection): `strict_seen` has one row per position, and the triggers
/// of `strict_streams` only let a stream start at version 1 and go on by exactly 1.
const STRICT: &str = r#"
[[projection]]
name = "strict"
error_policy = "stop"
batch_size = 500
setup = """
CREATE TABLE IF NOT EXISTS strict_seen (
    position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, version INTEGER NOT NULL, type TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS strict_streams (
    stream_id TEXT PRIMARY KEY, events INTEGER NOT NULL, version INTEGER NOT NULL, last_position INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS strict_starts_at_1 BEFORE INSERT ON strict_streams
WHEN NEW.version <> 1 BEGIN SELECT RAISE(ABORT, 'a stream must start at version 1'); END;
CREATE TRIGGER IF NOT EXISTS strict_in_order BEFORE UPDATE ON strict_streams
WHEN NEW.version <> OLD.version + 1 BEGIN SELECT RAISE(ABORT, 'out of order or duplicate'); END;
"""
"#;

const STRICT_STATEMENTS: &str = r#"[
    "INSERT INTO strict_seen (position, stream_id, version, type) VALUES (:position, :stream_id, :stream_version, :event_type)",
    "UPDATE strict_streams SET events = events + 1, version = :stream_version, last_position = :position WHERE stream_id = :stream_id",
    "INSERT INTO strict_streams (stream_id, events, version, last_position) SELECT :stream_id, 1, :stream_version, :position WHERE NOT EXISTS (SELECT 1 FROM strict_streams WHERE stream_id = :stream_id)",
]"#;

fn strict_config() -> String {
    let mut config = format!("{STRICT}\n[projection.handlers]\n");
    for ty in projectionist::workload::EVENT_TYPES {
        config.push_str(&format!("{ty} = {STRICT_STATEMENTS}\n"));
    }
    config
}

/// 50,000 events published to JetStream; `projectionist run` is killed with SIGKILL mid-run,
/// while messages are delivered and not yet acknowledged, and started again. The read model
/// ends exactly equal to a clean build of the same events from the database, every stream
/// applied once, in order.
#[test]
fn a_sigkilled_run_resumes_and_the_read_model_ends_exact_despite_redeliveries() {
    let Some(s) = stream("crash") else { return };
    let dir = TempDir::new().expect("tempdir");
    let config = dir.path().join("projectionist.toml");
    std::fs::write(&config, strict_config()).expect("config");

    let n: i64 = 50_000;
    let events: Vec<_> = Orders::new(7, n as u64).collect();
    let mut lengths: BTreeMap<String, i64> = BTreeMap::new();
    for e in &events {
        *lengths.entry(e.stream_id.clone()).or_default() += 1;
    }
    let published = Instant::now();
    s.publish(
        events
            .iter()
            .map(|e| {
                (
                    s.subject("orders"),
                    envelope(&e.stream_id, e.stream_version, e.event_type, &e.data),
                )
            })
            .collect(),
    );
    eprintln!(
        "published {n} events in {:.2} s",
        published.elapsed().as_secs_f64()
    );

    let db = dir.path().join("nats.db");
    let database = format!("sqlite://{}", db.display());
    let source = s.source();
    let args = [
        "--database",
        database.as_str(),
        "--config",
        config.to_str().expect("utf-8 path"),
        "--source",
        source.as_str(),
    ];

    // The first run: killed once the checkpoint is well into the stream.
    let first_log = dir.path().join("first.log");
    let started = Instant::now();
    let mut first = spawn_run(dir.path(), &args, &first_log);
    let reached = wait_for_checkpoint(&db, "strict", n / 3, Duration::from_secs(60), &first_log);
    first.kill().expect("SIGKILL");
    first.wait().expect("reap");
    let (at_kill, _, _) = checkpoint(&db, "strict").expect("a checkpoint");
    assert!(
        at_kill >= reached && at_kill < n,
        "killed at {at_kill}: not mid-run"
    );
    let rate = at_kill as f64 / started.elapsed().as_secs_f64();

    // The killed run had messages delivered and not acknowledged: a restart must get them
    // again, and must not apply what was committed twice.
    let consumer = s.consumer("projectionist-strict");
    assert!(
        consumer.num_ack_pending > 0 && consumer.delivered.stream_sequence > at_kill as u64,
        "no delivered-but-unacknowledged messages at the kill (checkpoint {at_kill}): {consumer:?}"
    );
    assert!(
        consumer.ack_floor.stream_sequence <= at_kill as u64,
        "acknowledged past the committed checkpoint {at_kill}: {consumer:?}"
    );

    // The restart: back to the checkpoint, then to the end of the stream.
    let second_log = dir.path().join("second.log");
    let restarted = Instant::now();
    let mut second = spawn_run(dir.path(), &args, &second_log);
    wait_for_checkpoint(&db, "strict", n, Duration::from_secs(90), &second_log);
    let caught_up = restarted.elapsed();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    assert!(
        second.wait().expect("reap").success(),
        "the restarted run did not stop cleanly"
    );
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(
        log.contains("recreating the durable consumer") && log.contains("were not acknowledged"),
        "the restart did not redeliver from the checkpoint:\n{log}"
    );
    eprintln!(
        "first run: {at_kill} events at {rate:.0} events/s before SIGKILL; restart: {} events in {:.2} s",
        n - at_kill,
        caught_up.as_secs_f64()
    );

    // Per stream: every event once, versions 1..=length.
    let streams = rows(&db, "strict_streams", "stream_id");
    assert_eq!(streams.len(), lengths.len());
    let c = Connection::open(&db).expect("open");
    let mut st = c
        .prepare("SELECT stream_id, events, version FROM strict_streams")
        .expect("prepare");
    let got: BTreeMap<String, (i64, i64)> = st
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (stream_id, length) in &lengths {
        assert_eq!(got.get(stream_id), Some(&(*length, *length)), "{stream_id}");
    }
    let seen: i64 = c
        .query_row("SELECT count(*) FROM strict_seen", [], |r| r.get(0))
        .expect("count");
    assert_eq!(seen, n);

    // A clean build of the same events from the database's events table is the same, row
    // for row.
    let clean = TempDir::new().expect("tempdir");
    let lines: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
    std::fs::write(clean.path().join("events.jsonl"), lines).expect("events file");
    let clean_db = clean.path().join("clean.db");
    let clean_url = format!("sqlite://{}", clean_db.display());
    let config_arg = config.to_str().expect("utf-8 path");
    ok(&bin(clean.path())
        .args([
            "--database",
            &clean_url,
            "--config",
            config_arg,
            "import",
            "events.jsonl",
        ])
        .output()
        .expect("import"));
    ok(&bin(clean.path())
        .args(["--database", &clean_url, "--config", config_arg, "run", "--once"])
        .output()
        .expect("run --once"));
    assert!(rows(&clean_db, "strict_seen", "position") == rows(&db, "strict_seen", "position"));
    assert!(rows(&clean_db, "strict_streams", "stream_id") == streams);
}

const SPLIT: &str = r#"
[[projection]]
name = "orders"
setup = "CREATE TABLE IF NOT EXISTS orders_rows (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, version INTEGER NOT NULL)"
[projection.handlers]
Counted = "INSERT INTO orders_rows (position, stream_id, version) VALUES (:position, :stream_id, :stream_version)"

[[projection]]
name = "payments"
setup = "CREATE TABLE IF NOT EXISTS payments_rows (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, version INTEGER NOT NULL)"
[projection.handlers]
Counted = "INSERT INTO payments_rows (position, stream_id, version) VALUES (:position, :stream_id, :stream_version)"
"#;

/// Two projections with different subjects each see exactly their subject; `run --once`
/// terminates although the stream's last messages match neither; a malformed envelope is
/// passed over; `status` reports the stream's head. The source comes from the config here.
#[test]
fn subject_filters_per_projection_and_run_once_terminates() {
    let Some(s) = stream("subjects") else { return };
    let dir = TempDir::new().expect("tempdir");
    let config = format!(
        "source = \"{}\"\n{}",
        s.source(),
        SPLIT
            .replace(
                "name = \"orders\"",
                &format!("name = \"orders\"\nsubject = \"{}\"", s.subject("orders.>"))
            )
            .replace(
                "name = \"payments\"",
                &format!("name = \"payments\"\nsubject = \"{}\"", s.subject("payments.*"))
            )
    );
    std::fs::write(dir.path().join("projectionist.toml"), config).expect("config");

    let mut messages = Vec::new();
    let mut expected: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut versions: BTreeMap<String, i64> = BTreeMap::new();
    for i in 1..=600i64 {
        let (kind, subject) = match i % 3 {
            0 => ("orders", s.subject(&format!("orders.eu.{}", i % 5))),
            1 => ("payments", s.subject(&format!("payments.{}", i % 4))),
            _ => ("audit", s.subject("audit.log")),
        };
        let stream_id = format!("{kind}-{}", i % 10);
        let version = versions.entry(stream_id.clone()).or_default();
        *version += 1;
        messages.push((
            subject,
            envelope(&stream_id, *version, "Counted", &json!({"i": i})),
        ));
        expected.entry(kind).or_default().push(i);
    }
    // A malformed envelope on the orders subject, then only messages neither projection sees.
    messages.push((s.subject("orders.eu.x"), b"{\"not\": \"an envelope\"}".to_vec()));
    for i in 0..5 {
        messages.push((
            s.subject("audit.log"),
            envelope("audit-tail", i + 1, "Counted", &json!({})),
        ));
    }
    let last = messages.len() as i64;
    s.publish(messages);

    let started = Instant::now();
    let out = bin(dir.path())
        .args(["run", "--once"])
        .output()
        .expect("run --once");
    ok(&out);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    let db = dir.path().join("projectionist.db");
    for kind in ["orders", "payments"] {
        let got: Vec<i64> = rows(&db, &format!("{kind}_rows"), "position")
            .iter()
            .map(|r| {
                r[0].trim_start_matches("Integer(")
                    .trim_end_matches(')')
                    .parse()
                    .expect("position")
            })
            .collect();
        assert_eq!(&got, &expected[kind], "{kind}");
        let (position, state, _) = checkpoint(&db, kind).expect("checkpoint");
        assert_eq!((position, state.as_str()), (last, "running"), "{kind}");
    }

    let out = bin(dir.path())
        .args(["status", "--json"])
        .output()
        .expect("status");
    let statuses: Vec<Value> = serde_json::from_str(&ok(&out)).expect("JSON");
    assert_eq!(statuses.len(), 2);
    for st in &statuses {
        assert_eq!(st["head"], last, "{st}");
        assert_eq!(st["lag_events"], 0, "{st}");
    }
    let orders = statuses.iter().find(|st| st["name"] == "orders").expect("orders");
    assert_eq!(orders["applied"], 200, "{orders}");

    // `events` reads the stream by sequence, with no consumer left behind.
    let consumers_before = s.consumer_count();
    let out = bin(dir.path())
        .args(["events", "--json", "--stream", "audit-tail"])
        .output()
        .expect("events");
    let listed: Vec<Value> = ok(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let versions: Vec<i64> = listed
        .iter()
        .map(|e| e["stream_version"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(versions, [1, 2, 3, 4, 5]);
    assert_eq!(listed[4]["position"], last);
    let all = ok(&bin(dir.path())
        .args(["events", "--json"])
        .output()
        .expect("events"));
    assert_eq!(
        all.lines().count() as i64,
        last - 1,
        "every message but the malformed one"
    );
    assert_eq!(s.consumer_count(), consumers_before, "no consumer was made");

    // Live: a message published while `run` follows the stream shows up.
    let log = dir.path().join("live.log");
    let mut live = spawn_run(dir.path(), &[], &log);
    std::thread::sleep(Duration::from_millis(300));
    s.publish(vec![(
        s.subject("payments.9"),
        envelope("payments-live", 1, "Counted", &json!({})),
    )]);
    wait_for_checkpoint(&db, "payments", last + 1, Duration::from_secs(30), &log);
    live.kill().expect("kill");
    live.wait().expect("reap");
    let n: i64 = Connection::open(&db)
        .expect("open")
        .query_row(
            "SELECT count(*) FROM payments_rows WHERE stream_id = 'payments-live'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, 1);
}

/// Bad sources are refused with what to do, and never print a password.
#[test]
fn bad_sources_are_refused_without_printing_secrets() {
    let Some(s) = stream("bad") else { return };
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), SPLIT).expect("config");
    let run = |source: &str| -> Output {
        bin(dir.path())
            .args(["--source", source, "run", "--once"])
            .output()
            .expect("run")
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let missing = run(&format!("{}?stream=NOPE_{}", nats_url(), std::process::id()));
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains("has no JetStream stream"),
        "{}",
        text(&missing)
    );

    let unsupported = run("mqtt://h:1883?topic=x");
    assert_eq!(unsupported.status.code(), Some(2));
    assert!(
        text(&unsupported).contains("unsupported source scheme `mqtt`"),
        "{}",
        text(&unsupported)
    );

    let no_stream = run(&nats_url());
    assert_eq!(no_stream.status.code(), Some(2));
    assert!(text(&no_stream).contains("?stream=NAME"), "{}", text(&no_stream));

    let unreachable = run("nats://app:hunter2@127.0.0.1:1?stream=S");
    assert_eq!(unreachable.status.code(), Some(1), "{}", text(&unreachable));
    assert!(
        text(&unreachable).contains("cannot connect"),
        "{}",
        text(&unreachable)
    );
    assert!(!text(&unreachable).contains("hunter2"), "{}", text(&unreachable));

    // A subject outside the stream's subjects is a configuration error.
    let outside = dir.path().join("outside.toml");
    std::fs::write(
        &outside,
        SPLIT.replace(
            "name = \"orders\"",
            "name = \"orders\"\nsubject = \"elsewhere.>\"",
        ),
    )
    .expect("config");
    let out = bin(dir.path())
        .args([
            "--config",
            outside.to_str().expect("path"),
            "--source",
            &s.source(),
            "status",
        ])
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not within the subjects"), "{}", text(&out));

    // Partitioned projections are refused on NATS.
    let partitioned = dir.path().join("partitioned.toml");
    std::fs::write(
        &partitioned,
        SPLIT.replace("name = \"orders\"", "name = \"orders\"\npartitions = 2"),
    )
    .expect("config");
    let out = bin(dir.path())
        .args([
            "--config",
            partitioned.to_str().expect("path"),
            "--source",
            &s.source(),
            "run",
            "--once",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("partitions = 1"), "{}", text(&out));

    // Blue/green rebuilds read the database only.
    ok(&bin(dir.path()).arg("init").output().expect("init"));
    let out = bin(dir.path())
        .args([
            "--source",
            &s.source(),
            "rebuild",
            "orders",
            "--yes",
            "--blue-green",
        ])
        .output()
        .expect("rebuild");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("plain rebuild"), "{}", text(&out));
}
