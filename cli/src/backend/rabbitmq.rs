//! `amqp://USER:PASSWORD@HOST:5672/VHOST?exchange=NAME`: a RabbitMQ queue per projection as the
//! event source.

use anyhow::Result;
use projectionist::backend::AnySource;
use projectionist::backend::BoxFuture;
use projectionist::declarative::Config;
use projectionist::rabbitmq::{RabbitError, RabbitSource};

use super::registry::OpenedSource;
use super::SourceBackend;
use crate::exit::usage;

/// The RabbitMQ source backend.
pub struct Rabbit;

impl SourceBackend for Rabbit {
    /// A queue per projection, bound to the projection's subject when it names one.
    fn open<'a>(
        &'a self,
        url: &'a str,
        shown: &'a str,
        config: Option<&'a Config>,
    ) -> BoxFuture<'a, Result<OpenedSource>> {
        Box::pin(async move {
            let mut builder = RabbitSource::builder(url);
            for def in config.map_or(&[][..], |c| &c.projections[..]) {
                // Registering every projection declares its queue at once, so it keeps what is
                // published before the first run.
                builder = match &def.subject {
                    Some(subject) => builder.subject(&def.name, subject),
                    None => builder.projection(&def.name),
                };
            }
            match builder.connect().await {
                Ok(source) => Ok(OpenedSource {
                    describe: format!("RabbitMQ {}", source.url()),
                    source: AnySource::new(source),
                }),
                Err(e @ RabbitError::Config { .. }) => Err(usage(format!("{shown}: {e}"))),
                Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
            }
        })
    }
}
