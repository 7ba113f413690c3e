//! Blue/green rebuilds: build a projection's new version in a shadow store from the live source
//! while the current version keeps serving, then swap the shadow in. The driver is written once
//! here, over [`ShadowStore`]; each backend says what a shadow is (SQLite: a shadow database
//! file; PostgreSQL: a shadow schema) and how its swap locks and moves the tables.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::info;

use super::engine::Engine;
use super::error::{Error, Result};
use super::event::Checkpoint;
use super::projection::Projection;
use super::runner::{Mode, ProgressFn, RunnerSettings, Worker, WorkerReport};
use super::scheduler::Scheduler;
use super::source::Source;
use super::store::{RunState, Store};

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

/// What a swap did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swapped {
    /// How long the swap held its locks.
    pub swap_lock: Duration,
    /// The read model's tables swapped in.
    pub tables: Vec<String>,
}

/// A store that can build a projection's new version beside the live one, in a shadow store,
/// and swap it in: what [`Engine::rebuild_blue_green`] needs.
pub trait ShadowStore: Store + Sized {
    /// Opens the shadow store of `projection`, creating it when there is none, and tells
    /// whether it existed: an earlier build was interrupted, and may resume. The shadow reads
    /// nothing: the engine's source feeds it.
    fn open_shadow(&self, projection: &str) -> impl Future<Output = Result<(Self, bool)>> + Send;

    /// Takes the locks under which no event can commit to the live events table, runs
    /// `catch_up` (the shadow's final catch-up to the head, which cannot move now), then swaps
    /// the shadow's read-model tables in for the live ones, with the checkpoint, counters and
    /// dead letters, in one transaction on this store. Readers see the old version or the new
    /// one, never a mix. When `catch_up` fails, nothing is swapped and its error is returned.
    fn swap_in<T, F>(
        &self,
        projection: &str,
        catch_up: F,
    ) -> impl Future<Output = Result<(T, Swapped)>> + Send
    where
        T: Send,
        F: Future<Output = Result<T>> + Send;

    /// Drops the shadow of `projection` (and what a swap left of the old version). Returns
    /// whether a shadow build existed. The live version is never touched.
    fn drop_shadow(&self, projection: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Whether a shadow build of `projection` exists (an interrupted or running one).
    fn shadow_exists(&self, projection: &str) -> impl Future<Output = Result<bool>> + Send;
}

/// At most this many rounds of chasing the head before the swap takes over.
const CHASE_ROUNDS: u32 = 10;

impl<S: Source, St: ShadowStore> Engine<S, St> {
    /// Rebuilds `name` blue/green: the new version is built in a shadow store while the current
    /// one keeps serving, then the two are swapped in one transaction and the shadow is dropped.
    /// Resumes an interrupted shadow build. Fails fast on the first failing event (the current
    /// version stays untouched).
    pub async fn rebuild_blue_green(
        &self,
        name: &str,
        progress: Option<ProgressFn>,
    ) -> Result<BlueGreenReport> {
        let started = Instant::now();
        let projection = self.projection(name)?.clone();
        if projection.is_partitioned() {
            return Err(Error::Unsupported(format!(
                "projection {name} is partitioned; blue/green rebuilds do not support partitions yet: \
                 use `projectionist rebuild {name}` (in place)"
            )));
        }
        self.check_replay(name)?;
        let (shadow, resuming) = self.store().open_shadow(name).await?;
        let shadow = Arc::new(shadow);
        let record = shadow.prepare(name, 0, projection.body().clone()).await?;
        if resuming && record.state == RunState::Rebuilding {
            info!(projection = name, checkpoint = %record.checkpoint, "resuming a blue/green shadow build");
        } else {
            info!(projection = name, "starting a blue/green shadow build");
            shadow.reset(name, projection.body().clone()).await?;
        }

        // Build to the head, then chase the head while appends keep coming, until the rest is
        // less than a batch (the live runner takes over from the swapped checkpoint).
        let source = self.source();
        let settings = self.runner_settings();
        let mut events = build_shadow(source, &shadow, &projection, settings, progress.clone()).await?;

        // The swap holds its locks first, so no event can commit after the shadow's final
        // catch-up: the new version goes in at exactly the head.
        let final_catch_up = async {
            let target = source.head().await?;
            let mode = Mode::ToHead { target, progress };
            shadow_catch_up(source, &shadow, &projection, settings, mode).await
        };
        let (last, swapped) = self.store().swap_in(name, final_catch_up).await?;
        events += last.events;
        drop(shadow);
        self.store().drop_shadow(name).await?;
        info!(projection = name, swap_lock = ?swapped.swap_lock, tables = ?swapped.tables, "blue/green swap done");
        Ok(BlueGreenReport {
            projection: name.to_owned(),
            events,
            checkpoint: last.checkpoint,
            seconds: started.elapsed().as_secs_f64(),
            swap_lock: swapped.swap_lock,
            tables: swapped.tables,
        })
    }

    /// Drops an interrupted blue/green shadow build of `name`. Returns whether there was one.
    /// The current version was never touched.
    pub async fn abandon_blue_green(&self, name: &str) -> Result<bool> {
        self.projection(name)?;
        self.store().drop_shadow(name).await
    }

    /// Whether a blue/green shadow build of `name` exists (an interrupted or running one).
    pub async fn blue_green_in_progress(&self, name: &str) -> Result<bool> {
        self.store().shadow_exists(name).await
    }
}

/// Runs `projection` from `source` into `shadow` once, in `mode`.
async fn shadow_catch_up<S: Source, St: Store>(
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
/// lock, takes the rest). Returns the events applied.
async fn build_shadow<S: Source, St: Store>(
    source: &Arc<S>,
    shadow: &Arc<St>,
    projection: &Projection<St::Body>,
    settings: &RunnerSettings,
    progress: Option<ProgressFn>,
) -> Result<u64> {
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
            return Ok(events);
        }
    }
}
