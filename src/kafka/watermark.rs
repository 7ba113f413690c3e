//! A partition's watermarks. The low one is what the broker lists. The high one is what the
//! broker lists, checked by reading from there to the partition's end: a fetch reports the
//! end exactly, while some Kafka-compatible brokers list the start of the last batch instead
//! (tansu 0.6 does), and a catch-up to that would stop short.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use super::error::broker;
use crate::core::error::Result;

/// The context of readers and probes: a partition's end is news to them, not an error to log
/// (other client errors go to `tracing`). Public as [`QuietContext`](super::QuietContext), for
/// consumers of your own that read to a partition's end.
pub struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::error!(%error, reason, "librdkafka");
        }
    }
}

impl ConsumerContext for Quiet {}

/// How long metadata requests wait.
pub(crate) const METADATA_WAIT: Duration = Duration::from_secs(10);

/// The low and high watermarks of `topic`'s `partition` (blocking: run it off the async
/// threads). `group` is any group id (the probe never joins it).
pub(crate) fn watermarks(
    config: &ClientConfig,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64)> {
    let what = format!("{topic}[{partition}]");
    let mut config = config.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "latest");
    let probe: BaseConsumer<Quiet> = config
        .create_with_context(Quiet)
        .map_err(|e| broker(format!("opening a probe of {what}"), e))?;
    let (low, listed) = probe
        .fetch_watermarks(topic, partition, METADATA_WAIT)
        .map_err(|e| broker(format!("reading the watermarks of {what}"), e))?;
    // From the listed end (at once at its end on Kafka), else from the start.
    for (from, wait) in [(listed.max(low), SETTLE), (low, METADATA_WAIT)] {
        assign(&probe, topic, partition, from)?;
        let mut high = from;
        let mut seen = false;
        let deadline = Instant::now() + wait;
        loop {
            match probe.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    seen = true;
                    high = high.max(m.offset() + 1);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok((low, high)),
                Some(Err(e)) => return Err(broker(format!("probing the end of {what}"), e)),
                None if Instant::now() >= deadline && !seen => break,
                None if Instant::now() >= deadline + METADATA_WAIT => break,
                None => {}
            }
        }
    }
    Err(broker(
        format!("probing the end of {what}"),
        format!("no answer within {METADATA_WAIT:?}"),
    ))
}

/// How long a fetch from an offset may stay silent before the offset is taken as one the
/// broker cannot fetch from (tansu 0.6 fetches only from the start of a record batch).
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);

/// Assigns `consumer` to `topic`'s `partition` at `offset`.
pub(crate) fn assign<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .map_err(|e| broker(format!("assigning {topic}[{partition}]"), e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| broker(format!("assigning {topic}[{partition}]"), e))
}
