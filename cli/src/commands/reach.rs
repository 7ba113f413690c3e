//! Reaching the database or the broker at start-up: the daemon (`run`) waits for them, and so
//! do one-shot commands given `--wait-for-database DURATION`; without it they fail fast.
//!
//! While it cannot reach them, a command logs the cause once, then again only when the cause
//! changes or every [`LOG_EVERY`], and tries again with backoff (from [`FIRST_RETRY`] doubling
//! up to [`MAX_RETRY`]). Errors that waiting cannot fix (a bad URL, a missing permission, a bad
//! config) end it at once.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::{info, warn};

use crate::signals::Stop;

const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the command is still waiting, for `/health/ready` (empty once connected).
#[derive(Clone, Default)]
pub struct Waiting(Arc<Mutex<Option<String>>>);

impl Waiting {
    fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// The reason, while waiting.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How long to wait, and who hears about it.
pub struct Patience<'a> {
    /// Give up after this long (`None`: until it answers, or until a signal).
    pub limit: Option<Duration>,
    /// Stops waiting (the command then returns `Ok(None)`).
    pub stop: Option<&'a Stop>,
    pub waiting: Option<&'a Waiting>,
}

/// Whether waiting may fix `err`: the library says its error is retryable (a refused or lost
/// connection, an unreachable broker, a busy database).
pub fn is_transient(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<projectionist::Error>()
            .is_some_and(projectionist::Error::is_retryable)
            || cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::TimedOut
                )
            })
    })
}

/// Runs `attempt` until it succeeds, an error that waiting cannot fix comes, the limit passes
/// or a signal comes (`Ok(None)`). `what` names what is waited for, in the log.
pub async fn reach<T, F, Fut>(what: &str, patience: Patience<'_>, mut attempt: F) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    let mut retry = FIRST_RETRY;
    let mut logged: Option<(String, Instant)> = None;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let err = match attempt().await {
            Ok(v) => {
                if attempts > 1 {
                    info!(
                        attempts,
                        waited_seconds = started.elapsed().as_secs_f64(),
                        "{what} answers; going on"
                    );
                }
                if let Some(w) = patience.waiting {
                    w.set(None);
                }
                return Ok(Some(v));
            }
            Err(e) if !is_transient(&e) => return Err(e),
            Err(e) => e,
        };
        let cause = format!("{err:#}");
        if let Some(limit) = patience.limit {
            if started.elapsed() + retry > limit {
                return Err(err.context(format!(
                    "gave up waiting for {what} after {:.1} s ({attempts} attempts; --wait-for-database)",
                    started.elapsed().as_secs_f64()
                )));
            }
        }
        if let Some(w) = patience.waiting {
            w.set(Some(format!("waiting for {what}: {cause}")));
        }
        let log_now = match &logged {
            None => true,
            Some((last, at)) => *last != cause || at.elapsed() >= LOG_EVERY,
        };
        if log_now {
            warn!(error = %cause, attempts, retry_in = ?retry, "cannot reach {what}; waiting for it, with backoff (logged again only when the cause changes, or every {}s)", LOG_EVERY.as_secs());
            logged = Some((cause, Instant::now()));
        }
        match patience.stop {
            Some(stop) => {
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.wait() => return Ok(None),
                }
            }
            None => tokio::time::sleep(retry).await,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}
