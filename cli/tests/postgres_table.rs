//! A foreign PostgreSQL events table as the source of the real `projectionist` binary: the
//! example projections read from it equal the same projections read from Projectionist's own
//! events table, and a daemon SIGKILLed five times at random moments ends with the read model
//! of a clean rebuild.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use projectionist::postgres::tokio_postgres;
use projectionist_testkit as kit;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

const EVENTS: &str = "20000";

/// The tables of the example config, as sorted text rows.
const TABLES: &[(&str, &str)] = &[
    (
        "order_summary",
        "order_id, customer_id, customer_name, status, item_count, round(total_amount::numeric, 6), carrier, tracking_number, version",
    ),
    ("order_items", "order_id, line, item_name, quantity, round(unit_price::numeric, 6)"),
    (
        "orders_by_customer",
        "customer_id, customer_name, orders, delivered, cancelled, round(ordered_value::numeric, 6)",
    ),
    ("revenue_by_carrier", "carrier, shipped, delivered, round(revenue::numeric, 6)"),
];

fn bin(dir: &Path) -> Command {
    let mut c = Command::from_std(kit::binary!().command(dir));
    c.timeout(Duration::from_secs(300));
    c
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn rows(client: &tokio_postgres::Client, schema: &str) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for (table, cols) in TABLES {
        let sql = format!("SELECT '{table}', {cols} FROM {schema}.{table} ORDER BY 2, 3");
        for m in client.simple_query(&sql).await.expect("query") {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                all.push((0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect());
            }
        }
    }
    all
}

/// `postgres://…?schema=S` for a schema of read models.
fn db(schema: &str) -> String {
    kit::postgres::url_with_schema(schema)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_table_projects_like_the_events_table_and_survives_sigkills() {
    let Some((src, client)) = kit::postgres::fresh_schema("table_src", "pcli").await else {
        return;
    };
    let dir = TempDir::new().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("projectionist.toml"),
        include_str!("../../examples/projectionist.toml"),
    )
    .expect("config");

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
    let expected = rows(&client, &reference).await;
    assert!(
        expected.len() > 1000,
        "the reference read model is too small: {}",
        expected.len()
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
        rows(&client, &clean).await,
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
        rows(&client, &crash).await,
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
    for schema in [&src, &reference, &clean, &crash] {
        kit::postgres::drop_schema(&client, schema).await;
    }
}
