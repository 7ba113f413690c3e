//! The JSON API: `/api/projections` and `/api/dead-letters` to read, and token-guarded POST
//! actions: pause, resume, rebuild, retry and discard.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::daemon::RebuildRefused;
use super::{ApiError, App, DEFAULT_TOKEN_ENV};

/// Refuses an action unless it carries the configured bearer token.
fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "actions are disabled: no API token is configured; set {DEFAULT_TOKEN_ENV} (or the \
                 variable named by --api-token-env or [http] api_token_env) and restart the daemon"
            ),
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    match given {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this action needs the API token: send the header `Authorization: Bearer TOKEN`",
        )),
        Some(t) if token.matches(t) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong API token")),
    }
}

fn dead_letter_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("dead letter ids are integers, found {raw:?}"),
        )
    })
}

/// `GET /api/info`: the daemon's settings, for the dashboard.
pub async fn info(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "database": app.database,
        "actions_enabled": app.token.is_some(),
        "max_lag_events": app.limits.max_lag_events,
        "max_lag_seconds": app.limits.max_lag_seconds,
        "rebuilding": app.ops.rebuilding(),
        "problems": app.ops.problems(),
        "uptime_seconds": app.started.elapsed().as_secs_f64(),
    }))
}

/// `GET /api/projections`: the same array as `projectionist status --json`.
pub async fn projections(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    Ok(Json(app.ops.status().await?).into_response())
}

/// `GET /api/dead-letters[?projection=NAME]`: open dead letters.
pub async fn dead_letters(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let projection = q.get("projection").cloned();
    Ok(Json(app.ops.dead_letters(projection).await?).into_response())
}

/// `GET /api/lag-history`: each projection's lag over the last 15 minutes, sampled by the
/// daemon: `{"window_seconds", "every_seconds", "projections": {name: [{at_ms, lag_events,
/// lag_seconds}, …]}}`, oldest first.
pub async fn lag_history(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({
        "window_seconds": super::history::WINDOW.as_secs(),
        "every_seconds": super::history::EVERY.as_secs(),
        "projections": app.history.snapshot(),
    }))
}

/// `POST /api/projections/{name}/pause`.
pub async fn pause(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    app.ops.pause(name.clone()).await?;
    Ok(Json(json!({ "projection": name, "state": "paused" })).into_response())
}

/// `POST /api/projections/{name}/resume`.
pub async fn resume(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    app.ops.clone().resume(name.clone()).await?;
    Ok(Json(json!({ "projection": name, "state": "running" })).into_response())
}

/// `POST /api/projections/{name}/rebuild`: starts a rebuild in the background (202).
pub async fn rebuild(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    match app.ops.clone().start_rebuild(name.clone()) {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "projection": name,
                "rebuild": "started",
                "follow": "/api/projections",
            })),
        )
            .into_response()),
        Err(RebuildRefused::Unknown(e)) => Err(e.into()),
        Err(RebuildRefused::AlreadyRunning) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("a rebuild of {name} is already running (or the daemon is stopping)"),
        )),
    }
}

/// `POST /api/dead-letters/{id}/retry`: applies the event again; 422 when it still fails.
pub async fn retry(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let id = dead_letter_id(&id)?;
    match app.ops.retry(id).await? {
        Ok(()) => Ok(Json(json!({ "id": id, "retried": true })).into_response()),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("dead letter {id} still fails: {e}; the attempt is recorded"),
        )),
    }
}

/// `POST /api/dead-letters/{id}/discard`.
pub async fn discard(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&app, &headers)?;
    let id = dead_letter_id(&id)?;
    app.ops.discard(id).await?;
    Ok(Json(json!({ "id": id, "discarded": true })).into_response())
}
