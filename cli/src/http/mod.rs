//! The daemon's HTTP server (`projectionist run --listen ADDR`): health, Prometheus metrics, a
//! JSON API with token-guarded actions, and the dashboard. See docs/operations.md.

mod api;
mod config;
mod daemon;
mod dashboard;
mod health;
mod history;
mod metrics;
mod starting;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use projectionist::WorkerReport;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::args::HttpArgs;
use crate::backend::{CliEngine, DatabaseUrl};
use crate::commands::reach::Waiting;
use crate::exit::usage;

pub use config::{parse_listen, HttpConfig};
pub use daemon::Ops;

/// The environment variable read for the API token when nothing else names one.
pub const DEFAULT_TOKEN_ENV: &str = "PROJECTIONIST_API_TOKEN";

/// A bearer token. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// Whether `given` is this token, compared in constant time (for equal lengths).
    pub fn matches(&self, given: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// Readiness limits.
#[derive(Clone, Copy, Debug, Default)]
pub struct Limits {
    pub max_lag_events: Option<u64>,
    pub max_lag_seconds: Option<f64>,
}

/// The server's settings, from `run`'s options over the config's `[http]` table.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub token: Option<Token>,
    /// Where the token came from, for the startup log (never the token).
    pub token_source: String,
    pub limits: Limits,
    /// The database, as shown: without passwords.
    pub database: String,
}

impl Settings {
    /// The settings, or `None` when no listen address is given (by `--listen` or `[http]`).
    pub fn resolve(
        args: &HttpArgs,
        config: &HttpConfig,
        url: &DatabaseUrl,
        once: bool,
    ) -> Result<Option<Self>> {
        if once && args.listen.is_some() {
            return Err(usage(
                "--listen serves a running daemon and does not go with --once; drop one of them",
            ));
        }
        let Some(listen) = args.listen.or(config.listen) else {
            return Ok(None);
        };
        if once {
            return Ok(None);
        }
        let from_env = |var: &str, named_by: &str| -> Result<Token> {
            match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Token(v.trim().to_owned())),
                _ => Err(usage(format!(
                    "{named_by} names the environment variable {var}, which is not set or empty; \
                     set it to the API token, or drop {named_by} to run with the actions disabled"
                ))),
            }
        };
        let (token, token_source) = if let Some(var) = &args.api_token_env {
            (
                Some(from_env(var, "--api-token-env")?),
                format!("environment variable {var}"),
            )
        } else if let Some(var) = &config.api_token_env {
            (
                Some(from_env(var, "[http] api_token_env")?),
                format!("environment variable {var}"),
            )
        } else if let Some(t) = &config.api_token {
            (
                Some(Token(t.trim().to_owned())),
                "[http] api_token in the config".to_owned(),
            )
        } else {
            match std::env::var(DEFAULT_TOKEN_ENV) {
                Ok(v) if !v.trim().is_empty() => (
                    Some(Token(v.trim().to_owned())),
                    format!("environment variable {DEFAULT_TOKEN_ENV}"),
                ),
                _ => (None, "none".to_owned()),
            }
        };
        let max_lag_seconds = args.max_lag_seconds.or(config.max_lag_seconds);
        if let Some(s) = max_lag_seconds {
            if !(s.is_finite() && s > 0.0) {
                return Err(usage(format!(
                    "--max-lag-seconds must be a positive number, found {s}"
                )));
            }
        }
        Ok(Some(Settings {
            listen,
            token,
            token_source,
            limits: Limits {
                max_lag_events: args.max_lag_events.or(config.max_lag_events),
                max_lag_seconds,
            },
            database: shown_database(url),
        }))
    }
}

/// The database URL as the daemon shows it (see [`crate::backend::redact`]).
pub fn shown_database(url: &DatabaseUrl) -> String {
    url.to_string()
}

/// What every handler shares.
pub struct App {
    pub ops: Arc<dyn Ops>,
    pub token: Option<Token>,
    pub limits: Limits,
    pub database: String,
    pub metrics: Option<PrometheusHandle>,
    pub started: Instant,
    /// Each projection's lag over the last 15 minutes, for the dashboard.
    pub history: history::LagHistory,
}

/// An API error: a status code and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<projectionist::Error> for ApiError {
    fn from(e: projectionist::Error) -> Self {
        let status = match e {
            projectionist::Error::UnknownProjection { .. } | projectionist::Error::UnknownDeadLetter(_) => {
                StatusCode::NOT_FOUND
            }
            // The database or broker does not answer (yet): come back later.
            ref e if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
            _ => {
                warn!(error = %e, "an API request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"projectionist\""),
            );
        }
        res
    }
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/style.css", get(dashboard::style_css))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route("/api/info", get(api::info))
        .route("/api/projections", get(api::projections))
        .route("/api/dead-letters", get(api::dead_letters))
        .route("/api/lag-history", get(api::lag_history))
        .route("/api/projections/{name}/pause", post(api::pause))
        .route("/api/projections/{name}/resume", post(api::resume))
        .route("/api/projections/{name}/rebuild", post(api::rebuild))
        .route("/api/dead-letters/{id}/retry", post(api::retry))
        .route("/api/dead-letters/{id}/discard", post(api::discard))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page; see docs/operations.md") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not allowed here: pages and reads are GET, actions are POST; see docs/operations.md"
                ),
            )
        })
        .with_state(app)
}

async fn shut(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Serves HTTP at once, and runs the projections live once `connect` gives the engine and the
/// projections' names (it waits for the database and the source); until `shutdown` turns true.
/// `waiting` says why it is not connected yet, for `/health/ready`.
pub async fn serve<C>(
    connect: C,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
    waiting: Waiting,
) -> Result<Vec<WorkerReport>>
where
    C: std::future::Future<Output = Result<Option<(CliEngine, Vec<String>)>>>,
{
    let handle = metrics::install()?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        warn!(address = %addr, "listening beyond loopback: the dashboard, metrics and read-only API are open to the network; put it behind a proxy or firewall");
    }
    let ops = starting::Deferred::new(waiting);
    let app = Arc::new(App {
        ops: ops.clone(),
        token: settings.token,
        limits: settings.limits,
        database: settings.database,
        metrics: Some(handle),
        started: Instant::now(),
        history: history::LagHistory::default(),
    });
    tokio::spawn(metrics::refresh_loop(app.clone(), shutdown.clone()));
    info!(
        address = %format!("http://{addr}"),
        database = %app.database,
        actions = if app.token.is_some() { "enabled" } else { "disabled (no API token)" },
        token_from = %settings.token_source,
        "serving the dashboard, /metrics, /health and /api"
    );
    let server = tokio::spawn(
        axum::serve(listener, router(app))
            .with_graceful_shutdown(shut(shutdown.clone()))
            .into_future(),
    );
    let supervisor = match connect.await {
        Ok(Some((engine, names))) => {
            let supervisor = daemon::Supervisor::new(Arc::new(engine), names);
            supervisor.start_all();
            ops.connected(supervisor.clone());
            Some(supervisor)
        }
        Ok(None) => None,
        Err(e) => {
            server.abort();
            return Err(e);
        }
    };
    let served = server.await;
    let reports = match supervisor {
        Some(s) => s.stop_all().await,
        None => Ok(Vec::new()),
    };
    served
        .context("the HTTP server's task failed")?
        .context("the HTTP server failed")?;
    reports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_and_never_print() {
        let t = Token("abc123".into());
        assert!(t.matches("abc123"));
        assert!(!t.matches("abc124"));
        assert!(!t.matches("abc"));
        assert!(!t.matches(""));
        assert_eq!(format!("{t:?}"), "Token(***)");
    }
}
