//! `/health/live` and `/health/ready`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use projectionist::{RunState, Status};
use serde_json::json;

use super::{App, Limits};

/// Liveness: the process answers.
pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "live": true }))
}

/// Readiness: the daemon has reached its database and it answers, no projection is stopped or past a lag limit, and no
/// worker or rebuild has failed. 503 with the reasons otherwise.
pub async fn ready(State(app): State<Arc<App>>) -> Response {
    let mut reasons = app.ops.problems();
    if app.ops.connected() {
        match app.ops.status().await {
            Ok(statuses) => reasons.extend(lag_reasons(&statuses, app.limits)),
            Err(e) => reasons.push(format!("the database does not answer: {e}")),
        }
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "ready": reasons.is_empty(), "reasons": reasons })),
    )
        .into_response()
}

/// Why each projection is not ready, if it is not.
pub fn lag_reasons(statuses: &[Status], limits: Limits) -> Vec<String> {
    let mut out = Vec::new();
    for s in statuses {
        let who = if s.partition == 0 {
            format!("projection {}", s.name)
        } else {
            format!("projection {} partition {}", s.name, s.partition)
        };
        if s.state == RunState::Stopped {
            let why = s.reason.as_deref().unwrap_or("stopped by its error policy");
            out.push(format!("{who} is stopped: {why}"));
        }
        if let Some(max) = limits.max_lag_events {
            if s.lag_events > max {
                out.push(format!("{who} lags {} events (limit {max})", s.lag_events));
            }
        }
        if let Some(max) = limits.max_lag_seconds {
            if s.lag_seconds > max {
                out.push(format!("{who} lags {:.1} s (limit {max} s)", s.lag_seconds));
            }
        }
    }
    out
}
