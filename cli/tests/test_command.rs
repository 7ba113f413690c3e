//! `projectionist test`: projection tests in TOML, run by the real binary in a temporary
//! folder, on a throwaway SQLite database (PostgreSQL mode: postgres_test_command.rs).

mod examples_support;

use examples_support::{bin, example_dir, text};
use tempfile::TempDir;

const ORDER_1_CONFIRMED: &str = r#"
[[test]]
name = "a confirmed order"
projection = "order_summary"
given = [
    { stream_id = "ORDER-1", type = "OrderCreated", data = { customer_id = "C-1", customer_name = "Ada" } },
    { stream_id = "ORDER-1", type = "OrderConfirmed", data = {} },
    { stream_id = "ORDER-2", type = "OrderCreated", data = { customer_id = "C-2", customer_name = "Bob" } },
]
"#;

#[test]
fn the_example_suite_passes_with_one_line_per_test_and_a_summary() {
    let dir = example_dir();
    let out = bin(dir.path()).arg("test").output().expect("run");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for line in &lines[..4] {
        assert!(line.starts_with("ok      projectionist.test.toml: "), "{line}");
    }
    assert!(lines[4].starts_with("4 passed, 0 failed ("), "{stdout}");
    assert!(lines[4].ends_with(", SQLite)"), "{stdout}");
    // The throwaway database is not the --database: nothing is written here.
    assert!(!dir.path().join("projectionist.db").exists());
}

#[test]
fn a_failing_test_prints_the_diff_and_the_event_that_led_there_and_exits_1() {
    let dir = example_dir();
    let tests = format!(
        "{ORDER_1_CONFIRMED}{}",
        r#"
[[test.expect]]
query = "SELECT order_id, status FROM order_summary ORDER BY order_id"
rows = [["ORDER-1", "created"], ["ORDER-2", "created"]]
"#
    );
    std::fs::write(dir.path().join("orders.test.toml"), tests).expect("write");
    let out = bin(dir.path())
        .args(["test", "orders.test.toml"])
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let expected = r#"FAIL    orders.test.toml: a confirmed order
  rows differ for
    SELECT order_id, status FROM order_summary ORDER BY order_id
    columns: order_id, status
    + ["ORDER-1", "confirmed"]   (actual, not expected)
    - ["ORDER-1", "created"]   (expected, missing)
      ["ORDER-2", "created"]
    ["ORDER-1", "confirmed"] appeared after given[1]: OrderConfirmed on ORDER-1 data {}
    ["ORDER-1", "created"] was there until given[1] changed it: OrderConfirmed on ORDER-1 data {}
0 passed, 1 failed ("#;
    // The first line ends with the test's time, which varies: compare around it.
    let (head, rest) = expected.split_once('\n').expect("two parts");
    let (first, body) = stdout.split_once('\n').expect("output lines");
    assert!(first.starts_with(head), "{stdout}");
    assert!(body.starts_with(rest), "{stdout}");
    assert!(stderr.contains("1 of 1 test(s) failed"), "{stderr}");
}

#[test]
fn dead_letters_are_expected_exactly() {
    let dir = example_dir();
    let given = r#"
[[test]]
name = "a bad item"
projection = "order_summary"
given = [
    { stream_id = "ORDER-3", type = "OrderCreated", data = { customer_id = "C-3", customer_name = "Alan" } },
    { stream_id = "ORDER-3", type = "ItemAdded", data = { item_name = "Broken" } },
]
[[test.expect]]
query = "SELECT order_id, item_count FROM order_summary"
rows = [["ORDER-3", 0]]
"#;
    let expected = format!(
        "{given}{}",
        r#"
[[test.expect]]
dead_letter = { stream_id = "ORDER-3", type = "ItemAdded", error = "quantity" }
"#
    );
    std::fs::write(dir.path().join("expected.test.toml"), expected).expect("write");
    let out = bin(dir.path())
        .args(["test", "expected.test.toml"])
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed, 0 failed"), "{stdout}");

    // Without the expectation the same dead letter fails the test, and shows its event.
    std::fs::write(dir.path().join("unexpected.test.toml"), given).expect("write");
    let out = bin(dir.path())
        .args(["test", "unexpected.test.toml"])
        .output()
        .expect("run");
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "  dead letters differ: expected 0, got 1\n    got: ItemAdded on ORDER-3 (version 2, position 2) data {\"item_name\":\"Broken\"}\n      error: ItemAdded handler, statement 1 of 2: NOT NULL constraint failed: order_items.quantity\n"
        ),
        "{stdout}"
    );
}

#[test]
fn an_error_is_expected_and_an_unexpected_one_names_its_event() {
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(
        dir.path().join("projectionist.toml"),
        r#"
[[projection]]
name = "totals"
error_policy = "stop"
setup = "CREATE TABLE IF NOT EXISTS totals (id TEXT PRIMARY KEY, n INTEGER NOT NULL)"
[projection.handlers]
Added = "INSERT INTO totals (id, n) VALUES (:stream_id, :data.n) ON CONFLICT (id) DO UPDATE SET n = totals.n + excluded.n"
"#,
    )
    .expect("write config");
    std::fs::write(
        dir.path().join("events.jsonl"),
        "{\"stream_id\":\"a\",\"type\":\"Added\",\"data\":{\"n\":1}}\n{\"stream_id\":\"a\",\"type\":\"Added\",\"data\":{}}\n{\"stream_id\":\"b\",\"type\":\"Added\",\"data\":{\"n\":5}}\n",
    )
    .expect("write events");
    std::fs::write(
        dir.path().join("stop.test.toml"),
        r#"
[[test]]
name = "stops at the event without n"
projection = "totals"
given_file = "events.jsonl"
[[test.expect]]
error = "NOT NULL"
[[test.expect]]
query = "SELECT id, n FROM totals"
rows = [["a", 1]]

[[test]]
name = "stops without saying so"
projection = "totals"
given_file = "events.jsonl"
[[test.expect]]
query = "SELECT id, n FROM totals"
rows = [["a", 1]]
"#,
    )
    .expect("write tests");
    let out = bin(dir.path()).arg("test").output().expect("run");
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with("ok      stop.test.toml: stops at the event without n ("),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "  the projection stopped with an error (expect it with `error = \"...\"`):\n    Added handler: NOT NULL constraint failed: totals.n\n    at given[1]: Added on a data {}\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");
}

#[test]
fn update_records_the_rows_of_a_new_test_and_says_so() {
    let dir = example_dir();
    let path = dir.path().join("new.test.toml");
    let tests = format!(
        "{ORDER_1_CONFIRMED}{}",
        "\n# the rows are to be recorded\n[[test.expect]]\nquery = \"SELECT order_id, status, version FROM order_summary ORDER BY order_id\"\n"
    );
    std::fs::write(&path, &tests).expect("write");

    // Without --update a query without rows fails, and shows what --update would record.
    let out = bin(dir.path())
        .args(["test", "new.test.toml"])
        .output()
        .expect("run");
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("run with --update to record these 2 row(s)"),
        "{stdout}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), tests);

    let out = bin(dir.path())
        .args(["test", "--update", "new.test.toml"])
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("updated new.test.toml: a confirmed order ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("wrote 2 row(s) into expect[0] (`rows`) of new.test.toml; review them"),
        "{stdout}"
    );
    let written = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        written,
        format!(
            "{tests}rows = [\n    [\"ORDER-1\", \"confirmed\", 2],\n    [\"ORDER-2\", \"created\", 1],\n]\n"
        )
    );
    // The recorded test now passes as it is.
    let out = bin(dir.path())
        .args(["test", "new.test.toml"])
        .output()
        .expect("run");
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}

#[test]
fn junit_output_reports_each_test_and_its_failure() {
    let dir = example_dir();
    let failing = format!(
        "{ORDER_1_CONFIRMED}{}",
        "[[test.expect]]\nquery = \"SELECT count(*) FROM order_summary\"\nrows = [[3]]\n"
    );
    std::fs::write(dir.path().join("failing.test.toml"), failing).expect("write");
    let out = bin(dir.path())
        .args(["test", "--junit", "report.xml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let xml = std::fs::read_to_string(dir.path().join("report.xml")).expect("the report");
    let doc = roxmltree::Document::parse(&xml).expect("the report is XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("5"));
    assert_eq!(root.attribute("failures"), Some("1"));
    let suites: Vec<_> = root.children().filter(|n| n.has_tag_name("testsuite")).collect();
    let names: Vec<_> = suites.iter().map(|s| s.attribute("name")).collect();
    assert_eq!(
        names,
        vec![Some("failing.test.toml"), Some("projectionist.test.toml")]
    );
    let cases: Vec<_> = suites[0]
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 1);
    assert_eq!(cases[0].attribute("name"), Some("a confirmed order"));
    let failure = cases[0]
        .children()
        .find(|n| n.has_tag_name("failure"))
        .expect("a failure element");
    assert_eq!(failure.attribute("message"), Some("rows differ for"));
    assert!(
        failure
            .text()
            .unwrap_or_default()
            .contains("+ [2]   (actual, not expected)\n  - [3]   (expected, missing)"),
        "{xml}"
    );
    let passed = suites[1]
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .count();
    assert_eq!(passed, 4);
    assert_eq!(suites[1].attribute("failures"), Some("0"));
}

#[test]
fn the_quickstart_writes_tests_that_pass() {
    let dir = TempDir::new().expect("tempdir");
    let out = bin(dir.path())
        .args(["quickstart", "--events", "50"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out).1);
    let out = bin(dir.path()).arg("test").output().expect("run");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("\n4 passed, 0 failed ("), "{stdout}");
}

#[test]
fn a_bad_test_file_is_a_usage_error_naming_the_file_and_key() {
    let dir = example_dir();
    std::fs::write(
        dir.path().join("bad.test.toml"),
        "[[test]]\nname = \"x\"\nprojection = \"order_summary\"\nexpected = []\n",
    )
    .expect("write");
    let out = bin(dir.path())
        .args(["test", "bad.test.toml"])
        .output()
        .expect("run");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bad.test.toml: not a valid test file"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `expected`"), "{stderr}");
}
