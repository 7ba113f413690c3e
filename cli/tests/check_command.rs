//! `projectionist check`: each class of problem found and named (exit 2), warnings about event
//! types, and a clean config (exit 0); on SQLite, with the real binary.

mod examples_support;

use examples_support::{bin, example_dir, text, CONFIG};

const HEADER: &str = "projectionist.toml: 3 projection(s), keys valid
PROJECTION          HANDLES
order_summary       ItemAdded, OrderCancelled, OrderConfirmed, OrderCreated, OrderDelivered, OrderShipped
orders_by_customer  ItemAdded, OrderCancelled, OrderCreated, OrderDelivered
revenue_by_carrier  ItemAdded, OrderDelivered, OrderShipped
";

/// `projectionist check` in `dir`: its exit code, standard output and standard error.
fn check_in(dir: &std::path::Path) -> (Option<i32>, String, String) {
    let out = bin(dir).arg("check").output().expect("run");
    let (stdout, stderr) = text(&out);
    (out.status.code(), stdout, stderr)
}

fn check_with(config: &str) -> (Option<i32>, String, String) {
    let dir = example_dir();
    std::fs::write(dir.path().join("projectionist.toml"), config).expect("write config");
    check_in(dir.path())
}

#[test]
fn a_clean_config_lists_the_handled_types_and_exits_0_without_a_database() {
    let dir = example_dir();
    let (code, stdout, stderr) = check_in(dir.path());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{HEADER}no database at sqlite://projectionist.db: event types not compared with the log\n\
             ok: every statement prepares on SQLite\n"
        )
    );
    // Nothing was created: the statements ran on a throwaway database.
    assert!(!dir.path().join("projectionist.db").exists());
}

#[test]
fn event_types_never_stored_and_stored_types_nobody_handles_are_warned_about() {
    let dir = example_dir();
    for (stream, ty) in [
        ("ORDER-1", "OrderCreated"),
        ("ORDER-1", "ItemAdded"),
        ("ORDER-1", "OrderRefunded"),
    ] {
        let out = bin(dir.path())
            .args(["append", "--stream", stream, "--type", ty, "--data", "{}"])
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let (code, stdout, stderr) = check_in(dir.path());
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{HEADER}events table of sqlite://projectionist.db: 3 event type(s), 3 event(s)\n\
             warning: projection order_summary handles event types that never occur in the events table: OrderCancelled, OrderConfirmed, OrderDelivered, OrderShipped\n\
             warning: projection orders_by_customer handles event types that never occur in the events table: OrderCancelled, OrderDelivered\n\
             warning: projection revenue_by_carrier handles event types that never occur in the events table: OrderDelivered, OrderShipped\n\
             warning: event type OrderRefunded (1 event(s)) is handled by no projection\n\
             ok: every statement prepares on SQLite\n"
        )
    );
}

#[test]
fn statements_the_database_rejects_are_named_by_file_projection_key_and_statement() {
    let config = CONFIG
        .replace(
            "INSERT INTO order_summary (order_id,",
            "INSERT INTO order_summry (order_id,",
        )
        .replace(
            "SET status = 'shipped', carrier",
            "SET status = 'shipped', carier",
        )
        .replace(
            "UPDATE orders_by_customer SET delivered = delivered + 1",
            "UPDATE orders_by_customer SET delivered = delivred + 1",
        )
        .replace(
            "CREATE TABLE IF NOT EXISTS revenue_by_carrier (",
            "CREATE TABLE IF NOT EXISTS revenue_by_carrier ((",
        );
    let (code, stdout, stderr) = check_with(&config);
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "problem: projectionist.toml: projection order_summary: key `handlers.OrderCreated`: handler for OrderCreated does not prepare\n    INSERT INTO order_summry (order_id, customer_id, customer_name, status, version)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("  error: no such table: order_summry\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "problem: projectionist.toml: projection orders_by_customer: key `handlers.OrderDelivered`: handler for OrderDelivered does not prepare\n    UPDATE orders_by_customer SET delivered = delivred + 1\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("error: no such column: delivred"), "{stdout}");
    assert!(
        stdout.contains("problem: projectionist.toml: projection revenue_by_carrier: key `setup`: setup statement 1 of 2 failed\n    CREATE TABLE IF NOT EXISTS revenue_by_carrier ((\n"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("problem: ").count(), 4, "{stdout}");
    assert!(
        stderr.contains("error: 4 problem(s) found; nothing was run"),
        "{stderr}"
    );
}

#[test]
fn unknown_parameters_and_unknown_keys_are_named() {
    let (code, stdout, stderr) = check_with(&CONFIG.replace(":data.carrier WHERE", ":dta.carrier WHERE"));
    assert_eq!(code, Some(2), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        "problem: projectionist.toml: projection revenue_by_carrier: key `handlers.OrderShipped[0]`: invalid SQL: \
         unknown parameter `:dta.carrier`; known parameters: :stream_id, :stream_version, :position, :event_type, \
         :event_id, :recorded_at, :data, :data.PATH, :metadata, :metadata.PATH\n"
    );

    let (code, stdout, _) = check_with(&CONFIG.replace("priority = 10", "priorty = 10"));
    assert_eq!(code, Some(2));
    assert!(
        stdout.starts_with("problem: projectionist.toml: projection order_summary: key `priorty`: unknown key; expected one of: name, setup,"),
        "{stdout}"
    );

    let (code, stdout, _) = check_with(&format!("{CONFIG}\n[http]\nlisen = \"127.0.0.1:9464\"\n"));
    assert_eq!(code, Some(2));
    assert!(
        stdout.starts_with("problem: projectionist.toml: key `http.lisen`: unknown key"),
        "{stdout}"
    );

    let (code, stdout, _) = check_with("[[projection]]\nname = \"x\"\nhandlers = 3\n[oops");
    assert_eq!(code, Some(2));
    assert!(
        stdout.starts_with("problem: projectionist.toml: not valid TOML: "),
        "{stdout}"
    );
}

#[test]
fn statements_are_checked_against_the_database_itself_and_nothing_is_kept() {
    let dir = example_dir();
    let d = dir.path();
    // The database holds a table of the app's that the projection's setup and handler use.
    let out = bin(d).arg("init").output().expect("init");
    assert!(out.status.success(), "{}", text(&out).1);
    let db = d.join("projectionist.db");
    let conn = projectionist::sqlite::rusqlite::Connection::open(&db).expect("open");
    conn.execute_batch("CREATE TABLE app_customers (id TEXT PRIMARY KEY, tier TEXT NOT NULL)")
        .expect("the app's table");
    let config = "[[projection]]\nname = \"tiers\"\n\
        setup = \"CREATE VIEW IF NOT EXISTS tier_view AS SELECT tier FROM app_customers\"\n\
        [projection.handlers]\n\
        OrderCreated = \"UPDATE app_customers SET tier = 'gold' WHERE id = :data.customer_id\"\n";
    std::fs::write(d.join("projectionist.toml"), config).expect("config");
    let (code, stdout, stderr) = check_in(d);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: every statement prepares on SQLite"),
        "{stdout}"
    );
    // The setup ran in a transaction that was rolled back: no view, no checkpoint.
    let views: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'tier_view'",
            [],
            |r| r.get(0),
        )
        .expect("views");
    assert_eq!(views, 0, "check kept what the setup created");
    let checkpoints: i64 = conn
        .query_row(
            "SELECT count(*) FROM projection_checkpoints WHERE projection = 'tiers'",
            [],
            |r| r.get(0),
        )
        .expect("checkpoints");
    assert_eq!(checkpoints, 0);
    // A table the database lacks is named as a problem.
    std::fs::write(
        d.join("projectionist.toml"),
        config.replace("app_customers", "app_clients"),
    )
    .expect("config");
    let (code, stdout, _) = check_in(d);
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("app_clients"), "{stdout}");
}
