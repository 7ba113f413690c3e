//! The engine: a source, a store and the projections registered on them, with the operations
//! that users and operators run (run, catch up, rebuild, pause, resume, status, dead letters,
//! wait-for).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::info;

use super::assignment::BrokerGroup;
use super::coordinator::{check_partitioning, prepare_partitions, Coordinator};
use super::error::{Error, Result};
use super::event::Checkpoint;
use super::lease::{node_id, LeaseSettings};
use super::projection::Projection;
use super::runner::{Mode, ProgressFn, RunnerSettings, Worker, WorkerReport};
use super::scheduler::Scheduler;
use super::source::{Filter, PartitionAssignment, Source};
use super::store::{DeadLetter, ProjectionRecord, RunState, Store};

/// One projection partition's status, as `projectionist status --json` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub partition: u32,
    pub state: RunState,
    /// Position of the checkpoint.
    pub checkpoint: i64,
    /// Transaction id of the checkpoint (0 where the source has none).
    pub checkpoint_txid: i64,
    /// Position of the newest event.
    pub head: i64,
    pub lag_events: u64,
    /// Age of the oldest event not yet applied (0 when caught up).
    pub lag_seconds: f64,
    pub events_per_second: f64,
    pub errors: u64,
    pub dead_letters: u64,
    pub applied: u64,
    pub ignored: u64,
    pub priority: i32,
    /// Why it is paused or stopped.
    pub reason: Option<String>,
    pub last_error: Option<String>,
    /// Partitions of the projection (1: not partitioned).
    pub partitions: u32,
    /// Who holds this partition: the node whose live lease holds it (partitioned projections,
    /// and Kafka with `assignment=leases`), or the broker group's member (Kafka's consumer
    /// group, when the broker says).
    pub owner: Option<String>,
}

/// Completes when `flag` turns true, or when its sender is gone: a shutdown for
/// [`Engine::run_until`] driven by a `watch` channel.
pub async fn when_true(mut flag: watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Which projections a catch-up runs, and who hears of its progress.
#[derive(Clone, Default)]
pub struct CatchUp {
    only: Vec<String>,
    progress: Option<ProgressFn>,
    stop: Option<watch::Receiver<bool>>,
}

impl CatchUp {
    /// Every registered projection.
    pub fn all() -> Self {
        CatchUp::default()
    }

    /// The projections named in `names` (all when empty).
    pub fn only<I, N>(names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        CatchUp {
            only: names.into_iter().map(Into::into).collect(),
            progress: None,
            stop: None,
        }
    }

    /// Calls `progress` after each commit of each projection.
    pub fn progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Stops early, after each worker's current batch, when `stop` turns true (a signal): what
    /// was committed stays, and the next catch-up goes on from there.
    pub fn until(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = Some(stop);
        self
    }
}

impl std::fmt::Debug for CatchUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUp")
            .field("only", &self.only)
            .field("progress", &self.progress.is_some())
            .field("stop", &self.stop.is_some())
            .finish()
    }
}

/// Rates older than this are shown as 0: the runner is idle or gone.
const RATE_FRESHNESS: Duration = Duration::from_secs(10);

/// A source, a store, and projections.
pub struct Engine<S: Source, St: Store> {
    source: Arc<S>,
    store: Arc<St>,
    projections: Vec<Projection<St::Body>>,
    settings: RunnerSettings,
    scheduler: Scheduler,
    leases: LeaseSettings,
    node: Arc<str>,
}

impl<S: Source, St: Store> Engine<S, St> {
    pub fn new(source: Arc<S>, store: Arc<St>) -> Self {
        let settings = RunnerSettings::default();
        let scheduler = Scheduler::new(settings.concurrency);
        Engine {
            source,
            store,
            projections: Vec::new(),
            settings,
            scheduler,
            leases: LeaseSettings::default(),
            node: Arc::from(node_id()),
        }
    }

    /// The lease timing of partitioned projections (takeover bound; 10 s by default).
    pub fn lease_settings(mut self, leases: LeaseSettings) -> Self {
        self.leases = leases;
        self
    }

    /// This process's node id in partition groups.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Adds a projection. Names are unique.
    pub fn register(&mut self, projection: Projection<St::Body>) -> Result<&mut Self> {
        if self.projections.iter().any(|p| p.name() == projection.name()) {
            return Err(Error::InvalidInput(format!(
                "projection {:?} is registered twice; give each projection its own name",
                projection.name()
            )));
        }
        // A source with partitions of its own (Kafka) gives the projection its partitions.
        let projection = match self.source.partition_count(projection.name()) {
            Some(n) if projection.is_partitioned() && projection.options().partitions != n => {
                return Err(Error::Config(format!(
                    "projection {} has partitions = {}, and its source has {n} partitions of its own, \
                     which are the projection's partitions; remove `partitions`",
                    projection.name(),
                    projection.options().partitions
                )));
            }
            Some(n) => projection.partitions(n),
            None => projection,
        };
        self.projections.push(projection);
        Ok(self)
    }

    /// Adds a projection, builder style.
    pub fn with(mut self, projection: Projection<St::Body>) -> Result<Self> {
        self.register(projection)?;
        Ok(self)
    }

    pub fn settings(mut self, settings: RunnerSettings) -> Self {
        self.scheduler = Scheduler::new(settings.concurrency);
        self.settings = settings;
        self
    }

    /// The runner settings in force.
    pub fn runner_settings(&self) -> &RunnerSettings {
        &self.settings
    }

    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    pub fn store(&self) -> &Arc<St> {
        &self.store
    }

    pub fn projections(&self) -> &[Projection<St::Body>] {
        &self.projections
    }

    /// The projection called `name`, or an error that lists the known ones.
    pub fn projection(&self, name: &str) -> Result<&Projection<St::Body>> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::UnknownProjection {
                name: name.to_owned(),
                known: self.projections.iter().map(|p| p.name().to_owned()).collect(),
            })
    }

    fn selected(&self, names: &[String]) -> Result<Vec<Projection<St::Body>>> {
        if names.is_empty() {
            return Ok(self.projections.clone());
        }
        names.iter().map(|n| self.projection(n).cloned()).collect()
    }

    /// Runs every projection's setup and checks its statements in transactions that are
    /// rolled back ([`Store::check_setup`]): what `prepare` would do, with nothing kept.
    pub async fn check_setup(&self) -> Result<()> {
        for p in &self.projections {
            self.store.check_setup(p.name(), p.body().clone()).await?;
        }
        Ok(())
    }

    /// Creates every projection's read model and checkpoint (idempotent).
    pub async fn prepare(&self) -> Result<()> {
        for p in &self.projections {
            prepare_partitions(self.store.as_ref(), p).await?;
        }
        Ok(())
    }

    fn worker(&self, p: Projection<St::Body>, mode: Mode) -> Worker<S, St> {
        self.partition_worker(p, 0, mode)
    }

    /// A worker for one partition of `p` (the whole of `p` when it is not partitioned). Run in
    /// one process without a lease, e.g. by `catch_up` and `rebuild`.
    fn partition_worker(&self, p: Projection<St::Body>, partition: u32, mode: Mode) -> Worker<S, St> {
        let count = p.options().partitions;
        let w = Worker::new(
            self.source.clone(),
            self.store.clone(),
            p,
            partition,
            self.settings.clone(),
            mode,
            self.scheduler.clone(),
        );
        if count > 1 {
            w.partitioned(count, None)
        } else {
            w
        }
    }

    /// Every partition's worker of `p`.
    fn workers(&self, p: &Projection<St::Body>, mode: &Mode) -> Vec<Worker<S, St>> {
        (0..p.options().partitions.max(1))
            .map(|partition| self.partition_worker(p.clone(), partition, mode.clone()))
            .collect()
    }

    /// Runs every projection live until `shutdown` completes (a signal, a cancellation, a
    /// channel), then stops after each worker's current batch. Each batch is committed whole
    /// or not at all, so shutting down loses nothing.
    ///
    /// ```ignore
    /// engine.run_until(tokio::signal::ctrl_c()).await?;
    /// ```
    pub async fn run_until<F>(&self, shutdown: F) -> Result<Vec<WorkerReport>>
    where
        F: Future + Send,
    {
        self.run_only_until(Vec::<String>::new(), shutdown).await
    }

    /// Runs the projections named in `names` (all when empty) live until `shutdown` completes.
    pub async fn run_only_until<I, N, F>(&self, names: I, shutdown: F) -> Result<Vec<WorkerReport>>
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
        F: Future + Send,
    {
        let only: Vec<String> = names.into_iter().map(Into::into).collect();
        let (stop, stopped) = watch::channel(false);
        let run = self.run_selected(&only, stopped);
        tokio::pin!(run);
        tokio::select! {
            done = &mut run => return done,
            _ = shutdown => {}
        }
        let _ = stop.send(true);
        run.await
    }

    async fn run_selected(
        &self,
        only: &[String],
        shutdown: watch::Receiver<bool>,
    ) -> Result<Vec<WorkerReport>> {
        let selected = self.selected(only)?;
        let mut set = JoinSet::new();
        let mut groups = JoinSet::new();
        for p in selected {
            if self.broker_assigns(&p) {
                let group = BrokerGroup {
                    source: self.source.clone(),
                    store: self.store.clone(),
                    projection: p,
                    settings: self.settings.clone(),
                    scheduler: self.scheduler.clone(),
                };
                groups.spawn(group.run(shutdown.clone()));
            } else if p.is_partitioned() || self.store.leases_every_runner() {
                let coordinator = Coordinator {
                    source: self.source.clone(),
                    store: self.store.clone(),
                    projection: p,
                    settings: self.settings.clone(),
                    leases: self.leases,
                    scheduler: self.scheduler.clone(),
                    node: self.node.clone(),
                };
                groups.spawn(coordinator.run(shutdown.clone()));
            } else {
                let worker = self.worker(p, Mode::Live);
                set.spawn(worker.run(shutdown.clone()));
            }
        }
        let mut reports = join_all(set).await;
        while let Some(joined) = groups.join_next().await {
            let group = joined
                .map_err(|e| Error::task("a partition coordinator", e))
                .and_then(|r| r);
            match (&mut reports, group) {
                (Ok(all), Ok(more)) => all.extend(more),
                (Ok(_), Err(e)) => reports = Err(e),
                (Err(_), _) => {}
            }
        }
        reports.map(|mut r| {
            r.sort_by(|a, b| (&a.projection, a.partition).cmp(&(&b.projection, b.partition)));
            r
        })
    }

    /// Whether the broker's group assigns `p`'s partitions to processes (a Kafka source in
    /// its default mode), rather than the store's leases.
    fn broker_assigns(&self, p: &Projection<St::Body>) -> bool {
        self.source.partition_count(p.name()).is_some()
            && self.source.partition_assignment() == PartitionAssignment::Broker
    }

    /// Runs every projection up to the head as it is now, then returns: the deterministic
    /// "caught up" point for tests and one-shot jobs.
    pub async fn catch_up(&self) -> Result<Vec<WorkerReport>> {
        self.catch_up_with(CatchUp::all()).await
    }

    /// Runs the projections named in `names` up to the head as it is now, then returns.
    pub async fn catch_up_only<I, N>(&self, names: I) -> Result<Vec<WorkerReport>>
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.catch_up_with(CatchUp::only(names)).await
    }

    /// Runs the chosen projections up to the head as it is now, reporting progress after each
    /// commit: `engine.catch_up_with(CatchUp::only(["orders"]).progress(bar))`.
    pub async fn catch_up_with(&self, options: CatchUp) -> Result<Vec<WorkerReport>> {
        let CatchUp { only, progress, stop } = options;
        let selected = self.selected(&only)?;
        for p in &selected {
            check_partitioning(self.source.as_ref(), self.store.as_ref(), p).await?;
        }
        let target = self.source.head().await?;
        let (_keep, never) = watch::channel(false);
        let shutdown = stop.unwrap_or(never);
        let mut set = JoinSet::new();
        let mode = Mode::ToHead { target, progress };
        for p in selected {
            for worker in self.workers(&p, &mode) {
                set.spawn(worker.run(shutdown.clone()));
            }
        }
        join_all(set).await
    }

    /// Rebuilds a projection: reset its read model, move its checkpoint to the start, and
    /// replay to the head, committing per batch. When the projection is already rebuilding
    /// (an earlier rebuild was interrupted), the rebuild resumes from its checkpoint instead.
    /// Fails fast on the first failing event unless the projection says otherwise.
    pub async fn rebuild(&self, name: &str) -> Result<WorkerReport> {
        self.rebuild_with(name, None).await
    }

    /// [`rebuild`](Self::rebuild), calling `progress` after each commit.
    pub async fn rebuild_with(&self, name: &str, progress: Option<ProgressFn>) -> Result<WorkerReport> {
        let (_keep, never) = watch::channel(false);
        self.rebuild_until(name, progress, never).await
    }

    /// [`rebuild_with`](Self::rebuild_with), stopping after the current batch when `stop` turns
    /// true (a signal). The projection then stays `rebuilding`, with every batch up to its
    /// checkpoint committed, and the next rebuild resumes from there; the report's state says
    /// `rebuilding` when the rebuild was stopped before its end.
    pub async fn rebuild_until(
        &self,
        name: &str,
        progress: Option<ProgressFn>,
        stop: watch::Receiver<bool>,
    ) -> Result<WorkerReport> {
        let p = self.projection(name)?.clone();
        self.check_replay(name)?;
        let record = prepare_partitions(self.store.as_ref(), &p).await?;
        if record.state == RunState::Rebuilding {
            info!(projection = name, checkpoint = %record.checkpoint, "resuming an interrupted rebuild");
        } else {
            // A source that lost its oldest events (retention) refuses before anything changes.
            let filter = Filter::types(p.event_types()).for_projection(p.name_arc());
            self.source.check_replay_from_start(&filter).await?;
            info!(projection = name, "resetting the read model for a rebuild");
            self.store.reset(name, p.body().clone()).await?;
        }
        if p.is_partitioned() && !self.source.supports_partitions() {
            check_partitioning(self.source.as_ref(), self.store.as_ref(), &p).await?;
        }
        let target = self.source.head().await?;
        let mut set = JoinSet::new();
        for worker in self.workers(&p, &Mode::Rebuild { target, progress }) {
            set.spawn(worker.run(stop.clone()));
        }
        let reports = join_all(set).await?;
        let done = reports
            .iter()
            .all(|r| r.state != RunState::Rebuilding || r.reached_target);
        if done {
            self.store.set_state(name, None, RunState::Running, None).await?;
        }
        let mut merged = reports.into_iter().reduce(|mut a, b| {
            a.events += b.events;
            a.seconds = a.seconds.max(b.seconds);
            a.checkpoint = a.checkpoint.max(b.checkpoint);
            a
        });
        if let Some(m) = merged.as_mut() {
            m.partition = 0;
            m.state = if done {
                RunState::Running
            } else {
                RunState::Rebuilding
            };
        }
        merged.ok_or_else(|| Error::Internal(format!("rebuild of {name} ran no worker")))
    }

    /// Fails, before anything changes, unless the source can replay: rebuilding `name` reads
    /// its events from the start.
    pub(crate) fn check_replay(&self, name: &str) -> Result<()> {
        if self.source.can_replay() {
            return Ok(());
        }
        Err(Error::Unsupported(format!(
            "projection {name} cannot be rebuilt from its source, which cannot replay (it deletes what \
             was acknowledged): a rebuild needs a replayable source, such as NATS JetStream or the \
             database's events table; nothing was changed"
        )))
    }

    /// Pauses a projection: its runners stop after their current batch, in any process.
    ///
    /// A partitioned projection's partitions are prepared first (their checkpoints created,
    /// as a `run` would), so that the pause holds for each of them, even before its first run:
    /// a partition whose checkpoint did not exist yet would otherwise start running.
    pub async fn pause(&self, name: &str) -> Result<()> {
        let p = self.projection(name)?;
        if p.is_partitioned() {
            prepare_partitions(self.store.as_ref(), p).await?;
        }
        self.store
            .set_state(name, None, RunState::Paused, Some("paused by operator".into()))
            .await
    }

    /// Resumes a paused or stopped projection.
    pub async fn resume(&self, name: &str) -> Result<()> {
        self.projection(name)?;
        self.store.set_state(name, None, RunState::Running, None).await
    }

    /// The status of every registered projection.
    pub async fn status(&self) -> Result<Vec<Status>> {
        let head = self.source.head().await?;
        let records = self.store.records().await?;
        let mut out = Vec::new();
        for p in &self.projections {
            let count = p.options().partitions;
            let mine: Vec<&ProjectionRecord> = records
                .iter()
                .filter(|r| r.name == p.name() && (count <= 1 || r.partition < count))
                .collect();
            if mine.is_empty() {
                let lag = self.source.lag(Checkpoint::START).await?;
                out.push(status_of(p, None, head, lag));
                continue;
            }
            let own_partitions = self.source.partition_count(p.name()).is_some();
            let owners: Vec<(u32, String)> = if self.broker_assigns(p) {
                self.source.partition_owners(p.name()).await?
            } else if count > 1 || self.store.leases_every_runner() {
                self.store
                    .leases(p.name())
                    .await?
                    .into_iter()
                    .filter_map(|l| l.owner.map(|o| (l.partition, o)))
                    .collect()
            } else {
                Vec::new()
            };
            for r in mine {
                let reader = Filter::types(p.event_types())
                    .for_projection(p.name_arc())
                    .in_partition(Some(super::source::PartitionSlice {
                        index: r.partition,
                        count,
                    }));
                let lag = if count > 1 || own_partitions {
                    self.source.partition_lag(r.checkpoint, &reader).await?
                } else {
                    self.source.lag(r.checkpoint).await?
                };
                let head = if own_partitions {
                    self.source.partition_head(&reader).await?.unwrap_or(head)
                } else {
                    head
                };
                let mut s = status_of(p, Some(r), head, lag);
                s.owner = owners
                    .iter()
                    .find(|(partition, _)| *partition == r.partition)
                    .map(|(_, o)| o.clone());
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Open dead letters, optionally of one projection.
    pub async fn dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        if let Some(name) = projection {
            self.projection(name)?;
        }
        self.store.dead_letters(projection).await
    }

    /// Applies a dead letter's event again; on success the dead letter is gone.
    ///
    /// When the handler fails again, nothing is applied, the attempt is recorded on the dead
    /// letter, and the error is [`Error::RetryFailed`].
    pub async fn retry_dead_letter(&self, id: i64) -> Result<()> {
        let dl = self.find_dead_letter(id).await?;
        let p = self.projection(&dl.projection)?;
        if dl.event.event_type == super::envelope::MALFORMED_TYPE {
            // Applying it again cannot decode it: it would only be passed over.
            return Err(Error::RetryFailed {
                id,
                projection: dl.projection.clone(),
                message: format!(
                    "{}; its raw bytes are in the dead letter: republish a corrected record, then discard this one",
                    super::envelope::malformed_reason(&dl.event.data)
                ),
            });
        }
        self.store
            .retry_dead_letter(id, p.body().clone())
            .await?
            .map_err(|e| Error::RetryFailed {
                id,
                projection: dl.projection.clone(),
                message: e.to_string(),
            })
    }

    /// Deletes a dead letter without applying it.
    pub async fn discard_dead_letter(&self, id: i64) -> Result<()> {
        self.find_dead_letter(id).await?;
        self.store.discard_dead_letter(id).await
    }

    async fn find_dead_letter(&self, id: i64) -> Result<DeadLetter> {
        self.store
            .dead_letters(None)
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .ok_or(Error::UnknownDeadLetter(id))
    }

    /// Waits until `projection` has applied everything up to `token` (as returned by an
    /// append), from this process or any other. Returns a distinct [`Error::Timeout`] carrying
    /// the lag when `timeout` passes first.
    pub async fn wait_for(&self, projection: &str, token: Checkpoint, timeout: Duration) -> Result<Duration> {
        let partitions = self.projection(projection)?.options().partitions.max(1);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.store.checkpoint_changes();
        let mut poll = Duration::from_millis(2);
        loop {
            // A partitioned projection has applied `token` once every partition passed it.
            let mut checkpoint: Option<Checkpoint> = None;
            for partition in 0..partitions {
                let record = self.store.record(projection, partition).await?;
                let c = record.as_ref().map_or(Checkpoint::START, |r| r.checkpoint);
                checkpoint = Some(checkpoint.map_or(c, |m| m.min(c)));
            }
            let checkpoint = checkpoint.unwrap_or(Checkpoint::START);
            if checkpoint >= token {
                super::metrics::wait_for(projection, true, started.elapsed());
                return Ok(started.elapsed());
            }
            if tokio::time::Instant::now() >= deadline {
                let lag = self.source.lag(checkpoint).await?;
                super::metrics::wait_for(projection, false, started.elapsed());
                return Err(Error::Timeout {
                    projection: projection.to_owned(),
                    target: token,
                    checkpoint,
                    lag_events: lag.events,
                });
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(poll) => { poll = (poll * 2).min(Duration::from_millis(50)); }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

fn status_of<B: ?Sized>(
    p: &Projection<B>,
    r: Option<&ProjectionRecord>,
    head: Checkpoint,
    lag: super::source::Lag,
) -> Status {
    let now = chrono::Utc::now();
    let fresh = r
        .and_then(|r| r.updated_at)
        .is_some_and(|t| (now - t).to_std().map_or(true, |age| age < RATE_FRESHNESS));
    Status {
        name: p.name().to_owned(),
        partition: r.map_or(0, |r| r.partition),
        state: r.map_or(RunState::Running, |r| r.state),
        checkpoint: r.map_or(0, |r| r.checkpoint.position),
        checkpoint_txid: r.map_or(0, |r| r.checkpoint.txid),
        head: head.position,
        lag_events: lag.events,
        lag_seconds: lag
            .oldest
            .map_or(0.0, |t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0),
        events_per_second: if fresh {
            r.map_or(0.0, |r| r.events_per_second)
        } else {
            0.0
        },
        errors: r.map_or(0, |r| r.errors),
        dead_letters: r.map_or(0, |r| r.dead_letters),
        applied: r.map_or(0, |r| r.applied),
        ignored: r.map_or(0, |r| r.ignored),
        priority: p.options().priority,
        reason: r.and_then(|r| r.reason.clone()),
        last_error: r.and_then(|r| r.last_error.clone()),
        partitions: p.options().partitions.max(1),
        owner: None,
    }
}

async fn join_all(mut set: JoinSet<Result<WorkerReport>>) -> Result<Vec<WorkerReport>> {
    let mut reports = Vec::new();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::task("a projection worker", e));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            reports.sort_by(|a, b| a.projection.cmp(&b.projection));
            Ok(reports)
        }
    }
}
