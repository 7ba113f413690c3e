//! `kafka://HOST:9092[,HOST…]?topic=NAME`: Kafka (or Redpanda) topics as the event source.

use anyhow::Result;
use projectionist::backend::AnySource;
use projectionist::backend::BoxFuture;
use projectionist::declarative::Config;
use projectionist::kafka::KafkaSource;

use super::registry::{not_opened, OpenedSource};
use super::SourceBackend;

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
            // A missing topic, a bad setting: the user's to fix.
            let source = KafkaSource::connect(url)
                .await
                .map_err(|e| not_opened(shown, e))?;
            Ok(OpenedSource {
                describe: format!("Kafka {}", source.location()),
                source: AnySource::new(source),
            })
        })
    }
}
