//! SIGINT and SIGTERM for every long command (`run`, `run --once`, `rebuild`, `import`,
//! `bench`): the first signal asks the command to stop after (or roll back) its current batch
//! and exit 0; a second one exits at once with [`exit::INTERRUPTED`](crate::exit::INTERRUPTED).
//!
//! The handlers are installed before the command connects, so a signal during start-up (a
//! daemon waiting for its database) stops it too. They replace an inherited "ignore" (a shell
//! that ignores SIGINT for background jobs): a long command always answers both signals.

use anyhow::{Context, Result};
use tokio::sync::watch;
use tracing::warn;

/// The tracing target of the lines about signals; one-shot commands log it at `info` too.
pub const TARGET: &str = "projectionist::signal";

/// A switch that turns true on the first SIGINT or SIGTERM.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Installs the handlers. `what` says what the first signal does, for the log.
    pub fn install(what: &'static str) -> Result<Stop> {
        let (tx, rx) = watch::channel(false);
        let mut signals = Signals::new().context("cannot install the SIGINT and SIGTERM handlers")?;
        tokio::spawn(async move {
            let which = signals.next().await;
            tracing::info!(target: TARGET, signal = which, "{what}; signal again to stop at once");
            let _ = tx.send(true);
            let again = signals.next().await;
            warn!(target: TARGET, signal = again, "second signal: exiting now; an uncommitted batch is rolled back by the database");
            std::process::exit(i32::from(crate::exit::INTERRUPTED));
        });
        Ok(Stop(rx))
    }

    /// Whether a signal came.
    pub fn stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// The receiver, for the library's `until`/`run_until` options.
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.0.clone()
    }

    /// Completes on the first signal.
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Logs the end of a command stopped by a signal.
    pub fn log_stopped(&self, outcome: &str) {
        tracing::info!(target: TARGET, "stopped: {outcome}");
    }
}

/// The two signals, as one stream.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
