//! A foreign PostgreSQL events table as the source of the real `projectionist` binary: the
//! example projections read from it equal the same projections read from Projectionist's own
//! events table, and a daemon SIGKILLed five times at random moments ends with the read model
//! of a clean rebuild.

mod examples_support;

use std::process::Stdio;
use std::time::Duration;

use examples_support::{bin, example_dir, ok, pg_all, TABLES};
use projectionist_testkit as kit;
use rand::{Rng, SeedableRng};

const EVENTS: &str = "20000";

/// `postgres://…?schema=S` for a schema of read models.
fn db(schema: &str) -> String {
    kit::postgres::url_with_schema(schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_table_projects_like_the_events_table_and_survives_sigkills() {
    let Some((src, client)) = kit::postgres::fresh_schema("table_src", "pcli").await else {
        return;
    };
    let dir = example_dir();
    let d = dir.path();

    // The orders workload in Projectionist's own events table, then copied into a table of the
    // app's own shape: payload as text holding JSON, its own column names, a bigserial.
    let workload = ok(&bin(d)
        .args(["generate", "--events", EVENTS, "--seed", "11"])
        .output()
        .expect("generate"));
    ok(&bin(d)
        .args(["import", "-", "--database", &db(&src)])
        .write_stdin(workload)
        .output()
        .expect("import"));
    client
        .batch_execute(&format!(
            "CREATE TABLE {src}.app_events (seq bigserial PRIMARY KEY, aggregate_id text NOT NULL, \
               aggregate_version integer NOT NULL, name text NOT NULL, payload text NOT NULL, \
               created_at timestamp NOT NULL); \
             INSERT INTO {src}.app_events (aggregate_id, aggregate_version, name, payload, created_at) \
               SELECT stream_id, stream_version, event_type, data::text, recorded_at AT TIME ZONE 'UTC' \
               FROM {src}.events ORDER BY position;"
        ))
        .await
        .expect("the app's table");
    let source = format!(
        "table+{}",
        kit::with_params(
            &kit::postgres_url(),
            &format!(
                "table={src}.app_events&position=seq&stream_id=aggregate_id&stream_version=aggregate_version\
                 &event_type=name&data=payload&recorded_at=created_at"
            )
        )
    );

    // Reference: the same projections read from the events table itself.
    let Some((reference, _)) = kit::postgres::fresh_schema("table_ref", "pcli").await else {
        return;
    };
    ok(&bin(d)
        .args(["run", "--once", "--database", &db(&src)])
        .output()
        .expect("run on the events table"));
    client
        .batch_execute(&format!(
            "CREATE SCHEMA {reference}; {}",
            TABLES
                .iter()
                .map(|(t, _)| format!("CREATE TABLE {reference}.{t} AS SELECT * FROM {src}.{t};"))
                .collect::<String>()
        ))
        .await
        .expect("keep the reference");
    let expected = pg_all(&client, &reference).await;
    assert!(
        expected[0].len() > 1000,
        "the reference read model is too small: {} orders",
        expected[0].len()
    );

    // A clean run from the foreign table gives the same read model.
    let Some((clean, _)) = kit::postgres::fresh_schema("table_clean", "pcli").await else {
        return;
    };
    ok(&bin(d)
        .args(["run", "--once", "--database", &db(&clean), "--source", &source])
        .output()
        .expect("run on the foreign table"));
    assert_eq!(
        pg_all(&client, &clean).await,
        expected,
        "foreign table vs events table"
    );

    // The daemon on the foreign table, SIGKILLed at random moments, then finished.
    let Some((crash, _)) = kit::postgres::fresh_schema("table_crash", "pcli").await else {
        return;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut kills = 0;
    for round in 0..5 {
        let mut child = kit::binary!()
            .command(d)
            .args(["run", "--database", &db(&crash), "--source", &source])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run");
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..1500)));
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let status = child.wait().expect("wait");
        let applied: i64 = client
            .query_one(&format!("SELECT count(*) FROM {crash}.order_summary"), &[])
            .await
            .map_or(0, |r| r.get(0));
        eprintln!("round {round}: daemon ended with {status:?}; {applied} orders in the read model");
    }
    assert_eq!(kills, 5, "every round must kill a running daemon");
    ok(&bin(d)
        .args(["run", "--once", "--database", &db(&crash), "--source", &source])
        .output()
        .expect("finish"));
    assert_eq!(
        pg_all(&client, &crash).await,
        expected,
        "after 5 SIGKILLs vs a clean run"
    );

    let status = ok(&bin(d)
        .args(["status", "--json", "--database", &db(&crash), "--source", &source])
        .output()
        .expect("status"));
    let status: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    for p in status.as_array().expect("array") {
        assert_eq!(p["lag_events"], 0, "{p}");
    }

    // Rebuilds replay the foreign table: in place, and blue/green.
    ok(&bin(d)
        .args([
            "rebuild",
            "order_summary",
            "--yes",
            "--database",
            &db(&crash),
            "--source",
            &source,
        ])
        .output()
        .expect("rebuild"));
    ok(&bin(d)
        .args([
            "rebuild",
            "orders_by_customer",
            "--blue-green",
            "--yes",
            "--database",
            &db(&crash),
            "--source",
            &source,
        ])
        .output()
        .expect("blue/green rebuild"));
    assert_eq!(pg_all(&client, &crash).await, expected, "after the rebuilds");

    // A new row of the app's: a daemon picks it up, and `wait` sees it applied.
    let mut daemon = kit::binary!()
        .command(d)
        .args(["run", "--database", &db(&crash), "--source", &source])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    let position: i64 = client
        .query_one(
            &format!(
                "INSERT INTO {src}.app_events (aggregate_id, aggregate_version, name, payload, created_at) \
                 VALUES ('ORDER-NEW', 1, 'OrderCreated', \
                   '{{\"order_id\": \"ORDER-NEW\", \"customer_id\": \"C-1\", \"customer_name\": \"Ada\"}}', now()) \
                 RETURNING seq"
            ),
            &[],
        )
        .await
        .expect("insert")
        .get(0);
    let waited = bin(d)
        .args([
            "wait",
            "order_summary",
            "--position",
            &position.to_string(),
            "--timeout",
            "20s",
            "--database",
            &db(&crash),
            "--source",
            &source,
        ])
        .output()
        .expect("wait");
    daemon.kill().expect("stop the daemon");
    let _ = daemon.wait();
    ok(&waited);
    let name: String = client
        .query_one(
            &format!("SELECT customer_name FROM {crash}.order_summary WHERE order_id = 'ORDER-NEW'"),
            &[],
        )
        .await
        .expect("the new order")
        .get(0);
    assert_eq!(name, "Ada");

    // `events` reads the foreign table too.
    let listed = ok(&bin(d)
        .args([
            "events",
            "--json",
            "--stream",
            "ORDER-NEW",
            "--database",
            &db(&crash),
            "--source",
            &source,
        ])
        .output()
        .expect("events"));
    let lines: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{listed}");
    assert_eq!(lines[0]["type"], "OrderCreated");
    assert_eq!(lines[0]["position"], position);

    for schema in [&src, &reference, &clean, &crash] {
        kit::postgres::drop_schema(&client, schema).await;
    }
}
