//! Start-up order: the daemon (`run`) starts before its database or broker, serves
//! `/health/live` (200) and `/health/ready` (503, with the cause) while it waits, and catches up
//! once they answer; one-shot commands fail fast unless given `--wait-for-database`.
//!
//! The database is a throwaway PostgreSQL cluster of the test's own, started 5 s after the
//! daemon (the test kit's `TempCluster`); the broker is a NATS server of the test's own
//! (`nats-server -js` on a free port), started late the same way. Both need only their server
//! binaries, under the kit's CI-or-skip rule.
#![cfg(any(feature = "postgres", all(feature = "nats", feature = "sqlite")))]

mod ops_support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ops_support::{eventually, Daemon};
#[cfg(feature = "postgres")]
use projectionist::postgres::tokio_postgres;
use projectionist_testkit as kit;
#[cfg(feature = "postgres")]
use projectionist_testkit::pg_cluster::TempCluster;

const CONFIG: &str = r#"
[[projection]]
name = "counted"
batch_size = 50
setup = "CREATE TABLE IF NOT EXISTS counted (id TEXT PRIMARY KEY, n BIGINT NOT NULL)"
reset = "DELETE FROM counted"

[projection.handlers]
ItemAdded = "INSERT INTO counted (id, n) VALUES (:stream_id, :data.n)"
"#;

fn cli(dir: &Path, database: &str) -> Command {
    let mut c = kit::binary!().command(dir);
    c.arg("--database")
        .arg(database)
        .arg("--config")
        .arg(dir.join("projectionist.toml"));
    c
}

#[cfg(all(feature = "nats", feature = "sqlite"))]
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `count` events `ItemAdded` with `n` = 1.. from `first`, as JSON lines.
fn lines(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("{{\"stream_id\":\"ITEM-{i}\",\"type\":\"ItemAdded\",\"data\":{{\"n\":{i}}}}}\n"))
        .collect()
}

/// Starts the daemon `c` while `what` is down: it is live (200), and not ready (503) with
/// the reason and its cause.
fn launch_waiting(c: Command, what: &str) -> Daemon {
    let daemon = Daemon::spawn(c);
    assert_eq!(daemon.get("/health/live").status, 200);
    // Until its first attempt fails, the reason is that it is starting.
    eventually(10, &format!("/health/ready to say it waits for {what}"), || {
        let ready = daemon.get("/health/ready");
        assert_eq!(ready.status, 503, "{}", ready.body);
        let reasons = ready.json()["reasons"].to_string();
        (reasons.contains(&format!("waiting for {what}")) && reasons.contains("Connection refused"))
            .then_some(())
    });
    daemon
}

/// Polls `/health/ready` every 100 ms until `until` returns true for its status; returns every
/// distinct status seen, in order, with the body of the first 503.
fn watch_ready(d: &Daemon, secs: u64, mut until: impl FnMut(u16) -> bool) -> (Vec<u16>, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen: Vec<u16> = Vec::new();
    let mut first_503 = String::new();
    loop {
        let r = d.get("/health/ready");
        if r.status == 503 && first_503.is_empty() {
            first_503 = r.body.clone();
        }
        if seen.last() != Some(&r.status) {
            seen.push(r.status);
        }
        if until(r.status) {
            return (seen, first_503);
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready kept answering {seen:?}; logs:\n{}",
            d.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(feature = "postgres")]
/// The first column of the first row of `sql` (text), or `None` when it cannot be had.
fn pg_one(url: &str, sql: &str) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(conn);
        let rows = client.simple_query(sql).await.ok()?;
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    })
}

#[cfg(feature = "postgres")]
#[test]
fn the_daemon_starts_before_postgresql_and_catches_up_once_it_answers() {
    let Some(mut cluster) = TempCluster::require("startup_before_pg") else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("write the config");
    let url = cluster.url();

    // One-shot commands fail fast, with the cause, and exit 1.
    let started = Instant::now();
    let out = cli(dir.path(), &url).arg("status").output().expect("run status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "status did not fail fast"
    );
    assert!(stderr.contains("Connection refused"), "no cause in: {stderr}");
    // With --wait-for-database, they wait, and give up with the cause.
    let started = Instant::now();
    let out = cli(dir.path(), &url)
        .args(["--wait-for-database", "2s", "status"])
        .output()
        .expect("run status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "did not wait: {stderr}"
    );
    assert!(
        stderr.contains("gave up waiting for the database") && stderr.contains("Connection refused"),
        "{stderr}"
    );

    let launched = Instant::now();
    let mut c = cli(dir.path(), &url);
    c.args(["run", "--listen", "127.0.0.1:0"]);
    let daemon = launch_waiting(c, "the database");

    // The database comes 5 s after the daemon; events are appended while it catches up, and
    // a one-shot command that waits for the database appends the first of them.
    let waiter = {
        let mut c = cli(dir.path(), &url);
        c.args([
            "--wait-for-database",
            "60s",
            "append",
            "--stream",
            "ITEM-0",
            "--type",
            "ItemAdded",
        ])
        .args(["--data", r#"{"n":0}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c.spawn().expect("start append")
    };
    thread::sleep(Duration::from_secs(5).saturating_sub(launched.elapsed()));
    let (before, _) = watch_ready(&daemon, 5, |s| s == 503);
    assert_eq!(before, vec![503]);
    cluster.start().expect("start the cluster");
    let appended = waiter.wait_with_output().expect("append waited");
    assert!(
        appended.status.success(),
        "append --wait-for-database failed: {}",
        String::from_utf8_lossy(&appended.stderr)
    );
    for chunk in 0..5 {
        let file = dir.path().join(format!("events-{chunk}.jsonl"));
        std::fs::write(&file, lines(1 + chunk * 200, 200)).expect("write events");
        let out = cli(dir.path(), &url)
            .args(["import"])
            .arg(&file)
            .output()
            .expect("import");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // 503 before the database came (above), 200 once the daemon reached it.
    let (seen, _) = watch_ready(&daemon, 60, |s| s == 200);
    assert_eq!(seen.last(), Some(&200));

    // Exact: 1,001 rows, n = 0..=1000 once each.
    eventually(60, "the daemon to apply every event", || {
        let got = pg_one(
            &url,
            "SELECT count(*)::text || '|' || coalesce(sum(n), 0)::text FROM counted",
        );
        (got.as_deref() == Some("1001|500500")).then_some(())
    });
    let (ok, _, logs) = daemon.stop();
    assert!(ok, "the daemon did not exit 0 on SIGTERM:\n{logs}");
    // The cause was logged once (again only if it changed), not at every retry.
    let waits = logs.matches("cannot reach the database").count();
    eprintln!("{waits} log line(s) about the unreachable database while it was down 5 s");
    assert!((1..=3).contains(&waits), "{waits} wait lines:\n{logs}");
    assert!(logs.contains("the database answers; going on"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

#[cfg(all(feature = "nats", feature = "sqlite"))]
/// A NATS server of the test's own with JetStream, on `port`, storing in `store`; killed when
/// dropped.
struct Nats(Child);

#[cfg(all(feature = "nats", feature = "sqlite"))]
impl Nats {
    fn start(port: u16, store: &Path) -> std::io::Result<Nats> {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other("nats-server did not answer within 30 s"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Nats(child))
    }

    fn stop(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(all(feature = "nats", feature = "sqlite"))]
impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates stream `name` on `items.>` (when `create`) and publishes ItemAdded `n` = `from..to`.
#[cfg(all(feature = "nats", feature = "sqlite"))]
fn publish(port: u16, name: &str, create: bool, from: usize, to: usize) {
    use projectionist::nats::async_nats::{self, jetstream};
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .expect("connect to the test's NATS");
        let js = jetstream::new(client);
        if create {
            js.create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec!["items.>".to_owned()],
                ..Default::default()
            })
            .await
            .expect("create the stream");
        }
        for i in from..to {
            let body = format!(
                "{{\"stream_id\":\"ITEM-{i}\",\"stream_version\":1,\"type\":\"ItemAdded\",\"data\":{{\"n\":{i}}}}}"
            );
            js.publish(format!("items.{i}"), body.into_bytes().into())
                .await
                .expect("publish")
                .await
                .expect("publish acknowledged");
        }
    });
}

#[cfg(all(feature = "nats", feature = "sqlite"))]
#[test]
fn the_daemon_starts_before_its_nats_broker_and_catches_up_once_it_answers() {
    let found = Command::new("nats-server").arg("--version").output();
    let Some(_) = kit::require(
        "startup_before_nats",
        "nats-server (for a NATS server of the test's own)",
        "install nats-server",
        found,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("write the config");
    let (port, store) = (free_port(), dir.path().join("nats"));
    // The stream exists, with 300 events, on a server that then goes down.
    let nats = Nats::start(port, &store).expect("start nats-server");
    publish(port, "ITEMS", true, 1, 301);
    nats.stop();

    let launched = Instant::now();
    let mut c = cli(dir.path(), "sqlite://p.db");
    c.args(["--source", &format!("nats://127.0.0.1:{port}?stream=ITEMS")])
        .args(["run", "--listen", "127.0.0.1:0"]);
    let daemon = launch_waiting(c, "the event source");
    thread::sleep(Duration::from_secs(5).saturating_sub(launched.elapsed()));
    let (before, _) = watch_ready(&daemon, 5, |s| s == 503);
    assert_eq!(before, vec![503]);

    // The broker comes back; 700 more events are published while the daemon catches up.
    let _nats = Nats::start(port, &store).expect("restart nats-server");
    publish(port, "ITEMS", false, 301, 1001);
    let (seen, _) = watch_ready(&daemon, 60, |s| s == 200);
    assert_eq!(seen.last(), Some(&200));
    let db = dir.path().join("p.db");
    eventually(60, "the daemon to apply every event", || {
        let c = projectionist::sqlite::rusqlite::Connection::open(&db).ok()?;
        let got: (i64, i64) = c
            .query_row("SELECT count(*), coalesce(sum(n), 0) FROM counted", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok()?;
        (got == (1000, 500_500)).then_some(())
    });
    let (ok, _, logs) = daemon.stop();
    assert!(ok, "the daemon did not exit 0 on SIGTERM:\n{logs}");
    let waits = logs.matches("cannot reach the event source").count();
    eprintln!("{waits} log line(s) about the unreachable broker while it was down 5 s");
    assert!((1..=3).contains(&waits), "{waits} wait lines:\n{logs}");
}
