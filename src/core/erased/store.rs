//! [`AnyStore`]: any SQL store behind one type, with bodies written over [`SqlTx`].

use std::any::Any;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use super::body::{concrete, concrete_projection};
use super::{AnyBody, AnySource, BoxFuture};
use crate::core::error::{Error, HandlerError, Result};
use crate::core::event::{Appended, ImportProgress, StreamAppend};
use crate::core::inline::InlineAppend;
use crate::core::lease::{Lease, LeaseInfo, Member, Membership};
use crate::core::log::EventLog;
use crate::core::projection::Projection;
use crate::core::runner::RunnerSettings;
use crate::core::shadow::{ShadowStore, Swapped};
use crate::core::sql::{SqlStore, SqlTx, TextRows};
use crate::core::store::{Commit, CommitError, DeadLetter, ProjectionRecord, RunState, Store};

/// The appends of an import, behind one type.
type Appends = Box<dyn Iterator<Item = Result<StreamAppend>> + Send>;

/// Everything [`AnyStore`] forwards, with boxed futures, so that it can be a trait object.
trait DynStore: Send + Sync + 'static {
    // Store
    fn prepare<'a>(
        &'a self,
        name: &'a str,
        partition: u32,
        body: Arc<AnyBody>,
    ) -> BoxFuture<'a, Result<ProjectionRecord>>;
    fn check_setup<'a>(&'a self, name: &'a str, body: Arc<AnyBody>) -> BoxFuture<'a, Result<()>>;
    fn record<'a>(&'a self, name: &'a str, partition: u32)
        -> BoxFuture<'a, Result<Option<ProjectionRecord>>>;
    fn records(&self) -> BoxFuture<'_, Result<Vec<ProjectionRecord>>>;
    fn commit(&self, commit: Commit<AnyBody>) -> BoxFuture<'_, Result<(), CommitError>>;
    fn reset<'a>(&'a self, name: &'a str, body: Arc<AnyBody>) -> BoxFuture<'a, Result<()>>;
    fn set_state<'a>(
        &'a self,
        name: &'a str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> BoxFuture<'a, Result<()>>;
    fn dead_letters<'a>(&'a self, projection: Option<&'a str>) -> BoxFuture<'a, Result<Vec<DeadLetter>>>;
    fn discard_dead_letter(&self, id: i64) -> BoxFuture<'_, Result<()>>;
    fn retry_dead_letter(
        &self,
        id: i64,
        body: Arc<AnyBody>,
    ) -> BoxFuture<'_, Result<Result<(), HandlerError>>>;
    fn checkpoint_changes(&self) -> watch::Receiver<u64>;
    fn runner_settings(&self) -> RunnerSettings;
    fn seen<'a>(&'a self, projection: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, Result<HashSet<Uuid>>>;
    fn heartbeat<'a>(&'a self, member: &'a Member) -> BoxFuture<'a, Result<Membership>>;
    fn acquire<'a>(&'a self, member: &'a Member, max: u32) -> BoxFuture<'a, Result<Vec<Lease>>>;
    fn release<'a>(&'a self, member: &'a Member, leases: &'a [Lease]) -> BoxFuture<'a, Result<()>>;
    fn leave<'a>(&'a self, member: &'a Member) -> BoxFuture<'a, Result<()>>;
    fn leases<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<Vec<LeaseInfo>>>;
    fn leases_every_runner(&self) -> bool;
    // SqlStore
    fn query_text<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<TextRows>>;
    // EventLog
    fn append_many(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Appended>>>;
    fn import(&self, items: Appends, progress: Option<ImportProgress>) -> BoxFuture<'_, Result<u64>>;
    // InlineAppend
    fn append_inline<'a>(
        &'a self,
        log: &'a AnySource,
        appends: Vec<StreamAppend>,
        inline: Vec<Projection<AnyBody>>,
    ) -> BoxFuture<'a, Result<Vec<Appended>>>;
    // ShadowStore
    fn open_shadow<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<(AnyStore, bool)>>;
    fn swap_in<'a>(
        &'a self,
        projection: &'a str,
        catch_up: BoxFuture<'a, Result<()>>,
    ) -> BoxFuture<'a, Result<Swapped>>;
    fn drop_shadow<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn shadow_exists<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<bool>>;
    fn as_any(&self) -> &dyn Any;
}

impl<St> DynStore for St
where
    St: SqlStore + EventLog + InlineAppend<St> + ShadowStore,
    St::Tx: SqlTx + Sized,
{
    fn prepare<'a>(
        &'a self,
        name: &'a str,
        partition: u32,
        body: Arc<AnyBody>,
    ) -> BoxFuture<'a, Result<ProjectionRecord>> {
        Box::pin(Store::prepare(self, name, partition, concrete(body)))
    }

    fn check_setup<'a>(&'a self, name: &'a str, body: Arc<AnyBody>) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::check_setup(self, name, concrete(body)))
    }

    fn record<'a>(
        &'a self,
        name: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Option<ProjectionRecord>>> {
        Box::pin(Store::record(self, name, partition))
    }

    fn records(&self) -> BoxFuture<'_, Result<Vec<ProjectionRecord>>> {
        Box::pin(Store::records(self))
    }

    fn commit(&self, commit: Commit<AnyBody>) -> BoxFuture<'_, Result<(), CommitError>> {
        let body = concrete(commit.body.clone());
        Box::pin(Store::commit(self, commit.with_body(body)))
    }

    fn reset<'a>(&'a self, name: &'a str, body: Arc<AnyBody>) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::reset(self, name, concrete(body)))
    }

    fn set_state<'a>(
        &'a self,
        name: &'a str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::set_state(self, name, partition, state, reason))
    }

    fn dead_letters<'a>(&'a self, projection: Option<&'a str>) -> BoxFuture<'a, Result<Vec<DeadLetter>>> {
        Box::pin(Store::dead_letters(self, projection))
    }

    fn discard_dead_letter(&self, id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(Store::discard_dead_letter(self, id))
    }

    fn retry_dead_letter(
        &self,
        id: i64,
        body: Arc<AnyBody>,
    ) -> BoxFuture<'_, Result<Result<(), HandlerError>>> {
        Box::pin(Store::retry_dead_letter(self, id, concrete(body)))
    }

    fn checkpoint_changes(&self) -> watch::Receiver<u64> {
        Store::checkpoint_changes(self)
    }

    fn runner_settings(&self) -> RunnerSettings {
        Store::runner_settings(self)
    }

    fn seen<'a>(&'a self, projection: &'a str, ids: &'a [Uuid]) -> BoxFuture<'a, Result<HashSet<Uuid>>> {
        Box::pin(Store::seen(self, projection, ids))
    }

    fn heartbeat<'a>(&'a self, member: &'a Member) -> BoxFuture<'a, Result<Membership>> {
        Box::pin(Store::heartbeat(self, member))
    }

    fn acquire<'a>(&'a self, member: &'a Member, max: u32) -> BoxFuture<'a, Result<Vec<Lease>>> {
        Box::pin(Store::acquire(self, member, max))
    }

    fn release<'a>(&'a self, member: &'a Member, leases: &'a [Lease]) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::release(self, member, leases))
    }

    fn leave<'a>(&'a self, member: &'a Member) -> BoxFuture<'a, Result<()>> {
        Box::pin(Store::leave(self, member))
    }

    fn leases<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<Vec<LeaseInfo>>> {
        Box::pin(Store::leases(self, projection))
    }

    fn leases_every_runner(&self) -> bool {
        Store::leases_every_runner(self)
    }

    fn query_text<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<TextRows>> {
        Box::pin(SqlStore::query_text(self, sql))
    }

    fn append_many(&self, appends: Vec<StreamAppend>) -> BoxFuture<'_, Result<Vec<Appended>>> {
        Box::pin(EventLog::append_many(self, appends))
    }

    fn import(&self, items: Appends, progress: Option<ImportProgress>) -> BoxFuture<'_, Result<u64>> {
        Box::pin(EventLog::import(self, items, progress))
    }

    fn append_inline<'a>(
        &'a self,
        log: &'a AnySource,
        appends: Vec<StreamAppend>,
        inline: Vec<Projection<AnyBody>>,
    ) -> BoxFuture<'a, Result<Vec<Appended>>> {
        let inline: Vec<_> = inline.iter().map(concrete_projection).collect();
        Box::pin(async move {
            let log = log.downcast_ref::<St>().ok_or_else(|| {
                Error::Unsupported(
                    "appending through the engine needs its source to be the store's own events table \
                     (inline projections apply in the append's transaction); this engine reads another source"
                        .into(),
                )
            })?;
            InlineAppend::append_inline(self, log, appends, inline).await
        })
    }

    fn open_shadow<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<(AnyStore, bool)>> {
        Box::pin(async move {
            let (shadow, existed) = ShadowStore::open_shadow(self, projection).await?;
            Ok((AnyStore::new(shadow), existed))
        })
    }

    fn swap_in<'a>(
        &'a self,
        projection: &'a str,
        catch_up: BoxFuture<'a, Result<()>>,
    ) -> BoxFuture<'a, Result<Swapped>> {
        Box::pin(async move {
            let ((), swapped) = ShadowStore::swap_in(self, projection, catch_up).await?;
            Ok(swapped)
        })
    }

    fn drop_shadow<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ShadowStore::drop_shadow(self, projection))
    }

    fn shadow_exists<'a>(&'a self, projection: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(ShadowStore::shadow_exists(self, projection))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Any SQL store (see the [module docs](super)), behind one type. Its projections' bodies are
/// [`AnyBody`]. Cheap to clone.
#[derive(Clone)]
pub struct AnyStore {
    inner: Arc<dyn DynStore>,
}

impl AnyStore {
    pub fn new<St>(store: St) -> Self
    where
        St: SqlStore + EventLog + InlineAppend<St> + ShadowStore,
        St::Tx: SqlTx + Sized,
    {
        AnyStore {
            inner: Arc::new(store),
        }
    }

    /// The store inside, when it is a `T`.
    pub fn downcast_ref<T: Any>(&self) -> Option<&T> {
        self.inner.as_any().downcast_ref()
    }
}

impl fmt::Debug for AnyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyStore").finish_non_exhaustive()
    }
}

impl Store for AnyStore {
    type Body = AnyBody;

    async fn prepare(&self, name: &str, partition: u32, body: Arc<AnyBody>) -> Result<ProjectionRecord> {
        self.inner.prepare(name, partition, body).await
    }

    async fn check_setup(&self, name: &str, body: Arc<AnyBody>) -> Result<()> {
        self.inner.check_setup(name, body).await
    }

    async fn record(&self, name: &str, partition: u32) -> Result<Option<ProjectionRecord>> {
        self.inner.record(name, partition).await
    }

    async fn records(&self) -> Result<Vec<ProjectionRecord>> {
        self.inner.records().await
    }

    async fn commit(&self, commit: Commit<AnyBody>) -> Result<(), CommitError> {
        self.inner.commit(commit).await
    }

    async fn reset(&self, name: &str, body: Arc<AnyBody>) -> Result<()> {
        self.inner.reset(name, body).await
    }

    async fn set_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> Result<()> {
        self.inner.set_state(name, partition, state, reason).await
    }

    async fn dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letters(projection).await
    }

    async fn discard_dead_letter(&self, id: i64) -> Result<()> {
        self.inner.discard_dead_letter(id).await
    }

    async fn retry_dead_letter(&self, id: i64, body: Arc<AnyBody>) -> Result<Result<(), HandlerError>> {
        self.inner.retry_dead_letter(id, body).await
    }

    fn checkpoint_changes(&self) -> watch::Receiver<u64> {
        self.inner.checkpoint_changes()
    }

    fn runner_settings(&self) -> RunnerSettings {
        self.inner.runner_settings()
    }

    fn leases_every_runner(&self) -> bool {
        self.inner.leases_every_runner()
    }

    async fn seen(&self, projection: &str, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        self.inner.seen(projection, ids).await
    }

    async fn heartbeat(&self, member: &Member) -> Result<Membership> {
        self.inner.heartbeat(member).await
    }

    async fn acquire(&self, member: &Member, max: u32) -> Result<Vec<Lease>> {
        self.inner.acquire(member, max).await
    }

    async fn release(&self, member: &Member, leases: &[Lease]) -> Result<()> {
        self.inner.release(member, leases).await
    }

    async fn leave(&self, member: &Member) -> Result<()> {
        self.inner.leave(member).await
    }

    async fn leases(&self, projection: &str) -> Result<Vec<LeaseInfo>> {
        self.inner.leases(projection).await
    }
}

impl SqlStore for AnyStore {
    type Tx = dyn SqlTx;

    async fn query_text(&self, sql: &str) -> Result<TextRows> {
        self.inner.query_text(sql).await
    }
}

impl EventLog for AnyStore {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        self.inner.append_many(appends).await
    }

    async fn import<I>(&self, items: I, progress: Option<ImportProgress>) -> Result<u64>
    where
        I: Iterator<Item = Result<StreamAppend>> + Send + 'static,
    {
        self.inner.import(Box::new(items), progress).await
    }
}

impl InlineAppend<AnySource> for AnyStore {
    async fn append_inline(
        &self,
        log: &AnySource,
        appends: Vec<StreamAppend>,
        inline: Vec<Projection<AnyBody>>,
    ) -> Result<Vec<Appended>> {
        self.inner.append_inline(log, appends, inline).await
    }
}

impl ShadowStore for AnyStore {
    async fn open_shadow(&self, projection: &str) -> Result<(Self, bool)> {
        self.inner.open_shadow(projection).await
    }

    async fn swap_in<T, F>(&self, projection: &str, catch_up: F) -> Result<(T, Swapped)>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let mut out = None;
        let swapped = self
            .inner
            .swap_in(
                projection,
                Box::pin(async {
                    out = Some(catch_up.await?);
                    Ok(())
                }),
            )
            .await?;
        let out =
            out.ok_or_else(|| Error::Internal("the swap finished without its final catch-up".into()))?;
        Ok((out, swapped))
    }

    async fn drop_shadow(&self, projection: &str) -> Result<bool> {
        self.inner.drop_shadow(projection).await
    }

    async fn shadow_exists(&self, projection: &str) -> Result<bool> {
        self.inner.shadow_exists(projection).await
    }
}
