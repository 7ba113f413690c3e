//! Where events come from: `--source`, the config's `source`, or the database.

#[cfg(any(feature = "nats", feature = "rabbitmq"))]
use std::sync::Arc;

use anyhow::Result;
use projectionist::declarative::Config;
#[cfg(feature = "nats")]
use projectionist::nats::NatsSource;
#[cfg(feature = "rabbitmq")]
use projectionist::rabbitmq::{RabbitError, RabbitSource};

use super::redact;
#[cfg(doc)]
use super::with_engine;
use crate::exit::usage;

/// Where commands that read events take them from: `--source`, else the config's `source`,
/// else the database's own events table. Each broker is one variant here, one arm in
/// [`EventSource::open`] and one arm in [`with_engine!`].
#[derive(Clone)]
pub enum EventSource {
    /// The `--database`'s events table.
    Database,
    /// A NATS JetStream stream (`nats://…?stream=NAME`).
    #[cfg(feature = "nats")]
    Nats(Arc<NatsSource>),
    /// A RabbitMQ queue per projection (`amqp://…?exchange=NAME`).
    #[cfg(feature = "rabbitmq")]
    Rabbit(Arc<RabbitSource>),
}

impl EventSource {
    /// The source URL in force (`--source`, else the config's `source`), and where it comes
    /// from, for messages.
    pub fn url<'a>(flag: Option<&'a str>, config: Option<&'a Config>) -> Option<(&'a str, String)> {
        let given = |u: &&str| !u.trim().is_empty();
        match flag.filter(given) {
            Some(url) => Some((url.trim(), "--source".to_owned())),
            None => config.and_then(|c| {
                c.source
                    .as_deref()
                    .filter(given)
                    .map(|url| (url.trim(), format!("{}: key `source`", c.file)))
            }),
        }
    }

    /// Opens the source at `url` (`None`: the database) for the projections of `config`.
    /// A bad URL or setting is a usage error (exit 2); errors never show a password.
    pub async fn open(url: Option<(&str, String)>, config: Option<&Config>) -> Result<Self> {
        let Some((url, origin)) = url else {
            return Ok(EventSource::Database);
        };
        let shown = format!("{origin} {}", redact(url));
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        match scheme.as_str() {
            #[cfg(feature = "nats")]
            "nats" => {
                let mut builder = NatsSource::builder(url).map_err(|e| usage(format!("{shown}: {e}")))?;
                for def in config.map_or(&[][..], |c| &c.projections[..]) {
                    if def.partitions > 1 {
                        return Err(usage(format!(
                            "projection {} has partitions = {}, and a NATS source does not partition; set \
                             partitions = 1 (JetStream scales out with one process per projection)",
                            def.name, def.partitions
                        )));
                    }
                    if let Some(subject) = &def.subject {
                        builder = builder.subject(&def.name, subject);
                    }
                }
                match builder.connect().await {
                    Ok(source) => Ok(EventSource::Nats(Arc::new(source))),
                    // A missing stream, a subject outside it, bad credentials: the user's to fix.
                    Err(e @ (projectionist::Error::Config(_) | projectionist::Error::Unsupported(_))) => {
                        Err(usage(format!("{shown}: {e}")))
                    }
                    Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
                }
            }
            #[cfg(feature = "rabbitmq")]
            "amqp" | "amqps" => {
                let mut builder = RabbitSource::builder(url);
                for def in config.map_or(&[][..], |c| &c.projections[..]) {
                    if def.partitions > 1 {
                        return Err(usage(format!(
                            "projection {} has partitions = {}, and a RabbitMQ queue has no partitions; set \
                             partitions = 1 (one runner consumes each projection's queue, in order)",
                            def.name, def.partitions
                        )));
                    }
                    // Registering every projection declares its queue at once, so it keeps
                    // what is published before the first run.
                    builder = match &def.subject {
                        Some(subject) => builder.subject(&def.name, subject),
                        None => builder.projection(&def.name),
                    };
                }
                match builder.connect().await {
                    Ok(source) => Ok(EventSource::Rabbit(Arc::new(source))),
                    Err(e @ RabbitError::Config { .. }) => Err(usage(format!("{shown}: {e}"))),
                    Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read events from {shown}"))),
                }
            }
            _ => Err(usage(format!(
                "{shown}: unsupported source scheme `{scheme}`; supported: nats://HOST:4222?stream=NAME \
                 (NATS JetStream), amqp://USER:PASSWORD@HOST:5672/VHOST?exchange=NAME (RabbitMQ), or no \
                 source to read the database's events table"
            ))),
        }
    }

    /// What a broker source reads, without credentials, for logs (`None`: the database).
    pub fn describe(&self) -> Option<String> {
        match self {
            EventSource::Database => None,
            #[cfg(feature = "nats")]
            EventSource::Nats(source) => Some(format!("NATS JetStream {}", source.location())),
            #[cfg(feature = "rabbitmq")]
            EventSource::Rabbit(source) => Some(format!("RabbitMQ {}", source.url())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_flag_overrides_the_config() {
        let config = Config::parse(
            "source = \"nats://h?stream=A\"\n[[projection]]\nname = \"p\"\n[projection.handlers]\nT = \"SELECT 1\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            EventSource::url(Some("nats://k?stream=B"), Some(&config)),
            Some(("nats://k?stream=B", "--source".to_owned()))
        );
        assert_eq!(
            EventSource::url(Some("  "), Some(&config)),
            Some(("nats://h?stream=A", "p.toml: key `source`".to_owned()))
        );
        assert_eq!(EventSource::url(None, None), None);
    }
}
