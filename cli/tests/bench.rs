//! `projectionist bench` on a small workload: every phase runs, every read model equals the
//! reference, and `--json` prints the documented fields, with the ratios to both references.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn bin(dir: &Path) -> Command {
    Command::from_std(projectionist_testkit::binary!().command(dir))
}

/// Runs `projectionist ARGS bench BENCH_ARGS --json` in `dir`; its phases, after checking that
/// it succeeded.
fn bench_json(dir: &Path, args: &[&str], bench_args: &[&str]) -> Vec<Value> {
    let out = bin(dir)
        .args(args)
        .arg("bench")
        .args(bench_args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bench_runs_every_phase_and_verifies_them() {
    let dir = tempfile::tempdir().unwrap();
    let phases = bench_json(
        dir.path(),
        &[],
        &["--events", "3000", "--live-seconds", "1", "--live-rate", "200"],
    );
    let names: Vec<&str> = phases.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    for p in &phases {
        for field in [
            "name",
            "events",
            "seconds",
            "events_per_second",
            "ratio_to_reference",
            "ratio_to_per_event_loop",
        ] {
            assert!(p.get(field).is_some(), "{field} missing in {p}");
        }
        assert_ne!(p["verified"], Value::Bool(false), "{p}");
    }
    let rebuilds: Vec<&Value> = phases
        .iter()
        .filter(|p| p["name"].as_str().unwrap().starts_with("rebuild"))
        .collect();
    assert_eq!(rebuilds.len(), 3);
    assert!(rebuilds.iter().all(|p| p["verified"] == Value::Bool(true)
        && p["ratio_to_reference"].as_f64().unwrap() > 0.0
        && p["ratio_to_per_event_loop"].as_f64().unwrap() > 0.0));
    // Both references, each verified against the set-based one and at ratio 1 to itself.
    let reference = &phases[1];
    let per_event = &phases[2];
    assert!(
        reference["name"].as_str().unwrap().contains("set-based"),
        "{reference}"
    );
    assert!(
        per_event["name"].as_str().unwrap().contains("per-event loop"),
        "{per_event}"
    );
    assert_eq!(per_event["verified"], Value::Bool(true));
    assert_eq!(reference["ratio_to_reference"].as_f64(), Some(1.0));
    assert_eq!(per_event["ratio_to_per_event_loop"].as_f64(), Some(1.0));
    let live = phases.last().unwrap();
    assert_eq!(live["events"], 200);
    assert!(live["p99_ms"].as_f64().unwrap() >= live["p50_ms"].as_f64().unwrap());
    // The bench used a temporary database, not the current folder.
    assert!(!dir.path().join("projectionist.db").exists());
}

#[test]
fn bench_refuses_a_database_that_holds_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("used.db").display());
    bin(dir.path())
        .args([
            "--database",
            &db,
            "append",
            "--stream",
            "s",
            "--type",
            "T",
            "--data",
            "{}",
        ])
        .assert()
        .success();
    let out = bin(dir.path())
        .args(["--database", &db, "bench", "--events", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fresh database"));
}

/// On PostgreSQL the bench also rebuilds the declarative projection in 8 partitions in one
/// process, verified row by row like every phase, and works in the schema the URL names.
/// PostgreSQL from `PROJECTIONIST_TEST_POSTGRES_URL`; required under `CI=true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_postgres_verifies_eight_partitions_in_one_process_in_the_url_schema() {
    let Some((schema, client)) = projectionist_testkit::postgres::fresh_schema("bench", "bcli").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = projectionist_testkit::postgres::url_with_schema(&schema);
    let phases = bench_json(
        dir.path(),
        &["--database", &url],
        &["--events", "3000", "--live-seconds", "0"],
    );
    let partitioned: Vec<&Value> = phases
        .iter()
        .filter(|p| p["name"] == "rebuild: declarative SQL, 8 partitions in 1 process")
        .collect();
    assert_eq!(partitioned.len(), 1, "{phases:?}");
    assert_eq!(partitioned[0]["verified"], Value::Bool(true));
    assert_eq!(partitioned[0]["events"], 3000);
    // Its read model is in the URL's schema, row for row the reference's.
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {schema}.bench_sql_partitioned_summary),
                        (SELECT count(*) FROM (SELECT order_id, status, item_count, version
                                                 FROM {schema}.bench_sql_partitioned_summary
                                               EXCEPT SELECT order_id, status, item_count, version
                                                 FROM {schema}.bench_reference_summary) d)"
            ),
            &[],
        )
        .await
        .unwrap();
    let (rows, differing): (i64, i64) = (row.get(0), row.get(1));
    assert!(rows > 0);
    assert_eq!(differing, 0);
    projectionist_testkit::postgres::drop_schema(&client, &schema).await;
}
