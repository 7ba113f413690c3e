//! Table sources on PostgreSQL: a foreign table of its own shape, with no `xid` column, read
//! gap-free under concurrent writers (long-held, rolled-back and multi-row transactions), the
//! same torture with the gap guard off (which must skip, to show the test can fail), and the
//! setup errors of bad mappings.
#![cfg(feature = "postgres")]

#[path = "postgres_common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use projectionist::backend::Store;
use projectionist::postgres::PgProjection;
use projectionist::table::PgTableSource;
use projectionist::{Engine, Error};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

const ROUNDS: usize = 20;
const WRITERS: usize = 8;
const TXNS: usize = 4;

/// The foreign table: a shape of its own (an app's), positions from a bigserial (CACHE 1).
const FOREIGN: &str = "CREATE TABLE ledger ( \
    id bigserial PRIMARY KEY, aggregate text NOT NULL, version bigint NOT NULL, kind text NOT NULL, \
    body jsonb NOT NULL, uid uuid NOT NULL DEFAULT gen_random_uuid(), at timestamptz NOT NULL DEFAULT now(), \
    UNIQUE (aggregate, version))";

/// A connection to `schema` (created), with the foreign table in it.
async fn foreign(schema: &str) -> tokio_postgres::Client {
    let raw = common::raw(Some(schema)).await.expect("connect");
    raw.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path = {schema}; {FOREIGN}"
    ))
    .await
    .expect("foreign table");
    raw
}

fn source_url(schema: &str, extra: &str) -> String {
    let base = projectionist_testkit::with_params(
        &common::url(),
        &format!(
            "table={schema}.ledger&position=id&stream_id=aggregate&stream_version=version&event_type=kind\
             &data=body&event_id=uid&recorded_at=at{extra}"
        ),
    );
    format!("table+{base}")
}

async fn open(url: &str) -> projectionist::Result<PgTableSource> {
    PgTableSource::open(projectionist::table::TableMapping::from_url(url)?).await
}

/// One writer's round: `TXNS` transactions on its own stream, some held open, some rolled
/// back, some with several rows. Returns the events it committed.
async fn writer(schema: String, w: usize, round: usize, version: &mut i64) -> i64 {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64((round * 1000 + w) as u64);
    let mut c = common::raw(Some(&schema)).await.expect("connect");
    let stream = format!("S-{w}");
    let mut committed = 0;
    for _ in 0..TXNS {
        let kind = rng.gen_range(0..5);
        let rows = if kind == 2 { rng.gen_range(2..5) } else { 1 };
        let tx = c.transaction().await.expect("begin");
        for i in 0..rows {
            let event_type = if kind == 4 && i == 0 { "Noise" } else { "A" };
            tx.execute(
                "INSERT INTO ledger (aggregate, version, kind, body) VALUES ($1, $2, $3, jsonb_build_object('w', $4::int))",
                &[&stream, &(*version + 1 + i as i64), &event_type, &(w as i32)],
            )
            .await
            .expect("insert");
        }
        if kind == 1 || kind == 3 {
            // Holds a low position open while later ones commit.
            let ms = rng.gen_range(5..60) as f64 / 1000.0;
            tx.execute("SELECT pg_sleep($1)", &[&ms]).await.expect("sleep");
        }
        if kind == 3 {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            *version += rows as i64;
            committed += if kind == 4 { rows as i64 - 1 } else { rows as i64 };
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..8))).await;
    }
    committed
}

struct Outcome {
    committed: i64,
    seen: i64,
    duplicates: i64,
    missing: i64,
    out_of_order: i64,
    holes: u64,
}

/// Runs the torture with the gap guard on or off, and tallies what the projection saw.
async fn torture(name: &str, guard: bool) -> Option<Outcome> {
    let schema = common::schema(name).await?;
    let raw = foreign(&schema).await;
    let source = open(&source_url(&schema, if guard { "" } else { "&gap_guard=off" }))
        .await
        .expect("open the table source");
    let store = common::store(&schema, "pt-table-torture").await;
    let engine = Arc::new(
        Engine::new(Arc::new(source.clone()), Arc::new(store.clone()))
            .with(PgProjection::new("seen", common::counting_body()).batch_size(25))
            .expect("projection"),
    );
    let (stop, stop_rx) = watch::channel(false);
    let runner = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_until(projectionist::when_true(stop_rx)).await }
    });
    let started = Instant::now();
    let mut versions = [0i64; WRITERS];
    let mut total = 0;
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let schema = schema.clone();
                let mut v = versions[w];
                tokio::spawn(async move {
                    let n = writer(schema, w, round, &mut v).await;
                    (n, v)
                })
            })
            .collect();
        for (w, t) in tasks.into_iter().enumerate() {
            let (n, v) = t.await.expect("writer");
            total += n;
            versions[w] = v;
        }
        // Caught up: the checkpoint reached the newest position.
        let newest: i64 = raw
            .query_one("SELECT coalesce(max(id), 0) FROM ledger", &[])
            .await
            .expect("max")
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let at = store
                .record("seen", 0)
                .await
                .ok()
                .flatten()
                .map(|r| r.checkpoint.position);
            if at.is_some_and(|p| p >= newest) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "stuck at {at:?}, newest {newest} (guard {guard})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    stop.send(true).expect("stop");
    runner.await.expect("runner").expect("run");
    let committed: i64 = raw
        .query_one("SELECT count(*) FROM ledger WHERE kind = 'A'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(committed, total, "the writers' count disagrees with the table");
    let q = |sql: &'static str| {
        let raw = &raw;
        async move { raw.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    let seen = q("SELECT count(*) FROM seen").await;
    let duplicates = q("SELECT count(*) FROM seen WHERE n <> 1").await;
    let present =
        q("SELECT count(*) FROM seen s JOIN ledger l ON l.uid = s.event_id WHERE l.kind = 'A'").await;
    let out_of_order = q("SELECT coalesce(sum(out_of_order), 0)::bigint FROM stream_progress").await;
    let outcome = Outcome {
        committed,
        seen,
        duplicates,
        missing: committed - present,
        out_of_order,
        holes: source.holes(),
    };
    eprintln!(
        "table torture ({}): {ROUNDS} rounds x {WRITERS} writers in {:?}: {} committed, {} projected, {} duplicated, \
         {} skipped, {} out of order; {} positions passed as holes",
        if guard { "gap guard on" } else { "gap guard OFF" },
        started.elapsed(),
        outcome.committed,
        outcome.seen,
        outcome.duplicates,
        outcome.missing,
        outcome.out_of_order,
        outcome.holes
    );
    common::drop_schema(&schema).await;
    Some(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_table_under_concurrent_writers_is_read_without_a_skip() {
    let Some(o) = torture("table_guard", true).await else {
        return;
    };
    assert_eq!(
        (o.seen, o.duplicates, o.missing, o.out_of_order),
        (o.committed, 0, 0, 0)
    );
    assert!(
        o.holes > 0,
        "rolled-back positions must be passed as holes, not waited on for ever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_gap_guard_the_same_torture_skips_events() {
    let Some(o) = torture("table_noguard", false).await else {
        return;
    };
    assert!(
        o.missing > 0,
        "with the gap guard off, the torture must skip events (else it proves nothing): {} committed, {} seen",
        o.committed,
        o.seen
    );
}

fn config_error(result: projectionist::Result<PgTableSource>) -> String {
    match result {
        Err(e @ (Error::Config(_) | Error::Unsupported(_))) => e.to_string(),
        Err(e) => panic!("expected a configuration error, got {e:?}"),
        Ok(_) => panic!("expected a configuration error, got a source"),
    }
}

#[tokio::test]
async fn bad_mappings_are_named_at_setup() {
    let Some(schema) = common::schema("table_bad").await else {
        return;
    };
    let raw = foreign(&schema).await;
    raw.batch_execute(
        "CREATE TABLE cached (id bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY (CACHE 20), aggregate text, \
           version bigint, kind text, body jsonb, uid uuid, at timestamptz); \
         CREATE TABLE handmade (id bigint PRIMARY KEY, aggregate text, version bigint, kind text, body jsonb, \
           uid uuid, at timestamptz); \
         CREATE TABLE texty (id bigserial PRIMARY KEY, aggregate text, version text, kind text, body text, \
           uid uuid, at timestamptz); \
         INSERT INTO texty (aggregate, version, kind, body) VALUES ('s', '1', 'A', 'not json at all');",
    )
    .await
    .expect("tables");
    let url = |table: &str, extra: &str| {
        source_url(&schema, extra).replace(&format!("{schema}.ledger"), &format!("{schema}.{table}"))
    };

    let e = config_error(open(&url("nope", "")).await);
    assert!(e.contains("does not exist"), "{e}");
    let e = config_error(open(&source_url(&schema, "").replace("data=body", "data=payload")).await);
    assert!(e.contains("no column `payload` (mapped as data)"), "{e}");
    let e = config_error(open(&source_url(&schema, "").replace("event_type=kind", "event_type=uid")).await);
    assert!(e.contains("(mapped as event_type) has type uuid"), "{e}");
    let e = config_error(open(&url("cached", "")).await);
    assert!(e.contains("CACHE 20") && e.contains("ALTER SEQUENCE"), "{e}");
    let e = config_error(open(&url("handmade", "")).await);
    assert!(e.contains("not filled by a sequence"), "{e}");
    let e = config_error(open(&url("texty", "")).await);
    assert!(e.contains("(mapped as stream_version) has type text"), "{e}");
    let e =
        config_error(open(&url("texty", "").replace("stream_version=version", "stream_version=id")).await);
    assert!(e.contains("cannot be read") && e.contains("not JSON"), "{e}");
    // The handmade table is fine once the user vouches for its writers.
    open(&url("handmade", "&gap_guard=off"))
        .await
        .expect("gap_guard=off opens");
    common::drop_schema(&schema).await;
}

#[tokio::test]
async fn the_same_read_model_as_the_events_table_and_partitions_split_it() {
    let Some(schema) = common::schema("table_same").await else {
        return;
    };
    let raw = foreign(&schema).await;
    raw.batch_execute(
        "INSERT INTO ledger (aggregate, version, kind, body) \
         SELECT 'S-' || (i % 37), (i / 37) + 1, CASE WHEN i % 5 = 0 THEN 'Noise' ELSE 'A' END, jsonb_build_object('i', i) \
         FROM generate_series(0, 1999) i",
    )
    .await
    .expect("rows");
    let source = Arc::new(open(&source_url(&schema, "")).await.expect("open"));
    let store = common::store(&schema, "pt-table-same").await;
    let whole = Engine::new(source.clone(), Arc::new(store.clone()))
        .with(PgProjection::new("seen", common::counting_body()))
        .expect("projection");
    whole.catch_up().await.expect("catch up");
    let t = |sql: &'static str| {
        let raw = &raw;
        async move { raw.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    assert_eq!(t("SELECT count(*) FROM seen").await, 1600);
    assert_eq!(
        t("SELECT coalesce(sum(out_of_order), 0)::bigint FROM stream_progress").await,
        0
    );
    let lag = projectionist::backend::Source::lag(&*source, projectionist::Checkpoint::at(1500))
        .await
        .expect("lag");
    assert_eq!(lag.events, 500);
    assert!(lag.oldest.is_some());

    // The same events over 4 partitions, in another schema's read model.
    let Some(other) = common::schema("table_same_p").await else {
        return;
    };
    let parts = common::store(&other, "pt-table-parts").await;
    let engine = Engine::new(source.clone(), Arc::new(parts.clone()))
        .with(PgProjection::new("seen", common::counting_body()).partitions(4))
        .expect("partitioned projection");
    engine.catch_up().await.expect("partitioned catch up");
    let models = common::raw(Some(&other)).await.expect("connect");
    let seen: i64 = models
        .query_one("SELECT count(*) FROM seen WHERE n = 1", &[])
        .await
        .expect("seen")
        .get(0);
    assert_eq!(seen, 1600);
    for p in 0..4 {
        assert!(
            parts.record("seen", p).await.expect("record").is_some(),
            "partition {p}"
        );
    }
    common::drop_schema(&schema).await;
    common::drop_schema(&other).await;
}

#[tokio::test]
async fn failing_events_of_a_table_source_become_dead_letters_and_retry_once() {
    let Some(schema) = common::schema("table_dead").await else {
        return;
    };
    let raw = foreign(&schema).await;
    raw.batch_execute(
        "INSERT INTO ledger (aggregate, version, kind, body) \
         SELECT 'S-' || i, 1, 'A', jsonb_build_object('n', i, 'bad', i % 10 = 3) FROM generate_series(1, 100) i",
    )
    .await
    .expect("rows");
    let source = Arc::new(open(&source_url(&schema, "")).await.expect("open"));
    let store = common::store(&schema, "pt-table-dead").await;
    // Fails on the events marked bad while the `fixed` table is empty.
    let body = projectionist::postgres::PgHandlers::new()
        .setup(|cx| {
            cx.batch_execute(
                "CREATE TABLE IF NOT EXISTS applied (n int PRIMARY KEY); CREATE TABLE IF NOT EXISTS fixed (x int)",
            );
            Ok(())
        })
        .reset(|cx| {
            cx.batch_execute("TRUNCATE applied");
            Ok(())
        })
        .on_json("A", |cx, _ev, v| {
            let n = v["n"].as_i64().unwrap_or_default() as i32;
            if v["bad"] == true {
                cx.execute(
                    "INSERT INTO applied (n) VALUES ($1 + 0 * (1 / (SELECT count(*)::int FROM fixed)))",
                    (n,),
                );
            } else {
                cx.execute("INSERT INTO applied (n) VALUES ($1)", (n,));
            }
            Ok(())
        });
    let engine = Engine::new(source, Arc::new(store))
        .with(PgProjection::new("dead", body).error_policy(projectionist::ErrorPolicy::DeadLetter))
        .expect("projection");
    engine.catch_up().await.expect("catch up");
    let count = |sql: &'static str| {
        let raw = &raw;
        async move { raw.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM applied").await,
        90,
        "the rest of each batch is applied"
    );
    let dead = engine.dead_letters(Some("dead")).await.expect("dead letters");
    assert_eq!(dead.len(), 10);
    assert!(
        dead.iter().all(|d| d.error.contains("division by zero")),
        "{:?}",
        dead[0].error
    );
    raw.batch_execute("INSERT INTO fixed VALUES (1)")
        .await
        .expect("fix");
    for d in &dead {
        engine.retry_dead_letter(d.id).await.expect("retry");
    }
    assert_eq!(
        count("SELECT count(*) FROM applied").await,
        100,
        "each dead letter applied once"
    );
    assert!(engine
        .dead_letters(Some("dead"))
        .await
        .expect("dead letters")
        .is_empty());
    common::drop_schema(&schema).await;
}
