//! `kafka://HOST:9092[,HOST…]?topic=NAME`: Kafka (or Redpanda) topics as the event source; a
//! projection's `subject` names topics of its own.

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
    /// One checkpoint per Kafka partition of the projection's topics, and a consumer group per
    /// projection.
    fn open<'a>(
        &'a self,
        url: &'a str,
        shown: &'a str,
        config: Option<&'a Config>,
    ) -> BoxFuture<'a, Result<OpenedSource>> {
        Box::pin(async move {
            let mut builder = KafkaSource::builder(url);
            for def in config.map_or(&[][..], |c| &c.projections[..]) {
                // A projection's `subject` is its topic, or a comma-separated list of them.
                if let Some(topics) = &def.subject {
                    builder = builder.topics(&def.name, topics);
                }
            }
            // A missing topic, a bad setting: the user's to fix.
            let source = builder.connect().await.map_err(|e| not_opened(shown, e))?;
            for def in config.map_or(&[][..], |c| &c.projections[..]) {
                source.topics_for(&def.name).map_err(|e| not_opened(shown, e))?;
            }
            Ok(OpenedSource {
                describe: format!("Kafka {}", source.location()),
                source: AnySource::new(source),
            })
        })
    }
}
