//! The Grafana dashboard of docs/ queries only what the daemon exports: every metric name in
//! its PromQL is a series of `/metrics` of a real `projectionist run --listen`, after a run
//! that applied events, failed one into a dead letter and stopped a projection.

mod ops_support;

use std::collections::BTreeSet;

use ops_support::*;
use serde_json::Value;
use tempfile::TempDir;

const DASHBOARD: &str = include_str!("../../docs/grafana-dashboard.json");

/// Every PromQL expression of the dashboard: its panels' targets and its query variables.
fn expressions(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// The metric names an expression reads (`projectionist_…`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("projectionist_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The series names of a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "projectionist");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let queried: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    // What the dashboard is for: lag, rate, errors, dead letters, batch duration and state.
    for wanted in [
        "projectionist_lag_events",
        "projectionist_lag_seconds",
        "projectionist_events_applied_total",
        "projectionist_errors_total",
        "projectionist_dead_letters_total",
        "projectionist_dead_letters_open",
        "projectionist_batch_duration_seconds_bucket",
        "projectionist_state",
    ] {
        assert!(queried.contains(wanted), "the dashboard does not query {wanted}");
    }
    // Every panel has a query.
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for p in panels {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
    }

    let dir = TempDir::new().expect("tempdir");
    let d = dir.path();
    // `items` dead-letters the Z event, `audit` stops on it, `totals` counts every event.
    prepare(d, "", 20, true);
    let daemon = Daemon::start(d, &["--listen", "127.0.0.1:0"], &[]);
    let text = eventually(60, "every series of the run on /metrics", || {
        let r = daemon.get("/metrics");
        let names = exported(&r.body);
        let done = r.status == 200
            && names.contains("projectionist_dead_letters_total")
            && names.contains("projectionist_errors_total")
            && names.contains("projectionist_batch_duration_seconds_bucket");
        done.then_some(r.body)
    });
    let names = exported(&text);
    let missing: Vec<&String> = queried.iter().filter(|q| !names.contains(*q)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which /metrics does not export:\n{text}"
    );
    let (stopped, _, logs) = daemon.stop();
    assert!(stopped, "{logs}");
}
