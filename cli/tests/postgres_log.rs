//! What PostgreSQL's own server log gets from the daemon: each test starts a throwaway cluster
//! of its own (the test kit's `TempCluster`, server log in a file), drives the real
//! `projectionist` binary against it, and counts the `ERROR:` lines the server logged.
//!
//! - starting with the example config logs none;
//! - two daemons on one projection log at most one line per fenced batch (the checkpoint's
//!   compare-and-set), and so does a daemon that wakes with a partition's lease taken over;
//! - a declarative projection whose events fail logs nothing for them (its batches run in one
//!   call of a generated function that catches the failing statement's error), alone or with
//!   two daemons on it (then at most one line per fenced batch); typed per-event handlers log
//!   one line per failing event, plus at most a pipeline window behind the first failure
//!   (measured through the library against the per-event path);
//! - a numeric cast inferred for a setup check that does not fit falls back to the untyped
//!   check.

mod ops_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projectionist::postgres::tokio_postgres;
use projectionist_testkit as kit;
use projectionist_testkit::pg_cluster::TempCluster;
use serde_json::Value;
use tempfile::TempDir;

/// The most statements the store has in flight in one transaction (`PIPELINE_WINDOW` in the
/// PostgreSQL backend): after a failure, at most this many more lines ("current transaction is
/// aborted") can follow the failing statement's own.
const WINDOW: usize = 64;

fn bin(dir: &Path, url: &str) -> Command {
    let mut c = kit::binary!().command(dir);
    c.env("PROJECTIONIST_DATABASE_URL", url);
    c
}

fn cli(dir: &Path, url: &str, args: &[&str]) -> String {
    ops_support::succeeded(&bin(dir, url).args(args).output().expect("run projectionist"))
}

/// A started cluster of the test's own and a folder with `config`, set up (`init`); or `None`
/// after a loud SKIP (the test kit's CI-or-skip rule).
fn set_up(test: &str, config: &str) -> Option<(TempCluster, TempDir)> {
    let mut c = TempCluster::require(test)?;
    c.start().expect("start the throwaway cluster");
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), config).expect("write the config");
    cli(dir.path(), &c.url(), &["init"]);
    Some((c, dir))
}

/// Asserts that the server logged at most `bound` ERROR lines (`what` says what bounds them),
/// showing the first ones otherwise.
fn at_most(lines: &[String], bound: usize, what: &str) {
    assert!(
        lines.len() <= bound,
        "{} ERROR lines for {what} (at most {bound}); the first ones:\n{}",
        lines.len(),
        lines.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Asserts the failing projection's outcome: each good event applied once, each failing one a
/// dead letter.
async fn picky_exact(client: &tokio_postgres::Client, good: i64, failing: i64) {
    assert_eq!(count(client, "SELECT count(*) FROM picky").await, good);
    assert_eq!(
        count(client, "SELECT count(*) FROM picky WHERE seen = 1").await,
        good
    );
    assert_eq!(
        count(client, "SELECT count(*) FROM projection_dead_letters").await,
        failing
    );
}

fn errors(c: &TempCluster) -> Vec<String> {
    c.log_lines_with("ERROR:")
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the throwaway cluster");
    tokio::spawn(conn);
    client
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// A daemon whose stderr is collected; killed when dropped.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(dir: &Path, url: &str) -> Daemon {
        Daemon::start_with(dir, url, &[])
    }

    fn start_with(dir: &Path, url: &str, args: &[&str]) -> Daemon {
        let mut child = bin(dir, url)
            .args(["run", "--log-format", "json"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start projectionist run");
        let stderr = ops_support::collect_stderr(&mut child);
        Daemon { child, stderr }
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many of its commits were fenced (the runner's warning, one per fenced batch: the
    /// checkpoint moved, or the partition's lease did).
    fn fenced(&self) -> usize {
        self.logs()
            .lines()
            .filter(|l| {
                l.contains("checkpoint moved under this runner")
                    || l.contains("another node took this partition over")
            })
            .count()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (at most 120 s) until `totals` counted `total` events in all.
async fn caught_up(client: &tokio_postgres::Client, total: i64, daemons: &[&Daemon]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = client
            .query_opt("SELECT n FROM totals WHERE k = 'all'", &[])
            .await
            .expect("totals")
            .map_or(0, |r| r.get::<_, i64>(0));
        if n == total {
            return;
        }
        let logs: Vec<String> = daemons.iter().map(|d| d.logs()).collect();
        assert!(
            Instant::now() < deadline,
            "the daemons did not catch up: {n} of {total}\n{}",
            logs.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Imports `n` `Added` events on 37 streams, numbered from `from`.
fn import(d: &Path, url: &str, from: usize, n: usize) {
    let events = (from..from + n).map(|i| (format!("s-{}", i % 37), "Added", serde_json::json!({"i": i})));
    std::fs::write(d.join("events.jsonl"), jsonl(events)).expect("write the events");
    cli(d, url, &["import", "events.jsonl"]);
}

fn jsonl(events: impl IntoIterator<Item = (String, &'static str, Value)>) -> String {
    let mut out = String::new();
    for (stream, kind, data) in events {
        let line = serde_json::json!({"stream_id": stream, "type": kind, "data": data});
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_the_example_config_logs_no_error() {
    let Some((c, dir)) = set_up("log_example", include_str!("../../examples/projectionist.toml")) else {
        return;
    };
    let url = c.url();
    let d = dir.path();
    let order = |kind: &'static str, data: Value| ("order-1".to_owned(), kind, data);
    std::fs::write(
        d.join("events.jsonl"),
        jsonl([
            order(
                "OrderCreated",
                serde_json::json!({"customer_id": "c-1", "customer_name": "Ada"}),
            ),
            order(
                "ItemAdded",
                serde_json::json!({"item_name": "pen", "quantity": 3, "unit_price": 1.5}),
            ),
            order(
                "ItemAdded",
                serde_json::json!({"item_name": "ink", "quantity": 2, "unit_price": 4}),
            ),
            order(
                "OrderShipped",
                serde_json::json!({"carrier": "UPS", "tracking_number": "1Z"}),
            ),
        ]),
    )
    .expect("write the events");
    cli(d, &url, &["import", "events.jsonl"]);
    cli(d, &url, &["run", "--once"]);
    let client = connect(&url).await;
    let total: f64 = client
        .query_one(
            "SELECT total_amount FROM order_summary WHERE order_id = 'order-1'",
            &[],
        )
        .await
        .expect("order_summary")
        .get(0);
    assert_eq!(total, 12.5, "3 × 1.5 + 2 × 4");
    let lines = errors(&c);
    eprintln!(
        "server log ERROR lines at start with the example config: {}",
        lines.len()
    );
    assert!(lines.is_empty(), "the server logged:\n{}", lines.join("\n"));
}

const TWO_DAEMONS: &str = r#"
[[projection]]
name = "totals"
batch_size = 20
setup = "CREATE TABLE IF NOT EXISTS totals (k TEXT PRIMARY KEY, n BIGINT NOT NULL)"

[projection.handlers]
Added = [
    "INSERT INTO totals (k, n) VALUES (:stream_id, 1) ON CONFLICT (k) DO UPDATE SET n = totals.n + 1",
    "INSERT INTO totals (k, n) VALUES ('all', 1) ON CONFLICT (k) DO UPDATE SET n = totals.n + 1",
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_projection_log_at_most_one_line_per_fenced_batch() {
    let Some((c, dir)) = set_up("log_two_daemons", TWO_DAEMONS) else {
        return;
    };
    let url = c.url();
    let d = dir.path();
    let a = Daemon::start(d, &url);
    let b = Daemon::start(d, &url);
    // Appends in chunks while both run, so that both keep competing for the checkpoint.
    let (chunks, per_chunk) = (20, 150);
    for k in 0..chunks {
        import(d, &url, k * per_chunk, per_chunk);
    }
    let total = (chunks * per_chunk) as i64;
    let client = connect(&url).await;
    caught_up(&client, total, &[&a, &b]).await;
    // Let any batch in flight finish, then stop both.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fenced = a.fenced() + b.fenced();
    a.stop();
    b.stop();
    // Exactly once: every event counted once, per stream and in all.
    assert_eq!(
        count(&client, "SELECT sum(n)::bigint FROM totals WHERE k <> 'all'").await,
        total
    );
    assert_eq!(
        count(&client, "SELECT n FROM totals WHERE k = 'all'").await,
        total
    );
    let lines = errors(&c);
    eprintln!(
        "two daemons, {total} events: {fenced} fenced batches, {} server log ERROR lines",
        lines.len()
    );
    at_most(&lines, fenced, "fenced batches, one each");
}

/// A partitioned projection: its partitions' commits are fenced by their lease.
fn partitioned() -> String {
    TWO_DAEMONS.replace("batch_size = 20", "batch_size = 20\npartitions = 2")
}

/// Stops `daemon` (SIGSTOP) at a moment when none of its sessions is inside a transaction.
///
/// A process frozen inside a transaction holds that transaction open: its row locks, and its
/// transaction id, behind which no reader may pass (guarantee 2), so nothing else could proceed
/// until it wakes. That is PostgreSQL's behaviour, bounded in production by
/// `idle_in_transaction_session_timeout`, and not what this test is about: an idle daemon
/// still opens a short transaction now and then (a lease heartbeat), so a freeze that lands in
/// one is undone and tried again.
async fn freeze_outside_a_transaction(daemon: &Daemon, client: &tokio_postgres::Client) {
    let open = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                AND pid <> pg_backend_pid() AND state <> 'idle'";
    for _ in 0..100 {
        daemon.signal("STOP");
        // What the server was already running when the process froze finishes by itself.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if count(client, open).await == 0 {
            return;
        }
        eprintln!("froze the daemon inside a transaction; waking it to try again");
        daemon.signal("CONT");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the daemon was inside a transaction at each of 100 attempts to freeze it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_fences_without_a_server_log_line() {
    let Some((c, dir)) = set_up("log_lease", &partitioned()) else {
        return;
    };
    let url = c.url();
    let d = dir.path();
    let takeover = ["--takeover-seconds", "1"];
    let a = Daemon::start_with(d, &url, &takeover);
    import(d, &url, 0, 600);
    let client = connect(&url).await;
    caught_up(&client, 600, &[&a]).await;
    // A freezes holding both leases; B takes them over once they expire, and applies.
    freeze_outside_a_transaction(&a, &client).await;
    let b = Daemon::start_with(d, &url, &takeover);
    import(d, &url, 600, 600);
    caught_up(&client, 1200, &[&b]).await;
    // A wakes with batches in hand and leases it no longer holds.
    import(d, &url, 1200, 600);
    a.signal("CONT");
    caught_up(&client, 1800, &[&a, &b]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fenced = a.fenced() + b.fenced();
    let a_logs = a.logs();
    a.stop();
    b.stop();
    assert_eq!(
        count(&client, "SELECT sum(n)::bigint FROM totals WHERE k <> 'all'").await,
        1800
    );
    let lines = errors(&c);
    eprintln!(
        "a lease taken over from a frozen daemon: {fenced} fenced batches, {} server log ERROR lines",
        lines.len()
    );
    assert!(
        lines.len() <= fenced,
        "{} ERROR lines for {fenced} fenced batches:\n{}\ndaemon a:\n{a_logs}",
        lines.len(),
        lines.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

const FAILING: &str = r#"
[[projection]]
name = "picky"
batch_size = 100
error_policy = "dead_letter"
setup = "CREATE TABLE IF NOT EXISTS picky (id TEXT PRIMARY KEY, q BIGINT NOT NULL CHECK (q > 0), seen BIGINT NOT NULL DEFAULT 0)"

[projection.handlers]
Added = [
    "INSERT INTO picky (id, q) VALUES (:stream_id, :data.q)",
    "UPDATE picky SET seen = seen + 1 WHERE id = :stream_id",
]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_logs_a_bounded_number_of_lines() {
    let Some((c, dir)) = set_up("log_failing", FAILING) else {
        return;
    };
    let url = c.url();
    let d = dir.path();
    // Every tenth event breaks the CHECK constraint: 100 failing events among 1,000.
    let n = 1000;
    let events = (1..=n).map(|i| {
        let q = if i % 10 == 0 { 0 } else { i };
        (format!("e-{i}"), "Added", serde_json::json!({"q": q}))
    });
    std::fs::write(d.join("events.jsonl"), jsonl(events)).expect("write the events");
    cli(d, &url, &["import", "events.jsonl"]);
    cli(d, &url, &["run", "--once"]);
    let client = connect(&url).await;
    let failing = n / 10;
    picky_exact(&client, (n - failing) as i64, failing as i64).await;
    let lines = errors(&c);
    eprintln!(
        "{failing} failing events among {n}: {} server log ERROR lines",
        lines.len()
    );
    // Each failing event fails one batch (dead_letter: no retry). Its batch runs in one call of
    // the projection's function, which catches the error: the server logs no line for it.
    at_most(&lines, failing, "failing batches, one each");
    at_most(&lines, 0, "failing batches run in one call each");
}

/// Two daemons on the failing projection: the only lines are the fenced batches' (at most one
/// each), none for the failing events and none at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_a_failing_projection_log_at_most_one_line_per_fenced_batch() {
    let Some((c, dir)) = set_up("log_failing_two", FAILING) else {
        return;
    };
    let url = c.url();
    let d = dir.path();
    let a = Daemon::start(d, &url);
    let b = Daemon::start(d, &url);
    let client = connect(&url).await;
    // Both are up (their setup ran) before any event: nothing logged at start.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(
        &client,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'projectionist%'",
    )
    .await
        < 2
    {
        assert!(Instant::now() < deadline, "the daemons did not connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_start = errors(&c);
    assert!(
        at_start.is_empty(),
        "at start the server logged:\n{}",
        at_start.join("\n")
    );
    // Every tenth event fails, appended in chunks while both run.
    let (chunks, per_chunk) = (10, 200);
    for k in 0..chunks {
        let events = (k * per_chunk + 1..=(k + 1) * per_chunk).map(|i| {
            let q = if i % 10 == 0 { 0 } else { i };
            (format!("e-{i}"), "Added", serde_json::json!({"q": q}))
        });
        std::fs::write(d.join("events.jsonl"), jsonl(events)).expect("write the events");
        cli(d, &url, &["import", "events.jsonl"]);
    }
    let n = (chunks * per_chunk) as i64;
    let failing = n / 10;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = count(&client, "SELECT count(*) FROM picky").await
            + count(&client, "SELECT count(*) FROM projection_dead_letters").await;
        if done >= n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemons did not catch up: {done} of {n}\n{}\n{}",
            a.logs(),
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fenced = a.fenced() + b.fenced();
    a.stop();
    b.stop();
    picky_exact(&client, n - failing, failing).await;
    let lines = errors(&c);
    eprintln!(
        "two daemons, {n} events, {failing} failing: {fenced} fenced batches, {} server log ERROR lines",
        lines.len()
    );
    at_most(&lines, fenced, "fenced batches, one each");
}

/// The failing projection through the library, on each path, in one cluster: the lines each
/// run added to the server log. Declarative in one call per batch: none. The per-event paths
/// (declarative with `server_batches(false)`, typed handlers): the failing statement's line
/// each, and at most a pipeline window behind the first failure (after it, batches send one
/// statement at a time for a while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_events_per_path_log_lines() {
    use projectionist::postgres::{PgBatch, PgHandlers, PgProjection, PgStore};
    let Some(mut c) = TempCluster::require("log_failing_paths") else {
        return;
    };
    c.start().expect("start the throwaway cluster");
    let url = c.url();
    let (n, failing) = (1000_i64, 100_usize);
    let typed = || {
        PgHandlers::new()
            .setup(|cx| {
                cx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS picky (id TEXT PRIMARY KEY, q BIGINT NOT NULL CHECK (q > 0), \
                     seen BIGINT NOT NULL DEFAULT 0)",
                );
                Ok(())
            })
            .reset(|cx| {
                cx.batch_execute("TRUNCATE picky");
                Ok(())
            })
            .on_json("Added", |cx, ev, v| {
                let q = v.get("q").and_then(Value::as_i64).unwrap_or(0);
                cx.execute(
                    "INSERT INTO picky (id, q) VALUES ($1, $2)",
                    (ev.stream_id.clone(), q),
                );
                cx.execute(
                    "UPDATE picky SET seen = seen + 1 WHERE id = $1",
                    (ev.stream_id.clone(),),
                );
                Ok(())
            })
    };
    let declarative = || {
        let config = projectionist::declarative::Config::parse(FAILING, "test").expect("config");
        projectionist::declarative::projection::<PgBatch>(&config.projections[0])
    };
    type Make = Box<dyn Fn() -> PgProjection>;
    let paths: [(&str, bool, Make); 3] = [
        ("declarative, one call per batch", true, Box::new(declarative)),
        ("declarative, per event", false, Box::new(declarative)),
        (
            "typed per-event handlers",
            true,
            Box::new(move || PgProjection::new("picky", typed())),
        ),
    ];
    let mut measured = Vec::new();
    for (k, (path, server_batches, projection)) in paths.into_iter().enumerate() {
        let before = errors(&c).len();
        let store = PgStore::builder(&url)
            .expect("url")
            .schema(format!("path_{k}"))
            .server_batches(server_batches)
            .connect()
            .await
            .expect("connect");
        let items = (1..=n).map(|i| {
            let q = if i % 10 == 0 { 0 } else { i };
            Ok(projectionist::StreamAppend::new(
                format!("e-{i}"),
                projectionist::ExpectedVersion::Exact(0),
                vec![projectionist::NewEvent::new(
                    "Added",
                    serde_json::json!({ "q": q }),
                )],
            ))
        });
        projectionist::EventLog::import(&store, items, None)
            .await
            .expect("import");
        let engine = store
            .engine()
            .with(
                projection()
                    .batch_size(100)
                    .error_policy(projectionist::ErrorPolicy::DeadLetter),
            )
            .expect("engine");
        engine.catch_up().await.expect("catch up");
        let client = connect(&url).await;
        let rows = client
            .query_one(
                &format!("SELECT count(*) FROM path_{k}.picky WHERE seen = 1"),
                &[],
            )
            .await
            .expect("picky")
            .get::<_, i64>(0);
        assert_eq!(rows, n - failing as i64, "{path}");
        let lines = errors(&c).len() - before;
        eprintln!("{path}: {failing} failing events among {n}: {lines} server log ERROR lines");
        measured.push((path, lines));
    }
    assert_eq!(measured[0].1, 0, "one call per batch logs nothing: {measured:?}");
    // The first failure has at most a window in flight behind it; after it, the projection's
    // batches send one statement at a time: one line per failing event.
    for (path, lines) in &measured[1..] {
        assert!(
            *lines >= failing && *lines <= failing + WINDOW,
            "{path}: {lines} lines for {failing} failing events: {measured:?}"
        );
    }
}

const UNTYPED: &str = r#"
[[projection]]
name = "docs"
setup = "CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, body JSONB NOT NULL)"

[projection.handlers]
Saved = "INSERT INTO docs (id, body) VALUES (:stream_id, :data.doc - 'secret')"
"#;

/// Where the numeric cast inferred from arithmetic does not fit (a JSON object minus a key),
/// setup checks the untyped statement instead, as before: the projection starts and applies
/// (the object binds as jsonb). A statement that is wrong either way still fails setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_that_does_not_fit_falls_back_to_the_untyped_check() {
    let Some((c, dir)) = set_up("log_untyped", UNTYPED) else {
        return;
    };
    let url = c.url();
    let d = dir.path();
    let events = [(
        "d-1".to_owned(),
        "Saved",
        serde_json::json!({"doc": {"a": 1, "secret": "x"}}),
    )];
    std::fs::write(d.join("events.jsonl"), jsonl(events)).expect("write the events");
    cli(d, &url, &["import", "events.jsonl"]);
    cli(d, &url, &["run", "--once"]);
    let client = connect(&url).await;
    let body: Value = client
        .query_one("SELECT body FROM docs WHERE id = 'd-1'", &[])
        .await
        .expect("docs")
        .get(0);
    assert_eq!(body, serde_json::json!({"a": 1}));

    std::fs::write(
        d.join("projectionist.toml"),
        UNTYPED.replace("'secret'", "no_such_column"),
    )
    .expect("write the config");
    let out = bin(d, &url).args(["run", "--once"]).output().expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not prepare") && stderr.contains("no_such_column"),
        "{stderr}"
    );
}
