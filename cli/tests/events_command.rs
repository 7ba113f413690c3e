//! `projectionist events`: the events table filtered by stream, type, position and time, as a
//! table or JSON lines, and `--follow` seeing another process's append within a second.

mod examples_support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use examples_support::{bin, text};
use serde_json::Value;
use tempfile::TempDir;

fn append(dir: &std::path::Path, stream: &str, ty: &str, data: &str) {
    let out = bin(dir)
        .args(["append", "--stream", stream, "--type", ty, "--data", data])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out).1);
}

/// A database with five events: a1 A, b1 B, a2 B, c1 A, a3 C (positions 1 to 5).
fn five_events() -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    for (stream, ty, n) in [
        ("a", "A", 1),
        ("b", "B", 2),
        ("a", "B", 3),
        ("c", "A", 4),
        ("a", "C", 5),
    ] {
        append(dir.path(), stream, ty, &format!("{{\"n\": {n}}}"));
    }
    dir
}

/// The `n` of each event `events --json ARGS` prints.
fn ns(dir: &std::path::Path, args: &[&str]) -> Vec<i64> {
    let out = bin(dir)
        .args(["events", "--json"])
        .args(args)
        .output()
        .expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            v["data"]["n"].as_i64().expect("n")
        })
        .collect()
}

#[test]
fn filters_by_stream_type_position_and_time() {
    let dir = five_events();
    let d = dir.path();
    assert_eq!(ns(d, &[]), vec![1, 2, 3, 4, 5]);
    assert_eq!(ns(d, &["--stream", "a"]), vec![1, 3, 5]);
    assert_eq!(ns(d, &["--stream", "a", "--stream", "c"]), vec![1, 3, 4, 5]);
    assert_eq!(ns(d, &["--type", "A"]), vec![1, 4]);
    assert_eq!(ns(d, &["--type", "B", "--stream", "a"]), vec![3]);
    assert_eq!(ns(d, &["--from", "2", "--to", "4"]), vec![2, 3, 4]);
    assert_eq!(ns(d, &["--limit", "2"]), vec![1, 2]);
    assert_eq!(
        ns(d, &["--since", "2000-01-01", "--until", "2999-01-01"]),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(ns(d, &["--until", "2000-01-01T00:00:00Z"]), Vec::<i64>::new());
    assert_eq!(ns(d, &["--since", "2999-01-01"]), Vec::<i64>::new());

    // A JSON line carries the whole event.
    let out = bin(d)
        .args(["events", "--json", "--from", "3", "--limit", "1"])
        .output()
        .expect("run");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON line");
    assert_eq!(v["position"], 3);
    assert_eq!(v["stream_id"], "a");
    assert_eq!(v["stream_version"], 2);
    assert_eq!(v["type"], "B");
    assert_eq!(v["metadata"], serde_json::json!({}));
    assert!(v["event_id"].as_str().is_some_and(|s| s.len() == 36), "{v}");

    // The table: a header, then one line per event.
    let out = bin(d).args(["events", "--type", "C"]).output().expect("run");
    let (stdout, _) = text(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].trim_start().starts_with("POSITION  STREAM"), "{stdout}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&cells[..4], &["5", "a", "3", "C"], "{stdout}");
    assert_eq!(cells.last(), Some(&"{\"n\":5}"), "{stdout}");

    let out = bin(d)
        .args(["events", "--since", "yesterday"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("--since \"yesterday\" is not a time"));
}

#[test]
fn follow_sees_an_append_from_another_process_within_a_second() {
    let dir = five_events();
    let mut child = projectionist_testkit::binary!()
        .command(dir.path())
        .args(["events", "--follow", "--json", "--type", "Ping"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn events --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    // It is following: nothing is printed for the events there are.
    assert!(rx.recv_timeout(Duration::from_millis(800)).is_err());
    for k in 1..=3 {
        append(dir.path(), "p", "Ping", &format!("{{\"k\": {k}}}"));
        let appended = Instant::now();
        let (line, seen) = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the appended event");
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(v["data"]["k"], k, "{line}");
        assert_eq!(v["position"], 5 + k, "{line}");
        let took = seen.saturating_duration_since(appended);
        assert!(took < Duration::from_secs(1), "seen after {took:?}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
