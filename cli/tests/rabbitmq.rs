//! The CLI over a RabbitMQ source: `source = "amqp://…"` in the config declares each
//! projection's queue, `run --once` drains it into the SQLite read model, a second delivery of
//! the same message id is dropped, and `rebuild` is refused (a queue cannot replay) without
//! touching the read model. The crash test with SIGKILLs is tests/rabbitmq_crash.rs.
//!
//! RabbitMQ from `PROJECTIONIST_TEST_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`); required under `CI=true`.

mod examples_support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use examples_support::ok;
use projectionist::rabbitmq::amqp_connection;
use projectionist::rabbitmq::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueDeleteOptions,
};
use projectionist::rabbitmq::lapin::BasicProperties;
use projectionist::sqlite::rusqlite::Connection;
use projectionist_testkit as kit;
use serde_json::json;

fn cli(dir: &Path, source: &str, args: &[&str]) -> Output {
    kit::binary!()
        .command(dir)
        .env("PROJECTIONIST_SOURCE", source)
        .args(["--database", "sqlite://rm.db", "--config", "projectionist.toml"])
        .args(args)
        .output()
        .expect("run projectionist")
}

const CONFIG: &str = r#"
[[projection]]
name = "totals"
subject = "orders.#"
setup = "CREATE TABLE IF NOT EXISTS totals (stream_id TEXT PRIMARY KEY, n INTEGER NOT NULL, amount INTEGER NOT NULL)"

[projection.handlers]
Paid = "INSERT INTO totals (stream_id, n, amount) VALUES (:stream_id, 1, :data.amount) ON CONFLICT (stream_id) DO UPDATE SET n = n + 1, amount = amount + excluded.amount"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drains_a_rabbitmq_queue_once_and_refuses_rebuilds() {
    let base = kit::amqp_url();
    let reached = match tokio::time::timeout(Duration::from_secs(5), amqp_connection(&base)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    };
    let Some(conn) = kit::require_service(
        "the_cli_drains_a_rabbitmq_queue_once_and_refuses_rebuilds",
        kit::Service::RabbitMq,
        reached,
    ) else {
        return;
    };
    let tag = format!("pt_cli_{}", std::process::id());
    let source = kit::with_params(&base, &format!("exchange={tag}&queue_prefix={tag}"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("config");

    // Opening the source declares the exchange and the projection's queue.
    ok(&cli(dir.path(), &source, &["init"]));
    ok(&cli(dir.path(), &source, &["status"]));

    // 300 payments on 30 streams, one of them delivered twice (same message id), and one
    // message on a subject the projection does not bind.
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let mut messages = Vec::new();
    for i in 0..300u32 {
        let stream = format!("order-{}", i % 30);
        let body = json!({ "stream_id": stream, "stream_version": i / 30 + 1, "type": "Paid",
                           "data": { "amount": i } });
        messages.push(("orders.paid", format!("msg-{i}"), body));
    }
    messages.push(messages[7].clone());
    messages.push((
        "invoices.sent",
        "other".into(),
        json!({ "stream_id": "x", "stream_version": 1, "type": "Paid", "data": { "amount": 1000000 } }),
    ));
    for (key, id, body) in &messages {
        let props = BasicProperties::default().with_message_id(id.clone().into());
        let body = serde_json::to_vec(body).expect("json");
        ch.basic_publish(&tag, key, BasicPublishOptions::default(), &body, props)
            .await
            .expect("publish")
            .await
            .expect("confirm");
    }

    ok(&cli(dir.path(), &source, &["run", "--once"]));
    let db = Connection::open(dir.path().join("rm.db")).expect("read model");
    let (streams, n, amount): (i64, i64, i64) = db
        .query_row("SELECT count(*), sum(n), sum(amount) FROM totals", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("totals");
    assert_eq!(
        (streams, n, amount),
        (30, 300, (0..300).sum::<i64>()),
        "each payment once"
    );

    // A rebuild would need the queue to replay: refused, with nothing changed.
    let refused = cli(dir.path(), &source, &["rebuild", "totals", "--yes"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot replay"));
    assert!(
        !String::from_utf8_lossy(&refused.stderr).contains("guest:guest"),
        "no password"
    );
    let still: i64 = db
        .query_row("SELECT sum(n) FROM totals", [], |r| r.get(0))
        .expect("totals");
    assert_eq!(still, 300);

    let _ = ch
        .queue_delete(&format!("{tag}.totals"), QueueDeleteOptions::default())
        .await;
    let _ = ch.exchange_delete(&tag, ExchangeDeleteOptions::default()).await;
}
