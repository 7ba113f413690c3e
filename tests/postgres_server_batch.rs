//! Declarative projections on PostgreSQL applying a batch in one call of a generated function,
//! against the per-event path:
//!
//! - a failing statement in the middle of a batch: the events before it are committed, the
//!   failing one goes through its policy (a dead letter naming the statement), the rest follow,
//!   in order and once each; the same outcome on the per-event path and for typed handlers;
//! - typed handlers' batch function broken behind the process's back (dropped, or reporting a
//!   failure its statements do not have): the process stops using it, with the same outcome;
//! - SIGKILL of a runner mid-batch, five times: after a final run every event counted once per
//!   stream, equal to a clean rebuild on the per-event path.
#![cfg(feature = "postgres")]

#[path = "postgres_common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use projectionist::backend::{Source, Store};
use projectionist::declarative::Config;
use projectionist::postgres::{PgBatch, PgHandlers, PgProjection, PgStore, StreamAppend};
use projectionist::workload::Orders;
use projectionist::{ErrorPolicy, EventLog, ExpectedVersion, NewEvent};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// How many events the failing-batch tests append (one batch), and which ones fail.
const EVENTS: i64 = 50;
const FAILING: [i64; 2] = [17, 33];

/// `picky` with a CHECK that `q > 0`, a count per row, and an order check over all events.
const PICKY_SETUP: &str = "CREATE TABLE IF NOT EXISTS picky (id TEXT PRIMARY KEY, q BIGINT NOT NULL CHECK (q > 0), seen BIGINT NOT NULL DEFAULT 0); \
     CREATE TABLE IF NOT EXISTS ordered (k TEXT PRIMARY KEY, last BIGINT NOT NULL, out_of_order BIGINT NOT NULL)";

fn picky_config() -> String {
    format!(
        r#"
[[projection]]
name = "picky"
batch_size = 100
error_policy = "dead_letter"
setup = "{PICKY_SETUP}"
reset = "TRUNCATE picky, ordered"

[projection.handlers]
Added = [
    "INSERT INTO picky (id, q) VALUES (:stream_id, :data.q)",
    "UPDATE picky SET seen = seen + 1 WHERE id = :stream_id",
    "INSERT INTO ordered AS o (k, last, out_of_order) VALUES ('all', :position, 0) ON CONFLICT (k) DO UPDATE SET out_of_order = o.out_of_order + (excluded.last <= o.last)::int, last = excluded.last",
]
"#
    )
}

fn declarative(config: &str) -> PgProjection {
    let config = Config::parse(config, "test").expect("the test config parses");
    let def = config.projections.first().expect("one projection");
    projectionist::declarative::projection::<PgBatch>(def)
}

/// The same statements as typed per-event handlers.
fn picky_handlers() -> PgHandlers {
    picky_handlers_with(false)
}

/// `picky_handlers`, with a fourth statement when `trace`: it records whether each event's
/// statements ran inside a batch function (the server's `current_query()` is then its call).
fn picky_handlers_with(trace: bool) -> PgHandlers {
    PgHandlers::new()
        .setup(|cx| {
            cx.batch_execute(PICKY_SETUP);
            cx.batch_execute("CREATE TABLE IF NOT EXISTS via (id TEXT PRIMARY KEY, in_call BOOLEAN NOT NULL)");
            Ok(())
        })
        .reset(|cx| {
            cx.batch_execute("TRUNCATE picky, ordered, via");
            Ok(())
        })
        .on_json("Added", move |cx, ev, v| {
            let q = v.get("q").and_then(|q| q.as_i64()).unwrap_or(0);
            cx.execute("INSERT INTO picky (id, q) VALUES ($1, $2)", (ev.stream_id.clone(), q));
            cx.execute("UPDATE picky SET seen = seen + 1 WHERE id = $1", (ev.stream_id.clone(),));
            cx.execute(
                "INSERT INTO ordered AS o (k, last, out_of_order) VALUES ('all', $1, 0) ON CONFLICT (k) \
                 DO UPDATE SET out_of_order = o.out_of_order + (excluded.last <= o.last)::int, last = excluded.last",
                (ev.position,),
            );
            if trace {
                cx.execute(
                    // Split, so that the statement's own text (the current query when
                    // pipelined) does not hold the function's name.
                    "INSERT INTO via (id, in_call) VALUES ($1, strpos(current_query(), 'projectionist' || '_typed_') > 0)",
                    (ev.stream_id.clone(),),
                );
            }
            Ok(())
        })
}

async fn store(schema: &str, server_batches: bool) -> PgStore {
    PgStore::builder(&common::url())
        .expect("url")
        .schema(schema)
        .application_name("pt-server-batch")
        .server_batches(server_batches)
        .connect()
        .await
        .expect("connect")
}

/// Appends `EVENTS` `Added` events, one per stream; those in `FAILING` break the CHECK.
async fn append_picky(store: &PgStore) {
    for i in 1..=EVENTS {
        let q = if FAILING.contains(&i) { 0 } else { i };
        store
            .append(
                format!("e-{i:03}"),
                ExpectedVersion::Exact(0),
                vec![NewEvent::new("Added", json!({ "q": q }))],
            )
            .await
            .expect("append");
    }
}

/// Appends `n` good `Added` events, one per stream, named `{prefix}-001` on.
async fn append_good(store: &PgStore, prefix: &str, n: i64) {
    for i in 1..=n {
        let event = NewEvent::new("Added", json!({ "q": i }));
        store
            .append(format!("{prefix}-{i:03}"), ExpectedVersion::Exact(0), vec![event])
            .await
            .expect("append");
    }
}

/// Projects `projection` over the picky events in one batch (after `warm` good events, in
/// batches of their own, when `warm > 0`) and checks the outcome: every event but the failing
/// ones applied once and in order, each failing one a dead letter whose error names `label`,
/// and the checkpoint at the head.
async fn failing_mid_batch(
    name: &str,
    server_batches: bool,
    projection: PgProjection,
    label: &str,
    warm: i64,
) {
    failing_mid_batch_after(name, server_batches, projection, label, warm, None).await;
}

/// How a test breaks the typed batch function made during the warm-up, before the failing
/// batch: the function's name and identity arguments go where `{f}` is.
#[derive(Clone, Copy)]
enum Sabotage {
    /// `DROP FUNCTION {f}`: the call fails as a whole (`undefined_function`).
    Drop,
    /// Replaced by one that reports its first statement failed, when none did (and counts its
    /// calls in `lie_calls`).
    Lie,
}

impl Sabotage {
    fn sql(self, function: &str, arguments: &str) -> String {
        match self {
            Sabotage::Drop => format!("DROP FUNCTION {function}({arguments})"),
            Sabotage::Lie => format!(
                "CREATE TABLE lie_calls (n BIGINT NOT NULL); INSERT INTO lie_calls VALUES (0); \
                 CREATE OR REPLACE FUNCTION {function}({arguments}) RETURNS integer LANGUAGE sql \
                 AS 'UPDATE lie_calls SET n = n + 1; SELECT 1'"
            ),
        }
    }
}

/// [`failing_mid_batch`], with the typed batch function broken by `sabotage` after the
/// warm-up: every later event must then run outside any function (the process stops using
/// it), with the same exact outcome.
async fn failing_mid_batch_after(
    name: &str,
    server_batches: bool,
    projection: PgProjection,
    label: &str,
    warm: i64,
    sabotage: Option<Sabotage>,
) {
    let Some(schema) = common::schema(name).await else {
        return;
    };
    let store = store(&schema, server_batches).await;
    let engine = store
        .engine()
        .with(projection.batch_size(100).error_policy(ErrorPolicy::DeadLetter))
        .expect("engine");
    if warm > 0 {
        append_good(&store, "w", warm).await;
        engine.catch_up().await.expect("catch up");
    }
    let raw = common::raw(Some(&schema)).await.expect("raw connection");
    if let Some(sabotage) = sabotage {
        let made = raw
            .query(
                "SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname), \
                        pg_get_function_identity_arguments(p.oid) \
                   FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                  WHERE n.nspname = current_schema() AND p.proname LIKE 'projectionist_typed_%'",
                &[],
            )
            .await
            .expect("the typed batch functions");
        assert_eq!(made.len(), 1, "{name}: the warm-up made one batch function");
        let sql = sabotage.sql(made[0].get(0), made[0].get(1));
        raw.batch_execute(&sql).await.expect("sabotage");
    }
    append_picky(&store).await;
    // A process that kept calling a broken function would retry its batch for ever.
    tokio::time::timeout(Duration::from_secs(60), engine.catch_up())
        .await
        .unwrap_or_else(|_| panic!("{name}: the catch-up is stuck on its batch function"))
        .expect("catch up");
    let lies = || async {
        match sabotage {
            Some(Sabotage::Lie) => raw
                .query_one("SELECT n FROM lie_calls", &[])
                .await
                .expect("lie_calls")
                .get::<_, i64>(0),
            _ => 0,
        }
    };
    let called = lies().await;
    if matches!(sabotage, Some(Sabotage::Lie)) {
        assert!(
            called >= 1,
            "{name}: the batch after the sabotage called the function"
        );
    }
    if sabotage.is_some() {
        // Later batches stay out of the function too.
        append_good(&store, "z", warm).await;
        engine.catch_up().await.expect("catch up");
        assert_eq!(
            lies().await,
            called,
            "{name}: no call of the function once it lied"
        );
    }
    let later = if sabotage.is_some() { warm } else { 0 };
    let one = |sql: &'static str| {
        let raw = &raw;
        async move { raw.query_one(sql, &[]).await.expect(sql).get::<_, i64>(0) }
    };
    let good = EVENTS - FAILING.len() as i64;
    assert_eq!(
        one("SELECT count(*) FROM picky").await,
        warm + good + later,
        "{name}: rows"
    );
    assert_eq!(
        one("SELECT count(*) FROM picky WHERE seen = 1").await,
        warm + good + later,
        "{name}: once each"
    );
    assert_eq!(
        one("SELECT out_of_order FROM ordered").await,
        0,
        "{name}: in order"
    );
    let head = store.head().await.expect("head");
    assert_eq!(
        one("SELECT last FROM ordered").await,
        head.position,
        "{name}: the events after the failures were applied"
    );
    let dls = store.dead_letters(Some("picky")).await.expect("dead letters");
    let mut failed: Vec<String> = dls.iter().map(|d| d.event.stream_id.clone()).collect();
    failed.sort();
    let expected: Vec<String> = FAILING.iter().map(|i| format!("e-{i:03}")).collect();
    assert_eq!(
        failed, expected,
        "{name}: the failing events are the dead letters"
    );
    for d in &dls {
        assert!(
            d.error.contains("violates check constraint") && d.error.contains(label),
            "{name}: {}",
            d.error
        );
    }
    let record = store.record("picky", 0).await.expect("record").expect("a record");
    assert_eq!(record.checkpoint, head, "{name}: checkpoint at the head");
    assert_eq!(
        (record.applied, record.dead_letters),
        ((warm + good + later) as u64, FAILING.len() as u64)
    );
    let functions = one(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname = current_schema() AND p.proname LIKE 'projectionist_batch_%'",
    )
    .await;
    let declarative = label.starts_with("Added handler");
    assert_eq!(
        functions,
        i64::from(server_batches && declarative),
        "{name}: a function exactly where batches run in one call"
    );
    let typed = one(
        "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
          WHERE n.nspname = current_schema() AND p.proname LIKE 'projectionist_typed_%'",
    )
    .await;
    let kept = !matches!(sabotage, Some(Sabotage::Drop));
    assert_eq!(
        typed,
        i64::from(server_batches && !declarative && kept),
        "{name}: typed statements get one function, made after their first batch (and none again once it broke)"
    );
    if warm > 0 {
        // Handlers that record where their statements ran (`picky_handlers_with(true)`).
        assert_eq!(one("SELECT count(*) FROM via WHERE id LIKE 'w-%'").await, warm);
        // The warm-up may take more than one batch (a batch reads what is visible): at least
        // its first was pipelined.
        assert!(
            one("SELECT count(*) FROM via WHERE id LIKE 'w-%' AND NOT in_call").await >= 1,
            "{name}: the first batch was pipelined"
        );
        if sabotage.is_none() {
            assert_eq!(
                one("SELECT count(*) FROM via WHERE id LIKE 'e-%' AND in_call").await,
                good,
                "{name}: every event after it ran inside the function, the failures' neighbours included"
            );
        } else {
            assert_eq!(
                one("SELECT count(*) FROM via WHERE (id LIKE 'e-%' OR id LIKE 'z-%') AND NOT in_call").await,
                good + later,
                "{name}: once its function broke, every event ran outside it, the later batches' included"
            );
        }
    }
    common::drop_schema(&schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_mid_batch_declarative_in_one_call() {
    failing_mid_batch(
        "perevent_fail_decl",
        true,
        declarative(&picky_config()),
        "Added handler, statement 1 of 3",
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_mid_batch_declarative_per_event() {
    failing_mid_batch(
        "perevent_fail_decl_pe",
        false,
        declarative(&picky_config()),
        "Added handler, statement 1 of 3",
        0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_mid_batch_typed_handlers() {
    failing_mid_batch(
        "perevent_fail_typed",
        true,
        PgProjection::new("picky", picky_handlers()),
        "",
        0,
    )
    .await;
}

/// Typed handlers whose batch function exists (made after a first batch) meet a failing
/// statement in the middle of a batch: the events before it are committed, the failing ones
/// are dead letters with the driver's own error, the rest follow, once each and in order, and
/// every event applied ran inside the function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_statement_mid_batch_typed_handlers_in_one_call() {
    failing_mid_batch(
        "perevent_fail_typed_call",
        true,
        PgProjection::new("picky", picky_handlers_with(true)),
        "[SQLSTATE 23514]",
        12,
    )
    .await;
}

/// The batch function made during the warm-up is dropped behind the process's back: the next
/// batch's call fails as a whole. That is a store error, not the event's: the batch is retried,
/// its statements pipelined, and the process never calls the function again (nor makes a new
/// one). The failing events still go through their policy, the rest apply once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_function_whose_call_fails_is_dropped_and_its_batch_retried_pipelined() {
    failing_mid_batch_after(
        "perevent_fail_typed_dropped",
        true,
        PgProjection::new("picky", picky_handlers_with(true)),
        "[SQLSTATE 23514]",
        12,
        Some(Sabotage::Drop),
    )
    .await;
}

/// The batch function reports a failing statement where the statements, sent one by one, do
/// not fail: the process stops using it, and the outcome is the same exact one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_function_that_reports_a_failure_its_statements_do_not_have_is_dropped() {
    failing_mid_batch_after(
        "perevent_fail_typed_lie",
        true,
        PgProjection::new("picky", picky_handlers_with(true)),
        "[SQLSTATE 23514]",
        12,
        Some(Sabotage::Lie),
    )
    .await;
}

/// Counts each event once per stream, by type, through the generated function.
const COUNTING: &str = r#"
[[projection]]
name = "NAME"
batch_size = 200
setup = "CREATE TABLE IF NOT EXISTS READ_MODEL (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, items BIGINT NOT NULL DEFAULT 0, applied BIGINT NOT NULL DEFAULT 0)"
reset = "TRUNCATE READ_MODEL"

[projection.handlers]
OrderCreated = "INSERT INTO READ_MODEL (order_id, status, applied) VALUES (:stream_id, 'created', 1)"
ItemAdded = "UPDATE READ_MODEL SET items = items + :data.quantity, applied = applied + 1 WHERE order_id = :stream_id"
OrderConfirmed = "UPDATE READ_MODEL SET status = 'confirmed', applied = applied + 1 WHERE order_id = :stream_id"
OrderShipped = "UPDATE READ_MODEL SET status = 'shipped', applied = applied + 1 WHERE order_id = :stream_id"
OrderDelivered = "UPDATE READ_MODEL SET status = 'delivered', applied = applied + 1 WHERE order_id = :stream_id"
OrderCancelled = "UPDATE READ_MODEL SET status = 'cancelled', applied = applied + 1 WHERE order_id = :stream_id"
"#;

fn counting(name: &str, table: &str) -> PgProjection {
    declarative(&COUNTING.replace("NAME", name).replace("READ_MODEL", table))
}

const CHILD_ENV: &str = "PROJECTIONIST_PG_SERVER_BATCH_CHILD_SCHEMA";
const CRASH_TEST: &str = "sigkill_mid_batch_in_one_call_keeps_exactly_once";
const CRASH_EVENTS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_in_one_call_keeps_exactly_once() {
    if let Ok(schema) = std::env::var(CHILD_ENV) {
        let engine = store(&schema, true)
            .await
            .engine()
            .with(counting("orders", "crash_orders"))
            .expect("engine");
        engine.catch_up().await.expect("catch up");
        return;
    }
    let Some(schema) = common::schema("perevent_crash").await else {
        return;
    };
    let store = store(&schema, true).await;
    let items = Orders::new(11, CRASH_EVENTS).map(|e| {
        Ok(StreamAppend::new(
            e.stream_id.clone(),
            ExpectedVersion::Exact(e.stream_version - 1),
            vec![e.to_new_event()],
        ))
    });
    let n = store.import(items, None).await.expect("import");
    let exe = std::env::current_exe().expect("the test binary");
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["--exact", CRASH_TEST, "--nocapture"])
            .env(CHILD_ENV, &schema)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the child")
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(std::process::id()));
    let mut checkpoints = Vec::new();
    let mut kills = 0;
    while kills < 5 {
        let mut c = spawn();
        // Kill once the child has committed a batch of this life (so that it is projecting,
        // mid-batch almost always: the batch's one call is most of its time), at a random
        // moment after that.
        let before = store
            .record("orders", 0)
            .await
            .expect("record")
            .map_or(0, |r| r.checkpoint.position);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = store
                .record("orders", 0)
                .await
                .expect("record")
                .map_or(0, |r| r.checkpoint.position);
            if now > before || Instant::now() > deadline {
                break;
            }
            if c.try_wait().expect("try_wait").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        if let Some(status) = c.try_wait().expect("try_wait") {
            assert!(status.success(), "the child failed: {status}");
            panic!("the child finished before it could be killed; make the workload larger");
        }
        c.kill().expect("SIGKILL");
        c.wait().expect("wait");
        kills += 1;
        checkpoints.push(
            store
                .record("orders", 0)
                .await
                .expect("record")
                .map_or(0, |r| r.checkpoint.position),
        );
    }
    eprintln!("server batch crash: killed 5 times; checkpoints after each kill: {checkpoints:?}");
    let status = spawn().wait().expect("final run");
    assert!(status.success(), "final run failed: {status}");
    let record = store
        .record("orders", 0)
        .await
        .expect("record")
        .expect("a record");
    assert_eq!(record.checkpoint, store.head().await.expect("head"));
    assert_eq!(record.applied, n, "applied counter");

    // Every stream counted once per event, and equal to a clean rebuild on the per-event path.
    let raw = common::raw(Some(&schema)).await.expect("raw connection");
    let wrong: i64 = raw
        .query_one(
            "SELECT count(*) FROM crash_orders o FULL JOIN \
               (SELECT stream_id, count(*) AS c FROM events GROUP BY stream_id) e ON e.stream_id = o.order_id \
              WHERE o.applied IS DISTINCT FROM e.c",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(wrong, 0, "streams whose events were not applied exactly once");
    let clean = self::store(&schema, false).await;
    clean
        .engine()
        .with(counting("orders_clean", "clean_orders"))
        .expect("engine")
        .catch_up()
        .await
        .expect("clean rebuild");
    let diff: i64 = raw
        .query_one(
            "SELECT count(*) FROM ((SELECT * FROM crash_orders EXCEPT SELECT * FROM clean_orders) \
             UNION ALL (SELECT * FROM clean_orders EXCEPT SELECT * FROM crash_orders)) d",
            &[],
        )
        .await
        .expect("diff")
        .get(0);
    assert_eq!(diff, 0, "the killed runs' read model equals a clean rebuild");
    common::drop_schema(&schema).await;
}
