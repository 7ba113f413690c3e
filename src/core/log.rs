//! Event logs: where events are appended, with optimistic concurrency per stream.

use std::future::Future;

use super::error::Result;
use super::event::{Appended, ExpectedVersion, ImportProgress, NewEvent, StreamAppend};

/// An event log that events are appended to. Every backend's events table is one
/// (`SqliteStore`, `PgStore`); generic code appends through this trait.
pub trait EventLog: Send + Sync + 'static {
    /// Appends to several streams in one transaction: all or nothing. Each append's `expected`
    /// version is checked against its stream's current version; a mismatch, including one
    /// caused by a concurrent append, is [`Error::Conflict`](super::error::Error::Conflict)
    /// naming the stream, the expected and the actual version.
    fn append_many(&self, appends: Vec<StreamAppend>) -> impl Future<Output = Result<Vec<Appended>>> + Send;

    /// Appends events to one stream (see [`append_many`](EventLog::append_many)).
    fn append(
        &self,
        stream_id: impl Into<String> + Send,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<Appended>> + Send {
        let append = StreamAppend::new(stream_id, expected, events);
        async move { Appended::only(self.append_many(vec![append]).await?) }
    }

    /// Imports a stream of appends in one transaction: when any item is an error, or any
    /// append conflicts, nothing of the import is written and that error is returned. The
    /// iterator runs on a blocking thread, so it may read a file. `progress` gets the number
    /// of events imported so far, now and then.
    fn import<I>(
        &self,
        items: I,
        progress: Option<ImportProgress>,
    ) -> impl Future<Output = Result<u64>> + Send
    where
        I: Iterator<Item = Result<StreamAppend>> + Send + 'static;
}
