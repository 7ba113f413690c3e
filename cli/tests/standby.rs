//! Two daemons on one SQLite file and projection: the second waits as a standby (it says so
//! once) while the first runs, takes over within the takeover bound after the first is killed
//! with SIGKILL, and the read model stays exact: a counter that a double application would
//! push past the number of events, and one row per event.

#![cfg(feature = "sqlite")]

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use projectionist::sqlite::rusqlite::Connection;
use projectionist_testkit as kit;

const CONFIG: &str = r#"
[[projection]]
name = "counted"
batch_size = 25
setup = """
CREATE TABLE IF NOT EXISTS counted_items (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS counted_total (k TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

[projection.handlers]
ItemAdded = [
    "INSERT INTO counted_items (id) VALUES (:stream_id)",
    "INSERT INTO counted_total (k, n) VALUES ('all', 1) ON CONFLICT (k) DO UPDATE SET n = n + 1",
]
"#;

fn command(dir: &Path) -> Command {
    let mut c = kit::binary!().command(dir);
    c.args(["--database", "sqlite://p.db", "--config", "projectionist.toml"]);
    c
}

fn cli(dir: &Path, args: &[&str]) {
    let out = command(dir).args(args).output().expect("run projectionist");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `run` in the background, logging to `log` (takeover within 2 s).
fn daemon(dir: &Path, log: &str) -> Child {
    let file = File::create(dir.join(log)).expect("a log file");
    command(dir)
        .args(["run", "--takeover-seconds", "2"])
        .env("PROJECTIONIST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start run")
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn import(dir: &Path, from: usize, count: usize) {
    let lines: String = (from..from + count)
        .map(|i| format!("{{\"stream_id\":\"ITEM-{i}\",\"type\":\"ItemAdded\",\"data\":{{}}}}\n"))
        .collect();
    let file = format!("events-{from}.jsonl");
    std::fs::write(dir.join(&file), lines).expect("write events");
    cli(dir, &["import", &file]);
}

/// (rows, counter, checkpoint position).
fn state(dir: &Path) -> (i64, i64, i64) {
    let c = Connection::open(dir.join("p.db")).expect("open");
    c.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    let one = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    (
        one("SELECT count(*) FROM counted_items"),
        one("SELECT coalesce(max(n), 0) FROM counted_total"),
        one("SELECT position FROM projection_checkpoints WHERE projection = 'counted'"),
    )
}

fn wait_until(secs: u64, what: &str, dir: &Path, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; first:\n{}\nsecond:\n{}",
            log(dir, "first.log"),
            log(dir, "second.log")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_daemon_waits_as_a_standby_and_takes_over_after_a_sigkill() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let dir = dir.path();
    std::fs::write(dir.join("projectionist.toml"), CONFIG).expect("write the config");
    cli(dir, &["init"]);
    import(dir, 1, 300);

    let mut first = daemon(dir, "first.log");
    wait_until(60, "the first daemon to catch up", dir, || {
        state(dir) == (300, 300, 300)
    });
    let mut second = daemon(dir, "second.log");
    wait_until(30, "the second daemon to stand by", dir, || {
        log(dir, "second.log").contains("waiting as a standby")
    });

    // The first keeps running everything; the second only waits.
    import(dir, 301, 300);
    wait_until(60, "the first daemon to apply the new events", dir, || {
        state(dir) == (600, 600, 600)
    });
    std::thread::sleep(Duration::from_secs(1));
    let standby = log(dir, "second.log");
    assert!(!standby.contains("took the projection's lease"), "{standby}");
    assert!(!standby.contains("worker started"), "{standby}");

    // SIGKILL the first: no release, its lease expires; the second takes over.
    first.kill().expect("SIGKILL the first daemon");
    first.wait().expect("reap the first daemon");
    let killed = Instant::now();
    import(dir, 601, 300);
    wait_until(60, "the second daemon to take over and catch up", dir, || {
        state(dir) == (900, 900, 900)
    });
    let took = killed.elapsed();
    eprintln!("the standby took over and caught up {took:?} after the SIGKILL (takeover bound 2 s)");
    let second_log = log(dir, "second.log");
    assert!(second_log.contains("took the projection's lease"), "{second_log}");
    assert!(took < Duration::from_secs(20), "took over after {took:?}");

    // Exact, and no runner ever fought the other.
    assert_eq!(state(dir), (900, 900, 900));
    for name in ["first.log", "second.log"] {
        let text = log(dir, name);
        assert!(
            !text.contains("checkpoint moved under this runner"),
            "{name}:\n{text}"
        );
        assert_eq!(
            text.matches("waiting as a standby").count(),
            usize::from(name == "second.log")
        );
    }

    let pid = second.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = second.wait().expect("wait for the second daemon");
    assert!(status.success(), "{}", log(dir, "second.log"));
}
