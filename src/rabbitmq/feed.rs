//! One projection's feed: its queue's consumer, which numbers deliveries into the ledger that
//! reads turn into batches.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::protocol::AMQPSoftError;
use lapin::types::FieldTable;
use lapin::Channel;
use tracing::{debug, info, warn};

use super::envelope;
use super::ledger::Ledger;
use super::link::{broker, soft_error};
use super::{now_micros, RabbitError, Shared};

/// One projection's queue and its consumer.
pub(super) struct Feed {
    pub(super) name: Arc<str>,
    pub(super) queue: String,
    pub(super) subject: String,
    pub(super) state: Mutex<FeedState>,
    /// Serializes (re)starting the consumer.
    pub(super) starting: tokio::sync::Mutex<()>,
    /// Another consumer held the queue when this one tried to consume.
    pub(super) contended: AtomicBool,
    pub(super) delivered: AtomicU64,
    pub(super) redelivered: AtomicU64,
    pub(super) rejected: AtomicU64,
}

#[derive(Default)]
pub(super) struct FeedState {
    pub(super) ledger: Option<Ledger>,
    /// The channel of the ledger's current generation.
    pub(super) channel: Option<Channel>,
}

impl Feed {
    pub(super) fn lock(&self) -> MutexGuard<'_, FeedState> {
        // The state stays consistent across a panic elsewhere (every change is one step).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_live(&self) -> bool {
        let st = self.lock();
        st.ledger.as_ref().is_some_and(|l| l.generation != 0)
            && st.channel.as_ref().is_some_and(|c| c.status().connected())
    }
}

impl Shared {
    fn feeds(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn existing_feed(&self, name: &str) -> Option<Arc<Feed>> {
        self.feeds().get(name).cloned()
    }

    pub(super) fn feed(&self, name: &str) -> std::result::Result<Arc<Feed>, RabbitError> {
        if let Some(f) = self.existing_feed(name) {
            return Ok(f);
        }
        let queue = self.settings.queue(name)?;
        if !self.settings.projections().contains(name) {
            info!(
                projection = name,
                queue, "a projection not registered with the RabbitMQ source reads: its queue is declared now, and catch-ups count its waiting messages only from now on (register it with subject() or projection())"
            );
        }
        let mut feeds = self.feeds();
        let name: Arc<str> = Arc::from(name);
        Ok(feeds
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Feed {
                    subject: self.settings.subject(&name).to_owned(),
                    name,
                    queue,
                    state: Mutex::new(FeedState::default()),
                    starting: tokio::sync::Mutex::new(()),
                    contended: AtomicBool::new(false),
                    delivered: AtomicU64::new(0),
                    redelivered: AtomicU64::new(0),
                    rejected: AtomicU64::new(0),
                })
            })
            .clone())
    }

    /// The projections this source knows: registered ones and those that read.
    pub(super) fn known(&self) -> BTreeSet<String> {
        let mut names = self.settings.projections();
        names.extend(self.feeds().keys().map(|k| k.to_string()));
        names
    }

    /// Starts consuming the feed's queue on a new channel, unless a consumer is live.
    pub(super) async fn start(
        self: &Arc<Self>,
        feed: &Arc<Feed>,
        after: i64,
    ) -> std::result::Result<(), RabbitError> {
        let _one_at_a_time = feed.starting.lock().await;
        if feed.is_live() {
            return Ok(());
        }
        let channel = self.open_channel().await?;
        let channel = self.declare_queue(channel, feed).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker("setting the prefetch (basic.qos)"))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let tag = format!("projectionist.{}.{}.{generation}", feed.name, std::process::id());
        let exclusive = BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        };
        let consumer = match channel
            .basic_consume(&feed.queue, &tag, exclusive, FieldTable::default())
            .await
        {
            Ok(c) => c,
            Err(e)
                if matches!(
                    soft_error(&e),
                    Some(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED)
                ) =>
            {
                if !feed.contended.swap(true, Ordering::Relaxed) {
                    warn!(projection = %feed.name, queue = %feed.queue, "another consumer holds the queue; waiting for it to stop");
                }
                return Err(RabbitError::QueueInUse {
                    projection: feed.name.to_string(),
                    queue: feed.queue.clone(),
                });
            }
            Err(e) => return Err(broker(format!("consuming the queue {}", feed.queue))(e)),
        };
        // After another consumer held the queue, this reader's checkpoint may predate that
        // consumer's last commits: number above anything it can have committed.
        let contended = feed.contended.swap(false, Ordering::Relaxed);
        let base = if contended { now_micros() } else { self.anchor };
        {
            let mut st = feed.lock();
            let ledger = st.ledger.get_or_insert_with(|| Ledger::new(after, base));
            ledger.start(generation, if contended { base } else { 0 });
            st.channel = Some(channel.clone());
        }
        debug!(projection = %feed.name, queue = %feed.queue, generation, "consuming");
        let shared = self.clone();
        let feed = feed.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                let next = tokio::select! {
                    n = consumer.next() => n,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                match next {
                    Some(Ok(delivery)) => shared.deliver(&feed, generation, &channel, delivery).await,
                    Some(Err(e)) => {
                        warn!(projection = %feed.name, queue = %feed.queue, error = %e, "the consumer's channel closed; reconnecting, and the broker redelivers what was not acknowledged");
                        break;
                    }
                    None => {
                        warn!(projection = %feed.name, queue = %feed.queue, "the broker cancelled the consumer (was the queue deleted?); consuming again");
                        break;
                    }
                }
            }
            let dropped = {
                let mut st = feed.lock();
                let n = st.ledger.as_mut().map_or(0, |l| l.lost(generation));
                if st.ledger.as_ref().is_some_and(|l| l.generation == 0) {
                    st.channel = None;
                }
                n
            };
            if dropped > 0 {
                debug!(projection = %feed.name, dropped, "forgot the deliveries of a closed channel");
            }
            shared.bump();
        });
        Ok(())
    }

    /// Takes one delivery: numbers and keeps an event, or rejects a malformed message.
    async fn deliver(&self, feed: &Feed, generation: u64, channel: &Channel, d: lapin::message::Delivery) {
        let message_id = d.properties.message_id().as_ref().map(|m| m.as_str());
        match envelope::decode(&d.data, message_id, *d.properties.timestamp()) {
            Ok(event) => {
                let kept = feed
                    .lock()
                    .ledger
                    .as_mut()
                    .is_some_and(|l| l.push(generation, d.delivery_tag, event));
                if kept {
                    feed.delivered.fetch_add(1, Ordering::Relaxed);
                    if d.redelivered {
                        feed.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    self.bump();
                }
            }
            Err(envelope::Malformed(why)) => {
                feed.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("projectionist_rabbitmq_rejected_total", "projection" => feed.name.to_string())
                    .increment(1);
                warn!(
                    projection = %feed.name,
                    queue = %feed.queue,
                    routing_key = %d.routing_key.as_str(),
                    message_id = message_id.unwrap_or(""),
                    reason = %why,
                    "rejecting a malformed message: it goes to the queue's dead-letter exchange if one is configured, else the broker drops it"
                );
                let reject = BasicRejectOptions { requeue: false };
                if let Err(e) = channel.basic_reject(d.delivery_tag, reject).await {
                    warn!(projection = %feed.name, error = %e, "rejecting failed; the broker redelivers the message to the next consumer");
                }
            }
        }
    }

    /// When the feed has nothing after `after`, and its queue is empty, moves it past the
    /// positions the last head counted but no message filled: returns the new checkpoint.
    pub(super) async fn skip_drained(
        &self,
        feed: &Feed,
        after: i64,
    ) -> std::result::Result<Option<i64>, RabbitError> {
        let reserved = self.reserved.load(Ordering::Relaxed);
        if reserved <= after {
            return Ok(None);
        }
        if self.ready(&feed.queue).await?.unwrap_or(0) > 0 {
            return Ok(None);
        }
        let mut st = feed.lock();
        let Some(ledger) = st.ledger.as_mut() else {
            return Ok(None);
        };
        if ledger.pending_after(after) > 0 || after < ledger.floor {
            return Ok(None);
        }
        ledger.skip_to(reserved);
        Ok(Some(reserved))
    }
}
