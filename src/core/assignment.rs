//! A projection whose partitions the broker assigns (a Kafka consumer group), in one `run`
//! process: it joins the source's group and runs one worker per partition the group gives this
//! process, starting and stopping workers at every rebalance.
//!
//! No lease guards these workers: each commit is a compare-and-set on its partition's
//! checkpoint. A process that lost a partition and still commits a batch it read before the
//! rebalance either commits first (and the new owner, whose commit then fails, re-reads from
//! that checkpoint) or fails (and stops). Either way no event is applied twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use super::coordinator::{check_partitioning, collect, prepare_partitions, reap, RunningWorker};
use super::error::{Error, Result};
use super::projection::Projection;
use super::runner::{Mode, RunnerSettings, Worker, WorkerReport};
use super::scheduler::Scheduler;
use super::source::{Filter, Source};
use super::store::Store;

struct Running {
    stop: watch::Sender<bool>,
    handle: JoinHandle<Result<WorkerReport>>,
}

impl RunningWorker for Running {
    fn handle(&mut self) -> &mut JoinHandle<Result<WorkerReport>> {
        &mut self.handle
    }
}

pub(crate) struct BrokerGroup<S: Source, St: Store> {
    pub source: Arc<S>,
    pub store: Arc<St>,
    pub projection: Projection<St::Body>,
    pub settings: RunnerSettings,
    pub scheduler: Scheduler,
}

impl<S: Source, St: Store> BrokerGroup<S, St> {
    fn spawn(&self, partition: u32) -> Running {
        let (stop, stop_rx) = watch::channel(false);
        let worker = Worker::new(
            self.source.clone(),
            self.store.clone(),
            self.projection.clone(),
            partition,
            self.settings.clone(),
            Mode::Live,
            self.scheduler.clone(),
        )
        .partitioned(self.projection.options().partitions.max(1), None);
        Running {
            stop,
            handle: tokio::spawn(worker.run(stop_rx)),
        }
    }

    /// Runs until `shutdown`; returns one report per partition this process ran.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<Vec<WorkerReport>> {
        let name = self.projection.name().to_owned();
        check_partitioning(self.source.as_ref(), self.store.as_ref(), &self.projection).await?;
        prepare_partitions(self.store.as_ref(), &self.projection).await?;
        let filter = Filter::types(self.projection.event_types()).for_projection(self.projection.name_arc());
        let mut assigned = self.source.join(&filter).await?;
        info!(projection = %name, partitions = self.projection.options().partitions, "joined the broker's consumer group");
        let mut running: BTreeMap<u32, Running> = BTreeMap::new();
        let mut reports: BTreeMap<u32, WorkerReport> = BTreeMap::new();
        let mut fatal: Option<Error> = None;
        loop {
            reap(&mut running, &mut reports, &mut fatal, &name).await;
            if *shutdown.borrow() || fatal.is_some() {
                break;
            }
            let want: Vec<u32> = assigned.borrow_and_update().clone();
            let revoked: Vec<u32> = running.keys().filter(|p| !want.contains(p)).copied().collect();
            if !revoked.is_empty() {
                info!(projection = %name, partitions = ?revoked, "partitions revoked by the group; stopping their workers");
            }
            for p in revoked {
                if let Some(r) = running.remove(&p) {
                    let _ = r.stop.send(true);
                    collect(&mut reports, &mut fatal, &name, r.handle.await);
                }
            }
            let new: Vec<u32> = want
                .iter()
                .filter(|p| !running.contains_key(p))
                .copied()
                .collect();
            if !new.is_empty() {
                info!(projection = %name, partitions = ?new, "partitions assigned by the group; starting their workers");
            }
            for p in new {
                running.insert(p, self.spawn(p));
            }
            super::metrics::partitions_owned(&name, running.len());
            tokio::select! {
                changed = assigned.changed() => {
                    if changed.is_err() {
                        fatal = Some(Error::Internal(format!("the consumer group of projection {name} ended")));
                    }
                }
                _ = shutdown.changed() => {}
                // Notice workers that ended on their own.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        for r in running.values() {
            let _ = r.stop.send(true);
        }
        for (_, r) in std::mem::take(&mut running) {
            collect(&mut reports, &mut fatal, &name, r.handle.await);
        }
        self.source.leave(&filter).await;
        super::metrics::partitions_owned(&name, 0);
        info!(projection = %name, "left the broker's consumer group");
        if let Some(e) = fatal {
            error!(projection = %name, error = %e, "the projection stops: retrying cannot fix this error");
            return Err(e);
        }
        Ok(reports.into_values().collect())
    }
}
