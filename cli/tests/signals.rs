//! SIGTERM and SIGINT for the long commands: `run --once`, `rebuild` and `import`, each
//! signalled mid-work. The first signal ends the command with exit 0 and "stopped" in its log,
//! with nothing half-done committed (a projection's read model holds exactly the events up to
//! its checkpoint, an import writes all or nothing), and running the command again finishes
//! the work exactly. SIGINT is sent to a process whose parent ignored SIGINT (as a shell does
//! for background jobs): the command answers it all the same. A second signal exits at once.

#![cfg(feature = "sqlite")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use projectionist::sqlite::rusqlite::Connection;
use projectionist_testkit as kit;

const EVENTS: i64 = 1_000;

/// Every event costs a few milliseconds (a recursive count), so that a signal lands mid-batch.
const CONFIG: &str = r#"
[[projection]]
name = "slow"
batch_size = 20
setup = "CREATE TABLE IF NOT EXISTS slow (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
reset = "DELETE FROM slow"

[projection.handlers]
ItemAdded = """
INSERT INTO slow (id, n)
SELECT :stream_id, :data.n + 0 * (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000) SELECT count(*) FROM c)
"""
"#;

#[derive(Clone, Copy, Debug)]
enum Sig {
    Term,
    Int,
}

impl Sig {
    fn name(self) -> &'static str {
        match self {
            Sig::Term => "TERM",
            Sig::Int => "INT",
        }
    }
}

/// `projectionist ARGS` in `dir`; for SIGINT, under a shell that ignores SIGINT first (the
/// command inherits the ignored disposition through `exec`).
fn spawn(dir: &Path, sig: Sig, args: &[&str]) -> Child {
    let bin = kit::binary!();
    let mut c = match sig {
        Sig::Term => bin.command(dir),
        Sig::Int => {
            let mut c = Command::new("sh");
            c.current_dir(dir)
                .env_remove("RUST_LOG")
                .args(["-c", "trap '' INT; exec \"$0\" \"$@\""])
                .arg(bin.path());
            c
        }
    };
    c.args(["--database", "sqlite://p.db", "--config", "projectionist.toml"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start projectionist")
}

fn cli(dir: &Path, args: &[&str]) -> Output {
    let out = kit::binary!()
        .command(dir)
        .args(["--database", "sqlite://p.db", "--config", "projectionist.toml"])
        .args(args)
        .output()
        .expect("run projectionist");
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    out
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kill(child: &Child, sig: Sig) {
    let ok = Command::new("kill")
        .args([&format!("-{}", sig.name()), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(ok.success());
}

fn db(dir: &Path) -> Connection {
    let c = Connection::open(dir.join("p.db")).expect("open the database");
    c.busy_timeout(Duration::from_secs(5)).expect("busy timeout");
    c
}

/// The checkpoint position and state of `slow`, if it has one.
fn checkpoint(dir: &Path) -> Option<(i64, String)> {
    db(dir)
        .query_row(
            "SELECT position, state FROM projection_checkpoints WHERE projection = 'slow'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ok()
}

/// Rows of the read model and the sum of their `n`.
fn read_model(dir: &Path) -> (i64, i64) {
    db(dir)
        .query_row("SELECT count(*), coalesce(sum(n), 0) FROM slow", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("read the read model")
}

fn event_count(dir: &Path) -> i64 {
    db(dir)
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count events")
}

/// The read model holds exactly the events up to the checkpoint: events 1..=position, with
/// n = position (each event's n is its position).
fn exact_up_to(dir: &Path, position: i64) {
    assert_eq!(read_model(dir), (position, position * (position + 1) / 2));
}

/// A folder with the config and `EVENTS` events whose n is their position.
fn prepared(with_events: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("write the config");
    std::fs::write(dir.path().join("events.jsonl"), lines(EVENTS)).expect("write the events");
    cli(dir.path(), &["init"]);
    if with_events {
        cli(dir.path(), &["import", "events.jsonl"]);
    }
    dir
}

fn lines(n: i64) -> String {
    (1..=n)
        .map(|i| format!("{{\"stream_id\":\"ITEM-{i}\",\"type\":\"ItemAdded\",\"data\":{{\"n\":{i}}}}}\n"))
        .collect()
}

/// Waits until `slow`'s checkpoint is past the start (in `state`), then signals `child`; the
/// command must exit 0 soon, with "stopped" in its log.
fn stop_mid_work(dir: &Path, child: Child, sig: Sig, state: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((position, s)) = checkpoint(dir) {
            if position > 0 && s == state {
                assert!(position < EVENTS, "the command finished before the signal");
                break;
            }
        }
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(&child, sig);
    let out = child.wait_with_output().expect("wait for the command");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopped"), "{}", text(&out));
    assert!(stderr.contains(&format!("SIG{}", sig.name())), "{}", text(&out));
    out
}

fn run_once_stops_and_resumes(sig: Sig) {
    let dir = prepared(true);
    let child = spawn(dir.path(), sig, &["run", "--once"]);
    stop_mid_work(dir.path(), child, sig, "running");
    let (position, _) = checkpoint(dir.path()).expect("a checkpoint");
    assert!(position < EVENTS, "it ran to the end: {position}");
    exact_up_to(dir.path(), position);
    cli(dir.path(), &["run", "--once"]);
    exact_up_to(dir.path(), EVENTS);
}

#[test]
fn run_once_stops_after_its_batch_on_sigterm_and_resumes() {
    run_once_stops_and_resumes(Sig::Term);
}

#[test]
fn run_once_stops_after_its_batch_on_sigint_and_resumes() {
    run_once_stops_and_resumes(Sig::Int);
}

fn rebuild_stops_and_resumes(sig: Sig) {
    let dir = prepared(true);
    cli(dir.path(), &["run", "--once"]);
    exact_up_to(dir.path(), EVENTS);
    let child = spawn(dir.path(), sig, &["rebuild", "slow", "--yes"]);
    let out = stop_mid_work(dir.path(), child, sig, "rebuilding");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("`projectionist rebuild slow` resumes it"),
        "{}",
        text(&out)
    );
    let (position, state) = checkpoint(dir.path()).expect("a checkpoint");
    assert_eq!(state, "rebuilding");
    assert!(position < EVENTS);
    exact_up_to(dir.path(), position);
    let again = cli(dir.path(), &["rebuild", "slow", "--yes"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("rebuilt slow"));
    assert_eq!(checkpoint(dir.path()), Some((EVENTS, "running".to_owned())));
    exact_up_to(dir.path(), EVENTS);
}

#[test]
fn rebuild_stops_after_its_batch_on_sigterm_and_resumes() {
    rebuild_stops_and_resumes(Sig::Term);
}

#[test]
fn rebuild_stops_after_its_batch_on_sigint_and_resumes() {
    rebuild_stops_and_resumes(Sig::Int);
}

fn import_rolls_back_and_runs_again(sig: Sig) {
    let dir = prepared(false);
    const BIG: i64 = 100_000;
    std::fs::write(dir.path().join("big.jsonl"), lines(BIG)).expect("write the events");
    let child = spawn(dir.path(), sig, &["import", "big.jsonl"]);
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, sig);
    let out = child.wait_with_output().expect("wait for import");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped by a signal; nothing of it was written"),
        "{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopped"));
    assert_eq!(event_count(dir.path()), 0, "a stopped import wrote events");
    cli(dir.path(), &["import", "big.jsonl"]);
    assert_eq!(event_count(dir.path()), BIG);
}

#[test]
fn import_rolls_back_on_sigterm_and_runs_again() {
    import_rolls_back_and_runs_again(Sig::Term);
}

#[test]
fn import_rolls_back_on_sigint_and_runs_again() {
    import_rolls_back_and_runs_again(Sig::Int);
}

#[test]
fn a_second_signal_exits_at_once_with_130() {
    let dir = prepared(true);
    let child = spawn(dir.path(), Sig::Term, &["run", "--once"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(dir.path()).is_none_or(|(p, _)| p == 0) {
        assert!(Instant::now() < deadline, "no progress within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill(&child, Sig::Term);
    kill(&child, Sig::Int);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    // Whatever was committed is whole.
    let (position, _) = checkpoint(dir.path()).expect("a checkpoint");
    exact_up_to(dir.path(), position);
}
