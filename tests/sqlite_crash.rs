//! Guarantee 1 (exactly-once effect) across real crashes: a child process projects, and is
//! killed with SIGKILL at random moments; after a final run, the read model equals a clean
//! rebuild's and every stream's counter equals its length. The same for an interrupted rebuild.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use projectionist::backend::Store;
use projectionist::sqlite::{SqliteEngine, SqliteStore};
use projectionist::RunState;
use rand::{Rng, SeedableRng};

const CHILD_DB: &str = "PROJECTIONIST_TEST_CHILD_DB";
const CHILD_MODE: &str = "PROJECTIONIST_TEST_CHILD_MODE";
const EVENTS: u64 = 60_000;

fn engine(store: &SqliteStore) -> SqliteEngine {
    let mut engine = store.engine();
    // Small batches: many commits, so that kills land between and inside them.
    engine.register(strict_counter("strict").batch_size(50)).unwrap();
    engine.register(order_summary("orders").batch_size(50)).unwrap();
    engine
}

/// The child: project to the head (or rebuild), printing a marker once it has started.
fn child(db: &str, mode: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(db).await.unwrap();
        let engine = engine(&store);
        engine.prepare().await.unwrap();
        println!("CHILD READY");
        match mode {
            "rebuild" => {
                engine.rebuild("orders").await.unwrap();
            }
            _ => {
                engine.catch_up().await.unwrap();
            }
        }
        println!("CHILD DONE");
    });
}

struct Kills {
    mid_run: u32,
    runs: u32,
}

/// Starts the child over and over, killing it at a random moment after it is ready, until
/// it has been killed mid-run `wanted` times.
fn kill_repeatedly(
    test: &str,
    db: &Path,
    mode: &str,
    wanted: u32,
    progress: impl Fn() -> (i64, i64),
) -> Kills {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed);
    let mut kills = Kills { mid_run: 0, runs: 0 };
    let db_str = db.to_str().unwrap().to_owned();
    while kills.mid_run < wanted {
        assert!(
            kills.runs < 60,
            "could not kill the child mid-run {wanted} times in {} runs",
            kills.runs
        );
        kills.runs += 1;
        let before = progress();
        let mut child = spawn_self(test, &[(CHILD_DB, &db_str), (CHILD_MODE, mode)]);
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("CHILD READY") => break,
                Some(Ok(_)) => continue,
                _ => panic!("child exited before it was ready"),
            }
        }
        // Let it work for a random while, then kill -9.
        std::thread::sleep(Duration::from_millis(rng.gen_range(30..400)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        let finished = lines.any(|l| l.map(|l| l.contains("CHILD DONE")).unwrap_or(false));
        let after = progress();
        eprintln!(
            "run {}: killed after {:?} ({status}); checkpoint {} -> {} of {}{}",
            kills.runs,
            started.elapsed(),
            before.0,
            after.0,
            after.1,
            if finished { " (had finished)" } else { "" }
        );
        if !finished && after.0 < after.1 {
            kills.mid_run += 1;
        }
    }
    kills
}

fn checkpoint_of(db: &Path, name: &'static str) -> (i64, i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(db).await.unwrap();
        let cp = store
            .record(name, 0)
            .await
            .unwrap()
            .map_or(0, |r| r.checkpoint.position);
        let head = store
            .read(|db| db.query_row("SELECT max(position) FROM events", [], |r| r.get::<_, i64>(0)))
            .await
            .unwrap();
        (cp, head)
    })
}

#[test]
fn exactly_once_across_sigkills() {
    if let (Ok(db), Ok(mode)) = (std::env::var(CHILD_DB), std::env::var(CHILD_MODE)) {
        return child(&db, &mode);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        load_orders(&store, 42, EVENTS).await;
    });

    let kills = kill_repeatedly("exactly_once_across_sigkills", &db, "run", 5, || {
        checkpoint_of(&db, "strict")
    });
    eprintln!("{} mid-run SIGKILLs in {} runs", kills.mid_run, kills.runs);
    assert!(kills.mid_run >= 5);

    // A last child runs to the end undisturbed.
    let mut last = spawn_self(
        "exactly_once_across_sigkills",
        &[(CHILD_DB, db.to_str().unwrap()), (CHILD_MODE, "run")],
    );
    // Read all of it: closing the pipe early would kill the child on its next write.
    let lines: Vec<String> = BufReader::new(last.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    let out = lines.iter().any(|l| l.contains("CHILD DONE"));
    assert!(
        last.wait().unwrap().success() && out,
        "the final child run did not finish"
    );

    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let engine = engine(&store);

        // Every stream's counter equals its length, and no event was seen twice (the strict
        // handler would have failed on a duplicate or a gap, and nothing is dead-lettered).
        let counts: Vec<String> = dump(&store, "strict_counts").await;
        let lengths = stream_lengths(&store).await;
        assert_same_rows(&counts, &lengths, "per-stream counters vs stream lengths");
        let seen = dump(&store, "strict_seen").await.len() as u64;
        assert_eq!(seen, EVENTS);
        for s in engine.status().await.unwrap() {
            assert_eq!(s.errors, 0, "{s:?}");
            assert_eq!(s.dead_letters, 0, "{s:?}");
            assert_eq!(s.lag_events, 0, "{s:?}");
        }

        // The read model equals a clean rebuild's.
        let incremental = dump(&store, "orders_summary").await;
        engine.rebuild("orders").await.unwrap();
        assert_same_rows(
            &dump(&store, "orders_summary").await,
            &incremental,
            "rebuild vs incremental",
        );
        assert!(!incremental.is_empty());
    });
}

#[test]
fn interrupted_rebuild_resumes() {
    if let (Ok(db), Ok(mode)) = (std::env::var(CHILD_DB), std::env::var(CHILD_MODE)) {
        return child(&db, &mode);
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rebuild.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let expected = rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        load_orders(&store, 7, 30_000).await;
        let engine = engine(&store);
        engine.catch_up().await.unwrap();
        dump(&store, "orders_summary").await
    });

    // Kill rebuilds until one dies partway with the projection in the rebuilding state.
    let kills = kill_repeatedly("interrupted_rebuild_resumes", &db, "rebuild", 1, || {
        checkpoint_of(&db, "orders")
    });
    assert!(kills.mid_run >= 1);

    rt.block_on(async {
        let store = SqliteStore::open(&db).await.unwrap();
        let record = store.record("orders", 0).await.unwrap().unwrap();
        assert_eq!(
            record.state,
            RunState::Rebuilding,
            "the killed rebuild left its state"
        );
        let resumed_from = record.checkpoint.position;
        assert!(resumed_from > 0, "the killed rebuild had committed batches");

        let engine = engine(&store);
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = calls.clone();
        let progress: projectionist::ProgressFn = std::sync::Arc::new(move |p| seen.lock().unwrap().push(p));
        let report = engine.rebuild_with("orders", Some(progress)).await.unwrap();
        // It resumed: the first progress report starts from the killed run's checkpoint.
        let first = calls.lock().unwrap().first().cloned().unwrap();
        assert_eq!(first.start, resumed_from);
        assert_eq!(report.state, RunState::Running);
        assert_eq!(
            store.record("orders", 0).await.unwrap().unwrap().state,
            RunState::Running
        );
        assert_same_rows(
            &dump(&store, "orders_summary").await,
            &expected,
            "resumed rebuild vs incremental",
        );
    });
}
