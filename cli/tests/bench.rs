//! `projectionist bench` on a small workload: every phase runs, every read model equals the
//! reference, and `--json` prints the documented fields, with the ratios to both references.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

fn bin(dir: &Path) -> Command {
    Command::from_std(projectionist_testkit::binary!().command(dir))
}

#[test]
fn bench_runs_every_phase_and_verifies_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .args([
            "bench",
            "--events",
            "3000",
            "--live-seconds",
            "1",
            "--live-rate",
            "200",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let phases: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
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
