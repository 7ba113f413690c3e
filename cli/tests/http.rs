//! The daemon's HTTP server, through a real `projectionist run --listen` on a free loopback
//! port: every endpoint, its status codes, token refusal, readiness, the Prometheus text, JSON
//! logs, and that the database password shows nowhere.

mod ops_support;

use std::collections::BTreeSet;

use ops_support::*;
use serde_json::Value;
use tempfile::TempDir;

const LISTEN: &[&str] = &["--listen", "127.0.0.1:0"];

fn caught_up(d: &Daemon, name: &str) -> bool {
    let p = projection(d, name);
    p["state"] == "running" && p["lag_events"] == 0 && p["checkpoint"] == p["head"]
}

/// Every sample line of a Prometheus text exposition: (name, labels, value).
fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            let kind = parts.next().unwrap_or_default();
            assert!(kind == "HELP" || kind == "TYPE", "bad comment line: {line}");
            if kind == "TYPE" {
                let t = parts.nth(1).unwrap_or_default();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "bad TYPE: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "bad labels: {line}");
                (n.to_owned(), l.trim_end_matches('}').to_owned())
            }
            None => (series.to_owned(), String::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("bad label: {line}"));
            assert!(
                !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                "bad label: {line}"
            );
        }
        out.push((name, labels, value));
    }
    out
}

fn sample(samples: &[(String, String, f64)], name: &str, labels_contain: &str) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.contains(labels_contain))
        .map(|(_, _, v)| *v)
}

#[test]
fn endpoints_actions_tokens_metrics_and_no_secret_anywhere() {
    let dir = TempDir::new().expect("a temporary folder");
    let dir = dir.path();
    prepare(dir, "", 40, true);
    let d = Daemon::start(dir, LISTEN, &[("PROJECTIONIST_API_TOKEN", TOKEN)]);
    let mut seen = String::new();

    // Liveness, and the projections settle: items dead-letters the Z event, audit stops on it.
    let live = d.get("/health/live");
    assert_eq!(
        (live.status, live.json()),
        (200, serde_json::json!({"live": true}))
    );
    eventually(30, "items and totals to catch up, audit to stop", || {
        (caught_up(&d, "items") && caught_up(&d, "totals") && projection(&d, "audit")["state"] == "stopped")
            .then_some(())
    });
    assert_eq!(projection(&d, "items")["dead_letters"], 1);

    // Readiness: 503, naming the stopped projection.
    let ready = d.get("/health/ready");
    assert_eq!(ready.status, 503, "{}", ready.body);
    let r = ready.json();
    assert_eq!(r["ready"], false);
    let reasons = r["reasons"].to_string();
    assert!(reasons.contains("projection audit is stopped"), "{reasons}");
    seen.push_str(&ready.body);

    // /api/projections has the fields of `status --json`.
    let api = d.get("/api/projections");
    assert_eq!(api.status, 200);
    assert!(api
        .header("content-type")
        .unwrap_or_default()
        .contains("application/json"));
    seen.push_str(&api.body);
    let from_cli: Value = serde_json::from_str(&cli(dir, &["status", "--json"])).expect("status --json");
    let keys = |v: &Value| -> BTreeSet<String> {
        v[0].as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(keys(&api.json()), keys(&from_cli));
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| p["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(names(&api.json()), names(&from_cli));

    // /api/dead-letters.
    let dl = d.get("/api/dead-letters");
    assert_eq!(dl.status, 200);
    seen.push_str(&dl.body);
    let letters = dl.json();
    assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
    assert_eq!(letters[0]["projection"], "items");
    assert_eq!(letters[0]["event"]["stream_id"], "ITEM-20");
    let id = letters[0]["id"].as_i64().expect("an id");
    assert_eq!(
        d.get("/api/dead-letters?projection=totals").json(),
        serde_json::json!([])
    );
    assert_eq!(d.get("/api/dead-letters?projection=nope").status, 404);

    // Tokens: none, wrong, right.
    let retry = format!("/api/dead-letters/{id}/retry");
    let none = d.post(&retry, None);
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("Authorization: Bearer"));
    assert!(none
        .header("www-authenticate")
        .unwrap_or_default()
        .starts_with("Bearer"));
    let wrong = d.post(&retry, Some("not-the-token"));
    assert_eq!(
        (wrong.status, wrong.json()["error"].clone()),
        (401, Value::from("wrong API token"))
    );
    let get = d.get(&retry);
    assert_eq!(get.status, 405, "GET on an action");
    assert!(
        get.json()["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("GET is not allowed here")),
        "a 405 answers a JSON error: {get:?}"
    );
    assert_eq!(get.header("content-type").as_deref(), Some("application/json"));

    // Retry before the fix: still fails (422), the dead letter stays.
    let still = d.post(&retry, Some(TOKEN));
    assert_eq!(still.status, 422, "{}", still.body);
    assert!(still.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("still fails"));
    assert_eq!(
        d.get("/api/dead-letters").json().as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(d.post("/api/dead-letters/abc/retry", Some(TOKEN)).status, 400);
    assert_eq!(d.post("/api/dead-letters/99999/retry", Some(TOKEN)).status, 404);
    assert_eq!(d.post("/api/dead-letters/99999/discard", Some(TOKEN)).status, 404);

    // After the fix: retried, gone, applied.
    fix_items(dir);
    let ok = d.post(&retry, Some(TOKEN));
    assert_eq!(
        (ok.status, ok.json()),
        (200, serde_json::json!({"id": id, "retried": true}))
    );
    assert_eq!(d.get("/api/dead-letters").json(), serde_json::json!([]));
    let label: String = db(dir)
        .query_row("SELECT label FROM items WHERE id = 'ITEM-20'", [], |r| r.get(0))
        .expect("the retried event is applied");
    assert_eq!(label, "Zucchini");
    assert_eq!(projection(&d, "items")["dead_letters"], 0);

    // Discard: a new failing event (another process appends it while the daemon runs).
    cli(
        dir,
        &[
            "append",
            "--stream",
            "ITEM-X",
            "--type",
            "ItemAdded",
            "--data",
            r#"{"code":"Q"}"#,
        ],
    );
    let id2 = eventually(30, "a second dead letter", || {
        d.get("/api/dead-letters").json()[0]["id"].as_i64()
    });
    assert_eq!(
        d.post(&format!("/api/dead-letters/{id2}/discard"), None).status,
        401
    );
    let gone = d.post(&format!("/api/dead-letters/{id2}/discard"), Some(TOKEN));
    assert_eq!(
        (gone.status, gone.json()),
        (200, serde_json::json!({"id": id2, "discarded": true}))
    );
    assert_eq!(d.get("/api/dead-letters").json(), serde_json::json!([]));

    // Pause and resume. First let `totals` take in everything so far, so that the lag below is
    // exactly the one event appended while it is paused.
    eventually(30, "totals at the head", || {
        (projection(&d, "totals")["lag_events"] == 0).then_some(())
    });
    assert_eq!(d.post("/api/projections/totals/pause", None).status, 401);
    let paused = d.post("/api/projections/totals/pause", Some(TOKEN));
    assert_eq!(
        (paused.status, paused.json()["state"].clone()),
        (200, Value::from("paused"))
    );
    assert_eq!(projection(&d, "totals")["state"], "paused");
    cli(
        dir,
        &[
            "append",
            "--stream",
            "ITEM-Y",
            "--type",
            "ItemAdded",
            "--data",
            r#"{"code":"A"}"#,
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(
        projection(&d, "totals")["lag_events"],
        1,
        "a paused projection does not apply"
    );
    let resumed = d.post("/api/projections/totals/resume", Some(TOKEN));
    assert_eq!(
        (resumed.status, resumed.json()["state"].clone()),
        (200, Value::from("running"))
    );
    eventually(30, "totals to catch up after resume", || {
        caught_up(&d, "totals").then_some(())
    });
    let unknown = d.post("/api/projections/nope/pause", Some(TOKEN));
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("known projections"));

    // Rebuild: 202, then the read model is whole again and the live worker goes on after it.
    let events: i64 = db(dir)
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    assert_eq!(d.post("/api/projections/totals/rebuild", None).status, 401);
    assert_eq!(d.post("/api/projections/nope/rebuild", Some(TOKEN)).status, 404);
    let rebuild = d.post("/api/projections/totals/rebuild", Some(TOKEN));
    assert_eq!(rebuild.status, 202, "{}", rebuild.body);
    assert_eq!(rebuild.json()["rebuild"], "started");
    eventually(30, "the rebuild to finish", || {
        let info = d.get("/api/info").json();
        (info["rebuilding"] == serde_json::json!([]) && caught_up(&d, "totals")).then_some(())
    });
    let n: i64 = db(dir)
        .query_row("SELECT n FROM totals", [], |r| r.get(0))
        .expect("totals");
    assert_eq!(n, events, "the rebuilt count equals the events");
    cli(
        dir,
        &[
            "append",
            "--stream",
            "ITEM-W",
            "--type",
            "ItemAdded",
            "--data",
            r#"{"code":"B"}"#,
        ],
    );
    eventually(30, "the live worker to go on after the rebuild", || {
        let n: i64 = db(dir).query_row("SELECT n FROM totals", [], |r| r.get(0)).ok()?;
        (n == events + 1).then_some(())
    });

    // Prometheus text.
    eventually(30, "items to catch up", || caught_up(&d, "items").then_some(()));
    let m = d.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    seen.push_str(&m.body);
    let samples = parse_prometheus(&m.body);
    let items = r#"projection="items",partition="0""#;
    assert!(
        sample(&samples, "projectionist_events_applied_total", items).unwrap_or(0.0) >= 30.0,
        "{}",
        m.body
    );
    assert!(sample(&samples, "projectionist_batch_duration_seconds_count", items).unwrap_or(0.0) >= 1.0);
    assert!(sample(
        &samples,
        "projectionist_batch_duration_seconds_bucket",
        r#"le="0.0005""#
    )
    .is_some());
    assert!(sample(
        &samples,
        "projectionist_batch_duration_seconds_bucket",
        r#"le="+Inf""#
    )
    .is_some());
    assert_eq!(sample(&samples, "projectionist_lag_events", items), Some(0.0));
    assert_eq!(sample(&samples, "projectionist_lag_seconds", items), Some(0.0));
    assert!(sample(&samples, "projectionist_lag_events", r#"projection="audit""#).unwrap_or(0.0) > 0.0);
    assert!(sample(&samples, "projectionist_lag_seconds", r#"projection="audit""#).unwrap_or(0.0) > 0.0);
    assert_eq!(sample(&samples, "projectionist_errors_total", items), Some(2.0));
    assert_eq!(
        sample(&samples, "projectionist_dead_letters_total", items),
        Some(2.0)
    );
    assert_eq!(
        sample(&samples, "projectionist_dead_letters_open", items),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "projectionist_state",
            r#"projection="audit",partition="0",state="stopped""#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&samples, "projectionist_database_up", ""), Some(1.0));
    assert!(m
        .body
        .contains("# TYPE projectionist_batch_duration_seconds histogram"));
    assert!(m.body.contains("# HELP projectionist_lag_events"));

    // The dashboard and its assets are served from the binary.
    let page = d.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert!(
        page.body.contains("<title>Projectionist</title>")
            && !page.body.contains("http://")
            && !page.body.contains("https://")
    );
    seen.push_str(&page.body);
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
    ] {
        let a = d.get(path);
        assert_eq!(a.status, 200, "{path}");
        assert!(
            a.header("content-type").unwrap_or_default().starts_with(kind),
            "{path}"
        );
        assert!(
            !a.body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }
    let info = d.get("/api/info");
    seen.push_str(&info.body);
    assert_eq!(info.json()["actions_enabled"], true);
    assert!(info.json()["database"]
        .as_str()
        .unwrap_or_default()
        .contains("password=***"));
    let missing = d.get("/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.json()["error"].is_string());

    // Shut down cleanly; the secret and the token are nowhere.
    let (ok, stdout, stderr) = d.stop();
    assert!(ok, "the daemon exits 0 on SIGTERM:\n{stderr}");
    assert!(
        stdout.contains("PROJECTION") && stdout.contains("totals"),
        "{stdout}"
    );
    assert!(
        stderr.contains("password=***"),
        "the startup log shows the redacted database:\n{stderr}"
    );
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr), ("responses", &seen)] {
        assert!(!text.contains(SECRET), "the database password leaked into {what}");
        assert!(!text.contains(TOKEN), "the API token leaked into {what}");
    }
}

#[test]
fn actions_are_disabled_without_a_token_and_logs_can_be_json() {
    let dir = TempDir::new().expect("a temporary folder");
    let dir = dir.path();
    // The listen address comes from the config this time.
    prepare(dir, "\n[http]\nlisten = \"127.0.0.1:0\"\n", 10, false);
    let d = Daemon::start(dir, &["--log-format", "json"], &[]);
    let refused = d.post("/api/projections/totals/pause", Some("anything"));
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.json()["error"]
        .as_str()
        .unwrap_or_default()
        .contains("no API token is configured"));
    assert_eq!(d.post("/api/dead-letters/1/retry", None).status, 403);
    assert_eq!(d.get("/api/info").json()["actions_enabled"], false);
    eventually(30, "readiness", || {
        (d.get("/health/ready").status == 200).then_some(())
    });
    assert_eq!(
        d.get("/health/ready").json(),
        serde_json::json!({"ready": true, "reasons": []})
    );
    let (ok, _, stderr) = d.stop();
    assert!(ok, "{stderr}");
    let mut lines = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{stderr}");
    assert!(
        stderr.contains("\"actions\":\"disabled (no API token)\""),
        "{stderr}"
    );
    assert!(!stderr.contains(SECRET));
}

#[test]
fn readiness_follows_the_lag_limit() {
    let dir = TempDir::new().expect("a temporary folder");
    let dir = dir.path();
    prepare(dir, "\n[http]\nmax_lag_events = 1000\n", 10, false);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--max-lag-events",
        "2",
        "--api-token-env",
        "MY_OPS_TOKEN",
    ];
    let d = Daemon::start(dir, &args, &[("MY_OPS_TOKEN", TOKEN)]);
    eventually(30, "readiness", || {
        (d.get("/health/ready").status == 200).then_some(())
    });
    assert_eq!(d.post("/api/projections/totals/pause", Some(TOKEN)).status, 200);
    for i in 0..3 {
        let stream = format!("LATE-{i}");
        cli(
            dir,
            &[
                "append",
                "--stream",
                &stream,
                "--type",
                "ItemAdded",
                "--data",
                r#"{"code":"A"}"#,
            ],
        );
    }
    let reasons = eventually(30, "unreadiness from lag", || {
        let r = d.get("/health/ready");
        (r.status == 503).then(|| r.json()["reasons"].to_string())
    });
    assert!(
        reasons.contains("projection totals lags 3 events (limit 2)"),
        "{reasons}"
    );
    assert_eq!(d.post("/api/projections/totals/resume", Some(TOKEN)).status, 200);
    eventually(30, "readiness after resume", || {
        (d.get("/health/ready").status == 200).then_some(())
    });
    let (ok, _, stderr) = d.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn bad_http_options_are_usage_errors() {
    let dir = TempDir::new().expect("a temporary folder");
    let dir = dir.path();
    prepare(dir, "", 2, false);
    let code = |args: &[&str]| {
        let out = command(dir).args(args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains(SECRET), "{err}");
        (out.status.code(), err)
    };
    let (c, err) = code(&["run", "--once", "--listen", "9464"]);
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("--listen") && err.contains("--once"), "{err}");
    let (c, err) = code(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--api-token-env",
        "SURELY_UNSET_VAR_123",
    ]);
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("SURELY_UNSET_VAR_123"), "{err}");
    let (c, err) = code(&["run", "--listen", "not an address"]);
    assert_eq!(c, Some(2), "{err}");
    std::fs::write(
        dir.join("projectionist.toml"),
        format!("{CONFIG}\n[http]\nlisten = 5\n"),
    )
    .expect("write");
    let (c, err) = code(&["run", "--once"]);
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("key `http.listen`: expected a string"), "{err}");
}
