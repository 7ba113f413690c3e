//! `/metrics`: the Prometheus exporter. The core counts applied events, batch durations,
//! checkpoints, errors, dead letters, fencing and wait-for durations through the `metrics`
//! facade (see the `projectionist` crate's `core::metrics`); this module installs the
//! recorder, and adds gauges that need the head: lag in events and seconds, open dead letters
//! and the state, refreshed from `status()` every second and at each scrape.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use projectionist::RunState;
use tokio::sync::watch;
use tracing::debug;

use super::App;

/// Batch durations: half a millisecond to a minute.
const BATCH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Read-your-writes waits: a millisecond to a minute.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const STATES: [RunState; 4] = [
    RunState::Running,
    RunState::Paused,
    RunState::Stopped,
    RunState::Rebuilding,
];

/// Installs the Prometheus recorder for this process.
pub fn install() -> Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("projectionist_batch_duration_seconds".into()),
            BATCH_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("projectionist_wait_for_seconds".into()),
                WAIT_BUCKETS,
            )
        })
        .context("cannot set the histogram buckets")?
        .install_recorder()
        .context("cannot install the Prometheus metrics recorder")?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "projectionist_events_applied_total",
        Unit::Count,
        "Events that went through a committed batch"
    );
    describe_histogram!(
        "projectionist_batch_duration_seconds",
        Unit::Seconds,
        "Time to apply and commit one batch"
    );
    describe_gauge!(
        "projectionist_checkpoint_position",
        "Position of the projection's checkpoint"
    );
    describe_counter!(
        "projectionist_errors_total",
        Unit::Count,
        "Failing events (each failure an error policy dealt with)"
    );
    describe_counter!(
        "projectionist_dead_letters_total",
        Unit::Count,
        "Events that became dead letters"
    );
    describe_counter!(
        "projectionist_fenced_total",
        Unit::Count,
        "Commits that lost the checkpoint compare-and-set to another runner"
    );
    describe_histogram!(
        "projectionist_wait_for_seconds",
        Unit::Seconds,
        "Read-your-writes waits, by outcome"
    );
    describe_gauge!(
        "projectionist_lag_events",
        "Events after the projection's checkpoint"
    );
    describe_gauge!(
        "projectionist_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event the projection has not applied (0 when caught up)"
    );
    describe_gauge!(
        "projectionist_dead_letters_open",
        "Open dead letters of the projection"
    );
    describe_gauge!(
        "projectionist_events_per_second",
        "The projection's recent applying rate"
    );
    describe_gauge!(
        "projectionist_state",
        "1 for the projection's current state (running, paused, stopped, rebuilding), else 0"
    );
    describe_gauge!("projectionist_head_position", "Position of the newest event");
    describe_gauge!(
        "projectionist_database_up",
        "1 when the last status query answered, else 0"
    );
}

/// Sets the gauges that need the head from one `status()`.
pub async fn refresh(app: &App) {
    match app.ops.status().await {
        Ok(statuses) => {
            app.history.record(&statuses);
            metrics::gauge!("projectionist_database_up").set(1.0);
            if let Some(head) = statuses.iter().map(|s| s.head).max() {
                metrics::gauge!("projectionist_head_position").set(head as f64);
            }
            for s in statuses {
                let l = [
                    ("projection", s.name.clone()),
                    ("partition", s.partition.to_string()),
                ];
                metrics::gauge!("projectionist_lag_events", &l).set(s.lag_events as f64);
                metrics::gauge!("projectionist_lag_seconds", &l).set(s.lag_seconds);
                metrics::gauge!("projectionist_dead_letters_open", &l).set(s.dead_letters as f64);
                metrics::gauge!("projectionist_events_per_second", &l).set(s.events_per_second);
                for state in STATES {
                    let value = if s.state == state { 1.0 } else { 0.0 };
                    metrics::gauge!(
                        "projectionist_state",
                        "projection" => s.name.clone(),
                        "partition" => s.partition.to_string(),
                        "state" => state.as_str()
                    )
                    .set(value);
                }
            }
        }
        Err(e) => {
            debug!(error = %e, "status for the metrics failed");
            metrics::gauge!("projectionist_database_up").set(0.0);
        }
    }
}

/// Refreshes the gauges every second until shutdown.
pub async fn refresh_loop(app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        refresh(&app).await;
        if let Some(handle) = &app.metrics {
            handle.run_upkeep();
        }
    }
}

/// `GET /metrics`: the Prometheus text format, with the lag gauges fresh.
pub async fn render(State(app): State<Arc<App>>) -> impl IntoResponse {
    let _ = tokio::time::timeout(Duration::from_secs(2), refresh(&app)).await;
    let body = app
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
}
