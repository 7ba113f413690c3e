//! Helpers shared by the PostgreSQL tests, over the test kit's URL and fresh schemas: a counting
//! projection that exposes duplicates, skips and out-of-order events, and checks.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use projectionist::backend::Store;
use projectionist::postgres::{PgHandlers, PgStore};
use projectionist::Checkpoint;
use projectionist_testkit::postgres as kit;

pub fn url() -> String {
    projectionist_testkit::postgres_url()
}

/// A raw connection (not through the library), with `search_path` set to `schema`.
pub async fn raw(schema: Option<&str>) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    kit::connect(schema).await
}

/// A fresh schema for one test, or `None` (after a loud SKIP) when PostgreSQL is not
/// reachable and skipping is allowed (the test kit's CI-or-skip rule).
pub async fn schema(name: &str) -> Option<String> {
    kit::fresh_schema(name, "pt").await.map(|(schema, _)| schema)
}

pub async fn drop_schema(schema: &str) {
    if let Ok(admin) = raw(None).await {
        kit::drop_schema(&admin, schema).await;
    }
}

pub async fn store(schema: &str, app: &str) -> PgStore {
    PgStore::builder(&url())
        .expect("url")
        .schema(schema)
        .application_name(app)
        .connect()
        .await
        .expect("connect")
}

/// Handles `A` and `B` (not `Noise`): records each event id with a count (duplicates show as
/// n > 1), and per stream the last version seen, how many arrived out of order, and how many
/// were applied.
pub fn counting_body() -> PgHandlers {
    let handler = |cx: &projectionist::postgres::PgBatch,
                   ev: &projectionist::Event,
                   _v: serde_json::Value| {
        cx.execute(
            "INSERT INTO seen (event_id, stream_id, stream_version, n) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (event_id) DO UPDATE SET n = seen.n + 1",
            (ev.event_id, ev.stream_id.clone(), ev.stream_version),
        );
        cx.execute(
            "INSERT INTO stream_progress AS p (stream_id, version, out_of_order, applied) VALUES ($1, $2, 0, 1) \
             ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, \
             out_of_order = p.out_of_order + (excluded.version <= p.version)::int, applied = p.applied + 1",
            (ev.stream_id.clone(), ev.stream_version),
        );
        Ok(())
    };
    PgHandlers::new()
        .setup(|cx| {
            cx.batch_execute(
                "CREATE TABLE IF NOT EXISTS seen (event_id uuid PRIMARY KEY, stream_id text NOT NULL, \
                   stream_version bigint NOT NULL, n int NOT NULL); \
                 CREATE TABLE IF NOT EXISTS stream_progress (stream_id text PRIMARY KEY, version bigint NOT NULL, \
                   out_of_order int NOT NULL, applied bigint NOT NULL);",
            );
            Ok(())
        })
        .reset(|cx| {
            cx.batch_execute("TRUNCATE seen, stream_progress");
            Ok(())
        })
        .on_json("A", handler)
        .on_json("B", handler)
}

/// What the counting projection saw, against the events table.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Tally {
    pub committed: i64,
    pub seen: i64,
    pub duplicates: i64,
    pub missing: i64,
    pub out_of_order: i64,
}

pub async fn tally(events_schema: &str, models: &tokio_postgres::Client, models_schema: &str) -> Tally {
    let events = raw(Some(events_schema)).await.expect("raw");
    let committed: i64 = events
        .query_one("SELECT count(*) FROM events WHERE event_type IN ('A', 'B')", &[])
        .await
        .unwrap()
        .get(0);
    let ids: Vec<uuid::Uuid> = events
        .query("SELECT event_id FROM events WHERE event_type IN ('A', 'B')", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let s = models_schema;
    let seen: i64 = models
        .query_one(&format!("SELECT count(*) FROM {s}.seen"), &[])
        .await
        .unwrap()
        .get(0);
    let duplicates: i64 = models
        .query_one(&format!("SELECT count(*) FROM {s}.seen WHERE n <> 1"), &[])
        .await
        .unwrap()
        .get(0);
    let present: i64 = models
        .query_one(
            &format!("SELECT count(*) FROM {s}.seen WHERE event_id = ANY($1)"),
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    let out_of_order: i64 = models
        .query_one(
            &format!("SELECT coalesce(sum(out_of_order), 0)::bigint FROM {s}.stream_progress"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    Tally {
        committed,
        seen,
        duplicates,
        missing: committed - present,
        out_of_order,
    }
}

/// The checkpoint of the newest committed event, whether or not it is readable yet.
pub async fn newest(events_schema: &str) -> Checkpoint {
    let c = raw(Some(events_schema)).await.expect("raw");
    c.query_opt(
        "SELECT xid, position FROM events ORDER BY xid DESC, position DESC LIMIT 1",
        &[],
    )
    .await
    .unwrap()
    .map_or(Checkpoint::START, |r| Checkpoint {
        txid: r.get(0),
        position: r.get(1),
    })
}

/// Waits until projection `name` in `store` has passed every committed event.
pub async fn caught_up(events_schema: &str, store: &PgStore, name: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let target = newest(events_schema).await;
    loop {
        if let Ok(Some(r)) = store.record(name, 0).await {
            if r.checkpoint >= target {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "projection {name} stuck at {} (target {target}) after {timeout:?}",
                    r.checkpoint
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
