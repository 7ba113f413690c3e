//! The runner: reads batches from a source, applies them through the store, and commits the
//! checkpoint in the same transaction. One worker per projection partition.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::envelope::MALFORMED_TYPE;
use super::error::{BatchFailure, Error, HandlerError, Result};
use super::event::{Checkpoint, Event};
use super::lease::Fence;
use super::policy::{Decision, Failure};
use super::projection::{Projection, DEFAULT_BATCH_SIZE};
use super::scheduler::Scheduler;
use super::source::{Batch, Filter, PartitionSlice, Source};
use super::store::{Commit, CommitError, CommitStats, NewDeadLetter, RunState, Store};

/// Timing of the runner loops.
#[derive(Clone, Debug)]
pub struct RunnerSettings {
    /// First poll delay when idle; doubles up to `poll_max`. Appends in this process (and
    /// notifications, where the source has them) wake the runner at once.
    pub poll_min: Duration,
    /// Longest poll delay when idle: the bound on how late an append from another process
    /// is seen when no notification arrives.
    pub poll_max: Duration,
    /// First delay after a store or source failure; doubles up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Batches applied at once across projections; when more have a backlog, higher
    /// priority goes first (see [`Scheduler`](super::scheduler::Scheduler)).
    pub concurrency: usize,
    /// Events per batch of a per-event projection whose batch size was not set (see
    /// [`ProjectionOptions::batch_size_is_default`]): the store's choice, 1,000 unless it
    /// says otherwise (SQLite: 5,000).
    pub per_event_batch_size: usize,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        RunnerSettings {
            poll_min: Duration::from_millis(5),
            poll_max: Duration::from_millis(500),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            per_event_batch_size: DEFAULT_BATCH_SIZE,
        }
    }
}

/// Progress of a catch-up or rebuild, reported after each commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// The projection this is about.
    pub projection: Arc<str>,
    pub partition: u32,
    /// Events applied so far in this run (handled or ignored, not counting filtered ones).
    pub events: u64,
    /// Position reached.
    pub position: i64,
    /// Position the run goes to.
    pub target: i64,
    /// Position the run started from.
    pub start: i64,
}

/// Called after each commit of a catch-up or rebuild.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How a worker ended.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerReport {
    pub projection: String,
    pub partition: u32,
    pub checkpoint: Checkpoint,
    pub state: RunState,
    /// Events that went through a commit in this run.
    pub events: u64,
    pub seconds: f64,
    /// A catch-up or rebuild reached its target (its partition's head, for a source with
    /// partitions of its own).
    pub reached_target: bool,
}

#[derive(Clone)]
pub(crate) enum Mode {
    /// Follow the source forever (until shutdown).
    Live,
    /// Stop once the checkpoint reaches `target`, or the source has nothing more.
    ToHead {
        target: Checkpoint,
        progress: Option<ProgressFn>,
    },
    /// Like `ToHead`, but the projection's rebuild fail-fast rule applies.
    Rebuild {
        target: Checkpoint,
        progress: Option<ProgressFn>,
    },
}

impl Mode {
    fn target(&self) -> Option<Checkpoint> {
        match self {
            Mode::Live => None,
            Mode::ToHead { target, .. } | Mode::Rebuild { target, .. } => Some(*target),
        }
    }

    /// Moves a catch-up's or rebuild's target (to one partition's own head).
    fn retarget(&mut self, to: Checkpoint) {
        match self {
            Mode::Live => {}
            Mode::ToHead { target, .. } | Mode::Rebuild { target, .. } => *target = to,
        }
    }

    fn progress(&self) -> Option<&ProgressFn> {
        match self {
            Mode::Live => None,
            Mode::ToHead { progress, .. } | Mode::Rebuild { progress, .. } => progress.as_ref(),
        }
    }
}

/// Events per second over a sliding window of recent commits.
#[derive(Default)]
struct Rate {
    window: VecDeque<(Instant, u64)>,
}

impl Rate {
    const SPAN: Duration = Duration::from_secs(5);

    fn record(&mut self, events: u64) {
        let now = Instant::now();
        self.window.push_back((now, events));
        while let Some((t, _)) = self.window.front() {
            if now.duration_since(*t) > Self::SPAN && self.window.len() > 2 {
                self.window.pop_front();
            } else {
                break;
            }
        }
    }

    fn per_second(&self) -> f64 {
        let (Some((first, _)), Some((last, _))) = (self.window.front(), self.window.back()) else {
            return 0.0;
        };
        let span = last.duration_since(*first).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        let events: u64 = self.window.iter().skip(1).map(|(_, n)| n).sum();
        events as f64 / span
    }
}

/// What the loop does after a step.
enum Step {
    Continue,
    /// The projection left the active states (paused or stopped).
    Inactive(RunState),
    /// This worker's lease went to another node: it must stop.
    LeaseLost,
}

pub(crate) struct Worker<S: Source, St: Store> {
    pub source: Arc<S>,
    pub store: Arc<St>,
    pub projection: Projection<St::Body>,
    pub partition: u32,
    pub settings: RunnerSettings,
    pub mode: Mode,
    scheduler: Scheduler,
    filter: Filter,
    /// The lease this worker's commits are made under (partitioned projections).
    fence: Option<Fence>,
    /// The batch being applied came from a source that may redeliver (see
    /// [`Batch::deduplicate`]).
    deduplicate: bool,
    /// The checkpoint was last moved by this worker's own commit (not adopted from another
    /// runner after a fenced commit): only then may a broker acknowledge up to it.
    committed_by_us: bool,
    checkpoint: Checkpoint,
    rate: Rate,
    events: u64,
}

impl<S: Source, St: Store> Worker<S, St> {
    pub fn new(
        source: Arc<S>,
        store: Arc<St>,
        projection: Projection<St::Body>,
        partition: u32,
        settings: RunnerSettings,
        mode: Mode,
        scheduler: Scheduler,
    ) -> Self {
        let filter = Filter::types(projection.event_types()).for_projection(projection.name_arc());
        Worker {
            source,
            store,
            projection,
            partition,
            settings,
            mode,
            scheduler,
            filter,
            fence: None,
            deduplicate: false,
            committed_by_us: false,
            checkpoint: Checkpoint::START,
            rate: Rate::default(),
            events: 0,
        }
    }

    /// Makes this the worker of one partition out of `count`, committing under `fence` when
    /// it holds a lease (a rebuild or catch-up in one process runs every partition unfenced,
    /// guarded by the checkpoints' compare-and-set alone).
    pub fn partitioned(mut self, count: u32, fence: Option<Fence>) -> Self {
        self.filter = self.filter.in_partition(Some(PartitionSlice {
            index: self.partition,
            count,
        }));
        self.fence = fence;
        self
    }

    /// Makes this worker commit under `fence` (a projection leased whole: see
    /// [`Store::leases_every_runner`](super::store::Store::leases_every_runner)).
    pub fn fenced(mut self, fence: Fence) -> Self {
        self.fence = Some(fence);
        self
    }

    fn name(&self) -> &str {
        self.projection.name()
    }

    /// Runs until shutdown (live), or until the target is reached.
    ///
    /// A failure that [is retryable](Error::is_retryable) (a lost connection, a busy
    /// database, an unreachable broker) is retried with backoff, in every mode; a
    /// [fatal](Error::is_fatal) one ends the worker with that error.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<WorkerReport> {
        let started = Instant::now();
        let mut retry = self.settings.retry_min;
        let record = loop {
            match self
                .store
                .prepare(self.name(), self.partition, self.projection.body().clone())
                .await
            {
                Ok(record) => break record,
                Err(e) if e.is_retryable() => {
                    warn!(projection = self.name(), error = %e, retry_in = ?retry, "preparing the projection failed; retrying");
                    if sleep_or_shutdown(retry, &mut shutdown).await {
                        return Err(Error::Shutdown);
                    }
                    retry = (retry * 2).min(self.settings.retry_max);
                }
                Err(e) => return Err(self.fatal(e)),
            }
        };
        retry = self.settings.retry_min;
        self.checkpoint = record.checkpoint;
        if let (Some(_), Some(_)) = (self.filter.partition, self.mode.target()) {
            // A source with partitions of its own: this partition's head is the target.
            match self.source.partition_head(&self.filter).await {
                Ok(Some(head)) => self.mode.retarget(head),
                Ok(None) => {}
                Err(e) => return Err(self.fatal(e)),
            }
        }
        let mut state = record.state;
        let start = self.checkpoint;
        let mut changes = self.source.changes();
        let mut checkpoint_changes = self.store.checkpoint_changes();
        let mut idle = self.settings.poll_min;
        // The next batch, read while the one before it committed (see `reads_ahead`): the
        // checkpoint it was read after, and the read.
        let mut ahead: Option<(Checkpoint, Result<Batch>)> = None;
        info!(projection = self.name(), partition = self.partition, checkpoint = %self.checkpoint, %state, "worker started");

        loop {
            if *shutdown.borrow() {
                break;
            }
            if !state.is_active() {
                if self.mode.target().is_some() {
                    break;
                }
                // Paused or stopped: wait for a resume from this process or another.
                tokio::select! {
                    _ = checkpoint_changes.changed() => {}
                    _ = tokio::time::sleep(self.settings.poll_max) => {}
                    _ = shutdown.changed() => {}
                }
                match self.store.record(self.name(), self.partition).await {
                    Ok(Some(r)) => {
                        state = r.state;
                        self.checkpoint = r.checkpoint;
                    }
                    Ok(None) => {}
                    Err(e) => warn!(projection = self.name(), error = %e, "cannot read projection state"),
                }
                continue;
            }
            if let Some(target) = self.mode.target() {
                if self.checkpoint >= target {
                    break;
                }
            }

            let limit = self
                .projection
                .options()
                .effective_batch_size(self.settings.per_event_batch_size);
            let read = match ahead.take() {
                // Read after the checkpoint this worker is at: the same read as now, only
                // earlier (a read after a checkpoint never changes but by growing at the head).
                Some((after, Ok(batch))) if after == self.checkpoint => Ok(batch),
                // Read after another checkpoint (the batch failed, or was fenced), or failed:
                // read again.
                _ => self.source.read(self.checkpoint, limit, &self.filter).await,
            };
            let batch = match read {
                Ok(b) => {
                    retry = self.settings.retry_min;
                    b
                }
                Err(Error::Shutdown) => break,
                // A source that can never read (it cannot replay, the configuration is
                // wrong): retrying would not help.
                Err(e) if e.is_fatal() => return Err(self.fatal(e)),
                Err(e) => {
                    warn!(projection = self.name(), error = %e, retry_in = ?retry, "reading events failed; retrying");
                    if sleep_or_shutdown(retry, &mut shutdown).await {
                        break;
                    }
                    retry = (retry * 2).min(self.settings.retry_max);
                    continue;
                }
            };

            if batch.events.is_empty() && batch.scanned_to <= self.checkpoint {
                // At the readable head. A catch-up or rebuild goes on to its target: events
                // committed before it started may still wait behind an older transaction that
                // is open (PostgreSQL), and must not be left out.
                if let Some(target) = self.mode.target() {
                    if self.checkpoint >= target {
                        break;
                    }
                    if idle >= self.settings.poll_max {
                        info!(projection = self.name(), checkpoint = %self.checkpoint, %target, "waiting for events behind transactions that are still open");
                    }
                    if sleep_or_shutdown(idle, &mut shutdown).await {
                        break;
                    }
                    idle = (idle * 2).min(self.settings.poll_max);
                    continue;
                }
                if state == RunState::Rebuilding {
                    self.finish_rebuild().await;
                    state = RunState::Running;
                }
                let ticked = tokio::select! {
                    r = changes.changed() => {
                        if r.is_err() {
                            // The source is gone: fall back to polling only.
                            changes = watch::channel(0).1;
                        }
                        r.is_ok()
                    }
                    _ = tokio::time::sleep(idle) => false,
                    _ = shutdown.changed() => false,
                };
                // A notification means new events: poll eagerly again until they show (they
                // may still wait behind an open transaction on PostgreSQL).
                idle = if ticked {
                    self.settings.poll_min
                } else {
                    (idle * 2).min(self.settings.poll_max)
                };
                continue;
            }
            idle = self.settings.poll_min;

            let permit = self.scheduler.acquire(self.projection.options().priority).await;
            let (before, took, from) = (self.events, Instant::now(), self.checkpoint);
            // A full batch of a source read by position: more events follow, so read the next
            // batch while this one commits (one commit per batch, in order, as before; the
            // read is used only if the commit moves the checkpoint to where it read from).
            let full = batch.events.len() as u64 + batch.ignored >= limit as u64;
            let step = if full && self.source.reads_ahead() {
                let next = batch.scanned_to;
                let (source, filter) = (self.source.clone(), self.filter.clone());
                let read_next = async move { source.read(next, limit, &filter).await };
                let (step, read) = tokio::join!(self.apply_batch(batch, &mut shutdown), read_next);
                ahead = Some((next, read));
                step
            } else {
                self.apply_batch(batch, &mut shutdown).await
            };
            drop(permit);
            if self.checkpoint > from && self.committed_by_us {
                // Durable now: a broker source may forget these messages.
                if let Err(e) = self.source.acknowledge(&self.filter, self.checkpoint).await {
                    warn!(projection = self.name(), error = %e, "acknowledging applied events failed; the source will redeliver them, and they will be dropped as already applied");
                }
            }
            if step.is_ok() {
                let position = self.checkpoint.position;
                super::metrics::batch(
                    self.name(),
                    self.partition,
                    self.events - before,
                    took.elapsed(),
                    position,
                );
            }
            match step {
                Ok(Step::Continue) => {
                    retry = self.settings.retry_min;
                }
                Ok(Step::Inactive(s)) => state = s,
                Ok(Step::LeaseLost) => {
                    warn!(
                        projection = self.name(),
                        partition = self.partition,
                        "another node took this partition over; stopping its worker"
                    );
                    break;
                }
                Err(Error::Shutdown) => break,
                // A rebuild that met a failing event, a store that cannot do what the
                // projection needs, a broken invariant: retrying would not help.
                Err(e) if e.is_fatal() => return Err(self.fatal(e)),
                Err(e) => {
                    warn!(projection = self.name(), error = %e, retry_in = ?retry, "commit failed; retrying");
                    if sleep_or_shutdown(retry, &mut shutdown).await {
                        break;
                    }
                    retry = (retry * 2).min(self.settings.retry_max);
                }
            }
            if let Some(progress) = self.mode.progress() {
                progress(Progress {
                    projection: self.projection.name_arc(),
                    partition: self.partition,
                    events: self.events,
                    position: self.checkpoint.position,
                    target: self.mode.target().map_or(0, |t| t.position),
                    start: start.position,
                });
            }
        }
        info!(projection = self.name(), partition = self.partition, checkpoint = %self.checkpoint, events = self.events, "worker finished");
        Ok(WorkerReport {
            projection: self.name().to_owned(),
            partition: self.partition,
            checkpoint: self.checkpoint,
            state,
            events: self.events,
            seconds: started.elapsed().as_secs_f64(),
            reached_target: self.mode.target().is_some_and(|t| self.checkpoint >= t),
        })
    }

    /// Ends the worker with a fatal error. A live worker says so at once: its error reaches
    /// the caller of `Engine::run` only when every other worker has stopped too.
    fn fatal(&self, e: Error) -> Error {
        if matches!(self.mode, Mode::Live) {
            error!(projection = self.name(), partition = self.partition, error = %e, "the projection's worker stops: retrying cannot fix this error; fix the cause, then start it again");
        }
        e
    }

    async fn finish_rebuild(&self) {
        if let Err(e) = self
            .store
            .set_state(self.name(), Some(self.partition), RunState::Running, None)
            .await
        {
            warn!(projection = self.name(), error = %e, "cannot mark the rebuild finished");
        }
    }

    fn commit(
        &self,
        events: &Arc<[Event]>,
        end: usize,
        to: Checkpoint,
        stats: CommitStats,
    ) -> Commit<St::Body> {
        Commit {
            projection: self.projection.name_arc(),
            partition: self.partition,
            body: self.projection.body().clone(),
            events: events.clone(),
            range: 0..end,
            expected: self.checkpoint,
            to,
            dead_letters: Vec::new(),
            stats,
            last_error: None,
            fence: self.fence.clone(),
            record_ids: if self.deduplicate {
                events.iter().take(end).map(|e| e.event_id).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Drops the events of a batch that an earlier commit already applied (a broker
    /// redelivered them), when the source says it may redeliver.
    async fn drop_redelivered(&mut self, mut batch: Batch) -> Result<Batch> {
        self.deduplicate = batch.deduplicate;
        if !batch.deduplicate || batch.events.is_empty() {
            return Ok(batch);
        }
        let ids: Vec<uuid::Uuid> = batch.events.iter().map(|e| e.event_id).collect();
        let seen = self.store.seen(self.name(), &ids).await?;
        let before = batch.events.len();
        // Within one batch, an id delivered twice is applied once.
        let mut fresh = std::collections::HashSet::new();
        batch
            .events
            .retain(|e| !seen.contains(&e.event_id) && fresh.insert(e.event_id));
        let dropped = (before - batch.events.len()) as u64;
        if dropped > 0 {
            debug!(projection = self.name(), dropped, "dropped redelivered events");
            super::metrics::redelivered(self.name(), self.partition, dropped);
        }
        Ok(batch)
    }

    /// Applies a batch. When an event fails, the events before it are committed on their own,
    /// and the failing event goes to the error policy.
    async fn apply_batch(&mut self, batch: Batch, shutdown: &mut watch::Receiver<bool>) -> Result<Step> {
        let batch = self.drop_redelivered(batch).await?;
        let events: Arc<[Event]> = batch.events.into();
        let mut end = events.len();
        let mut to = batch.scanned_to;
        let mut failure: Option<BatchFailure> = None;
        let mut ignored = batch.ignored;
        // A message the source could not decode fails before any handler sees it.
        if let Some(index) = events.iter().position(|e| e.event_type == MALFORMED_TYPE) {
            ignored = 0;
            end = index;
            to = if end > 0 {
                events[end - 1].checkpoint()
            } else {
                self.checkpoint
            };
            failure = Some(BatchFailure {
                index,
                error: HandlerError::malformed(&events[index]),
            });
        }
        while end > 0 || failure.is_none() {
            let stats = CommitStats {
                ignored,
                errors: 0,
                events_per_second: self.rate.per_second(),
            };
            match self.store.commit(self.commit(&events, end, to, stats)).await {
                Ok(()) => {
                    self.advance(to, end as u64);
                    break;
                }
                Err(CommitError::Handler(f)) if f.index < end => {
                    // Ignored events after the failure are counted again when re-read.
                    ignored = 0;
                    end = f.index;
                    to = if end > 0 {
                        events[end - 1].checkpoint()
                    } else {
                        self.checkpoint
                    };
                    failure = Some(f);
                }
                Err(other) => return self.on_commit_error(other),
            }
        }
        match failure {
            None => Ok(Step::Continue),
            Some(BatchFailure { index, error }) => self.handle_failure(&events, index, error, shutdown).await,
        }
    }

    /// A failed event that a policy dealt with (skipped, dead-lettered) counts as seen.
    fn record_dealt_with(&self, commit: &mut Commit<St::Body>, event: &Event) {
        if self.deduplicate {
            commit.record_ids = vec![event.event_id];
        }
    }

    fn advance(&mut self, to: Checkpoint, events: u64) {
        self.committed_by_us = true;
        self.checkpoint = to;
        self.events += events;
        self.rate.record(events);
    }

    fn on_commit_error(&mut self, err: CommitError) -> Result<Step> {
        match err {
            CommitError::Fenced { actual } => {
                super::metrics::fenced(self.name(), self.partition);
                warn!(
                    projection = self.name(),
                    partition = self.partition,
                    expected = %self.checkpoint,
                    %actual,
                    "checkpoint moved under this runner: another runner owns this projection; re-reading from its checkpoint"
                );
                self.checkpoint = actual;
                self.committed_by_us = false;
                Ok(Step::Continue)
            }
            CommitError::NotActive { state } => {
                info!(projection = self.name(), %state, "projection is not active; waiting");
                Ok(Step::Inactive(state))
            }
            CommitError::LeaseLost => {
                super::metrics::fenced(self.name(), self.partition);
                Ok(Step::LeaseLost)
            }
            CommitError::Store(e) => Err(e),
            CommitError::Handler(f) => Err(Error::Internal(format!(
                "the store reported a failure at index {} outside the committed range",
                f.index
            ))),
        }
    }

    /// Deals with one failing event under the projection's policy.
    async fn handle_failure(
        &mut self,
        events: &Arc<[Event]>,
        index: usize,
        mut error: HandlerError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Step> {
        let event = events[index].clone();
        super::metrics::failure(self.name(), self.partition);
        if matches!(self.mode, Mode::Rebuild { .. }) && self.projection.options().rebuild_fail_fast {
            return Err(Error::RebuildFailed {
                projection: self.name().to_owned(),
                position: event.position,
                event_type: event.event_type.clone(),
                stream_id: event.stream_id.clone(),
                message: error.to_string(),
            });
        }
        let single: Arc<[Event]> = Arc::from(vec![event.clone()]);
        let first_failed_at = Utc::now();
        let mut attempt = 1u32;
        loop {
            let decision = self.projection.options().policy.decide(&Failure {
                projection: self.name(),
                event: &event,
                error: &error,
                attempt,
            });
            debug!(projection = self.name(), position = event.position, attempt, ?decision, error = %error, "event failed");
            let message = error.to_string();
            let stats = CommitStats {
                ignored: 0,
                errors: 1,
                events_per_second: self.rate.per_second(),
            };
            match decision {
                Decision::Retry(delay) => {
                    if sleep_or_shutdown(delay, shutdown).await {
                        return Err(Error::Shutdown);
                    }
                    if event.event_type == MALFORMED_TYPE {
                        // Retrying cannot decode it: the next decision (dead letter, skip,
                        // stop, or retry up to the policy's limit) comes at once.
                        attempt += 1;
                        continue;
                    }
                    let commit =
                        self.commit(&single, 1, event.checkpoint(), CommitStats { errors: 1, ..stats });
                    match self.store.commit(commit).await {
                        Ok(()) => {
                            self.advance(event.checkpoint(), 1);
                            return Ok(Step::Continue);
                        }
                        Err(CommitError::Handler(f)) => {
                            error = f.error;
                            attempt += 1;
                        }
                        Err(other) => return self.on_commit_error(other),
                    }
                }
                Decision::Skip => {
                    warn!(projection = self.name(), position = event.position, stream = %event.stream_id, error = %message, "skipping failed event");
                    let mut commit = self.commit(&single, 0, event.checkpoint(), stats);
                    commit.last_error = Some(message);
                    self.record_dealt_with(&mut commit, &event);
                    return match self.store.commit(commit).await {
                        Ok(()) => {
                            self.advance(event.checkpoint(), 0);
                            Ok(Step::Continue)
                        }
                        Err(other) => self.on_commit_error(other),
                    };
                }
                Decision::DeadLetter => {
                    warn!(projection = self.name(), position = event.position, stream = %event.stream_id, error = %message, "recording dead letter");
                    let mut commit = self.commit(&single, 0, event.checkpoint(), stats);
                    commit.dead_letters.push(NewDeadLetter {
                        event: event.clone(),
                        error: message.clone(),
                        attempts: attempt,
                        first_failed_at,
                    });
                    commit.last_error = Some(message);
                    self.record_dealt_with(&mut commit, &event);
                    return match self.store.commit(commit).await {
                        Ok(()) => {
                            super::metrics::dead_letter(self.name(), self.partition);
                            self.advance(event.checkpoint(), 0);
                            Ok(Step::Continue)
                        }
                        Err(other) => self.on_commit_error(other),
                    };
                }
                Decision::Stop => {
                    warn!(projection = self.name(), position = event.position, stream = %event.stream_id, error = %message, "stopping projection");
                    let mut commit = self.commit(&single, 0, self.checkpoint, stats);
                    commit.last_error = Some(message.clone());
                    if let Err(other) = self.store.commit(commit).await {
                        return self.on_commit_error(other);
                    }
                    let reason = format!(
                        "stopped at position {} ({} on stream {}): {message}",
                        event.position, event.event_type, event.stream_id
                    );
                    self.store
                        .set_state(self.name(), Some(self.partition), RunState::Stopped, Some(reason))
                        .await?;
                    return Ok(Step::Inactive(RunState::Stopped));
                }
            }
        }
    }
}

/// Sleeps, or returns `true` early when shutdown is signalled.
async fn sleep_or_shutdown(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *shutdown.borrow(),
        r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
    }
}

#[cfg(all(test, feature = "sqlite"))]
#[path = "runner_tests.rs"]
mod tests;
