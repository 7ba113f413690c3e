//! One projection's reader: its durable pull consumer, the background task that pulls from it,
//! and the buffer of messages delivered but not yet acknowledged.
//!
//! The invariant that makes reads exact: every message of the consumer's filter with a stream
//! sequence above `floor` was either never delivered yet, or was delivered to this reader and
//! sits in `buffer`. Everything at or below `floor` is committed (the runner's checkpoint, which
//! it only moves by committing) and acknowledged. A read after a checkpoint at or above `floor`
//! is then served from the buffer and the consumer; anything that breaks the invariant (the
//! checkpoint moved back, a delivery went missing, the consumer vanished, the durable consumer
//! of an earlier run had unacknowledged messages) recreates the consumer at the checkpoint.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::{self, consumer};
use async_nats::Subject;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::envelope;
use super::{broker, METRIC_MALFORMED};
use crate::core::error::Result;
use crate::core::event::{Checkpoint, Event};
use crate::core::source::{Batch, Filter};

/// The longest a pull request waits on the server for messages (a long poll).
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The most messages one pull request asks for.
const MAX_PULL: usize = 10_000;
/// The most messages buffered ahead of the batch being applied.
const MAX_PREFETCH: usize = 10_000;

/// What the source shares with its readers and their pull tasks.
pub(super) struct Env {
    pub client: async_nats::Client,
    pub stream: jetstream::stream::Stream,
    pub stream_name: String,
    pub changes: watch::Sender<u64>,
    pub malformed: AtomicU64,
    pub ack_wait: Duration,
    pub max_ack_pending: i64,
}

impl Env {
    async fn ack(&self, reply: Option<Subject>) -> Result<()> {
        if let Some(reply) = reply {
            // AckPolicy::All: this acknowledges every message up to this one.
            self.client.publish(reply, "+ACK".into()).await.map_err(|e| {
                broker(
                    format!("acknowledging messages of stream {} failed", self.stream_name),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// The stream's last sequence now.
    pub async fn last_sequence(&self) -> Result<u64> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| broker(format!("reading the info of stream {}", self.stream_name), e))?;
        Ok(info.state.last_sequence)
    }
}

/// A message delivered and not yet acknowledged.
struct Delivered {
    /// Where to acknowledge it.
    reply: Option<Subject>,
    /// The event, or why its envelope is malformed.
    item: std::result::Result<Event, String>,
}

struct Shared {
    /// Bumped when the consumer is recreated; an older pull task stops touching the state.
    generation: u64,
    /// Delivered, unacknowledged messages above `floor`, by stream sequence.
    buffer: BTreeMap<u64, Delivered>,
    /// Committed and acknowledged through this stream sequence.
    floor: u64,
    /// The last consumer (delivery) sequence received: deliveries are numbered 1, 2, 3, …
    /// (redeliveries included), so a jump means a delivery went missing.
    last_delivery: u64,
    /// How many messages to keep buffered (about two batches).
    capacity: usize,
    /// A pull request is outstanding.
    pulling: bool,
    /// Why the invariant no longer holds, if it does not: the next read recreates the consumer.
    broken: Option<String>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) struct Reader {
    projection: Arc<str>,
    consumer: String,
    subject: Option<String>,
    attached: bool,
    shared: Arc<Mutex<Shared>>,
    room: Arc<Notify>,
    task: Option<JoinHandle<()>>,
    /// The stream's last sequence was below the checkpoint (warned once).
    warned_behind: bool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Reader {
    pub fn new(projection: Arc<str>, consumer: String, subject: Option<String>) -> Self {
        Reader {
            projection,
            consumer,
            subject,
            attached: false,
            shared: Arc::new(Mutex::new(Shared {
                generation: 0,
                buffer: BTreeMap::new(),
                floor: 0,
                last_delivery: 0,
                capacity: 1,
                pulling: false,
                broken: None,
            })),
            room: Arc::new(Notify::new()),
            task: None,
            warned_behind: false,
        }
    }

    /// The consumer configuration this reader wants, delivering from `start`.
    fn config(&self, env: &Env, start: u64) -> pull::Config {
        pull::Config {
            durable_name: Some(self.consumer.clone()),
            description: Some(format!("projectionist: projection {}", self.projection)),
            deliver_policy: if start <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                }
            },
            ack_policy: AckPolicy::All,
            ack_wait: env.ack_wait,
            // Never give up on a message: a message past max_deliver would be lost.
            max_deliver: -1,
            filter_subject: self.subject.clone().unwrap_or_default(),
            max_ack_pending: env.max_ack_pending,
            ..Default::default()
        }
    }

    /// Why the existing durable consumer cannot serve a read after `after`, if it cannot.
    fn unfit(&self, env: &Env, info: &consumer::Info, after: u64) -> Option<String> {
        let c = &info.config;
        let want = self.config(env, after + 1);
        if c.deliver_subject.is_some() {
            return Some("it is a push consumer".into());
        }
        if c.ack_policy != AckPolicy::All {
            return Some(format!("its ack policy is {:?}, not all", c.ack_policy));
        }
        if c.filter_subject != want.filter_subject || !c.filter_subjects.is_empty() {
            return Some(format!(
                "its subject filter is {:?}, and the projection's is {:?}",
                c.filter_subject, want.filter_subject
            ));
        }
        if c.max_deliver > 0 || c.ack_wait != want.ack_wait || c.max_ack_pending != want.max_ack_pending {
            return Some("its settings differ from this source's".into());
        }
        if info.num_ack_pending > 0 {
            return Some(format!(
                "{} message(s) delivered to an earlier run were not acknowledged (that run stopped before committing them)",
                info.num_ack_pending
            ));
        }
        if info.delivered.stream_sequence > after {
            return Some(format!(
                "it delivered through stream sequence {}, past the checkpoint {after}",
                info.delivered.stream_sequence
            ));
        }
        None
    }

    /// Makes the consumer able to serve a read after `after`: attaches to the durable
    /// consumer on the first read, and recreates it when the invariant does not hold.
    pub async fn ensure(&mut self, env: &Arc<Env>, after: u64, limit: usize) -> Result<()> {
        let capacity = capacity_for(limit, env.max_ack_pending);
        if !self.attached {
            return match env.stream.consumer_info(&self.consumer).await {
                Ok(info) => match self.unfit(env, &info, after) {
                    Some(why) => self.recreate(env, after, capacity, &why).await,
                    None => {
                        debug!(projection = %self.projection, consumer = %self.consumer, checkpoint = after, "resuming the durable consumer");
                        let consumer = PullConsumer::new(
                            self.config(env, after + 1),
                            info.clone(),
                            env.stream_context(),
                        );
                        self.start(env, consumer, after, info.delivered.consumer_sequence, capacity);
                        Ok(())
                    }
                },
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                    self.recreate(env, after, capacity, "it does not exist yet").await
                }
                Err(e) => Err(broker(
                    format!(
                        "reading the info of consumer {} on stream {}",
                        self.consumer, env.stream_name
                    ),
                    e,
                )),
            };
        }
        let why = {
            let mut s = lock(&self.shared);
            s.capacity = capacity;
            if let Some(why) = &s.broken {
                // Kept until the recreation succeeds (`start` clears it), so that a failed one
                // is tried again at the next read.
                Some(why.clone())
            } else if after < s.floor {
                Some(format!(
                    "the checkpoint moved back to {after}, below the acknowledged {} (a rebuild, or another runner's commit)",
                    s.floor
                ))
            } else {
                None
            }
        };
        self.room.notify_one();
        match why {
            Some(why) => self.recreate(env, after, capacity, &why).await,
            None => Ok(()),
        }
    }

    /// Deletes the durable consumer and creates it again to deliver from `after + 1`.
    async fn recreate(&mut self, env: &Arc<Env>, after: u64, capacity: usize, why: &str) -> Result<()> {
        self.stop();
        // Until `start` succeeds, the buffer serves nothing: a failure here is retried.
        lock(&self.shared).broken.get_or_insert_with(|| why.to_owned());
        if self.attached || why != "it does not exist yet" {
            info!(projection = %self.projection, consumer = %self.consumer, checkpoint = after, reason = why, "recreating the durable consumer to deliver from the checkpoint on");
        }
        // Not found is fine; any other failure shows up as the create's error.
        if let Err(e) = env.stream.delete_consumer(&self.consumer).await {
            debug!(consumer = %self.consumer, error = %e, "deleting the consumer");
        }
        let first = env
            .stream
            .get_info()
            .await
            .map_err(|e| broker(format!("reading the info of stream {}", env.stream_name), e))?
            .state
            .first_sequence;
        if after + 1 < first {
            warn!(
                projection = %self.projection,
                checkpoint = after,
                first_sequence = first,
                stream = %env.stream_name,
                "the stream no longer holds the messages after the checkpoint up to its first sequence (its limits or retention removed them); they are skipped"
            );
        }
        let consumer = env
            .stream
            .create_consumer(self.config(env, after + 1))
            .await
            .map_err(|e| {
                broker(
                    format!(
                        "creating the durable consumer {} on stream {}",
                        self.consumer, env.stream_name
                    ),
                    e,
                )
            })?;
        self.start(env, consumer, after, 0, capacity);
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Resets the state for `consumer`, which delivers after `after` and has made
    /// `last_delivery` deliveries so far, and starts pulling from it.
    fn start(
        &mut self,
        env: &Arc<Env>,
        consumer: PullConsumer,
        after: u64,
        last_delivery: u64,
        capacity: usize,
    ) {
        self.stop();
        let generation = {
            let mut s = lock(&self.shared);
            s.generation += 1;
            s.buffer.clear();
            s.floor = after;
            s.last_delivery = last_delivery;
            s.capacity = capacity;
            s.pulling = false;
            s.broken = None;
            s.generation
        };
        self.attached = true;
        self.task = Some(tokio::spawn(pull_loop(
            env.clone(),
            consumer,
            self.shared.clone(),
            self.room.clone(),
            generation,
            self.projection.clone(),
        )));
    }

    /// Reads up to `limit` messages after `after` (see the module's invariant).
    pub async fn read(&mut self, env: &Arc<Env>, after: u64, limit: usize, filter: &Filter) -> Result<Batch> {
        let mut batch = Batch::default();
        let (stale, generation) = {
            let mut s = lock(&self.shared);
            let stale = forget_through(&mut s, after);
            let mut scanned = after;
            let mut malformed = 0u64;
            for (seq, d) in s.buffer.range(after + 1..).take(limit.max(1)) {
                match &d.item {
                    Ok(event) if filter.admits(&event.event_type) => batch.events.push(event.clone()),
                    Ok(_) => batch.ignored += 1,
                    Err(_) => {
                        batch.ignored += 1;
                        malformed += 1;
                    }
                }
                scanned = *seq;
            }
            if malformed > 0 {
                debug!(projection = %self.projection, malformed, "malformed envelopes in this batch are passed over");
            }
            batch.scanned_to = Checkpoint::at(scanned as i64);
            (stale, s.generation)
        };
        self.room.notify_one();
        env.ack(stale).await?;
        if batch.scanned_to.position as u64 > after {
            return Ok(batch);
        }
        batch.scanned_to = Checkpoint::at(after as i64);

        // Nothing buffered after the checkpoint: the projection may be at the head. The stream's
        // last sequence is read BEFORE the consumer's info. If the consumer then has nothing
        // pending and this reader has received every delivery the consumer counts, every
        // message of the filter stored up to that last sequence (all stored before the info
        // was taken) has been delivered here, and none is above the checkpoint: the messages
        // between the checkpoint and that sequence are all outside the filter, so the
        // checkpoint may move over them. Read in the other order, a message stored between
        // the two reads would be counted in the last sequence without being delivered, and
        // skipped. Without this, a catch-up whose filter excludes the stream's last messages
        // would never reach the head.
        let last = env.last_sequence().await?;
        let info = match env.stream.consumer_info(&self.consumer).await {
            Ok(info) => info,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                lock(&self.shared)
                    .broken
                    .get_or_insert_with(|| "the consumer was deleted".into());
                return Ok(batch);
            }
            Err(e) => {
                return Err(broker(
                    format!(
                        "reading the info of consumer {} on stream {}",
                        self.consumer, env.stream_name
                    ),
                    e,
                ))
            }
        };
        let mut s = lock(&self.shared);
        if s.generation != generation || s.broken.is_some() || s.buffer.range(after + 1..).next().is_some() {
            // Something arrived meanwhile (and the pull task ticked the runner).
            return Ok(batch);
        }
        let delivered = info.delivered.consumer_sequence;
        if delivered > s.last_delivery {
            if !s.pulling {
                // No pull request is outstanding, so none can still bring these deliveries:
                // they were lost on the way (a connection drop mid-batch).
                let why = format!("deliveries {}..={delivered} never arrived", s.last_delivery + 1);
                s.broken.get_or_insert(why);
            }
            return Ok(batch);
        }
        if info.num_pending == 0 {
            if last > after {
                batch.scanned_to = Checkpoint::at(last as i64);
            } else if last < after && !self.warned_behind {
                self.warned_behind = true;
                warn!(
                    projection = %self.projection,
                    checkpoint = after,
                    last_sequence = last,
                    stream = %env.stream_name,
                    "the stream's last sequence is below the checkpoint: was the stream purged or recreated? rebuild the projection to read it again"
                );
            }
        }
        Ok(batch)
    }

    /// Everything through `through` is committed: acknowledge it and forget it.
    pub async fn acknowledge(&self, env: &Env, through: u64) -> Result<()> {
        let reply = {
            let mut s = lock(&self.shared);
            forget_through(&mut s, through)
        };
        self.room.notify_one();
        env.ack(reply).await
    }
}

/// Moves the floor to `through` and drops the buffered messages up to it; returns the reply
/// subject of the last one, whose acknowledgement covers them all.
fn forget_through(s: &mut Shared, through: u64) -> Option<Subject> {
    if through <= s.floor {
        return None;
    }
    s.floor = through;
    let keep = s.buffer.split_off(&(through + 1));
    let done = std::mem::replace(&mut s.buffer, keep);
    done.into_values().next_back().and_then(|d| d.reply)
}

/// About two batches: the one being applied and the next, pulled meanwhile.
fn capacity_for(limit: usize, max_ack_pending: i64) -> usize {
    let limit = limit.max(1);
    let capacity = limit.saturating_add(limit.min(MAX_PREFETCH));
    match usize::try_from(max_ack_pending) {
        Ok(max) if max > 0 => capacity.min(max),
        _ => capacity,
    }
}

impl Env {
    fn stream_context(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }
}

/// Pulls from `consumer` while the buffer has room, until the consumer is replaced or the
/// invariant breaks.
async fn pull_loop(
    env: Arc<Env>,
    consumer: PullConsumer,
    shared: Arc<Mutex<Shared>>,
    room: Arc<Notify>,
    generation: u64,
    projection: Arc<str>,
) {
    loop {
        let want = {
            let mut s = lock(&shared);
            if s.generation != generation || s.broken.is_some() {
                return;
            }
            let want = s.capacity.saturating_sub(s.buffer.len()).min(MAX_PULL);
            s.pulling = want > 0;
            want
        };
        if want == 0 {
            // A missed notification only delays the next pull.
            let _ = tokio::time::timeout(Duration::from_millis(500), room.notified()).await;
            continue;
        }
        let outcome = pull_once(&env, &consumer, &shared, generation, &projection, want).await;
        let mut s = lock(&shared);
        if s.generation != generation {
            return;
        }
        s.pulling = false;
        if let Err(why) = outcome {
            warn!(projection = %projection, reason = %why, "pulling from the consumer failed; the next read recreates it at the checkpoint");
            s.broken.get_or_insert(why);
            return;
        }
    }
}

async fn pull_once(
    env: &Env,
    consumer: &PullConsumer,
    shared: &Mutex<Shared>,
    generation: u64,
    projection: &str,
    want: usize,
) -> std::result::Result<(), String> {
    let mut messages = consumer
        .batch()
        .max_messages(want)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| format!("requesting messages failed: {e}"))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| format!("pulling messages failed: {e}"))?;
        let (sequence, delivery, published) = match message.info() {
            Ok(i) => (i.stream_sequence, i.consumer_sequence, i.published),
            Err(e) => return Err(format!("a delivered message has no JetStream metadata: {e}")),
        };
        let published = i64::try_from(published.unix_timestamp_nanos())
            .map(DateTime::from_timestamp_nanos)
            .unwrap_or_else(|_| Utc::now());
        let item = envelope::decode(&message.payload, &env.stream_name, sequence, published);
        let reply = message.message.reply.clone();
        let stale_ack = {
            let mut s = lock(shared);
            if s.generation != generation {
                return Ok(());
            }
            if delivery <= s.last_delivery {
                // The same delivery twice: nothing new.
                continue;
            }
            if delivery != s.last_delivery + 1 {
                return Err(format!(
                    "deliveries {}..{delivery} never arrived",
                    s.last_delivery + 1
                ));
            }
            s.last_delivery = delivery;
            if sequence <= s.floor {
                // A redelivery of committed work: acknowledge it again and drop it.
                crate::core::metrics::redelivered(projection, 0, 1);
                reply
            } else if let Some(d) = s.buffer.get_mut(&sequence) {
                // Redelivered after the ack wait while still buffered: keep one.
                d.reply = reply;
                None
            } else {
                if let Err(why) = &item {
                    env.malformed.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(METRIC_MALFORMED, "projection" => projection.to_owned()).increment(1);
                    warn!(
                        projection,
                        stream = %env.stream_name,
                        sequence,
                        subject = %message.subject,
                        reason = %why,
                        "malformed event envelope: passed over (counted as ignored) and acknowledged with its batch"
                    );
                }
                s.buffer.insert(sequence, Delivered { reply, item });
                None
            }
        };
        if stale_ack.is_some() {
            env.ack(stale_ack).await.map_err(|e| e.to_string())?;
        } else {
            env.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
    Ok(())
}
