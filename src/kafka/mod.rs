//! Kafka (and Redpanda, and any broker that speaks Kafka's protocol) as a source of events
//! (feature `kafka`).
//!
//! Each record of the source's topics is one event in the shared JSON envelope (see
//! [`envelope`]); the record key stands in for a missing `stream_id`, the headers `type` and
//! `event_id` for a missing type and id. The source has partitions of its own
//! ([`Source::partition_count`]): every projection has one checkpoint per Kafka partition (its
//! offset plus one), numbered across the topics in the URL's order.
//!
//! **Exactly-once effect.** A partition's checkpoint commits in the read model's transaction.
//! Readers are assigned to their partition at the checkpoint (never at the group's committed
//! offset), and each commit is a compare-and-set on the checkpoint, so a process that lost a
//! partition in a rebalance cannot commit it again. Records below the checkpoint are dropped
//! and counted ([`KafkaSource::redelivered`]).
//!
//! **Scale-out.** By default (`assignment=group`) `run` joins the projection's consumer group
//! (`projectionist-NAME`) and reads the partitions the group assigns to it; after each commit
//! it commits the offset to the group too, for tools that watch it. With `assignment=leases`
//! the group is not used: the processes share the partitions through the checkpoint store's
//! leases ([`PartitionAssignment::Leases`]), like the partitions of a table source, and each
//! reads the partitions it holds by explicit assignment. `status` shows each partition's owner
//! (group member or lease holder), checkpoint, high watermark and lag. See docs/kafka.md.

pub mod address;
pub mod envelope;
mod error;
mod group;
mod reader;
mod watermark;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use rdkafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};
use tokio::sync::watch;
use tracing::warn;

use self::address::Address;
use self::error::{broker, config_error, truncated};
use self::group::{parse_assignment, Member};
use self::reader::Reader;
use self::watermark::{watermarks, METADATA_WAIT};
use crate::core::error::{Error, Result};
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, PartitionAssignment, PartitionSlice, Source};

/// The metric counting records dropped below a checkpoint, labelled by projection.
pub const METRIC_REDELIVERED: &str = "projectionist_kafka_redelivered_total";
/// The metric counting records that did not decode, labelled by projection.
pub const METRIC_MALFORMED: &str = "projectionist_kafka_malformed_total";

/// How long a partition's probed watermarks answer [`Source::partition_head`] and
/// [`Source::partition_lag`]: a catch-up or a status asks [`Source::head`] first, which probes
/// every partition at once, then asks each partition again.
const PROBE_REUSE: Duration = Duration::from_secs(2);

/// The source's topics and their partitions, numbered in one sequence.
pub(crate) struct Topics {
    /// Each topic, its partition count, and the number of its partition 0.
    list: Vec<(String, u32, u32)>,
}

impl Topics {
    fn total(&self) -> u32 {
        self.list.iter().map(|(_, n, _)| n).sum()
    }

    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|(t, _, _)| t.as_str())
    }

    /// The topic and partition of index `index`.
    fn locate(&self, index: u32) -> Option<(&str, i32)> {
        self.list
            .iter()
            .find(|(_, n, base)| index >= *base && index < base + n)
            .and_then(|(t, _, base)| i32::try_from(index - base).ok().map(|p| (t.as_str(), p)))
    }

    fn index(&self, topic: &str, partition: i32) -> Option<u32> {
        let (_, n, base) = self.list.iter().find(|(t, _, _)| t == topic)?;
        let p = u32::try_from(partition).ok().filter(|p| p < n)?;
        Some(base + p)
    }

    /// The indexes of a list's partitions, sorted.
    pub(crate) fn indexes(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        let mut out: Vec<u32> = tpl
            .elements()
            .iter()
            .filter_map(|e| self.index(e.topic(), e.partition()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Kafka topics as a [`Source`]. Cheap to clone; clones share the readers and the group
/// memberships.
#[derive(Clone)]
pub struct KafkaSource {
    inner: Arc<Inner>,
}

type Shared<T> = Arc<Mutex<T>>;
/// A partition's watermarks (low, high), and when they were probed.
type Probed = (Instant, (i64, i64));
/// Each projection's reader of each partition.
type Readers = HashMap<(Arc<str>, u32), Shared<Reader>>;

struct Inner {
    address: Address,
    config: ClientConfig,
    topics: Arc<Topics>,
    /// For metadata, watermarks and group descriptions.
    admin: Arc<BaseConsumer>,
    readers: Mutex<Readers>,
    members: Mutex<HashMap<Arc<str>, Arc<Member>>>,
    changes: watch::Sender<u64>,
    /// Each partition's last probed watermarks, and when.
    probed: Mutex<HashMap<u32, Probed>>,
    redelivered: AtomicU64,
    malformed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::Internal("a Kafka source lock was poisoned by a panic".into()))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::task("a Kafka client call", e))?
}

impl KafkaSource {
    /// Connects to the brokers of `url` and reads its topics' partition counts. A missing
    /// topic is a configuration error.
    pub async fn connect(url: &str) -> Result<Self> {
        let address = Address::parse(url)?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &address.brokers)
            .set("client.id", crate::core::lease::node_id())
            .set("enable.partition.eof", "false");
        for (k, v) in &address.client {
            config.set(k, v);
        }
        let (admin_config, names) = (config.clone(), address.topics.clone());
        let (admin, topics) = blocking(move || {
            let admin: BaseConsumer = admin_config
                .create()
                .map_err(|e| config_or_broker("creating the Kafka client", e))?;
            let mut list = Vec::new();
            let mut base = 0u32;
            for name in names {
                let metadata = admin
                    .fetch_metadata(Some(&name), METADATA_WAIT)
                    .map_err(|e| broker(format!("reading the metadata of topic {name}"), e))?;
                let count = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == name && t.error().is_none())
                    .map_or(0, |t| t.partitions().len() as u32);
                if count == 0 {
                    return Err(config_error(format!(
                        "Kafka topic {name} does not exist (or has no partitions); create it with the \
                         partitions you want (each is one checkpoint, and one unit of scale-out)"
                    )));
                }
                list.push((name, count, base));
                base += count;
            }
            Ok((admin, Topics { list }))
        })
        .await?;
        Ok(KafkaSource {
            inner: Arc::new(Inner {
                address,
                config,
                topics: Arc::new(topics),
                admin: Arc::new(admin),
                readers: Mutex::new(HashMap::new()),
                members: Mutex::new(HashMap::new()),
                changes: watch::channel(0).0,
                probed: Mutex::new(HashMap::new()),
                redelivered: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
            }),
        })
    }

    /// The brokers and topics, for logs (no credentials).
    pub fn location(&self) -> String {
        self.inner.address.location()
    }

    /// The consumer group of `projection`.
    pub fn group_of(&self, projection: &str) -> String {
        format!("{}{projection}", self.inner.address.group_prefix)
    }

    /// Records dropped because they sat below a checkpoint (already applied).
    pub fn redelivered(&self) -> u64 {
        self.inner.redelivered.load(Ordering::Relaxed)
    }

    /// Records that did not decode (each went through its projection's error policy).
    pub fn malformed(&self) -> u64 {
        self.inner.malformed.load(Ordering::Relaxed)
    }

    fn slice(&self, filter: &Filter) -> Result<u32> {
        let total = self.inner.topics.total();
        match filter.partition {
            Some(s) if s.count == total => Ok(s.index),
            None if total == 1 => Ok(0),
            Some(s) => Err(config_error(format!(
                "the projection's checkpoints are for {} partitions, and the Kafka topics have {total} \
                 now: rebuild the projection",
                s.count
            ))),
            None => Err(Error::Internal(
                "a Kafka read without a partition; the engine gives every reader its partition".into(),
            )),
        }
    }

    /// A partition's watermarks, probed now.
    async fn watermarks(&self, index: u32) -> Result<(i64, i64)> {
        let (topic, partition) = self
            .inner
            .topics
            .locate(index)
            .ok_or_else(|| Error::Internal(format!("no Kafka partition has index {index}")))?;
        let (topic, config) = (topic.to_owned(), self.inner.config.clone());
        let group = format!("{}probe", self.inner.address.group_prefix);
        let marks = blocking(move || watermarks(&config, &group, &topic, partition)).await?;
        lock(&self.inner.probed)?.insert(index, (Instant::now(), marks));
        Ok(marks)
    }

    /// A partition's watermarks as probed less than [`PROBE_REUSE`] ago (by [`Source::head`],
    /// which probes them all at once), or probed now.
    async fn recent_watermarks(&self, index: u32) -> Result<(i64, i64)> {
        let recent = lock(&self.inner.probed)?
            .get(&index)
            .filter(|(at, _)| at.elapsed() < PROBE_REUSE)
            .map(|(_, marks)| *marks);
        match recent {
            Some(marks) => Ok(marks),
            None => self.watermarks(index).await,
        }
    }

    fn member(&self, projection: &str) -> Result<Option<Arc<Member>>> {
        Ok(lock(&self.inner.members)?.get(projection).cloned())
    }
}

fn config_or_broker(op: &str, e: rdkafka::error::KafkaError) -> Error {
    match e {
        rdkafka::error::KafkaError::ClientConfig(..) => config_error(format!("{op}: {e}")),
        other => broker(op, other),
    }
}

impl Source for KafkaSource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let index = self.slice(filter)?;
        let projection: Arc<str> = filter.projection.clone().unwrap_or_else(|| Arc::from(""));
        if let Some(member) = self.member(&projection)? {
            if !member.holds(index) {
                // Another member of the group holds it (or the group is still rebalancing).
                return Ok(Batch {
                    scanned_to: after,
                    ..Batch::default()
                });
            }
        }
        let reader = {
            let mut readers = lock(&self.inner.readers)?;
            let (topic, partition) = self
                .inner
                .topics
                .locate(index)
                .ok_or_else(|| Error::Internal(format!("no Kafka partition has index {index}")))?;
            readers
                .entry((projection.clone(), index))
                .or_insert_with(|| {
                    Arc::new(Mutex::new(Reader::new(
                        topic.to_owned(),
                        partition,
                        projection.to_string(),
                        self.group_of(&projection),
                        self.inner.address.accept_partial_history,
                    )))
                })
                .clone()
        };
        let (config, filter) = (self.inner.config.clone(), filter.clone());
        let read = blocking(move || lock(&reader)?.read(&config, after, limit, &filter)).await?;
        if read.redelivered > 0 {
            self.inner
                .redelivered
                .fetch_add(read.redelivered, Ordering::Relaxed);
            metrics::counter!(METRIC_REDELIVERED, "projection" => projection.to_string())
                .increment(read.redelivered);
        }
        if read.malformed > 0 {
            self.inner.malformed.fetch_add(read.malformed, Ordering::Relaxed);
            metrics::counter!(METRIC_MALFORMED, "projection" => projection.to_string())
                .increment(read.malformed);
        }
        Ok(read.batch)
    }

    /// The highest high watermark of the partitions (each partition's own is
    /// [`partition_head`](Source::partition_head)).
    async fn head(&self) -> Result<Checkpoint> {
        // Every partition at once: a probe costs a client and a fetch (seconds on tansu).
        let mut probes = tokio::task::JoinSet::new();
        for index in 0..self.inner.topics.total() {
            let source = self.clone();
            probes.spawn(async move { source.watermarks(index).await });
        }
        let mut head = 0;
        while let Some(probe) = probes.join_next().await {
            let (_, high) = probe.map_err(|e| Error::task("a Kafka watermark probe", e))??;
            head = head.max(high);
        }
        Ok(Checkpoint::at(head))
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        self.partition_lag(after, PartitionSlice { index: 0, count: 1 })
            .await
    }

    async fn partition_lag(&self, after: Checkpoint, partition: PartitionSlice) -> Result<Lag> {
        let (_, high) = self.recent_watermarks(partition.index).await?;
        Ok(Lag {
            events: u64::try_from(high - after.position).unwrap_or(0),
            oldest: None,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn supports_partitions(&self) -> bool {
        true
    }

    /// Every partition must still start at offset 0, unless the URL accepts a partial history.
    async fn check_replay_from_start(&self, filter: &Filter) -> Result<()> {
        if self.inner.address.accept_partial_history {
            return Ok(());
        }
        let projection = filter.projection.as_deref().unwrap_or("").to_owned();
        let (admin, topics) = (self.inner.admin.clone(), self.inner.topics.clone());
        blocking(move || {
            for index in 0..topics.total() {
                let Some((topic, partition)) = topics.locate(index) else {
                    continue;
                };
                let what = format!("partition {topic}[{partition}]");
                let (low, _) = admin
                    .fetch_watermarks(topic, partition, METADATA_WAIT)
                    .map_err(|e| broker(format!("reading the watermarks of {what}"), e))?;
                if low > 0 {
                    return Err(truncated(&what, low, 0, &projection));
                }
            }
            Ok(())
        })
        .await
    }

    fn partition_count(&self, projection: &str) -> Option<u32> {
        let _ = projection;
        Some(self.inner.topics.total())
    }

    fn partition_assignment(&self) -> PartitionAssignment {
        self.inner.address.assignment
    }

    async fn join(&self, filter: &Filter) -> Result<watch::Receiver<Vec<u32>>> {
        let projection: Arc<str> = filter.projection.clone().unwrap_or_else(|| Arc::from(""));
        if let Some(member) = self.member(&projection)? {
            return Ok(member.assigned.clone());
        }
        let (config, group, topics) = (
            self.inner.config.clone(),
            self.group_of(&projection),
            self.inner.topics.clone(),
        );
        let member = Arc::new(blocking(move || Member::join(&config, &group, topics)).await?);
        let assigned = member.assigned.clone();
        lock(&self.inner.members)?.insert(projection, member);
        Ok(assigned)
    }

    async fn leave(&self, filter: &Filter) {
        let projection: Arc<str> = filter.projection.clone().unwrap_or_else(|| Arc::from(""));
        let member = match lock(&self.inner.members) {
            Ok(mut m) => m.remove(&projection),
            Err(_) => None,
        };
        if let Some(member) = member.and_then(|m| Arc::try_unwrap(m).ok()) {
            let _ = tokio::task::spawn_blocking(move || member.leave()).await;
        }
    }

    async fn partition_head(&self, partition: PartitionSlice) -> Result<Option<Checkpoint>> {
        Ok(Some(Checkpoint::at(
            self.recent_watermarks(partition.index).await?.1,
        )))
    }

    async fn partition_owners(&self, projection: &str) -> Result<Vec<(u32, String)>> {
        let (admin, group, topics) = (
            self.inner.admin.clone(),
            self.group_of(projection),
            self.inner.topics.clone(),
        );
        blocking(move || {
            let list = admin
                .fetch_group_list(Some(&group), METADATA_WAIT)
                .map_err(|e| broker(format!("describing consumer group {group}"), e))?;
            let mut out = Vec::new();
            for g in list.groups() {
                for m in g.members() {
                    let Some(assignment) = m.assignment().and_then(parse_assignment) else {
                        continue;
                    };
                    for (topic, partitions) in assignment {
                        for p in partitions {
                            if let Some(index) = topics.index(&topic, p) {
                                out.push((index, m.id().to_owned()));
                            }
                        }
                    }
                }
            }
            out.sort();
            Ok(out)
        })
        .await
    }

    async fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> Result<()> {
        let projection = filter.projection.as_deref().unwrap_or("");
        let Some(member) = self.member(projection)? else {
            return Ok(());
        };
        let index = self.slice(filter)?;
        if let Some((topic, partition)) = self.inner.topics.locate(index) {
            if let Err(e) = member.commit(topic, partition, through.position) {
                warn!(projection, error = %e, "cannot commit the offset to the consumer group (only tools that watch it lag)");
            }
        }
        Ok(())
    }
}
