//! [`AnySource`]: any [`Source`] behind one type.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

use super::BoxFuture;
use crate::core::error::Result;
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, PartitionAssignment, Source};

/// [`Source`] with boxed futures, so that it can be a trait object.
trait DynSource: Send + Sync + 'static {
    fn read<'a>(
        &'a self,
        after: Checkpoint,
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Batch>>;
    fn head(&self) -> BoxFuture<'_, Result<Checkpoint>>;
    fn lag(&self, after: Checkpoint) -> BoxFuture<'_, Result<Lag>>;
    fn partition_lag<'a>(&'a self, after: Checkpoint, filter: &'a Filter) -> BoxFuture<'a, Result<Lag>>;
    fn changes(&self) -> watch::Receiver<u64>;
    fn supports_partitions(&self) -> bool;
    fn can_replay(&self) -> bool;
    fn check_replay_from_start<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<()>>;
    fn reads_beside(&self) -> bool;
    fn reads_ahead(&self) -> bool;
    fn acknowledge<'a>(&'a self, filter: &'a Filter, through: Checkpoint) -> BoxFuture<'a, Result<()>>;
    fn partition_count(&self, projection: &str) -> Option<u32>;
    fn partition_assignment(&self) -> PartitionAssignment;
    fn join<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<watch::Receiver<Vec<u32>>>>;
    fn leave<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, ()>;
    fn partition_head<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Option<Checkpoint>>>;
    fn partition_owners<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<Vec<(u32, String)>>>;
    fn as_any(&self) -> &dyn Any;
}

impl<S: Source> DynSource for S {
    fn read<'a>(
        &'a self,
        after: Checkpoint,
        limit: usize,
        filter: &'a Filter,
    ) -> BoxFuture<'a, Result<Batch>> {
        Box::pin(Source::read(self, after, limit, filter))
    }

    fn head(&self) -> BoxFuture<'_, Result<Checkpoint>> {
        Box::pin(Source::head(self))
    }

    fn lag(&self, after: Checkpoint) -> BoxFuture<'_, Result<Lag>> {
        Box::pin(Source::lag(self, after))
    }

    fn partition_lag<'a>(&'a self, after: Checkpoint, filter: &'a Filter) -> BoxFuture<'a, Result<Lag>> {
        Box::pin(Source::partition_lag(self, after, filter))
    }

    fn changes(&self) -> watch::Receiver<u64> {
        Source::changes(self)
    }

    fn supports_partitions(&self) -> bool {
        Source::supports_partitions(self)
    }

    fn can_replay(&self) -> bool {
        Source::can_replay(self)
    }

    fn check_replay_from_start<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<()>> {
        Box::pin(Source::check_replay_from_start(self, filter))
    }

    fn reads_beside(&self) -> bool {
        Source::reads_beside(self)
    }

    fn reads_ahead(&self) -> bool {
        Source::reads_ahead(self)
    }

    fn acknowledge<'a>(&'a self, filter: &'a Filter, through: Checkpoint) -> BoxFuture<'a, Result<()>> {
        Box::pin(Source::acknowledge(self, filter, through))
    }

    fn partition_count(&self, projection: &str) -> Option<u32> {
        Source::partition_count(self, projection)
    }

    fn partition_assignment(&self) -> PartitionAssignment {
        Source::partition_assignment(self)
    }

    fn join<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<watch::Receiver<Vec<u32>>>> {
        Box::pin(Source::join(self, filter))
    }

    fn leave<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, ()> {
        Box::pin(Source::leave(self, filter))
    }

    fn partition_head<'a>(&'a self, filter: &'a Filter) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(Source::partition_head(self, filter))
    }

    fn partition_owners<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<Vec<(u32, String)>>> {
        Box::pin(Source::partition_owners(self, projection))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Any [`Source`], behind one type. Cheap to clone.
#[derive(Clone)]
pub struct AnySource {
    inner: Arc<dyn DynSource>,
}

impl AnySource {
    pub fn new<S: Source>(source: S) -> Self {
        Self::from_arc(Arc::new(source))
    }

    /// A source that is already shared.
    pub fn from_arc<S: Source>(source: Arc<S>) -> Self {
        AnySource { inner: source }
    }

    /// The source inside, when it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.inner.as_any().downcast_ref()
    }
}

impl fmt::Debug for AnySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnySource").finish_non_exhaustive()
    }
}

impl Source for AnySource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        self.inner.read(after, limit, filter).await
    }

    async fn head(&self) -> Result<Checkpoint> {
        self.inner.head().await
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        self.inner.lag(after).await
    }

    async fn partition_lag(&self, after: Checkpoint, filter: &Filter) -> Result<Lag> {
        self.inner.partition_lag(after, filter).await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes()
    }

    fn supports_partitions(&self) -> bool {
        self.inner.supports_partitions()
    }

    fn can_replay(&self) -> bool {
        self.inner.can_replay()
    }

    async fn check_replay_from_start(&self, filter: &Filter) -> Result<()> {
        self.inner.check_replay_from_start(filter).await
    }

    fn reads_beside(&self) -> bool {
        self.inner.reads_beside()
    }

    fn reads_ahead(&self) -> bool {
        self.inner.reads_ahead()
    }

    async fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> Result<()> {
        self.inner.acknowledge(filter, through).await
    }

    fn partition_count(&self, projection: &str) -> Option<u32> {
        self.inner.partition_count(projection)
    }

    fn partition_assignment(&self) -> PartitionAssignment {
        self.inner.partition_assignment()
    }

    async fn join(&self, filter: &Filter) -> Result<watch::Receiver<Vec<u32>>> {
        self.inner.join(filter).await
    }

    async fn leave(&self, filter: &Filter) {
        self.inner.leave(filter).await
    }

    async fn partition_head(&self, filter: &Filter) -> Result<Option<Checkpoint>> {
        self.inner.partition_head(filter).await
    }

    async fn partition_owners(&self, projection: &str) -> Result<Vec<(u32, String)>> {
        self.inner.partition_owners(projection).await
    }
}
