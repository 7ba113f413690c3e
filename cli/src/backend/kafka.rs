//! `kafka://HOST:9092[,HOST…]?topic=NAME`: Kafka (or Redpanda) topics as the event source.

use anyhow::Result;
use projectionist::backend::AnySource;
use projectionist::backend::BoxFuture;
use projectionist::declarative::Config;
use projectionist::kafka::KafkaSource;

use super::registry::OpenedSource;
use super::SourceBackend;
use crate::exit::usage;

/// The Kafka source backend.
pub struct Kafka;

impl SourceBackend for Kafka {
    /// One checkpoint per Kafka partition, and a consumer group per projection.
    fn open<'a>(
        &'a self,
        url: &'a str,
        shown: &'a str,
        config: Option<&'a Config>,
    ) -> BoxFuture<'a, Result<OpenedSource>> {
        let _ = config;
        Box::pin(async move {
            match KafkaSource::connect(url).await {
                Ok(source) => Ok(OpenedSource {
                    describe: format!("Kafka {}", source.location()),
                    source: AnySource::new(source),
                }),
                // A missing topic, a bad setting: the user's to fix.
                Err(e @ (projectionist::Error::Config(_) | projectionist::Error::Unsupported(_))) => {
                    Err(usage(format!("{shown}: {e}")))
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
            }
        })
    }
}
