//! Drives the real `projectionist` binary against the real PostgreSQL, each test in its own
//! schema (`?schema=NAME` in the URL). The URL comes from `PROJECTIONIST_TEST_POSTGRES_URL`
//! (default `postgres://postgres@127.0.0.1:5432/test`). Without a reachable database the test
//! kit's CI-or-skip rule applies: a failure under `CI=true` and in the test script, else a loud
//! SKIP.

mod examples_support;

use std::path::Path;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use examples_support::{example_dir, ok, pg_rows, sqlite_rows, TABLES};
use projectionist::postgres::tokio_postgres;
use projectionist_testkit as kit;
use serde_json::Value;
use tempfile::TempDir;

fn with_schema(schema: &str) -> String {
    kit::postgres::url_with_schema(schema)
}

/// A fresh schema for one test, or `None` (after a loud SKIP) when PostgreSQL is unreachable
/// and skipping is allowed (the test kit's CI-or-skip rule).
async fn fresh_schema(test: &str) -> Option<(String, tokio_postgres::Client)> {
    kit::postgres::fresh_schema(test, "pcli").await
}

async fn drop_schema(client: &tokio_postgres::Client, schema: &str) {
    kit::postgres::drop_schema(client, schema).await;
}

fn bin(dir: &Path, url: &str) -> Command {
    let mut c = Command::from_std(kit::binary!().command(dir));
    c.env("PROJECTIONIST_DATABASE_URL", url)
        .timeout(Duration::from_secs(120));
    c
}

fn status(dir: &Path, url: &str) -> Vec<Value> {
    let out = bin(dir, url).args(["status", "--json"]).output().expect("run");
    serde_json::from_str(&ok(&out)).expect("status --json is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_projections_give_the_same_read_model_as_on_sqlite() {
    let Some((schema, client)) = fresh_schema("same_as_sqlite").await else {
        return;
    };
    let url = with_schema(&schema);
    let dir = example_dir();
    let d = dir.path();
    let generated = bin(d, &url)
        .args(["generate", "--events", "4000", "--with-story"])
        .output()
        .expect("generate");
    std::fs::write(d.join("orders.jsonl"), ok(&generated)).expect("write");
    // PostgreSQL.
    ok(&bin(d, &url).arg("init").output().expect("init"));
    ok(&bin(d, &url)
        .args(["import", "orders.jsonl"])
        .output()
        .expect("import"));
    ok(&bin(d, &url).args(["run", "--once"]).output().expect("run"));
    // SQLite, same file.
    let sqlite = "sqlite://lite.db";
    ok(&bin(d, sqlite)
        .args(["import", "orders.jsonl"])
        .output()
        .expect("import"));
    ok(&bin(d, sqlite).args(["run", "--once"]).output().expect("run"));
    for (table, cols) in TABLES {
        let pg = pg_rows(&client, &schema, table, cols).await;
        let lite = sqlite_rows(&d.join("lite.db"), table, cols);
        assert!(!pg.is_empty(), "{table} is empty on PostgreSQL");
        // PostgreSQL prints round(x, 6) with trailing zeros too, as SQLite's format does.
        assert_eq!(pg.len(), lite.len(), "{table}: row counts differ");
        for (a, b) in pg.iter().zip(&lite) {
            assert_eq!(a, b, "{table}: rows differ");
        }
    }
    for s in status(d, &url) {
        assert_eq!(s["lag_events"], 0, "{s}");
        assert_eq!(s["errors"], 0, "{s}");
    }
    drop_schema(&client, &schema).await;
}

const FAILING: &str = r#"
[[projection]]
name = "totals"
error_policy = "dead_letter"
setup = "CREATE TABLE IF NOT EXISTS totals (id TEXT PRIMARY KEY, n BIGINT NOT NULL, flag BOOLEAN, doc JSONB, at TIMESTAMPTZ)"
reset = "DELETE FROM totals"

[projection.handlers]
Added = """
INSERT INTO totals (id, n, flag, doc, at) VALUES (:stream_id, :data.n, :data.flag, :data.doc, :recorded_at)
ON CONFLICT (id) DO UPDATE SET n = totals.n + excluded.n
"""

[[projection]]
name = "counts"
setup = "CREATE TABLE IF NOT EXISTS counts (id TEXT PRIMARY KEY, n BIGINT NOT NULL)"

[projection.handlers]
Added = "INSERT INTO counts VALUES (:stream_id, 1) ON CONFLICT (id) DO UPDATE SET n = counts.n + 1"
"#;

fn status_of(dir: &Path, url: &str, name: &str) -> Value {
    status(dir, url)
        .into_iter()
        .find(|s| s["name"] == name)
        .expect("the projection is in the status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_on_postgres() {
    let Some((schema, client)) = fresh_schema("commands").await else {
        return;
    };
    let url = with_schema(&schema);
    let dir = TempDir::new().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("projectionist.toml"), FAILING).expect("config");
    let out = ok(&bin(d, &url).arg("init").output().expect("init"));
    assert!(out.contains("totals"), "{out}");
    // append prints the token `wait` takes: TXID:POSITION.
    let token = ok(&bin(d, &url)
        .args([
            "append",
            "--stream",
            "a",
            "--type",
            "Added",
            "--data",
            r#"{"n": 2, "flag": true, "doc": {"x": [1]}}"#,
        ])
        .output()
        .expect("append"))
    .trim()
    .to_owned();
    assert!(token.contains(':'), "{token}");
    // Not applied yet: wait times out with exit code 3 and the lag.
    let timed_out = bin(d, &url)
        .args(["wait", "totals", "--position", &token, "--timeout", "200ms"])
        .output()
        .expect("wait");
    assert_eq!(timed_out.status.code(), Some(3), "{timed_out:?}");
    assert!(String::from_utf8_lossy(&timed_out.stderr).contains("behind"));
    // A failing event (n is NOT NULL) becomes a dead letter.
    ok(&bin(d, &url)
        .args([
            "append",
            "--stream",
            "b",
            "--type",
            "Added",
            "--data",
            r#"{"flag": false}"#,
        ])
        .output()
        .expect("append"));
    std::fs::write(
        d.join("more.jsonl"),
        "{\"stream_id\": \"a\", \"type\": \"Added\", \"data\": {\"n\": 5}}\n",
    )
    .expect("jsonl");
    ok(&bin(d, &url)
        .args(["import", "more.jsonl"])
        .output()
        .expect("import"));
    ok(&bin(d, &url).args(["run", "--once"]).output().expect("run"));
    ok(&bin(d, &url)
        .args(["wait", "totals", "--position", &token, "--timeout", "2s"])
        .output()
        .expect("wait"));
    let row = client
        .query_one(
            &format!("SELECT n, flag, doc::text, at IS NOT NULL FROM {schema}.totals WHERE id = 'a'"),
            &[],
        )
        .await
        .expect("row");
    assert_eq!(row.get::<_, i64>(0), 7);
    assert_eq!(row.get::<_, Option<bool>>(1), Some(true));
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some(r#"{"x": [1]}"#));
    assert!(row.get::<_, bool>(3));
    let s = &status_of(d, &url, "totals");
    assert_eq!(s["dead_letters"], 1, "{s}");
    assert_eq!(s["lag_events"], 0, "{s}");
    // Dead letters: list, retry (still fails: exit 1), discard.
    let list = ok(&bin(d, &url)
        .args(["dead-letters", "list", "--json"])
        .output()
        .expect("list"));
    let letters: Vec<Value> = serde_json::from_str(&list).expect("json");
    let id = letters[0]["id"].as_i64().expect("id").to_string();
    assert!(
        letters[0]["error"].as_str().unwrap_or("").contains("null value"),
        "{list}"
    );
    let retry = bin(d, &url)
        .args(["dead-letters", "retry", &id])
        .output()
        .expect("retry");
    assert_eq!(retry.status.code(), Some(1), "{retry:?}");
    ok(&bin(d, &url)
        .args(["dead-letters", "discard", &id])
        .output()
        .expect("discard"));
    assert_eq!(status_of(d, &url, "totals")["dead_letters"], 0);
    // Pause and resume.
    ok(&bin(d, &url).args(["pause", "totals"]).output().expect("pause"));
    assert_eq!(status_of(d, &url, "totals")["state"], "paused");
    ok(&bin(d, &url).args(["resume", "totals"]).output().expect("resume"));
    assert_eq!(status_of(d, &url, "totals")["state"], "running");
    // Rebuild stops at the failing event (fail fast); the other projection rebuilds, plain and
    // blue/green.
    let failed = bin(d, &url)
        .args(["rebuild", "totals", "--yes"])
        .output()
        .expect("rebuild");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("stopped at position"));
    let rebuilt = ok(&bin(d, &url)
        .args(["rebuild", "counts", "--yes"])
        .output()
        .expect("rebuild"));
    assert!(rebuilt.contains("rebuilt counts"), "{rebuilt}");
    let bg = ok(&bin(d, &url)
        .args(["rebuild", "counts", "--blue-green", "--yes"])
        .output()
        .expect("blue/green"));
    assert!(bg.contains("blue/green") && bg.contains("locks held"), "{bg}");
    let n: i64 = client
        .query_one(&format!("SELECT n FROM {schema}.counts WHERE id = 'a'"), &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(n, 2);
    assert_eq!(status_of(d, &url, "counts")["lag_events"], 0);
    let abandon = ok(&bin(d, &url)
        .args(["rebuild", "counts", "--blue-green", "--abandon"])
        .output()
        .expect("abandon"));
    assert!(abandon.contains("no blue/green rebuild"), "{abandon}");
    drop_schema(&client, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_live_appends_and_stops_on_sigterm() {
    let Some((schema, client)) = fresh_schema("live").await else {
        return;
    };
    let url = with_schema(&schema);
    let dir = TempDir::new().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("projectionist.toml"), FAILING).expect("config");
    ok(&bin(d, &url).arg("init").output().expect("init"));
    let mut child = kit::binary!()
        .command(d)
        .env("PROJECTIONIST_DATABASE_URL", &url)
        .arg("run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn run");
    let token = ok(&bin(d, &url)
        .args([
            "append",
            "--stream",
            "live",
            "--type",
            "Added",
            "--data",
            r#"{"n": 1}"#,
        ])
        .output()
        .expect("append"))
    .trim()
    .to_owned();
    // A waiter in another process wakes on the daemon's commit (LISTEN/NOTIFY).
    let started = Instant::now();
    ok(&bin(d, &url)
        .args(["wait", "totals", "--position", &token, "--timeout", "20s"])
        .output()
        .expect("wait"));
    assert!(started.elapsed() < Duration::from_secs(10));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "run did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    drop_schema(&client, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_never_printed() {
    let Some((schema, client)) = fresh_schema("secret").await else {
        return;
    };
    let dir = example_dir();
    let d = dir.path();
    // Unreachable: the error names the place without the password.
    let out = bin(d, "postgres://app:hunter2secret@127.0.0.1:1/nowhere")
        .arg("init")
        .output()
        .expect("init");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    // Reachable (trust auth ignores the password): nothing printed shows it.
    let url = with_schema(&schema).replacen("://postgres@", "://postgres:hunter2secret@", 1);
    if url.contains("hunter2secret") {
        let init = bin(d, &url).arg("init").output().expect("init");
        let st = bin(d, &url).arg("status").output().expect("status");
        for o in [&init, &st] {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(!text.contains("hunter2secret"), "{text}");
        }
    }
    // Bad setup SQL is a usage error naming the projection and the statement.
    std::fs::write(
        d.join("bad.toml"),
        "[[projection]]\nname = \"bad\"\nsetup = \"CREATE TABLE IF NOT EXISTS ok_t (id TEXT); CREATE TABLE IF NOT EXISTS bad_t ((id TEXT)\"\n[projection.handlers]\nX = \"INSERT INTO ok_t VALUES (:stream_id)\"\n",
    )
    .expect("bad config");
    let bad = bin(d, &with_schema(&schema))
        .args(["--config", "bad.toml", "init"])
        .output()
        .expect("init");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("bad") && err.contains("setup statement 2 of 2") && err.contains("bad_t"),
        "{err}"
    );
    drop_schema(&client, &schema).await;
}

/// `count` levels of nested arrays.
fn nested_json(count: usize) -> String {
    format!("{}{}", "[".repeat(count), "]".repeat(count))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_a_fresh_schema_says_created_and_deep_json_is_refused_at_import() {
    let Some((schema, client)) = fresh_schema("init_fresh").await else {
        return;
    };
    let url = with_schema(&schema);
    let dir = example_dir();
    let first = ok(&bin(dir.path(), &url).arg("init").output().expect("run init"));
    assert!(first.contains(": created the events"), "{first}");
    let again = ok(&bin(dir.path(), &url).arg("init").output().expect("run init"));
    assert!(again.contains(": already set up; checked the events"), "{again}");

    // JSON nested past the documented limit is refused at import, as on SQLite, and nothing
    // of the import is written.
    let line = format!(
        "{{\"stream_id\":\"S-1\",\"type\":\"Ok\",\"data\":{{}}}}\n{{\"stream_id\":\"S-2\",\"type\":\"Deep\",\"data\":{}}}\n",
        nested_json(100_000)
    );
    std::fs::write(dir.path().join("deep.jsonl"), line).expect("write");
    let out = bin(dir.path(), &url)
        .args(["import", "deep.jsonl"])
        .output()
        .expect("run import");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 2") && stderr.contains("nested more than 128 levels deep"),
        "{stderr}"
    );
    let events: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.events"), &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(events, 0);
    drop_schema(&client, &schema).await;
}
