//! The daemon's supervisor: one live worker per projection, each with its own stop switch, so
//! that an operator's rebuild can take a projection's live worker out of the way and put it
//! back afterwards. The HTTP handlers reach the engine through [`Ops`], the actions they may
//! take.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use projectionist::{DeadLetter, HandlerError, Status, WorkerReport};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::backend::CliEngine;

/// A boxed, sendable future.
pub type BoxFut<'a, T> = projectionist::backend::BoxFuture<'a, T>;

/// Why a rebuild could not start.
#[derive(Debug)]
pub enum RebuildRefused {
    Unknown(projectionist::Error),
    AlreadyRunning,
}

/// What the HTTP server may do to the engine.
pub trait Ops: Send + Sync + 'static {
    fn status(&self) -> BoxFut<'_, projectionist::Result<Vec<Status>>>;
    fn dead_letters(&self, projection: Option<String>) -> BoxFut<'_, projectionist::Result<Vec<DeadLetter>>>;
    fn pause(&self, name: String) -> BoxFut<'_, projectionist::Result<()>>;
    /// Resumes a projection, and starts its live worker again when it is not running (after a
    /// failed rebuild or worker).
    fn resume(self: Arc<Self>, name: String) -> BoxFut<'static, projectionist::Result<()>>;
    /// Starts a rebuild in the background.
    fn start_rebuild(self: Arc<Self>, name: String) -> Result<(), RebuildRefused>;
    fn retry(&self, id: i64) -> BoxFut<'_, projectionist::Result<Result<(), HandlerError>>>;
    fn discard(&self, id: i64) -> BoxFut<'_, projectionist::Result<()>>;
    /// Projections with a rebuild running now.
    fn rebuilding(&self) -> Vec<String>;
    /// Problems that make the daemon unready: failed workers and failed rebuilds.
    fn problems(&self) -> Vec<String>;
    /// Whether the daemon has reached its database (until then, `problems` says why not).
    fn connected(&self) -> bool {
        true
    }
}

struct Slot {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Runs the live workers of a set of projections and the rebuilds that operators start.
pub struct Supervisor {
    engine: Arc<CliEngine>,
    /// The projections this daemon runs live.
    live: Vec<String>,
    slots: Mutex<HashMap<String, Slot>>,
    rebuilds: Mutex<HashMap<String, JoinHandle<()>>>,
    problems: Mutex<BTreeMap<String, String>>,
    reports: Mutex<Vec<WorkerReport>>,
    stopping: AtomicBool,
}

/// Locks a mutex; a poisoned one (a panic while held) still holds consistent data here.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Supervisor {
    pub fn new(engine: Arc<CliEngine>, live: Vec<String>) -> Arc<Self> {
        Arc::new(Supervisor {
            engine,
            live,
            slots: Mutex::new(HashMap::new()),
            rebuilds: Mutex::new(HashMap::new()),
            problems: Mutex::new(BTreeMap::new()),
            reports: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Starts the live worker of every projection this daemon runs.
    pub fn start_all(self: &Arc<Self>) {
        for name in self.live.clone() {
            self.start(&name);
        }
    }

    /// Starts `name`'s live worker, unless it is not one of ours, already runs, is being
    /// rebuilt, or the daemon is stopping.
    fn start(self: &Arc<Self>, name: &str) {
        if self.stopping.load(Ordering::SeqCst) || !self.live.iter().any(|n| n == name) {
            return;
        }
        let mut slots = lock(&self.slots);
        if slots.get(name).is_some_and(|s| !s.task.is_finished()) {
            return;
        }
        lock(&self.problems).remove(name);
        let (stop, rx) = watch::channel(false);
        let me = self.clone();
        let owned = name.to_owned();
        let task = tokio::spawn(async move {
            let result = me
                .engine
                .run_only_until([owned.clone()], projectionist::when_true(rx))
                .await;
            match result {
                Ok(reports) => lock(&me.reports).extend(reports),
                Err(e) => {
                    error!(projection = %owned, error = %e, "the projection's worker failed");
                    lock(&me.problems).insert(owned, format!("worker failed: {e}"));
                }
            }
        });
        slots.insert(name.to_owned(), Slot { stop, task });
    }

    /// Stops `name`'s live worker after its current batch; true when one was running.
    async fn stop(&self, name: &str) -> bool {
        let slot = lock(&self.slots).remove(name);
        let Some(slot) = slot else { return false };
        let _ = slot.stop.send(true);
        let was_running = !slot.task.is_finished();
        if let Err(e) = slot.task.await {
            warn!(projection = name, error = %e, "the projection's worker task ended abnormally");
        }
        was_running
    }

    /// Stops everything: live workers after their current batch; rebuilds at once (a rebuild
    /// resumes from its last committed batch at the next start). Returns the workers' reports,
    /// or the first worker failure.
    pub async fn stop_all(&self) -> anyhow::Result<Vec<WorkerReport>> {
        self.stopping.store(true, Ordering::SeqCst);
        let rebuilds: Vec<(String, JoinHandle<()>)> = lock(&self.rebuilds).drain().collect();
        for (name, task) in rebuilds {
            if !task.is_finished() {
                warn!(projection = %name, "stopping an unfinished rebuild; it resumes from its last batch at the next rebuild or start");
                task.abort();
            }
            let _ = task.await;
        }
        let slots: Vec<(String, Slot)> = lock(&self.slots).drain().collect();
        for (_, slot) in &slots {
            let _ = slot.stop.send(true);
        }
        for (name, slot) in slots {
            if let Err(e) = slot.task.await {
                warn!(projection = %name, error = %e, "the projection's worker task ended abnormally");
            }
        }
        let failures: Vec<String> = lock(&self.problems)
            .iter()
            .filter(|(_, p)| p.starts_with("worker failed"))
            .map(|(n, p)| format!("projection {n}: {p}"))
            .collect();
        if let Some(first) = failures.into_iter().next() {
            anyhow::bail!(first);
        }
        let mut reports = std::mem::take(&mut *lock(&self.reports));
        reports.sort_by(|a, b| a.projection.cmp(&b.projection));
        Ok(reports)
    }
}

impl Ops for Supervisor {
    fn status(&self) -> BoxFut<'_, projectionist::Result<Vec<Status>>> {
        Box::pin(self.engine.status())
    }

    fn dead_letters(&self, projection: Option<String>) -> BoxFut<'_, projectionist::Result<Vec<DeadLetter>>> {
        Box::pin(async move { self.engine.dead_letters(projection.as_deref()).await })
    }

    fn pause(&self, name: String) -> BoxFut<'_, projectionist::Result<()>> {
        Box::pin(async move {
            self.engine.pause(&name).await?;
            info!(projection = %name, "paused through the API");
            Ok(())
        })
    }

    fn resume(self: Arc<Self>, name: String) -> BoxFut<'static, projectionist::Result<()>> {
        Box::pin(async move {
            if self.rebuilding().contains(&name) {
                // The rebuild marks it running when it is done.
                self.engine.projection(&name)?;
                return Ok(());
            }
            self.engine.resume(&name).await?;
            self.start(&name);
            info!(projection = %name, "resumed through the API");
            Ok(())
        })
    }

    fn start_rebuild(self: Arc<Self>, name: String) -> Result<(), RebuildRefused> {
        self.engine.projection(&name).map_err(RebuildRefused::Unknown)?;
        let mut rebuilds = lock(&self.rebuilds);
        if rebuilds.get(&name).is_some_and(|t| !t.is_finished()) {
            return Err(RebuildRefused::AlreadyRunning);
        }
        if self.stopping.load(Ordering::SeqCst) {
            return Err(RebuildRefused::AlreadyRunning);
        }
        lock(&self.problems).remove(&name);
        let me = self.clone();
        let owned = name.clone();
        let task = tokio::spawn(async move {
            // Take the live worker out of the way first: it would otherwise be fenced by the
            // reset and then replay beside the rebuild, each commit racing the other's.
            let was_live = me.stop(&owned).await;
            info!(projection = %owned, "rebuild started through the API");
            let started = Instant::now();
            match me.engine.rebuild(&owned).await {
                Ok(report) => {
                    info!(
                        projection = %owned,
                        events = report.events,
                        seconds = started.elapsed().as_secs_f64(),
                        checkpoint = %report.checkpoint,
                        "rebuild finished"
                    );
                    if was_live {
                        me.start(&owned);
                    }
                }
                Err(e) => {
                    // Its live worker stays off: a failed rebuild is fixed and started again.
                    error!(projection = %owned, error = %e, "rebuild failed");
                    lock(&me.problems).insert(owned, format!("rebuild failed: {e}"));
                }
            }
        });
        rebuilds.insert(name, task);
        Ok(())
    }

    fn retry(&self, id: i64) -> BoxFut<'_, projectionist::Result<Result<(), HandlerError>>> {
        Box::pin(async move {
            let outcome = match self.engine.retry_dead_letter(id).await {
                Ok(()) => Ok(()),
                Err(projectionist::Error::RetryFailed { message, .. }) => Err(HandlerError::msg(message)),
                Err(e) => return Err(e),
            };
            match &outcome {
                Ok(()) => info!(dead_letter = id, "dead letter retried through the API: applied"),
                Err(e) => {
                    warn!(dead_letter = id, error = %e, "dead letter retried through the API: still fails")
                }
            }
            Ok(outcome)
        })
    }

    fn discard(&self, id: i64) -> BoxFut<'_, projectionist::Result<()>> {
        Box::pin(async move {
            self.engine.discard_dead_letter(id).await?;
            info!(dead_letter = id, "dead letter discarded through the API");
            Ok(())
        })
    }

    fn rebuilding(&self) -> Vec<String> {
        let mut names: Vec<String> = lock(&self.rebuilds)
            .iter()
            .filter(|(_, t)| !t.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        names.sort();
        names
    }

    fn problems(&self) -> Vec<String> {
        lock(&self.problems)
            .iter()
            .map(|(n, p)| format!("projection {n}: {p}"))
            .collect()
    }
}
