//! Sources: where events come from.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::error::Result;
use super::event::{Checkpoint, Event};

/// One partition of a partitioned projection: the streams whose
/// [`partition_of`](super::partition::partition_of) is `index` out of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartitionSlice {
    pub index: u32,
    pub count: u32,
}

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these event types (`None`: all). Sources drop the others before decoding, and
    /// count them as ignored.
    pub types: Option<Arc<HashSet<String>>>,
    /// The projection that reads. Broker sources keep one consumer per projection (a durable
    /// NATS consumer, a RabbitMQ queue) and find it by this name.
    pub projection: Option<Arc<str>>,
    /// Only the events of this partition's streams (`None`: every stream).
    pub partition: Option<PartitionSlice>,
}

impl Filter {
    pub fn types(types: Option<&[String]>) -> Self {
        Filter {
            types: types.map(|t| Arc::new(t.iter().cloned().collect())),
            ..Filter::default()
        }
    }

    /// The same filter, for the reader `projection`.
    pub fn for_projection(mut self, projection: Arc<str>) -> Self {
        self.projection = Some(projection);
        self
    }

    /// The same filter, restricted to one partition.
    pub fn in_partition(mut self, partition: Option<PartitionSlice>) -> Self {
        self.partition = partition;
        self
    }

    pub fn admits(&self, event_type: &str) -> bool {
        self.types.as_ref().is_none_or(|t| t.contains(event_type))
    }
}

/// One read: the events after a checkpoint, and how far the read looked.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The admitted events, in source order.
    pub events: Vec<Event>,
    /// The checkpoint of the last event the read looked at (admitted or not). A runner moves
    /// its checkpoint here once the batch is applied.
    pub scanned_to: Checkpoint,
    /// Events the read looked at and dropped because the filter did not admit them.
    pub ignored: u64,
    /// The source may deliver an event more than once (a broker's redelivery, with no
    /// position to compare). The runner then drops the events whose `event_id` the store has
    /// already recorded for the projection ([`Store::seen`](super::store::Store::seen)), and
    /// records the others in the commit's transaction.
    pub deduplicate: bool,
}

/// How far behind a checkpoint is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    /// Events after the checkpoint.
    pub events: u64,
    /// When the oldest unapplied event was recorded.
    pub oldest: Option<DateTime<Utc>>,
}

/// Who decides which `run` process reads each of a source's own partitions (see
/// [`Source::partition_count`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PartitionAssignment {
    /// The broker's group assigns them ([`Source::join`]); a dead process's partitions move
    /// when the broker evicts it.
    #[default]
    Broker,
    /// The checkpoint store's leases assign them, as for a partitioned projection over a
    /// table (see [`crate::core::coordinator`]); every process may read any partition, and
    /// reads the ones whose lease it holds. A dead process's partitions move when its leases
    /// expire.
    Leases,
}

/// A source of events in a total order, readable from any checkpoint.
pub trait Source: Send + Sync + 'static {
    /// Reads up to `limit` events after `after`. Never returns an event that a later read could
    /// find before it (on PostgreSQL: never passes a transaction that is still open).
    fn read(
        &self,
        after: Checkpoint,
        limit: usize,
        filter: &Filter,
    ) -> impl Future<Output = Result<Batch>> + Send;

    /// The checkpoint of the newest committed event. It may not be readable yet (on
    /// PostgreSQL, while an older transaction is still open); catch-ups wait until it is.
    fn head(&self) -> impl Future<Output = Result<Checkpoint>> + Send;

    /// How far `after` is behind the head.
    fn lag(&self, after: Checkpoint) -> impl Future<Output = Result<Lag>> + Send;

    /// How far `after` is behind the head for the events of the reader `filter` (its
    /// projection and [`Filter::partition`]). Sources that do not partition answer for the
    /// whole log (an upper bound).
    fn partition_lag(&self, after: Checkpoint, filter: &Filter) -> impl Future<Output = Result<Lag>> + Send {
        let _ = filter;
        self.lag(after)
    }

    /// Ticks whenever new events may be readable (an append in this process, a notification).
    /// Runners also poll, so a lost tick only delays them.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Whether reads honour [`Filter::partition`] (in the database, on an index). Partitioned
    /// projections refuse to run on a source that does not.
    fn supports_partitions(&self) -> bool {
        false
    }

    /// Whether reads may start from any checkpoint, including one before what the source
    /// already delivered: a rebuild replays from the start. A queue that deletes what was
    /// acknowledged (RabbitMQ) cannot, and rebuilds refuse to run on it.
    fn can_replay(&self) -> bool {
        true
    }

    /// Checks, before a rebuild of the reader `filter` resets anything, that the source still
    /// holds its events from the start (a broker's retention may have dropped the oldest). An
    /// error refuses the rebuild with the read model untouched. Default: nothing to check.
    fn check_replay_from_start(&self, filter: &Filter) -> impl Future<Output = Result<()>> + Send {
        let _ = filter;
        async { Ok(()) }
    }

    /// Whether a second reader of a projection (a blue/green shadow build) may read beside
    /// its live reader: reads keep no state per reader (a table read by position). Broker
    /// sources keep one consumer per projection, which a second reader would share, so
    /// blue/green rebuilds refuse to run on them.
    fn reads_beside(&self) -> bool {
        false
    }

    /// Whether a runner may read the next batch while it commits the one before it: a read
    /// after a checkpoint keeps no state and gives the same events whenever it runs (only
    /// more of them at the head), and reading beside a commit costs the database little (a
    /// table read by position on its own connection). A runner reads ahead only after a
    /// full batch, and uses the read only when its commit moved the checkpoint to where the
    /// read started. Default: `false`.
    fn reads_ahead(&self) -> bool {
        false
    }

    /// The partitions of the source itself, for the reader `projection`, when the broker
    /// splits its log into partitions and assigns them to the members of a group (Kafka): the
    /// projection then has one checkpoint per source partition (its
    /// [`PartitionSlice::index`]), and `run` reads only the partitions that
    /// [`join`](Source::join) assigns to this process. `None` (default): the source has no
    /// partitions of its own.
    fn partition_count(&self, projection: &str) -> Option<u32> {
        let _ = projection;
        None
    }

    /// Who assigns the source's own partitions to processes (meaningful only when
    /// [`partition_count`](Source::partition_count) is `Some`). Default: the broker.
    fn partition_assignment(&self) -> PartitionAssignment {
        PartitionAssignment::Broker
    }

    /// Joins the broker's group of the reader `filter` (see [`partition_count`](Source::partition_count)):
    /// the receiver holds the partitions assigned to this process, and changes at every
    /// rebalance. Reads of a partition this process does not hold return nothing. Until
    /// [`leave`](Source::leave), the membership lives on.
    fn join(&self, filter: &Filter) -> impl Future<Output = Result<watch::Receiver<Vec<u32>>>> + Send {
        let _ = filter;
        async {
            Err(super::error::Error::Unsupported(
                "this source assigns no partitions: it has no consumer groups".into(),
            ))
        }
    }

    /// Leaves the group that [`join`](Source::join) joined (its partitions go to the other
    /// members at once).
    fn leave(&self, filter: &Filter) -> impl Future<Output = ()> + Send {
        let _ = filter;
        async {}
    }

    /// The checkpoint of the newest event of the partition of the source's own that the reader
    /// `filter` reads (its projection's, see [`partition_count`](Source::partition_count), and
    /// [`Filter::partition`]): a catch-up or rebuild of that partition goes to it. `None`
    /// (default): every partition reads up to [`head`](Source::head).
    fn partition_head(&self, filter: &Filter) -> impl Future<Output = Result<Option<Checkpoint>>> + Send {
        let _ = filter;
        async { Ok(None) }
    }

    /// Who holds each partition of the reader `projection` (the broker group's member ids),
    /// for status. Default: nobody known.
    fn partition_owners(&self, projection: &str) -> impl Future<Output = Result<Vec<(u32, String)>>> + Send {
        let _ = projection;
        async { Ok(Vec::new()) }
    }

    /// Called after every commit of the reader `filter`, with the checkpoint it committed:
    /// everything up to `through` is durable in the read model. Broker sources acknowledge
    /// their messages here (never before the commit, so a crash redelivers instead of losing).
    /// Databases have nothing to do.
    fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> impl Future<Output = Result<()>> + Send {
        let _ = (filter, through);
        async { Ok(()) }
    }
}
