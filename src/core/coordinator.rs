//! The coordinator of a partitioned projection in one `run` process: it heartbeats, keeps
//! about `partitions / live nodes` leases, and runs one worker per lease it holds.
//!
//! Every heartbeat (see [`LeaseSettings`]):
//! 1. renew this node's membership and leases; the store says which leases are still ours and
//!    how many nodes are live;
//! 2. stop the workers of leases that are gone (another node took them after we failed to
//!    renew in time; their commits were already refused by the fence);
//! 3. above the fair share `ceil(partitions / live nodes)`: stop the extra workers after their
//!    current batch, then release their leases, so a node that joined can take them;
//! 4. below it: acquire free or expired leases and start their workers.
//!
//! On shutdown, every worker finishes its batch and the node leaves, releasing its leases at
//! once. A node killed without a shutdown loses its leases when they expire.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::error::{Error, Result};
use super::event::Checkpoint;
use super::lease::{Fence, Lease, LeaseSettings, Member};
use super::projection::Projection;
use super::runner::{Mode, RunnerSettings, Worker, WorkerReport};
use super::scheduler::Scheduler;
use super::source::Source;
use super::store::{ProjectionRecord, Store};

/// A worker running under a lease.
struct Running {
    lease: Lease,
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<WorkerReport>>,
}

impl RunningWorker for Running {
    fn handle(&mut self) -> &mut JoinHandle<Result<WorkerReport>> {
        &mut self.handle
    }
}

pub(crate) struct Coordinator<S: Source, St: Store> {
    pub source: Arc<S>,
    pub store: Arc<St>,
    pub projection: Projection<St::Body>,
    pub settings: RunnerSettings,
    pub leases: LeaseSettings,
    pub scheduler: Scheduler,
    pub node: Arc<str>,
}

impl<S: Source, St: Store> Coordinator<S, St> {
    fn member(&self) -> Member {
        Member {
            projection: self.projection.name_arc(),
            node: self.node.clone(),
            partitions: self.projection.options().partitions,
            ttl: self.leases.ttl(),
        }
    }

    fn spawn(&self, lease: Lease) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let worker = Worker::new(
            self.source.clone(),
            self.store.clone(),
            self.projection.clone(),
            lease.partition,
            self.settings.clone(),
            Mode::Live,
            self.scheduler.clone(),
        );
        let fence = Fence {
            owner: self.node.clone(),
            token: lease.token,
        };
        let count = self.projection.options().partitions;
        let worker = if count > 1 {
            worker.partitioned(count, Some(fence))
        } else {
            worker.fenced(fence)
        };
        Running {
            lease,
            stop,
            handle: tokio::spawn(worker.run(stop_rx)),
        }
    }

    /// Runs until `shutdown`; returns one report per partition this node ran.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<Vec<WorkerReport>> {
        let name = self.projection.name().to_owned();
        check_partitioning(self.source.as_ref(), self.store.as_ref(), &self.projection).await?;
        let count = self.projection.options().partitions;
        prepare_partitions(self.store.as_ref(), &self.projection).await?;
        let member = self.member();
        info!(projection = %name, node = %self.node, partitions = count, takeover = ?self.leases.takeover, "joining the partition group");
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        // A projection leased whole has one lease: without it, this process is a standby.
        let whole = count <= 1;
        let mut standby_logged = false;
        let mut reports: BTreeMap<u32, WorkerReport> = BTreeMap::new();
        // An error that retrying cannot fix (a store without leases, a worker that ended on
        // one): the group ends with it.
        let mut fatal: Option<Error> = None;
        loop {
            // Workers that ended on their own: their lease was lost, or they failed.
            reap(&mut running, &mut reports, &mut fatal, &name).await;

            if *shutdown.borrow() || fatal.is_some() {
                break;
            }
            match self.store.heartbeat(&member).await {
                Ok(membership) => {
                    let share = membership.fair_share(count) as usize;
                    // Leases that are no longer ours.
                    let lost: Vec<u32> = running
                        .iter()
                        .filter(|(_, r)| !membership.held.contains(&r.lease))
                        .map(|(p, _)| *p)
                        .collect();
                    for p in lost {
                        if let Some(r) = running.remove(&p) {
                            warn!(projection = %name, partition = p, "lease lost; stopping its worker");
                            let _ = r.stop.send(true);
                            collect(&mut reports, &mut fatal, &name, r.handle.await);
                        }
                    }
                    // Leases held with no worker (a worker that ended): give them back.
                    let idle: Vec<Lease> = membership
                        .held
                        .iter()
                        .filter(|l| !running.contains_key(&l.partition))
                        .copied()
                        .collect();
                    if let Err(e) = self.store.release(&member, &idle).await {
                        warn!(projection = %name, error = %e, "cannot release leases");
                    }
                    if running.len() > share {
                        let extra: Vec<u32> = running
                            .keys()
                            .rev()
                            .take(running.len() - share)
                            .copied()
                            .collect();
                        let mut released = Vec::new();
                        for p in extra {
                            if let Some(r) = running.remove(&p) {
                                let _ = r.stop.send(true);
                                collect(&mut reports, &mut fatal, &name, r.handle.await);
                                released.push(r.lease);
                            }
                        }
                        info!(projection = %name, partitions = ?released.iter().map(|l| l.partition).collect::<Vec<_>>(), live_nodes = membership.live_nodes, "rebalancing: releasing partitions");
                        if let Err(e) = self.store.release(&member, &released).await {
                            warn!(projection = %name, error = %e, "cannot release leases; they expire instead");
                        }
                    } else if running.len() < share {
                        let want = (share - running.len()) as u32;
                        match self.store.acquire(&member, want).await {
                            Ok(got) => {
                                if whole && got.is_empty() && running.is_empty() && !standby_logged {
                                    info!(projection = %name, takeover = ?self.leases.takeover, "another process runs this projection; waiting as a standby, to take over when it stops or dies");
                                    standby_logged = true;
                                }
                                for lease in got {
                                    if whole {
                                        info!(projection = %name, token = lease.token, standby = standby_logged, "took the projection's lease; running it");
                                    } else {
                                        info!(projection = %name, partition = lease.partition, token = lease.token, "took partition");
                                    }
                                    if let Some(old) = running.insert(lease.partition, self.spawn(lease)) {
                                        let _ = old.stop.send(true);
                                        collect(&mut reports, &mut fatal, &name, old.handle.await);
                                    }
                                }
                            }
                            Err(e) if e.is_fatal() => {
                                fatal = Some(e);
                                break;
                            }
                            Err(e) => warn!(projection = %name, error = %e, "cannot acquire leases"),
                        }
                    }
                }
                Err(e) if e.is_fatal() => {
                    fatal = Some(e);
                    break;
                }
                Err(e) => {
                    warn!(projection = %name, error = %e, "heartbeat failed; leases expire if it keeps failing, and the fence refuses commits after a takeover");
                }
            }
            super::metrics::partitions_owned(&name, running.len());
            tokio::select! {
                _ = tokio::time::sleep(self.leases.heartbeat()) => {}
                _ = shutdown.changed() => {}
            }
        }

        for r in running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in std::mem::take(&mut running) {
            collect(&mut reports, &mut fatal, &name, r.handle.await);
        }
        if let Err(e) = self.store.leave(&member).await {
            warn!(projection = %name, error = %e, "cannot release leases on shutdown; they expire instead");
        }
        super::metrics::partitions_owned(&name, 0);
        info!(projection = %name, node = %self.node, "left the partition group");
        if let Some(e) = fatal {
            error!(projection = %name, error = %e, "the partition group stops: retrying cannot fix this error");
            return Err(e);
        }
        Ok(reports.into_values().collect())
    }
}

/// A started partition worker, as a group keeps it.
pub(crate) trait RunningWorker {
    fn handle(&mut self) -> &mut JoinHandle<Result<WorkerReport>>;
}

/// Collects the workers of `running` that ended on their own (their lease or their assignment
/// was lost, or they failed), with [`collect`].
pub(crate) async fn reap<R: RunningWorker>(
    running: &mut BTreeMap<u32, R>,
    reports: &mut BTreeMap<u32, WorkerReport>,
    fatal: &mut Option<Error>,
    name: &str,
) {
    let mut ended = Vec::new();
    for (p, r) in running.iter_mut() {
        if r.handle().is_finished() {
            ended.push(*p);
        }
    }
    for p in ended {
        if let Some(mut r) = running.remove(&p) {
            collect(reports, fatal, name, r.handle().await);
        }
    }
}

/// Records how a worker ended; a worker that ended on a fatal error (or panicked) leaves its
/// error in `fatal`, and the group stops.
pub(crate) fn collect(
    reports: &mut BTreeMap<u32, WorkerReport>,
    fatal: &mut Option<Error>,
    name: &str,
    joined: std::result::Result<Result<WorkerReport>, tokio::task::JoinError>,
) {
    let joined = joined.map_err(|e| Error::task("a partition worker", e));
    match joined.and_then(|r| r) {
        Ok(r) => {
            reports
                .entry(r.partition)
                .and_modify(|prev| {
                    prev.events += r.events;
                    prev.seconds += r.seconds;
                    prev.checkpoint = r.checkpoint;
                    prev.state = r.state;
                })
                .or_insert(r);
        }
        Err(e) if e.is_fatal() => {
            fatal.get_or_insert(e);
        }
        Err(e) => warn!(projection = name, error = %e, "a partition worker failed"),
    }
}

/// Creates `p`'s read model and the checkpoint of each of its partitions (just partition 0
/// when it is not partitioned), and returns partition 0's record.
pub(crate) async fn prepare_partitions<St: Store>(
    store: &St,
    p: &Projection<St::Body>,
) -> Result<ProjectionRecord> {
    let first = store.prepare(p.name(), 0, p.body().clone()).await?;
    for partition in 1..p.options().partitions.max(1) {
        store.prepare(p.name(), partition, p.body().clone()).await?;
    }
    Ok(first)
}

/// Refuses to run a partitioned projection on a source that cannot filter partitions, or
/// with checkpoints written under another partition count (its partitions would then hold
/// other streams: a rebuild is needed).
pub(crate) async fn check_partitioning<S: Source, St: Store>(
    source: &S,
    store: &St,
    p: &Projection<St::Body>,
) -> Result<()> {
    let count = p.options().partitions;
    if count <= 1 {
        return Ok(());
    }
    if !source.supports_partitions() {
        return Err(Error::Unsupported(format!(
            "projection {} has partitions = {count}, which needs a source that filters partitions \
             in the database (PostgreSQL); remove `partitions` or use PostgreSQL",
            p.name()
        )));
    }
    let records: Vec<ProjectionRecord> = store
        .records()
        .await?
        .into_iter()
        .filter(|r| r.name == p.name())
        .collect();
    let progressed = |r: &ProjectionRecord| r.checkpoint > Checkpoint::START;
    let beyond = records.iter().any(|r| r.partition >= count && progressed(r));
    let inside = records.iter().filter(|r| r.partition < count).count() as u32;
    let partial = inside < count && records.iter().any(progressed);
    if beyond || partial {
        return Err(Error::Config(format!(
            "projection {} has checkpoints for another partition count than {count}; its read model \
             was built with different partitions. Rebuild it: projectionist rebuild {}",
            p.name(),
            p.name()
        )));
    }
    Ok(())
}
