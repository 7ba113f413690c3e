//! `nats://HOST:4222?stream=NAME`: a NATS JetStream stream as the event source.

use anyhow::Result;
use projectionist::backend::AnySource;
use projectionist::backend::BoxFuture;
use projectionist::declarative::Config;
use projectionist::nats::NatsSource;

use super::registry::{not_opened, OpenedSource};
use super::SourceBackend;
use crate::exit::usage;

/// The NATS JetStream source backend.
pub struct Nats;

impl SourceBackend for Nats {
    /// A durable consumer per projection, on the projection's subject when it names one.
    fn open<'a>(
        &'a self,
        url: &'a str,
        shown: &'a str,
        config: Option<&'a Config>,
    ) -> BoxFuture<'a, Result<OpenedSource>> {
        Box::pin(async move {
            let mut builder = NatsSource::builder(url).map_err(|e| usage(format!("{shown}: {e}")))?;
            for def in config.map_or(&[][..], |c| &c.projections[..]) {
                if let Some(subject) = &def.subject {
                    builder = builder.subject(&def.name, subject);
                }
            }
            // A missing stream, a subject outside it, bad credentials: the user's to fix.
            let source = builder.connect().await.map_err(|e| not_opened(shown, e))?;
            Ok(OpenedSource {
                describe: format!("NATS JetStream {}", source.location()),
                source: AnySource::new(source),
            })
        })
    }
}
