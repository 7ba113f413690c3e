//! The daemon's operations before it reaches its database: the HTTP server answers from the
//! first instant (`/health/live` 200, `/health/ready` 503 with the reason), and every other
//! request says the daemon is still waiting, until the [`Supervisor`] is there.

use std::sync::{Arc, OnceLock};

use projectionist::{DeadLetter, HandlerError, Status};

use super::daemon::{BoxFut, Ops, RebuildRefused, Supervisor};
use crate::commands::reach::Waiting;

/// [`Ops`] that wait for the supervisor.
pub struct Deferred {
    supervisor: OnceLock<Arc<Supervisor>>,
    waiting: Waiting,
}

impl Deferred {
    pub fn new(waiting: Waiting) -> Arc<Self> {
        Arc::new(Deferred {
            supervisor: OnceLock::new(),
            waiting,
        })
    }

    /// The daemon reached its database: requests go to `supervisor` from now on.
    pub fn connected(&self, supervisor: Arc<Supervisor>) {
        let _ = self.supervisor.set(supervisor);
    }

    fn get(&self) -> projectionist::Result<&Arc<Supervisor>> {
        self.supervisor
            .get()
            .ok_or_else(|| projectionist::Error::Database {
                op: "starting",
                message: "the daemon has not reached its database yet; see /health/ready and the log"
                    .to_owned(),
                retryable: true,
                cause: None,
            })
    }
}

impl Ops for Deferred {
    fn status(&self) -> BoxFut<'_, projectionist::Result<Vec<Status>>> {
        Box::pin(async move { self.get()?.status().await })
    }

    fn dead_letters(&self, projection: Option<String>) -> BoxFut<'_, projectionist::Result<Vec<DeadLetter>>> {
        Box::pin(async move { self.get()?.dead_letters(projection).await })
    }

    fn pause(&self, name: String) -> BoxFut<'_, projectionist::Result<()>> {
        Box::pin(async move { self.get()?.pause(name).await })
    }

    fn resume(self: Arc<Self>, name: String) -> BoxFut<'static, projectionist::Result<()>> {
        Box::pin(async move { self.get()?.clone().resume(name).await })
    }

    fn start_rebuild(self: Arc<Self>, name: String) -> Result<(), RebuildRefused> {
        self.get()
            .map_err(RebuildRefused::Unknown)?
            .clone()
            .start_rebuild(name)
    }

    fn retry(&self, id: i64) -> BoxFut<'_, projectionist::Result<Result<(), HandlerError>>> {
        Box::pin(async move { self.get()?.retry(id).await })
    }

    fn discard(&self, id: i64) -> BoxFut<'_, projectionist::Result<()>> {
        Box::pin(async move { self.get()?.discard(id).await })
    }

    fn rebuilding(&self) -> Vec<String> {
        self.supervisor.get().map(|s| s.rebuilding()).unwrap_or_default()
    }

    fn connected(&self) -> bool {
        self.supervisor.get().is_some()
    }

    fn problems(&self) -> Vec<String> {
        match self.supervisor.get() {
            Some(s) => s.problems(),
            None => vec![self
                .waiting
                .reason()
                .unwrap_or_else(|| "starting: connecting to the database and the event source".to_owned())],
        }
    }
}
