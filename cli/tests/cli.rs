//! Drives the real `projectionist` binary, each test in its own temporary folder.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use projectionist::sqlite::rusqlite::Connection;
use serde_json::Value;
use tempfile::TempDir;

fn bin(dir: &Path) -> Command {
    let mut c = Command::from_std(projectionist_testkit::binary!().command(dir));
    c.timeout(Duration::from_secs(120));
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("projectionist.db")).expect("open the test database")
}

fn count(dir: &Path, sql: &str) -> i64 {
    db(dir).query_row(sql, [], |r| r.get(0)).expect("query")
}

/// A folder with the example config and no events.
fn example_dir() -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(
        dir.path().join("projectionist.toml"),
        include_str!("../../examples/projectionist.toml"),
    )
    .expect("write config");
    dir
}

fn status_json(dir: &Path) -> Vec<Value> {
    let out = bin(dir).args(["status", "--json"]).output().expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("status --json is a JSON array")
}

fn append(dir: &Path, stream: &str, ty: &str, data: &str) -> String {
    let out = bin(dir)
        .args(["append", "--stream", stream, "--type", ty, "--data", data])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

#[test]
fn quickstart_builds_and_queries_the_example_then_refuses_to_overwrite() {
    let dir = TempDir::new().unwrap();
    let out = bin(dir.path())
        .args(["quickstart", "--events", "3000"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in [
        "Order Summary: ORDER-001",
        "Customer: Alice Johnson (CUST-001)",
        "Status:   DELIVERED",
        "Wireless Keyboard x1 @ $79.99",
        "Total:    $119.98",
        "Shipping: FedEx (Tracking: 1234567890)",
        "Orders per status",
        "Revenue per carrier",
        "order_summary",
        "orders_by_customer",
        "revenue_by_carrier",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    assert!(dir.path().join("projectionist.db").exists());
    assert!(dir.path().join("projectionist.toml").exists());
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 3006);

    // status, run and rebuild work there next, with no flags.
    let statuses = status_json(dir.path());
    assert_eq!(statuses.len(), 3);
    assert!(statuses
        .iter()
        .all(|s| s["lag_events"] == 0 && s["checkpoint"] == 3006));
    bin(dir.path()).args(["run", "--once"]).assert().success();
    bin(dir.path())
        .args(["rebuild", "order_summary", "--yes"])
        .assert()
        .success()
        .stdout(predicate::str::contains("rebuilt order_summary"));

    // A second quickstart refuses without --force, and changes nothing.
    bin(dir.path())
        .args(["quickstart", "--events", "100"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--force"));
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 3006);
    bin(dir.path())
        .args(["quickstart", "--events", "100", "--force"])
        .assert()
        .success();
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 106);
}

#[test]
fn init_is_idempotent() {
    let dir = example_dir();
    bin(dir.path()).arg("init").assert().success();
    let tables = |d: &Path| {
        let c = db(d);
        let mut st = c
            .prepare("SELECT name, sql FROM sqlite_master ORDER BY name")
            .unwrap();
        st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
    };
    let before = tables(dir.path());
    assert!(before.iter().any(|(n, _)| n == "events"));
    assert!(before.iter().any(|(n, _)| n == "order_summary"));
    bin(dir.path()).arg("init").assert().success();
    assert_eq!(tables(dir.path()), before);
}

#[test]
fn append_prints_positions_and_names_conflicts() {
    let dir = example_dir();
    assert_eq!(
        append(
            dir.path(),
            "ORDER-9",
            "OrderCreated",
            r#"{"customer_id":"C1","customer_name":"Zoe"}"#
        ),
        "1"
    );
    assert_eq!(append(dir.path(), "ORDER-9", "OrderConfirmed", "{}"), "2");
    bin(dir.path())
        .args([
            "append",
            "--stream",
            "ORDER-9",
            "--type",
            "X",
            "--data",
            "{}",
            "--expected-version",
            "5",
        ])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("ORDER-9")
                .and(predicate::str::contains("expected version 5"))
                .and(predicate::str::contains("actual version 2")),
        );
    bin(dir.path())
        .args([
            "append",
            "--stream",
            "ORDER-9",
            "--type",
            "X",
            "--data",
            "{",
            "--expected-version",
            "2",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--data is not valid JSON"));
    bin(dir.path())
        .args([
            "append",
            "--stream",
            "ORDER-9",
            "--type",
            "X",
            "--data",
            "1",
            "--metadata",
            r#"{"user_id":"u1"}"#,
            "--expected-version",
            "2",
        ])
        .assert()
        .success()
        .stdout("3\n");
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 3);
}

#[test]
fn import_reads_files_and_stdin_and_a_bad_line_writes_nothing() {
    let dir = example_dir();
    let good = (1..=5)
        .map(|i| format!(r#"{{"stream_id":"S-{i}","type":"OrderCreated","data":{{"customer_id":"C","customer_name":"N{i}"}}}}"#))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.path().join("good.jsonl"), format!("{good}\n\n")).unwrap();
    bin(dir.path())
        .args(["import", "good.jsonl"])
        .assert()
        .success()
        .stdout(predicate::str::contains("imported 5 events"));
    bin(dir.path())
        .args(["import", "-"])
        .write_stdin(r#"{"stream_id":"S-9","type":"T","data":{},"metadata":{"m":1},"event_id":"00000000-0000-0000-0000-0000000000aa","expected_version":0}"#)
        .assert()
        .success()
        .stdout(predicate::str::contains("imported 1 events"));
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 6);

    let bad = format!("{good}\n{{\"stream_id\":\"S-7\",\"type\":\"T\",\"data\":{{\"a\":}}}}\n{good}\n");
    std::fs::write(dir.path().join("bad.jsonl"), bad).unwrap();
    bin(dir.path())
        .args(["import", "bad.jsonl"])
        .assert()
        .code(1)
        .stderr(
            predicate::str::contains("bad.jsonl: line 6, column 43:")
                .and(predicate::str::contains("expected value"))
                .and(predicate::str::contains("nothing of this import was written")),
        );
    bin(dir.path())
        .args(["import", "-"])
        .write_stdin("{\"stream_id\":\"S-1\",\"type\":\"T\",\"data\":1,\"expected_version\":0}\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("line 1").and(predicate::str::contains("S-1")));
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 6);
}

#[test]
fn run_once_status_json_and_unknown_projections() {
    let dir = example_dir();
    let lines: String = projectionist::workload::Orders::new(9, 500)
        .map(|e| e.to_json_line() + "\n")
        .collect();
    std::fs::write(dir.path().join("orders.jsonl"), lines).unwrap();
    bin(dir.path())
        .args(["import", "orders.jsonl"])
        .assert()
        .success();
    bin(dir.path())
        .args(["run", "--once", "--projection", "order_summary"])
        .assert()
        .success();
    let statuses = status_json(dir.path());
    for s in &statuses {
        for field in [
            "name",
            "partition",
            "state",
            "checkpoint",
            "head",
            "lag_events",
            "lag_seconds",
            "events_per_second",
            "errors",
            "dead_letters",
        ] {
            assert!(s.get(field).is_some(), "status lacks {field}: {s}");
        }
    }
    let by_name = |n: &str| statuses.iter().find(|s| s["name"] == n).cloned().unwrap();
    assert_eq!(by_name("order_summary")["checkpoint"], 500);
    assert_eq!(by_name("order_summary")["lag_events"], 0);
    assert_eq!(by_name("revenue_by_carrier")["lag_events"], 500);
    assert_eq!(by_name("order_summary")["state"], "running");

    bin(dir.path())
        .arg("status")
        .assert()
        .success()
        .stdout(predicate::str::contains("PROJECTION").and(predicate::str::contains("DEAD_LETTERS")));

    bin(dir.path())
        .args(["run", "--once", "--projection", "nope"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("unknown projection \"nope\"").and(predicate::str::contains(
                "order_summary, orders_by_customer, revenue_by_carrier",
            )),
        );
    bin(dir.path())
        .args(["rebuild", "nope", "--yes"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("known projections"));
    bin(dir.path()).args(["pause", "nope"]).assert().code(2);
}

#[test]
fn run_stops_gracefully_on_sigterm() {
    let dir = example_dir();
    append(
        dir.path(),
        "ORDER-1",
        "OrderCreated",
        r#"{"customer_id":"C1","customer_name":"A"}"#,
    );
    let child = projectionist_testkit::binary!()
        .command(dir.path())
        .arg("run")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = status_json(dir.path())
            .iter()
            .filter(|s| s["checkpoint"] == 1)
            .count();
        if done == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the daemon did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A live append is picked up too.
    append(dir.path(), "ORDER-1", "OrderConfirmed", "{}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_json(dir.path()).iter().any(|s| s["checkpoint"] != 2) {
        assert!(Instant::now() < deadline, "the daemon did not pick up the append");
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}: {}", out.status, stderr(&out));
    assert!(stderr(&out).contains("shutting down"), "{}", stderr(&out));
    let status: String = db(dir.path())
        .query_row(
            "SELECT status FROM order_summary WHERE order_id = 'ORDER-1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "confirmed");
}

const FAILING: &str = r#"
[[projection]]
name = "items"
error_policy = "dead_letter"
setup = """
CREATE TABLE IF NOT EXISTS allowed (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, name TEXT NOT NULL);
"""
reset = "DELETE FROM items"
[projection.handlers]
ItemAdded = "INSERT INTO items (id, name) VALUES (:data.id, (SELECT name FROM allowed WHERE name = :data.name))"

[[projection]]
name = "strict_items"
error_policy = "dead_letter"
strict = true
setup = "CREATE TABLE IF NOT EXISTS strict_items (id TEXT, name TEXT)"
[projection.handlers]
ItemAdded = "INSERT INTO strict_items (id, name) VALUES (:data.id, :data.name)"
"#;

#[test]
fn dead_letters_list_retry_discard_and_strict_paths() {
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("projectionist.toml"), FAILING).unwrap();
    append(dir.path(), "A", "ItemAdded", r#"{"id":"1","name":"pen"}"#);
    append(dir.path(), "A", "ItemAdded", r#"{"id":"2"}"#);
    bin(dir.path()).args(["run", "--once"]).assert().success();

    let out = bin(dir.path())
        .args(["dead-letters", "list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let letters: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    // items: both fail (pen is not allowed yet); strict_items: the one without a name.
    assert_eq!(letters.len(), 3, "{letters:#?}");
    let strict: Vec<&Value> = letters
        .iter()
        .filter(|d| d["projection"] == "strict_items")
        .collect();
    assert_eq!(strict.len(), 1);
    assert!(strict[0]["error"]
        .as_str()
        .unwrap()
        .contains(":data.name is missing"));
    bin(dir.path())
        .args(["dead-letters", "list", "--projection", "items"])
        .assert()
        .success()
        .stdout(predicate::str::contains("NOT NULL").and(predicate::str::contains("ItemAdded")));
    let statuses = status_json(dir.path());
    let items = statuses.iter().find(|s| s["name"] == "items").unwrap();
    assert_eq!(items["dead_letters"], 2);
    assert_eq!(items["checkpoint"], 2);

    let id_of = |l: &Value| l["id"].as_i64().unwrap().to_string();
    let item_ids: Vec<String> = letters
        .iter()
        .filter(|d| d["projection"] == "items")
        .map(id_of)
        .collect();
    bin(dir.path())
        .args(["dead-letters", "retry", &item_ids[0]])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("still failing"));
    db(dir.path())
        .execute("INSERT INTO allowed VALUES ('pen')", [])
        .unwrap();
    bin(dir.path())
        .args(["dead-letters", "retry", &item_ids[0]])
        .assert()
        .success()
        .stdout(predicate::str::contains("applied and removed"));
    assert_eq!(count(dir.path(), "SELECT count(*) FROM items"), 1);
    bin(dir.path())
        .args(["dead-letters", "discard", &id_of(strict[0])])
        .assert()
        .success();
    // The last one (no name) still fails under --all.
    bin(dir.path())
        .args(["dead-letters", "retry", "--all"])
        .assert()
        .code(1);
    bin(dir.path())
        .args(["dead-letters", "discard", "999"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no dead letter with id 999"));
    bin(dir.path()).args(["dead-letters", "retry"]).assert().code(2);
    assert_eq!(
        count(dir.path(), "SELECT count(*) FROM projection_dead_letters"),
        1
    );
}

#[test]
fn pause_resume_and_rebuild_confirmation() {
    let dir = example_dir();
    append(
        dir.path(),
        "ORDER-1",
        "OrderCreated",
        r#"{"customer_id":"C1","customer_name":"A"}"#,
    );
    bin(dir.path()).args(["run", "--once"]).assert().success();
    bin(dir.path())
        .args(["pause", "order_summary"])
        .assert()
        .success();
    let state = |d: &Path| {
        status_json(d)
            .into_iter()
            .find(|s| s["name"] == "order_summary")
            .map(|s| s["state"].clone())
    };
    assert_eq!(state(dir.path()), Some("paused".into()));
    bin(dir.path())
        .args(["resume", "order_summary"])
        .assert()
        .success();
    assert_eq!(state(dir.path()), Some("running".into()));

    bin(dir.path())
        .args(["rebuild", "order_summary"])
        .write_stdin("n\n")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("not confirmed; nothing was changed"));
    assert_eq!(count(dir.path(), "SELECT count(*) FROM order_summary"), 1);
    db(dir.path()).execute("DELETE FROM order_summary", []).unwrap();
    bin(dir.path())
        .args(["rebuild", "order_summary"])
        .write_stdin("y\n")
        .assert()
        .success();
    assert_eq!(count(dir.path(), "SELECT count(*) FROM order_summary"), 1);
}

#[test]
fn sql_injection_in_event_data_is_plain_text() {
    let dir = example_dir();
    let evil = "'); DROP TABLE order_summary; --";
    let data = serde_json::json!({"customer_id": "C1", "customer_name": evil}).to_string();
    append(dir.path(), "ORDER-X", "OrderCreated", &data);
    append(
        dir.path(),
        "ORDER-X; DROP TABLE events; --",
        "OrderCreated",
        &data,
    );
    bin(dir.path()).args(["run", "--once"]).assert().success();
    let names: Vec<String> = {
        let c = db(dir.path());
        let mut st = c
            .prepare("SELECT customer_name FROM order_summary ORDER BY order_id")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(names, [evil, evil]);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 2);
    assert_eq!(
        count(
            dir.path(),
            "SELECT count(*) FROM order_summary WHERE order_id = 'ORDER-X; DROP TABLE events; --'"
        ),
        1
    );
}

#[test]
fn config_errors_name_file_projection_key_and_expectation() {
    let dir = TempDir::new().unwrap();
    let bad_key = include_str!("../../examples/projectionist.toml").replacen(
        "batch_size = 1000",
        "batch_size = \"many\"",
        1,
    );
    std::fs::write(dir.path().join("projectionist.toml"), bad_key).unwrap();
    bin(dir.path())
        .args(["run", "--once"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "projectionist.toml: projection order_summary: key `batch_size`: expected an integer from 1 to 100000, found a string (\"many\")",
        ));

    let bad_param = FAILING.replace("WHERE name = :data.name", "WHERE name = :dta.name");
    std::fs::write(dir.path().join("p.toml"), bad_param).unwrap();
    bin(dir.path())
        .args(["--config", "p.toml", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "p.toml: projection items: key `handlers.ItemAdded`: invalid SQL: unknown parameter `:dta.name`",
        ));

    let bad_setup = FAILING.replace(
        "CREATE TABLE IF NOT EXISTS items (",
        "CREATE TABLE IF NOT EXISTS items ((",
    );
    std::fs::write(dir.path().join("s.toml"), bad_setup).unwrap();
    bin(dir.path())
        .args(["--config", "s.toml", "init"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("projection items: setup failed")
                .and(predicate::str::contains("setup statement 2 of 2"))
                .and(predicate::str::contains("CREATE TABLE IF NOT EXISTS items ((")),
        );

    let bad_handler = FAILING.replace(
        "INSERT INTO strict_items (id, name)",
        "INSERT INTO strict_itemz (id, name)",
    );
    std::fs::write(dir.path().join("h.toml"), bad_handler).unwrap();
    bin(dir.path())
        .args(["--config", "h.toml", "run", "--once"])
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("handler for ItemAdded does not prepare")
                .and(predicate::str::contains("strict_itemz")),
        );

    std::fs::write(dir.path().join("t.toml"), "[[projection]\nname=").unwrap();
    bin(dir.path())
        .args(["--config", "t.toml", "run"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("t.toml: not valid TOML").and(predicate::str::contains("line 1")));

    bin(dir.path())
        .args(["--config", "missing.toml", "status"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.toml: no such projections file"));
}

#[test]
fn usage_errors_exit_2_and_hide_secrets() {
    let dir = TempDir::new().unwrap();
    bin(dir.path())
        .args(["--database", "mysql://app:hunter2@db.internal/x", "init"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("mysql").and(predicate::str::contains("hunter2").not()));
    bin(dir.path())
        .args(["--database", "mysql://h/x", "init"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "unsupported database URL scheme `mysql`",
        ));
    bin(dir.path())
        .args(["run", "--once"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("quickstart"));
    bin(dir.path()).arg("frobnicate").assert().code(2);
    std::fs::write(dir.path().join("projectionist.toml"), FAILING).unwrap();
    bin(dir.path())
        .arg("status")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no database at"));
    // The URL may also come from the environment.
    bin(dir.path())
        .env("PROJECTIONIST_DATABASE_URL", "sqlite://other.db")
        .arg("init")
        .assert()
        .success();
    assert!(dir.path().join("other.db").exists());
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let dir = example_dir();
    append(
        dir.path(),
        "ORDER-1",
        "OrderCreated",
        r#"{"customer_id":"C1","customer_name":"A"}"#,
    );
    let out = bin(dir.path())
        .args(["run", "--once"])
        .env("PROJECTIONIST_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("INFO") && log.contains("worker started"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a piped log: {log:?}"
    );
}

#[test]
fn a_database_path_that_cannot_be_opened_says_what_to_check() {
    let dir = example_dir();
    std::fs::create_dir(dir.path().join("folder.db")).unwrap();
    let out = bin(dir.path())
        .args(["--database", "sqlite://folder.db", "status"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unable to open database file"), "{err}");
    assert!(
        err.contains(
            "check that the file folder.db and its folder exist and that this user may read and write both"
        ),
        "{err}"
    );
}

#[test]
fn postgres_urls_without_a_database_or_with_a_bad_schema_are_usage_errors() {
    let dir = example_dir();
    for (url, says) in [
        ("postgres://postgres@127.0.0.1:1", "names no database"),
        ("postgres://postgres@127.0.0.1:1/", "names no database"),
        (
            "postgres://postgres@127.0.0.1:1/db?schema=Bad-Name",
            "invalid PostgreSQL schema name",
        ),
    ] {
        let out = bin(dir.path())
            .args(["--database", url, "status"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{url}: {}", stderr(&out));
    }
}

#[test]
fn json_nested_past_the_limit_is_refused_at_import_and_nothing_is_written() {
    let dir = example_dir();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let lines = format!(
        "{{\"stream_id\":\"S-1\",\"type\":\"Ok\",\"data\":{{}}}}\n{{\"stream_id\":\"S-2\",\"type\":\"Deep\",\"data\":{deep}}}\n"
    );
    std::fs::write(dir.path().join("deep.jsonl"), lines).unwrap();
    bin(dir.path()).arg("init").assert().success();
    let out = bin(dir.path()).args(["import", "deep.jsonl"]).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 2") && err.contains("nested more than 128 levels deep"),
        "{err}"
    );
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 0);
    // `append` refuses it the same way (129 levels: one past the limit).
    let past = format!("{}{}", "[".repeat(129), "]".repeat(129));
    let out = bin(dir.path())
        .args(["append", "--stream", "S-3", "--type", "Deep", "--data", &past])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("nested more than 128 levels deep") || err.contains("recursion limit exceeded"),
        "{err}"
    );
    assert_eq!(count(dir.path(), "SELECT count(*) FROM events"), 0);
}

#[test]
fn concurrent_retries_of_all_dead_letters_skip_what_another_already_retried() {
    let dir = TempDir::new().unwrap();
    std::fs::write(
        dir.path().join("projectionist.toml"),
        r#"
[[projection]]
name = "items"
error_policy = "dead_letter"
setup = """
CREATE TABLE IF NOT EXISTS labels (code TEXT PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, label TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS applied (k TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""

[projection.handlers]
ItemAdded = [
    "INSERT INTO items (id, label) VALUES (:stream_id, (SELECT label FROM labels WHERE code = :data.code))",
    "INSERT INTO applied (k, n) VALUES ('all', 1) ON CONFLICT (k) DO UPDATE SET n = n + 1",
]
"#,
    )
    .unwrap();
    let lines: String = (1..=60)
        .map(|i| format!("{{\"stream_id\":\"I-{i}\",\"type\":\"ItemAdded\",\"data\":{{\"code\":\"Z\"}}}}\n"))
        .collect();
    std::fs::write(dir.path().join("e.jsonl"), lines).unwrap();
    bin(dir.path()).arg("init").assert().success();
    bin(dir.path()).args(["import", "e.jsonl"]).assert().success();
    bin(dir.path()).args(["run", "--once"]).assert().success();
    let before = &status_json(dir.path())[0];
    assert_eq!(
        (before["dead_letters"].as_i64(), before["errors"].as_i64()),
        (Some(60), Some(60))
    );
    assert!(before["last_error"].is_string(), "{before}");
    db(dir.path())
        .execute("INSERT INTO labels (code, label) VALUES ('Z', 'Zucchini')", [])
        .unwrap();

    let children: Vec<_> = (0..3)
        .map(|_| {
            projectionist_testkit::binary!()
                .command(dir.path())
                .args(["dead-letters", "retry", "--all"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a loser of the race failed: {}",
            stderr(&out)
        );
        let text = stdout(&out);
        applied += text.matches("applied and removed").count();
        for line in text.lines() {
            assert!(
                line.ends_with("applied and removed")
                    || line.ends_with("skipped, another process already retried or discarded it")
                    || line == "no dead letters to retry",
                "{line}"
            );
        }
    }
    // Each dead letter was applied exactly once, by one of them.
    assert_eq!(applied, 60);
    assert_eq!(count(dir.path(), "SELECT n FROM applied"), 60);
    assert_eq!(count(dir.path(), "SELECT count(*) FROM items"), 60);
    let after = &status_json(dir.path())[0];
    assert_eq!(
        (after["dead_letters"].as_i64(), after["errors"].as_i64()),
        (Some(0), Some(0)),
        "{after}"
    );
    assert!(after["last_error"].is_null(), "{after}");
}
