//! Stores: where read models, checkpoints and dead letters live, changed in one transaction.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use std::collections::HashSet;

use uuid::Uuid;

use super::error::{BatchFailure, Error, HandlerError, Result};
use super::event::{Checkpoint, Event};
use super::lease::{Fence, Lease, LeaseInfo, Member, Membership};
use super::runner::RunnerSettings;

/// A projection's (or partition's) run state, persisted with its checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Applying events.
    Running,
    /// Paused by an operator.
    Paused,
    /// Stopped by its error policy: unhealthy until resumed.
    Stopped,
    /// Replaying from the start after a reset.
    Rebuilding,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopped => "stopped",
            RunState::Rebuilding => "rebuilding",
        }
    }

    /// The state named `s` (as [`as_str`](Self::as_str) writes it). Any other text is an
    /// [`Error::InvalidInput`] naming it: a stored state is never guessed.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "stopped" => RunState::Stopped,
            "rebuilding" => RunState::Rebuilding,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown run state {s:?}: expected running, paused, stopped or rebuilding"
                )))
            }
        })
    }

    /// The state stored as `text` in the checkpoint row of `projection`'s `partition`. Unknown
    /// text is a (non-retryable) [`Error::Database`] naming the row, the value and the fix.
    /// Stores use it: a build without one leaves it unused.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn stored(projection: &str, partition: u32, text: &str) -> Result<Self> {
        RunState::parse(text).map_err(|_| Error::Database {
            op: "reading a projection's run state",
            message: format!(
                "projection {projection} partition {partition} has the unknown run state {text:?} in its \
                 checkpoint row (projectionist knows running, paused, stopped and rebuilding; was it \
                 written by hand, or by a newer version?); set a known one with `projectionist pause \
                 {projection}` or `projectionist resume {projection}`"
            ),
            retryable: false,
            cause: None,
        })
    }

    /// Whether a runner applies events in this state.
    pub fn is_active(self) -> bool {
        matches!(self, RunState::Running | RunState::Rebuilding)
    }
}

impl std::str::FromStr for RunState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        RunState::parse(s)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a store keeps about one projection partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProjectionRecord {
    pub name: String,
    pub partition: u32,
    pub checkpoint: Checkpoint,
    pub state: RunState,
    /// Why it is paused or stopped.
    pub reason: Option<String>,
    /// Events applied by handlers, since the last reset.
    pub applied: u64,
    /// Events of unhandled types passed over.
    pub ignored: u64,
    /// Failed events (each failure that a policy dealt with).
    pub errors: u64,
    /// The applying rate at the last commit.
    pub events_per_second: f64,
    pub last_error: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    /// Open dead letters.
    pub dead_letters: u64,
}

/// A dead letter to record, with the failing event.
#[derive(Clone, Debug)]
pub struct NewDeadLetter {
    pub event: Event,
    pub error: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
}

/// A recorded dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub projection: String,
    pub partition: u32,
    pub event: Event,
    pub error: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

/// Counters that travel with a commit.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommitStats {
    pub ignored: u64,
    pub errors: u64,
    pub events_per_second: f64,
}

/// One atomic step: apply `events[range]`, record `dead_letters`, and move the checkpoint from
/// `expected` to `to` with a compare-and-set, all in one transaction.
pub struct Commit<B: ?Sized> {
    pub projection: Arc<str>,
    pub partition: u32,
    pub body: Arc<B>,
    pub events: Arc<[Event]>,
    pub range: Range<usize>,
    pub expected: Checkpoint,
    pub to: Checkpoint,
    pub dead_letters: Vec<NewDeadLetter>,
    pub stats: CommitStats,
    /// The error message to remember as the last error, if this commit deals with a failure.
    pub last_error: Option<String>,
    /// The lease this commit is made under (partitioned projections): the store refuses the
    /// commit with [`CommitError::Fenced`] unless the partition's lease still has this owner
    /// and token.
    pub fence: Option<Fence>,
    /// Event ids to record as seen for the projection, in the same transaction (sources that
    /// may redeliver, see [`Batch::deduplicate`](super::source::Batch::deduplicate)). Recording
    /// an id twice fails the commit.
    pub record_ids: Vec<Uuid>,
}

impl<B: ?Sized> Commit<B> {
    /// The same commit, applied through another body (an adapter of this one's).
    pub fn with_body<B2: ?Sized>(self, body: Arc<B2>) -> Commit<B2> {
        Commit {
            projection: self.projection,
            partition: self.partition,
            body,
            events: self.events,
            range: self.range,
            expected: self.expected,
            to: self.to,
            dead_letters: self.dead_letters,
            stats: self.stats,
            last_error: self.last_error,
            fence: self.fence,
            record_ids: self.record_ids,
        }
    }
}

/// Why a commit did not happen. Nothing of it was written.
#[derive(Debug)]
pub enum CommitError {
    /// A handler failed; `index` is into `Commit::events`.
    Handler(BatchFailure),
    /// The checkpoint was not `expected`: another runner moved it.
    Fenced { actual: Checkpoint },
    /// The projection is paused or stopped.
    NotActive { state: RunState },
    /// The commit's lease ([`Commit::fence`]) is no longer this owner's: another node took
    /// the partition over. The worker must stop.
    LeaseLost,
    /// The store failed.
    Store(Error),
}

impl From<Error> for CommitError {
    fn from(e: Error) -> Self {
        CommitError::Store(e)
    }
}

/// A store of read models, checkpoints and dead letters, for bodies of type `Body`.
pub trait Store: Send + Sync + 'static {
    /// The projection body this store runs (for SQLite, `dyn Apply<rusqlite::Connection>`).
    type Body: ?Sized + Send + Sync + 'static;

    /// Creates the projection's read model (idempotently) and its checkpoint row.
    fn prepare(
        &self,
        name: &str,
        partition: u32,
        body: Arc<Self::Body>,
    ) -> impl Future<Output = Result<ProjectionRecord>> + Send;

    /// Runs the projection's setup and checks its statements (as `prepare` does) in a
    /// transaction that is rolled back: nothing is created, and no checkpoint is written. For
    /// `projectionist check` against the database a config will run on.
    fn check_setup(&self, name: &str, body: Arc<Self::Body>) -> impl Future<Output = Result<()>> + Send {
        let _ = (name, body);
        async {
            Err(crate::core::error::Error::Unsupported(
                "this store cannot check a setup without running it".into(),
            ))
        }
    }

    /// One projection partition's record, if the store knows it.
    fn record(
        &self,
        name: &str,
        partition: u32,
    ) -> impl Future<Output = Result<Option<ProjectionRecord>>> + Send;

    /// Every projection partition the store knows.
    fn records(&self) -> impl Future<Output = Result<Vec<ProjectionRecord>>> + Send;

    /// Applies one commit atomically.
    fn commit(&self, commit: Commit<Self::Body>) -> impl Future<Output = Result<(), CommitError>> + Send;

    /// In one transaction: empties the read model, moves the checkpoint of every partition
    /// back to the start, zeroes the counters, drops the projection's dead letters, and sets
    /// the state to `Rebuilding`.
    fn reset(&self, name: &str, body: Arc<Self::Body>) -> impl Future<Output = Result<()>> + Send;

    /// Sets the run state of a projection (every partition when `partition` is `None`).
    fn set_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Open dead letters, oldest first, optionally of one projection.
    fn dead_letters(&self, projection: Option<&str>) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    /// Deletes a dead letter without applying it.
    fn discard_dead_letter(&self, id: i64) -> impl Future<Output = Result<()>> + Send;

    /// Applies a dead letter's event through `body` and deletes the dead letter, in one
    /// transaction. On a handler failure nothing is applied, the attempt is recorded, and the
    /// error is returned.
    fn retry_dead_letter(
        &self,
        id: i64,
        body: Arc<Self::Body>,
    ) -> impl Future<Output = Result<Result<(), HandlerError>>> + Send;

    /// Ticks whenever a checkpoint moves in this process (for `wait_for`).
    fn checkpoint_changes(&self) -> watch::Receiver<u64>;

    /// The runner settings that suit this store (engines built for it start with them).
    fn runner_settings(&self) -> RunnerSettings {
        RunnerSettings::default()
    }

    /// Which of `ids` were recorded as seen for `projection` by an earlier commit
    /// ([`Commit::record_ids`]). Stores keep them for a bounded time.
    fn seen(&self, projection: &str, ids: &[Uuid]) -> impl Future<Output = Result<HashSet<Uuid>>> + Send {
        let _ = (projection, ids);
        async { Err(unsupported("deduplicating redelivered events")) }
    }

    /// Renews this node's membership and the leases it holds; tells which it still holds and
    /// how many nodes are live.
    fn heartbeat(&self, member: &Member) -> impl Future<Output = Result<Membership>> + Send {
        let _ = member;
        async { Err(unsupported("partitioned projections")) }
    }

    /// Takes up to `max` partitions that are free or whose lease expired, each with a new
    /// fencing token.
    fn acquire(&self, member: &Member, max: u32) -> impl Future<Output = Result<Vec<Lease>>> + Send {
        let _ = (member, max);
        async { Err(unsupported("partitioned projections")) }
    }

    /// Gives leases back (their workers have stopped), so other nodes can take them at once.
    fn release(&self, member: &Member, leases: &[Lease]) -> impl Future<Output = Result<()>> + Send {
        let _ = (member, leases);
        async { Err(unsupported("partitioned projections")) }
    }

    /// Gives every lease of this node back and ends its membership (a clean shutdown).
    fn leave(&self, member: &Member) -> impl Future<Output = Result<()>> + Send {
        let _ = member;
        async { Err(unsupported("partitioned projections")) }
    }

    /// Whether live runners of every projection run under a lease, partitioned or not: a
    /// second process that runs the same projection then waits as a standby instead of racing
    /// the first (see [`crate::core::coordinator`]). For stores where processes share nothing
    /// but a file (SQLite); PostgreSQL leases partitions only.
    fn leases_every_runner(&self) -> bool {
        false
    }

    /// The leases of a partitioned projection, by partition (empty for other projections).
    fn leases(&self, projection: &str) -> impl Future<Output = Result<Vec<LeaseInfo>>> + Send {
        let _ = projection;
        async { Ok(Vec::new()) }
    }
}

fn unsupported(what: &str) -> Error {
    Error::Unsupported(format!(
        "{what} need a store that supports it (PostgreSQL); this store does not"
    ))
}
