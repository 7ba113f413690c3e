//! The Kafka phases of the bench (`bench --source kafka://HOST:9092`): the generated orders
//! events produced to a fresh topic of [`PARTITIONS`] partitions (keyed by stream, in the
//! shared JSON envelope), then read back by a bare consumer (the broker's own speed: no
//! decoding, no read model), then the declarative `order_summary` rebuilt from the topic into
//! the bench's database.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use projectionist::backend::AnySource;
use projectionist::kafka::address::Address;
use projectionist::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use projectionist::kafka::rdkafka::client::DefaultClientContext;
use projectionist::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use projectionist::kafka::rdkafka::error::KafkaError;
use projectionist::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use projectionist::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use projectionist::kafka::{KafkaSource, QuietContext};
use projectionist::workload::Orders;
use serde_json::json;

use super::PARTITIONS;

/// How long a broker request may take before the bench gives up.
const BROKER_WAIT: Duration = Duration::from_secs(30);

/// Records produced before the bench waits for their delivery.
const IN_FLIGHT: usize = 10_000;

/// The bench's topic on a Kafka-protocol broker.
pub struct KafkaBench {
    /// The source URL, with the bench's topic.
    url: String,
    topic: String,
    brokers: String,
    /// The URL's client settings (SASL, TLS, …).
    config: ClientConfig,
}

impl KafkaBench {
    /// Creates a fresh topic of [`PARTITIONS`] partitions on the brokers of `base`
    /// (`kafka://HOST:9092[?SETTING=VALUE…]`, without a topic: the bench makes its own).
    pub async fn create(base: &str) -> Result<Self> {
        let topic = format!("projectionist-bench-{}", uuid::Uuid::new_v4().simple());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}topic={topic}");
        let address = Address::parse(&url)?;
        if address.topics.len() != 1 {
            bail!(crate::exit::usage(
                "bench --source kafka://HOST:9092 takes no topic: the bench produces its events to a \
                 fresh topic of its own"
            ));
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &address.brokers);
        for (k, v) in &address.client {
            config.set(k, v);
        }
        let admin: AdminClient<DefaultClientContext> =
            config.create().context("creating a Kafka admin client")?;
        let made = admin
            .create_topics(
                &[NewTopic::new(
                    &topic,
                    PARTITIONS as i32,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(BROKER_WAIT)),
            )
            .await
            .with_context(|| format!("creating Kafka topic {topic} on {}", address.brokers))?;
        for r in made {
            r.map_err(|(t, e)| anyhow::anyhow!("creating Kafka topic {t}: {e}"))?;
        }
        Ok(KafkaBench {
            url,
            topic,
            brokers: address.brokers,
            config,
        })
    }

    /// The brokers and the topic, for the report.
    pub fn describe(&self) -> String {
        format!("Kafka {} topic {}", self.brokers, self.topic)
    }

    /// Produces `events` to the topic, each keyed by its stream (so a stream stays in one
    /// partition, in order), and waits until the broker has them all.
    pub async fn produce(&self, events: Orders, progress: &ProgressBar) -> Result<u64> {
        let producer: FutureProducer = self
            .config
            .clone()
            .set("acks", "all")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "200000")
            // No retries, one request in flight: no record is written twice.
            .set("retries", "0")
            .set("max.in.flight.requests.per.connection", "1")
            .create()
            .context("creating a Kafka producer")?;
        let mut pending = Vec::with_capacity(IN_FLIGHT);
        let mut sent = 0u64;
        for e in events {
            let value = json!({"stream_id": e.stream_id, "stream_version": e.stream_version,
                               "type": e.event_type, "data": e.data})
            .to_string();
            let record = FutureRecord::to(&self.topic).key(&e.stream_id).payload(&value);
            let delivery = producer
                .send_result(record)
                .map_err(|(err, _)| err)
                .context("queuing a record")?;
            pending.push(delivery);
            sent += 1;
            if pending.len() >= IN_FLIGHT {
                delivered(&mut pending).await?;
                progress.set_position(sent);
            }
        }
        delivered(&mut pending).await?;
        progress.set_position(sent);
        Ok(sent)
    }

    /// Reads every partition from its start to its end with one bare consumer, without
    /// decoding anything: the broker's own fetch speed. Returns the records read.
    pub async fn fetch(&self) -> Result<u64> {
        let mut config = self.config.clone();
        config
            .set("group.id", format!("projectionist-bench-fetch-{}", self.topic))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            // Quiet: each partition's end is expected here, not an error to log.
            let consumer: BaseConsumer<QuietContext> = config
                .create_with_context(QuietContext)
                .context("creating a Kafka consumer")?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..PARTITIONS as i32 {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            consumer.assign(&tpl)?;
            let (mut records, mut ended) = (0u64, 0u32);
            let mut quiet = std::time::Instant::now();
            while ended < PARTITIONS {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(_)) => {
                        records += 1;
                        quiet = std::time::Instant::now();
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
                    Some(Err(e)) => return Err(e).context("fetching the bench's topic"),
                    None if quiet.elapsed() > BROKER_WAIT => {
                        bail!("the broker sent nothing for {BROKER_WAIT:?} while fetching the bench's topic")
                    }
                    None => {}
                }
            }
            Ok(records)
        })
        .await
        .context("the bench's fetch task")?
    }

    /// The topic as the engine's source.
    pub async fn source(&self) -> Result<AnySource> {
        let source = KafkaSource::connect(&self.url).await?;
        Ok(AnySource::new(source))
    }
}

/// Waits for every queued record's delivery.
async fn delivered(pending: &mut Vec<projectionist::kafka::rdkafka::producer::DeliveryFuture>) -> Result<()> {
    for d in pending.drain(..) {
        d.await
            .context("the producer was dropped")?
            .map_err(|(e, _)| e)
            .context("producing a record")?;
    }
    Ok(())
}
