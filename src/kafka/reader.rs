//! The reader of one partition for one projection: a consumer assigned (never subscribed) to
//! the partition at the projection's checkpoint, so the store's checkpoint, not the group's
//! offset, says where reading starts. A read after another checkpoint than where the last read
//! ended (a restart, another process's commit) re-assigns the consumer there.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::ClientConfig;

use super::envelope::decode;
use super::error::{broker, truncated};
use super::watermark::{assign, Quiet, METADATA_WAIT, SETTLE};
use crate::core::envelope::MALFORMED_TYPE;
use crate::core::error::Result;
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter};

/// How long a read waits for its first record.
const FIRST_WAIT: Duration = Duration::from_millis(200);

/// The records a reader prefetches, at most (KiB): many batches ahead of the runner, and a
/// bound on memory, since a rebuild keeps a reader per partition (librdkafka's default is
/// 64 MiB each). A URL's `queued.max.messages.kbytes` overrides it (2048 measured 3–10% less
/// peak memory in the Kafka bench, and no faster; see BENCHMARKS.md).
const PREFETCH_KIB: &str = "8192";

pub(crate) struct Reader {
    pub topic: String,
    pub partition: i32,
    pub projection: String,
    /// The projection's consumer group: librdkafka needs one, though an assigned consumer
    /// never joins it.
    pub group: String,
    pub accept_partial_history: bool,
    consumer: Option<BaseConsumer<Quiet>>,
    /// The offset the next record read will have.
    next: i64,
    /// A record read while positioning, not yet returned.
    pending: Option<OwnedMessage>,
}

/// What one read returned, and what it dropped.
pub(crate) struct Read {
    pub batch: Batch,
    /// Records below the checkpoint, dropped.
    pub redelivered: u64,
    pub malformed: u64,
}

impl Reader {
    pub fn new(
        topic: String,
        partition: i32,
        projection: String,
        group: String,
        accept_partial_history: bool,
    ) -> Self {
        Reader {
            topic,
            partition,
            projection,
            group,
            accept_partial_history,
            consumer: None,
            next: -1,
            pending: None,
        }
    }

    fn position(&mut self, config: &ClientConfig, after: Checkpoint) -> Result<()> {
        let what = format!("partition {}[{}]", self.topic, self.partition);
        if self.consumer.is_none() {
            let mut config = config.clone();
            if config.get("queued.max.messages.kbytes").is_none() {
                config.set("queued.max.messages.kbytes", PREFETCH_KIB);
            }
            config
                .set("group.id", &self.group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "error")
                .set("enable.partition.eof", "true");
            let consumer: BaseConsumer<Quiet> = config
                .create_with_context(Quiet)
                .map_err(|e| broker(format!("opening a reader of {what}"), e))?;
            self.consumer = Some(consumer);
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(());
        };
        let (low, _) = consumer
            .fetch_watermarks(&self.topic, self.partition, METADATA_WAIT)
            .map_err(|e| broker(format!("reading the watermarks of {what}"), e))?;
        let mut start = after.position;
        if start < low {
            if !self.accept_partial_history {
                return Err(truncated(&what, low, start, &self.projection));
            }
            start = low;
        }
        assign(consumer, &self.topic, self.partition, start)?;
        self.pending = None;
        // A record, or the partition's end, comes at once. A broker that fetches only from
        // the start of a record batch (tansu) stays silent instead: read from the partition's
        // start then, dropping what lies below the checkpoint.
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            match consumer.poll(Duration::from_millis(50)) {
                // The first record is the one asked for (or one below it, of its batch).
                Some(Ok(m)) if m.offset() <= start => {
                    self.pending = Some(m.detach());
                    break;
                }
                // A record past it: the broker skipped to the next batch (tansu does), or
                // compaction removed the one asked for. Read from the start to be sure.
                Some(Ok(_)) => {
                    assign(consumer, &self.topic, self.partition, low)?;
                    break;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(broker(format!("reading {what}"), e)),
                None if std::time::Instant::now() >= deadline => {
                    assign(consumer, &self.topic, self.partition, low)?;
                    break;
                }
                None => {}
            }
        }
        self.next = start;
        Ok(())
    }

    /// Reads up to `limit` records after `after` (blocking: run it off the async threads).
    pub fn read(
        &mut self,
        config: &ClientConfig,
        after: Checkpoint,
        limit: usize,
        filter: &Filter,
    ) -> Result<Read> {
        if self.consumer.is_none() || self.next != after.position {
            self.position(config, after)?;
        }
        let mut out = Read {
            batch: Batch {
                scanned_to: after,
                ..Batch::default()
            },
            redelivered: 0,
            malformed: 0,
        };
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(out);
        };
        let mut wait = FIRST_WAIT;
        while out.batch.events.len() < limit {
            let polled = match self.pending.take() {
                Some(m) => Ok(m),
                None => match consumer.poll(wait) {
                    None => break,
                    Some(r) => r.map(|m| m.detach()),
                },
            };
            wait = Duration::ZERO;
            let message = match polled {
                Ok(m) => m,
                // At the partition's end.
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(e) if out.batch.events.is_empty() && out.batch.ignored == 0 => {
                    self.next = -1;
                    return Err(broker(
                        format!("reading partition {}[{}]", self.topic, self.partition),
                        e,
                    ));
                }
                // What was read so far is good; the error shows again at the next read.
                Err(_) => break,
            };
            let offset = message.offset();
            if offset < self.next {
                out.redelivered += 1;
                continue;
            }
            self.next = offset + 1;
            out.batch.scanned_to = Checkpoint::at(offset + 1);
            let event = decode(&message, &self.topic, self.partition);
            if event.event_type == MALFORMED_TYPE {
                out.malformed += 1;
                out.batch.events.push(event);
            } else if filter.admits(&event.event_type) {
                out.batch.events.push(event);
            } else {
                out.batch.ignored += 1;
            }
        }
        Ok(out)
    }
}
