//! Sources: where events come from.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::error::Result;
use super::event::{Checkpoint, Event};

/// Which events a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these event types (`None`: all). Sources drop the others before decoding, and
    /// count them as ignored.
    pub types: Option<Arc<HashSet<String>>>,
}

impl Filter {
    pub fn types(types: Option<&[String]>) -> Self {
        Filter {
            types: types.map(|t| Arc::new(t.iter().cloned().collect())),
        }
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
}

/// How far behind a checkpoint is.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    /// Events after the checkpoint.
    pub events: u64,
    /// When the oldest unapplied event was recorded.
    pub oldest: Option<DateTime<Utc>>,
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

    /// Ticks whenever new events may be readable (an append in this process, a notification).
    /// Runners also poll, so a lost tick only delays them.
    fn changes(&self) -> watch::Receiver<u64>;
}
