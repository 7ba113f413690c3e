//! Kafka (and Redpanda, and any broker that speaks Kafka's protocol) as a source of events
//! (feature `kafka`).
//!
//! Each record of the source's topics is one event in the shared JSON envelope (see
//! [`envelope`]); the record key stands in for a missing `stream_id`, the headers `type` and
//! `event_id` for a missing type and id. The source has partitions of its own
//! ([`Source::partition_count`]): every projection has one checkpoint per Kafka partition of its
//! topics (its offset plus one), numbered across its topics in the order of their names. A projection reads
//! the URL's topics (`?topic=`), or topics of its own ([`KafkaSourceBuilder::topics`], the
//! `subject` key of a declarative projection); either way only the event types it handles are
//! decoded and applied, the others are counted as ignored.
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

pub use self::watermark::Quiet as QuietContext;
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
use crate::core::source::{Batch, Filter, Lag, PartitionAssignment, Source};

/// The metric counting records dropped below a checkpoint, labelled by projection.
pub const METRIC_REDELIVERED: &str = "projectionist_kafka_redelivered_total";
/// The metric counting records that did not decode, labelled by projection.
pub const METRIC_MALFORMED: &str = "projectionist_kafka_malformed_total";

/// How long a partition's probed watermarks answer [`Source::partition_head`] and
/// [`Source::partition_lag`]: a catch-up or a status asks [`Source::head`] first, which probes
/// every partition at once, then asks each partition again.
const PROBE_REUSE: Duration = Duration::from_secs(2);

/// A projection's topics and their partitions, numbered in one sequence.
pub(crate) struct Topics {
    /// Each topic, its partition count, and the number of its partition 0.
    list: Vec<(String, u32, u32)>,
}

impl Topics {
    /// `names` with their partition counts from `counts`, numbered in the order of their
    /// names (so that listing the same topics in another order keeps every checkpoint's place).
    fn new(names: &[String], counts: &HashMap<String, u32>) -> Result<Self> {
        let mut sorted: Vec<&String> = names.iter().collect();
        sorted.sort();
        let mut list = Vec::new();
        let mut base = 0u32;
        for name in sorted {
            let count = *counts
                .get(name)
                .ok_or_else(|| Error::Internal(format!("Kafka topic {name} was not looked up")))?;
            list.push((name.clone(), count, base));
            base += count;
        }
        Ok(Topics { list })
    }

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

    /// The topic and partition of index `index`, owned; an internal error when there is none.
    fn at(&self, index: u32) -> Result<TopicPartition> {
        self.locate(index)
            .map(|(t, p)| (t.to_owned(), p))
            .ok_or_else(|| Error::Internal(format!("no Kafka partition has index {index}")))
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

/// Builds a [`KafkaSource`]: the URL, and the projections that read topics of their own.
///
/// ```no_run
/// # async fn open() -> projectionist::Result<()> {
/// use projectionist::kafka::KafkaSource;
/// let source = KafkaSource::builder("kafka://127.0.0.1:9092?topic=orders")
///     .topics("payment_totals", "payments")
///     .topics("audit_log", "orders,payments")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct KafkaSourceBuilder {
    url: String,
    own: Vec<(String, String)>,
}

impl KafkaSourceBuilder {
    /// The topics of `projection`: a comma-separated list (`orders,payments`), read instead of
    /// the URL's. Its checkpoints are one per partition of these topics, numbered across them
    /// in the order of their names.
    pub fn topics(mut self, projection: impl Into<String>, topics: impl Into<String>) -> Self {
        self.own.push((projection.into(), topics.into()));
        self
    }

    /// Connects to the brokers and reads every topic's partition count. A missing topic is a
    /// configuration error.
    pub async fn connect(self) -> Result<KafkaSource> {
        let address = Address::parse(&self.url)?;
        let mut own: Vec<(String, Vec<String>)> = Vec::new();
        for (projection, text) in self.own {
            let topics = address::topic_list(&text)
                .map_err(|e| config_error(format!("projection {projection}'s Kafka topics: {e}")))?;
            if topics.is_empty() {
                return Err(config_error(format!(
                    "projection {projection} names no Kafka topic; give it one or more, comma-separated"
                )));
            }
            own.retain(|(p, _)| *p != projection);
            own.push((projection, topics));
        }
        if address.topics.is_empty() && own.is_empty() {
            return Err(config_error(
                "a Kafka source names its topics: ?topic=NAME in the URL (every projection's), or                  per projection (`subject = \"NAME\"` in its [[projection]])"
                    .into(),
            ));
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &address.brokers)
            .set("client.id", crate::core::lease::node_id())
            .set("enable.partition.eof", "false");
        for (k, v) in &address.client {
            config.set(k, v);
        }
        let mut names: Vec<String> = address.topics.clone();
        for (_, topics) in &own {
            for t in topics {
                if !names.contains(t) {
                    names.push(t.clone());
                }
            }
        }
        let admin_config = config.clone();
        let (admin, counts) = blocking(move || {
            let admin: BaseConsumer = admin_config
                .create()
                .map_err(|e| config_or_broker("creating the Kafka client", e))?;
            let mut counts = HashMap::new();
            for name in names {
                let count = partitions_of(&admin, &name)?;
                counts.insert(name, count);
            }
            Ok((admin, counts))
        })
        .await?;
        let default = Arc::new(Topics::new(&address.topics, &counts)?);
        let mut by_projection = HashMap::new();
        for (projection, topics) in own {
            by_projection.insert(projection, Arc::new(Topics::new(&topics, &counts)?));
        }
        let mut every: Vec<(String, i32)> = Vec::new();
        for (name, count) in &counts {
            for p in 0..*count {
                every.push((name.clone(), i32::try_from(p).unwrap_or(i32::MAX)));
            }
        }
        every.sort();
        Ok(KafkaSource {
            inner: Arc::new(Inner {
                address,
                config,
                topics: default,
                own_topics: by_projection,
                every,
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
}

/// The partition count of topic `name` (blocking); a missing topic is a configuration error.
fn partitions_of(admin: &BaseConsumer, name: &str) -> Result<u32> {
    let metadata = admin
        .fetch_metadata(Some(name), METADATA_WAIT)
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
    Ok(count)
}

type Shared<T> = Arc<Mutex<T>>;
/// A partition's watermarks (low, high), and when they were probed.
type Probed = (Instant, (i64, i64));
/// A topic and one of its partitions.
type TopicPartition = (String, i32);
/// Each projection's reader of each partition, and when it last read.
type Readers = HashMap<(Arc<str>, u32), (Instant, Shared<Reader>)>;

/// How long a reader may go unread before it is closed (with the records it prefetched): a
/// partition whose lease moved to another process, a paused projection. A running reader
/// reads at least every poll interval, a second or less.
const IDLE_READER: Duration = Duration::from_secs(30);

/// Takes the readers unread for [`IDLE_READER`] (and not reading now) out of `readers`.
fn close_idle(readers: &mut Readers, now: Instant) -> Vec<Shared<Reader>> {
    let idle: Vec<(Arc<str>, u32)> = readers
        .iter()
        .filter(|(_, (used, r))| now.duration_since(*used) >= IDLE_READER && Arc::strong_count(r) == 1)
        .map(|(k, _)| k.clone())
        .collect();
    idle.iter()
        .filter_map(|k| readers.remove(k).map(|(_, r)| r))
        .collect()
}

struct Inner {
    address: Address,
    config: ClientConfig,
    /// The URL's topics: those of every projection that names none of its own.
    topics: Arc<Topics>,
    /// The projections that read topics of their own.
    own_topics: HashMap<String, Arc<Topics>>,
    /// Every partition of every topic the source reads, for [`Source::head`].
    every: Vec<TopicPartition>,
    /// For metadata, watermarks and group descriptions.
    admin: Arc<BaseConsumer>,
    readers: Mutex<Readers>,
    members: Mutex<HashMap<Arc<str>, Arc<Member>>>,
    changes: watch::Sender<u64>,
    /// Each partition's last probed watermarks, and when.
    probed: Mutex<HashMap<TopicPartition, Probed>>,
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
    /// Connects to the brokers of `url` and reads its topics' partition counts: every
    /// projection reads the URL's topics. A missing topic is a configuration error.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url).connect().await
    }

    /// A builder, for projections that read topics of their own.
    pub fn builder(url: &str) -> KafkaSourceBuilder {
        KafkaSourceBuilder {
            url: url.to_owned(),
            own: Vec::new(),
        }
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

    /// The topics `projection` reads (its own, else the URL's), in the order of their names,
    /// which numbers its partitions. A configuration error when it has none.
    pub fn topics_for(&self, projection: &str) -> Result<Vec<String>> {
        Ok(self.topics_of(projection)?.names().map(str::to_owned).collect())
    }

    /// The topics `projection` reads.
    fn topics_of(&self, projection: &str) -> Result<Arc<Topics>> {
        if let Some(own) = self.inner.own_topics.get(projection) {
            return Ok(own.clone());
        }
        if self.inner.topics.list.is_empty() {
            return Err(config_error(format!(
                "projection {projection} has no Kafka topic: the source URL names none (?topic=NAME), \
                 and neither does the projection (`subject = \"NAME\"` in its [[projection]])"
            )));
        }
        Ok(self.inner.topics.clone())
    }

    /// The topic and partition that the reader `filter` reads.
    fn locate(&self, filter: &Filter) -> Result<TopicPartition> {
        let (topics, index) = self.slice(filter)?;
        topics.at(index)
    }

    /// The reader `filter`'s topics, and the index of its partition among theirs.
    fn slice(&self, filter: &Filter) -> Result<(Arc<Topics>, u32)> {
        let topics = self.topics_of(filter.projection.as_deref().unwrap_or(""))?;
        let total = topics.total();
        match filter.partition {
            Some(s) if s.count == total => Ok((topics, s.index)),
            None if total == 1 => Ok((topics, 0)),
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
    async fn watermarks(&self, at: TopicPartition) -> Result<(i64, i64)> {
        let config = self.inner.config.clone();
        let group = format!("{}probe", self.inner.address.group_prefix);
        let (topic, partition) = at.clone();
        let marks = blocking(move || watermarks(&config, &group, &topic, partition)).await?;
        lock(&self.inner.probed)?.insert(at, (Instant::now(), marks));
        Ok(marks)
    }

    /// A partition's watermarks as probed less than [`PROBE_REUSE`] ago (by [`Source::head`],
    /// which probes them all at once), or probed now.
    async fn recent_watermarks(&self, at: TopicPartition) -> Result<(i64, i64)> {
        let recent = lock(&self.inner.probed)?
            .get(&at)
            .filter(|(when, _)| when.elapsed() < PROBE_REUSE)
            .map(|(_, marks)| *marks);
        match recent {
            Some(marks) => Ok(marks),
            None => self.watermarks(at).await,
        }
    }

    /// How far `after` is behind the high watermark of one partition.
    async fn lag_of(&self, after: Checkpoint, at: TopicPartition) -> Result<Lag> {
        let (_, high) = self.recent_watermarks(at).await?;
        Ok(Lag {
            events: u64::try_from(high - after.position).unwrap_or(0),
            oldest: None,
        })
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
        let (topics, index) = self.slice(filter)?;
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
        let (reader, idle) = {
            let mut readers = lock(&self.inner.readers)?;
            let (topic, partition) = topics.at(index)?;
            let now = Instant::now();
            let idle = close_idle(&mut readers, now);
            let (used, reader) = readers.entry((projection.clone(), index)).or_insert_with(|| {
                (
                    now,
                    Arc::new(Mutex::new(Reader::new(
                        topic,
                        partition,
                        projection.to_string(),
                        self.group_of(&projection),
                        self.inner.address.accept_partial_history,
                    ))),
                )
            });
            *used = now;
            (reader.clone(), idle)
        };
        if !idle.is_empty() {
            // Closing a consumer waits for its broker connections: off the async threads.
            tokio::task::spawn_blocking(move || drop(idle));
        }
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

    /// The highest high watermark of the partitions of every topic (each partition's own is
    /// [`partition_head`](Source::partition_head)).
    async fn head(&self) -> Result<Checkpoint> {
        // Every partition at once: a probe costs a client and a fetch (seconds on tansu).
        let mut probes = tokio::task::JoinSet::new();
        for at in self.inner.every.iter().cloned() {
            let source = self.clone();
            probes.spawn(async move { source.watermarks(at).await });
        }
        let mut head = 0;
        while let Some(probe) = probes.join_next().await {
            let (_, high) = probe.map_err(|e| Error::task("a Kafka watermark probe", e))??;
            head = head.max(high);
        }
        Ok(Checkpoint::at(head))
    }

    /// The lag of the first partition of the URL's topics (an estimate: each partition's own is
    /// [`partition_lag`](Source::partition_lag)).
    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let Some(first) = self.inner.every.first().cloned() else {
            return Ok(Lag::default());
        };
        let at = match self.inner.topics.locate(0) {
            Some((t, p)) => (t.to_owned(), p),
            None => first,
        };
        self.lag_of(after, at).await
    }

    async fn partition_lag(&self, after: Checkpoint, filter: &Filter) -> Result<Lag> {
        let at = self.locate(filter)?;
        self.lag_of(after, at).await
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
        let (admin, topics) = (self.inner.admin.clone(), self.topics_of(&projection)?);
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

    /// The partitions of `projection`'s topics (`None` when it has none: its reads then fail
    /// with a configuration error that says where to name them).
    fn partition_count(&self, projection: &str) -> Option<u32> {
        self.topics_of(projection).ok().map(|t| t.total())
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
            self.topics_of(&projection)?,
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

    async fn partition_head(&self, filter: &Filter) -> Result<Option<Checkpoint>> {
        let at = self.locate(filter)?;
        Ok(Some(Checkpoint::at(self.recent_watermarks(at).await?.1)))
    }

    async fn partition_owners(&self, projection: &str) -> Result<Vec<(u32, String)>> {
        let (admin, group, topics) = (
            self.inner.admin.clone(),
            self.group_of(projection),
            self.topics_of(projection)?,
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
        let (topic, partition) = self.locate(filter)?;
        if let Err(e) = member.commit(&topic, partition, through.position) {
            warn!(projection, error = %e, "cannot commit the offset to the consumer group (only tools that watch it lag)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(topic: &str) -> Shared<Reader> {
        Arc::new(Mutex::new(Reader::new(
            topic.into(),
            0,
            "p".into(),
            "g".into(),
            false,
        )))
    }

    #[test]
    fn readers_unread_for_a_while_are_closed_unless_reading() {
        let start = Instant::now();
        let mut readers = Readers::new();
        let busy = reader("busy");
        readers.insert((Arc::from("p"), 0), (start, reader("idle")));
        readers.insert((Arc::from("p"), 1), (start, busy.clone()));
        readers.insert((Arc::from("p"), 2), (start + IDLE_READER, reader("recent")));
        assert!(close_idle(&mut readers, start + IDLE_READER / 2).is_empty());
        let closed = close_idle(&mut readers, start + IDLE_READER);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].lock().unwrap().topic, "idle");
        let mut left: Vec<u32> = readers.keys().map(|k| k.1).collect();
        left.sort_unstable();
        assert_eq!(left, [1, 2], "the busy reader and the recent one stay");
        drop(busy);
        assert_eq!(
            close_idle(&mut readers, start + IDLE_READER * 3 / 2).len(),
            1,
            "once done, the busy one"
        );
    }

    #[test]
    fn topics_number_partitions_across_their_list() {
        let counts: HashMap<String, u32> = [("a".to_owned(), 3), ("b".to_owned(), 2)].into();
        let ab = Topics::new(&["b".into(), "a".into()], &counts).unwrap();
        assert_eq!(ab.total(), 5);
        assert_eq!(ab.locate(0), Some(("a", 0)));
        assert_eq!(ab.locate(3), Some(("b", 0)));
        assert_eq!(ab.locate(4), Some(("b", 1)));
        assert_eq!(ab.locate(5), None);
        assert_eq!(ab.index("b", 1), Some(4));
        let b = Topics::new(&["b".into()], &counts).unwrap();
        assert_eq!((b.total(), b.locate(1)), (2, Some(("b", 1))));
        assert!(Topics::new(&["c".into()], &counts).is_err());
    }
}
