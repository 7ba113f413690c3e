//! `projectionist test --database postgres://…`: each test in a fresh PostgreSQL schema,
//! dropped after it. Needs PostgreSQL (a failure under CI=true when it is missing).

mod examples_support;

use examples_support::{bin, example_dir, text};
use projectionist_testkit::{postgres, require_service, Service};

#[tokio::test]
async fn the_example_suite_passes_on_postgres_in_schemas_it_drops() {
    let test = "the_example_suite_passes_on_postgres_in_schemas_it_drops";
    let Some(client) = require_service(test, Service::Postgres, postgres::connect(None).await) else {
        return;
    };
    let dir = example_dir();
    let schemas = "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'projectionist_test_%'";
    let before: i64 = client.query_one(schemas, &[]).await.expect("count").get(0);
    let mut cmd = bin(dir.path());
    cmd.args(["test", "--database", &projectionist_testkit::postgres_url()]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("\n4 passed, 0 failed ("), "{stdout}");
    assert!(stdout.trim_end().ends_with(", PostgreSQL)"), "{stdout}");
    let after: i64 = client.query_one(schemas, &[]).await.expect("count").get(0);
    assert_eq!(after, before, "every test schema is dropped");
}

#[tokio::test]
async fn check_prepares_on_the_postgres_database_and_keeps_nothing() {
    let Some((schema, client)) = postgres::fresh_schema("check_keeps_nothing", "pcli").await else {
        return;
    };
    let dir = example_dir();
    let url = postgres::url_with_schema(&schema);
    let mut cmd = bin(dir.path());
    cmd.args(["check", "--database", &url]);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("ok: every statement prepares on PostgreSQL"),
        "{stdout}"
    );
    // The setup ran in a transaction that was rolled back: no read-model table is left.
    let kept: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name IN ('order_summary', 'order_items', 'orders_by_customer', 'revenue_by_carrier')",
            &[&schema],
        )
        .await
        .expect("tables")
        .get(0);
    assert_eq!(kept, 0);
    postgres::drop_schema(&client, &schema).await;
}
