//! The dashboard in a real headless browser: Debian's `chromium`, driven by playwright-core
//! (tests/browser/dashboard.mjs). A daemon holds a dead letter; the browser loads the
//! dashboard, sees the partitions view (owner, checkpoint, lag per partition), clicks the dead
//! letter and sees its payload and error, sees the projections, clicks retry, sees the dead
//! letter gone and the projection caught up, sees each projection's lag chart grow from the
//! daemon's samples, and saves a screenshot to target/artifacts/dashboard.png.
//!
//! It needs Debian's chromium, node, and `npm ci` in tests/browser, which `scripts/test`
//! prepares; a plain `cargo nextest run` leaves it out (the default filter in
//! .config/nextest.toml) and reports it as skipped. Run where any of them is missing, the test
//! kit's CI-or-skip rule applies: a failure under `CI=true` and in the test script, else a loud
//! SKIP.

mod ops_support;

use std::path::Path;
use std::process::Command;

use ops_support::*;
use projectionist_testkit as kit;
use tempfile::TempDir;

fn has_node() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The CI-or-skip rule for one thing the browser test needs.
fn need(missing: &str, hint: &str, found: bool) -> Option<()> {
    let found = if found { Ok(()) } else { Err("not found") };
    kit::require(TEST, missing, hint, found)
}

const TEST: &str = "the_dashboard_retries_a_dead_letter_in_chromium";

#[test]
fn the_dashboard_retries_a_dead_letter_in_chromium() {
    let root = kit::workspace_root();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let script_dir = root.join("tests").join("browser");
    let ready = need(
        &format!("{chromium} is missing"),
        "apt-get install chromium, or run scripts/test",
        Path::new(&chromium).exists(),
    )
    .and_then(|()| {
        need(
            "node is missing",
            "install Node.js, or run scripts/test",
            has_node(),
        )
    })
    .and_then(|()| {
        need(
            "tests/browser/node_modules is missing",
            "run `npm ci` in tests/browser, or scripts/test",
            script_dir.join("node_modules").join("playwright-core").exists(),
        )
    });
    if ready.is_none() {
        return;
    }

    // A daemon with a dead letter (items), a stopped projection (audit), and a backlog to
    // catch up at start, so that the rates and sparklines have something to show.
    let dir = TempDir::new().expect("a temporary folder");
    let dir = dir.path();
    prepare(dir, "", 20_000, true);
    let d = Daemon::start(
        dir,
        &["--listen", "127.0.0.1:0"],
        &[("PROJECTIONIST_API_TOKEN", TOKEN)],
    );
    eventually(60, "the dead letter", || {
        d.get("/api/dead-letters").json()[0]["id"].as_i64()
    });
    // The fix that makes the retry succeed is in place before the click.
    fix_items(dir);

    // Live traffic while the browser looks: 300 events every 400 ms, from another process.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (dir, stop) = (dir.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut next = 1;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let mut lines = String::new();
                for _ in 0..300 {
                    lines.push_str(&format!(
                        "{{\"stream_id\":\"LIVE-{next}\",\"type\":\"ItemAdded\",\"data\":{{\"code\":\"A\"}}}}\n"
                    ));
                    next += 1;
                }
                let _ = std::fs::write(dir.join("live.jsonl"), lines);
                let _ = command(&dir).args(["import", "live.jsonl"]).output();
                std::thread::sleep(std::time::Duration::from_millis(400));
            }
        })
    };

    let shot = root.join("target").join("artifacts").join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new("node")
        .current_dir(&script_dir)
        .env("CHROMIUM", &chromium)
        .arg("dashboard.mjs")
        .arg(format!("{}/", d.base))
        .arg(TOKEN)
        .arg(&shot)
        .output()
        .expect("run node");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = traffic.join();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What the browser saw, in the test output.
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
        d.logs()
    );
    for step in [
        "\"loaded\"",
        "\"partitions\"",
        "\"dead_letter_details\"",
        "\"projections\"",
        "\"retried\"",
        "\"caught_up\"",
        "\"lag_chart\"",
        "\"screenshot\"",
    ] {
        assert!(stdout.contains(step), "step {step} missing:\n{stdout}");
    }
    let png = std::fs::read(&shot).expect("the screenshot exists");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "not a real screenshot"
    );

    // The daemon agrees with what the browser saw.
    assert_eq!(d.get("/api/dead-letters").json(), serde_json::json!([]));
    eventually(30, "items to catch up with the last traffic", || {
        let items = projection(&d, "items");
        (items["lag_events"] == 0 && items["dead_letters"] == 0).then_some(())
    });
    assert_eq!(projection(&d, "audit")["state"], "stopped");
    let (ok, _, logs) = d.stop();
    assert!(ok, "{logs}");
    assert!(!logs.contains(SECRET) && !logs.contains(TOKEN));
}
