//! The reader of one partition for one projection: a consumer assigned (never subscribed) to
//! the partition at the projection's checkpoint, so the store's checkpoint, not the group's
//! offset, says where reading starts. A read after another checkpoint than where the last read
//! ended (a restart, another process's commit) re-assigns the consumer there.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::envelope::decode;
use super::error::{broker, config_error};
use crate::core::envelope::MALFORMED_TYPE;
use crate::core::error::Result;
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter};

/// How long a read waits for its first record.
const FIRST_WAIT: Duration = Duration::from_millis(200);
/// How long metadata requests wait.
pub(crate) const METADATA_WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Reader {
    pub topic: String,
    pub partition: i32,
    pub projection: String,
    pub accept_partial_history: bool,
    consumer: Option<BaseConsumer>,
    /// The offset the next record read will have.
    next: i64,
}

/// What one read returned, and what it dropped.
pub(crate) struct Read {
    pub batch: Batch,
    /// Records below the checkpoint, dropped.
    pub redelivered: u64,
    pub malformed: u64,
}

impl Reader {
    pub fn new(topic: String, partition: i32, projection: String, accept_partial_history: bool) -> Self {
        Reader {
            topic,
            partition,
            projection,
            accept_partial_history,
            consumer: None,
            next: -1,
        }
    }

    fn position(&mut self, config: &ClientConfig, after: Checkpoint) -> Result<()> {
        let what = format!("partition {}[{}]", self.topic, self.partition);
        if self.consumer.is_none() {
            let mut config = config.clone();
            config
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "error")
                .set("queued.max.messages.kbytes", "8192");
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| broker(format!("opening a reader of {what}"), e))?;
            self.consumer = Some(consumer);
        }
        let Some(consumer) = self.consumer.as_ref() else {
            return Ok(());
        };
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, self.partition, METADATA_WAIT)
            .map_err(|e| broker(format!("reading the watermarks of {what}"), e))?;
        let mut start = after.position;
        if start < low {
            if !self.accept_partial_history {
                return Err(config_error(format!(
                    "Kafka {what} starts at offset {low} (its low watermark): retention already dropped \
                     offsets {start}..{}, which projection {} has not applied, so its read model would \
                     miss them. Replay them from elsewhere, or accept a partial history with \
                     partial_history=accept in the source URL",
                    low - 1,
                    self.projection
                )));
            }
            start = low;
        }
        if start > high {
            return Err(config_error(format!(
                "projection {}'s checkpoint of Kafka {what} is offset {start}, beyond its end ({high}): \
                 the topic was deleted and created again? Rebuild the projection",
                self.projection
            )));
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(start))
            .map_err(|e| broker(format!("assigning {what}"), e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| broker(format!("assigning {what}"), e))?;
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
            let Some(polled) = consumer.poll(wait) else { break };
            wait = Duration::ZERO;
            let message = match polled {
                Ok(m) => m,
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
