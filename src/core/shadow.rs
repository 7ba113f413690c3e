//! Blue/green rebuilds, the part every backend shares: building a projection's new version in a
//! shadow store from the live source. Each backend swaps the shadow in its own way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::error::Result;
use super::event::Checkpoint;
use super::projection::Projection;
use super::runner::{Mode, ProgressFn, RunnerSettings, Worker, WorkerReport};
use super::scheduler::Scheduler;
use super::source::Source;
use super::store::Store;

/// What a blue/green rebuild did.
#[derive(Clone, Debug, PartialEq)]
pub struct BlueGreenReport {
    pub projection: String,
    /// Events applied into the shadow.
    pub events: u64,
    /// The checkpoint the new version took over at.
    pub checkpoint: Checkpoint,
    /// Whole rebuild, shadow build and swap.
    pub seconds: f64,
    /// How long the swap held its locks (appends and the live runner waited meanwhile).
    pub swap_lock: Duration,
    /// Tables swapped in.
    pub tables: Vec<String>,
}

/// At most this many rounds of chasing the head before the swap takes over.
const CHASE_ROUNDS: u32 = 10;

/// Runs `projection` from `source` into `shadow` once, in `mode`.
pub(crate) async fn shadow_catch_up<S: Source, St: Store>(
    source: &Arc<S>,
    shadow: &Arc<St>,
    projection: &Projection<St::Body>,
    settings: &RunnerSettings,
    mode: Mode,
) -> Result<WorkerReport> {
    let (_keep, shutdown) = watch::channel(false);
    let worker = Worker::new(
        source.clone(),
        shadow.clone(),
        projection.clone(),
        0,
        settings.clone(),
        mode,
        Scheduler::new(1),
    );
    worker.run(shutdown).await
}

/// Rebuilds `projection` into `shadow` up to the head (failing fast), then chases the head while
/// appends keep coming, until less than a batch is left (the swap's final catch-up, under its
/// lock, takes the rest). Returns the events applied and the checkpoint reached.
pub(crate) async fn build_shadow<S: Source, St: Store>(
    source: &Arc<S>,
    shadow: &Arc<St>,
    projection: &Projection<St::Body>,
    settings: &RunnerSettings,
    progress: Option<ProgressFn>,
) -> Result<(u64, Checkpoint)> {
    let mut events = 0;
    let mut round = 0;
    loop {
        let target = source.head().await?;
        let progress = progress.clone();
        let mode = if round == 0 {
            Mode::Rebuild { target, progress }
        } else {
            Mode::ToHead { target, progress }
        };
        let report = shadow_catch_up(source, shadow, projection, settings, mode).await?;
        events += report.events;
        round += 1;
        let lag = source.lag(report.checkpoint).await?.events;
        if lag < projection.options().batch_size as u64 || round >= CHASE_ROUNDS {
            return Ok((events, report.checkpoint));
        }
    }
}
