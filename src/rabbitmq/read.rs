//! Reading: the [`Source`] over the feeds, acknowledgements after each commit.

use std::sync::atomic::Ordering;

use lapin::options::BasicAckOptions;
use tokio::sync::watch;
use tracing::warn;

use super::ledger;
use super::link::broker;
use super::{RabbitError, RabbitSource};
use crate::core::error::Result;
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, Source};

impl Source for RabbitSource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let name = filter.projection.as_deref().ok_or(RabbitError::NoProjection)?;
        if filter.partition.is_some() {
            return Err(RabbitError::Partitioned {
                projection: name.to_owned(),
            }
            .into());
        }
        let feed = self.shared.feed(name)?;
        if !feed.is_live() {
            self.shared.start(&feed, after.position).await?;
        }
        let read = feed
            .lock()
            .ledger
            .as_mut()
            .map(|l| l.read(after.position, limit, filter));
        let batch = match read {
            Some(Ok(batch)) => batch,
            Some(Err(ledger::NoReplay { acknowledged })) => {
                return Err(RabbitError::NoReplay {
                    projection: name.to_owned(),
                    queue: feed.queue.clone(),
                    after: after.position,
                    acknowledged,
                }
                .into())
            }
            None => Batch {
                scanned_to: after,
                deduplicate: true,
                ..Batch::default()
            },
        };
        if batch.scanned_to.position <= after.position {
            if let Some(to) = self.shared.skip_drained(&feed, after.position).await? {
                return Ok(Batch {
                    scanned_to: Checkpoint::at(to),
                    deduplicate: true,
                    ..Batch::default()
                });
            }
        }
        Ok(batch)
    }

    /// The largest of, per known projection, its last position plus the messages ready in its
    /// queue (the anchor stands for the last position before a projection's first read). A
    /// catch-up runs to it: each projection reaches it by consuming what was ready, or, once
    /// its queue is drained, by skipping the positions no message filled.
    async fn head(&self) -> Result<Checkpoint> {
        let shared = &self.shared;
        let mut head = shared.reserved.load(Ordering::Relaxed).max(shared.anchor);
        for name in shared.known() {
            let queue = shared.settings.queue(&name)?;
            let ready = i64::from(shared.ready(&queue).await?.unwrap_or(0));
            let last = shared
                .existing_feed(&name)
                .and_then(|f| f.lock().ledger.as_ref().map(|l| l.last))
                .unwrap_or(shared.anchor);
            head = head.max(last + ready);
        }
        shared.reserved.fetch_max(head, Ordering::Relaxed);
        Ok(Checkpoint::at(head))
    }

    /// The largest backlog among the known projections: messages ready in the queue, plus
    /// deliveries held after `after`. (The Source API does not say which projection asks; with
    /// one projection per source it is exact.)
    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let shared = &self.shared;
        let mut lag = Lag::default();
        for name in shared.known() {
            let queue = shared.settings.queue(&name)?;
            let ready = u64::from(shared.ready(&queue).await?.unwrap_or(0));
            let (held, oldest) = match shared.existing_feed(&name) {
                Some(f) => {
                    let st = f.lock();
                    match st.ledger.as_ref() {
                        Some(l) => {
                            let start = l.entries.partition_point(|e| e.event.position <= after.position);
                            let oldest = l.entries.get(start).map(|e| e.event.recorded_at);
                            ((l.entries.len() - start) as u64, oldest)
                        }
                        None => (0, None),
                    }
                }
                None => (0, None),
            };
            if ready + held > lag.events {
                lag = Lag {
                    events: ready + held,
                    oldest,
                };
            }
        }
        Ok(lag)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// The broker deletes what was acknowledged: a queue cannot replay.
    fn can_replay(&self) -> bool {
        false
    }

    async fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> Result<()> {
        let Some(name) = filter.projection.as_deref() else {
            return Ok(());
        };
        let Some(feed) = self.shared.existing_feed(name) else {
            return Ok(());
        };
        let (plan, channel) = {
            let mut st = feed.lock();
            let plan = st.ledger.as_mut().map(|l| l.acknowledge(through.position));
            (plan, st.channel.clone())
        };
        let (generation, tag) = match plan {
            None | Some(Ok(None)) => return Ok(()),
            Some(Err(())) => {
                warn!(projection = name, checkpoint = %through, "the checkpoint moved beyond anything this source delivered: another runner committed this projection; acknowledging nothing");
                return Ok(());
            }
            Some(Ok(Some(t))) => t,
        };
        let Some(channel) = channel else {
            return Ok(());
        };
        let multiple = BasicAckOptions { multiple: true };
        if let Err(e) = channel.basic_ack(tag, multiple).await {
            // Close the channel rather than keep it with messages nobody will acknowledge:
            // the broker redelivers them, and they are dropped as already applied.
            let _ = channel.close(200, "acknowledgement failed").await;
            feed.lock().ledger.as_mut().map(|l| l.lost(generation));
            self.shared.bump();
            return Err(broker(format!("acknowledging messages of the queue {}", feed.queue))(e).into());
        }
        Ok(())
    }
}
