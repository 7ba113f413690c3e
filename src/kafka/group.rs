//! A projection's membership of its consumer group: which partitions the broker gives this
//! process. The member never reads records (its partitions are paused at once); the readers
//! ([`super::reader`]) read by offset from the checkpoints. After each commit of the read model
//! the member commits the offset to the group too, for tools that watch it; projectionist never
//! reads it back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::error::broker;
use super::Topics;
use crate::core::error::Result;

struct Context {
    topics: Arc<Topics>,
    assigned: watch::Sender<Vec<u32>>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // The member only holds partitions; the readers fetch.
            if let Err(e) = consumer.pause(tpl) {
                debug!(error = %e, "cannot pause the group member's partitions");
            }
        }
        let now = match consumer.assignment() {
            Ok(tpl) => self.topics.indexes(&tpl),
            Err(e) => {
                warn!(error = %e, "cannot read the group's assignment; holding no partition");
                Vec::new()
            }
        };
        self.assigned.send_replace(now);
    }
}

/// This process's member of one projection's group.
pub(crate) struct Member {
    consumer: Arc<BaseConsumer<Context>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub assigned: watch::Receiver<Vec<u32>>,
}

impl Member {
    /// Joins `group` on `topics` (blocking: run it off the async threads).
    pub fn join(config: &ClientConfig, group: &str, topics: Arc<Topics>) -> Result<Member> {
        let (tx, assigned) = watch::channel(Vec::new());
        let mut config = config.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let names: Vec<String> = topics.names().map(str::to_owned).collect();
        let consumer: BaseConsumer<Context> = config
            .create_with_context(Context { topics, assigned: tx })
            .map_err(|e| broker(format!("joining consumer group {group}"), e))?;
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer
            .subscribe(&refs)
            .map_err(|e| broker(format!("subscribing group {group} to {}", names.join(",")), e))?;
        let consumer = Arc::new(consumer);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (consumer, stop) = (consumer.clone(), stop.clone());
            std::thread::Builder::new()
                .name("kafka-group".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Serves heartbeats and rebalances; records (fetched before a pause
                        // took hold) are dropped: the readers read by offset.
                        let _ = consumer.poll(Duration::from_millis(100));
                    }
                    consumer.unsubscribe();
                })
                .map_err(crate::core::error::Error::Io)?
        };
        Ok(Member {
            consumer,
            stop,
            thread: Some(thread),
            assigned,
        })
    }

    /// Whether the group gives this process the partition `index`.
    pub fn holds(&self, index: u32) -> bool {
        self.assigned.borrow().contains(&index)
    }

    /// Commits `next` (the next offset to read) of `topic`'s `partition` to the group, without
    /// waiting (a commit of a partition lost meanwhile is refused by the broker, harmlessly).
    pub fn commit(&self, topic: &str, partition: i32, next: i64) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(next))
            .map_err(|e| broker("committing the group's offset", e))?;
        self.consumer
            .commit(&tpl, CommitMode::Async)
            .map_err(|e| broker("committing the group's offset", e))
    }

    /// Leaves the group (blocking).
    pub fn leave(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The partitions of each member in a group description's member assignment (Kafka's consumer
/// protocol: version, then per topic its name and partitions).
pub(crate) fn parse_assignment(bytes: &[u8]) -> Option<HashMap<String, Vec<i32>>> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at + n)?;
        at += n;
        Some(s)
    };
    let _version = i16::from_be_bytes(take(2)?.try_into().ok()?);
    let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
    let mut out = HashMap::new();
    for _ in 0..topics.max(0) {
        let len = i16::from_be_bytes(take(2)?.try_into().ok()?);
        let name = std::str::from_utf8(take(usize::try_from(len).ok()?)?)
            .ok()?
            .to_owned();
        let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut partitions = Vec::new();
        for _ in 0..count.max(0) {
            partitions.push(i32::from_be_bytes(take(4)?.try_into().ok()?));
        }
        out.insert(name, partitions);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assignment_parses() {
        let mut b = vec![0, 1, 0, 0, 0, 1, 0, 6];
        b.extend_from_slice(b"orders");
        b.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff]);
        let a = parse_assignment(&b).unwrap();
        assert_eq!(a["orders"], [3, 5]);
        assert!(parse_assignment(&b[..9]).is_none());
    }
}
