//! Building a source: the builder's settings over the URL's, and the constructors.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::config::Settings;
use super::link::Link;
use super::{now_micros, RabbitError, RabbitSource, Shared};
#[cfg(doc)]
use crate::core::source::Source;

/// Builds a [`RabbitSource`]; the builder's settings override the URL's parameters.
pub struct RabbitSourceBuilder {
    pub(super) settings: std::result::Result<Settings, RabbitError>,
}

impl RabbitSourceBuilder {
    /// The exchange queues are bound to (URL: `exchange`, default `events`). A missing one is
    /// declared as a durable topic exchange; an existing one is used as it is.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        if let Ok(s) = &mut self.settings {
            s.exchange = name.into();
        }
        self
    }

    /// Messages the broker sends ahead of acknowledgements, per projection (URL: `prefetch`,
    /// default 2000). Keep it at least the projection's batch size; twice it keeps the broker
    /// streaming while a batch commits.
    pub fn prefetch(mut self, messages: u16) -> Self {
        if let Ok(s) = &mut self.settings {
            s.prefetch = messages;
        }
        self
    }

    /// Queue names are `<prefix>.<projection>` (URL: `queue_prefix`, default `projectionist`).
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        if let Ok(s) = &mut self.settings {
            s.queue_prefix = prefix.into();
        }
        self
    }

    /// The binding key of `projection`'s queue (default: the URL's `subject`, else `#`: every
    /// routing key). Registering a projection here also lets [`connect`](Self::connect)
    /// declare its queue at once (so that it keeps messages published before the first run)
    /// and [`Source::head`] count its waiting messages before its first read.
    pub fn subject(mut self, projection: impl Into<String>, binding_key: impl Into<String>) -> Self {
        if let Ok(s) = &mut self.settings {
            s.subjects.insert(projection.into(), binding_key.into());
        }
        self
    }

    /// Registers `projection` with the default subject (see [`subject`](Self::subject)).
    pub fn projection(mut self, projection: impl Into<String>) -> Self {
        if let Ok(s) = &mut self.settings {
            s.registered.insert(projection.into());
        }
        self
    }

    /// The binding key of projections without a [`subject`](Self::subject) of their own
    /// (URL: `subject`, default `#`).
    pub fn default_subject(mut self, binding_key: impl Into<String>) -> Self {
        if let Ok(s) = &mut self.settings {
            s.default_subject = binding_key.into();
        }
        self
    }

    /// How long one connection attempt may take (URL: `connection_timeout` in ms; default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        if let Ok(s) = &mut self.settings {
            s.connect_timeout = timeout;
        }
        self
    }

    /// The delay before reconnecting after a failed attempt: `min`, doubling up to `max`
    /// (default 100 ms to 10 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        if let Ok(s) = &mut self.settings {
            s.reconnect_min = min;
            s.reconnect_max = max;
        }
        self
    }

    /// The source, without connecting: it connects on first use, and reconnects with backoff
    /// whenever the connection is lost.
    pub fn build(self) -> std::result::Result<RabbitSource, RabbitError> {
        let settings = self.settings?;
        settings.validate()?;
        Ok(RabbitSource {
            shared: Arc::new(Shared {
                settings,
                link: tokio::sync::Mutex::new(Link::default()),
                feeds: Mutex::new(HashMap::new()),
                changes: watch::channel(0).0,
                anchor: now_micros(),
                reserved: AtomicI64::new(0),
                shutdown: watch::channel(false).0,
                generations: AtomicU64::new(0),
            }),
        })
    }

    /// The source, connected: the broker is reachable, the exchange exists, and the queues of
    /// the projections registered with [`subject`](Self::subject) are declared and bound.
    pub async fn connect(self) -> std::result::Result<RabbitSource, RabbitError> {
        let source = self.build()?;
        drop(source.shared.connection().await?);
        for name in source.shared.settings.projections() {
            let feed = source.shared.feed(&name)?;
            let channel = source.shared.open_channel().await?;
            source.shared.declare_queue(channel, &feed).await?;
        }
        Ok(source)
    }
}

impl RabbitSource {
    /// Connects to the broker at `url`: `amqp://user:password@host:port/vhost?exchange=…&prefetch=…&queue_prefix=…&subject=…`
    /// (see `docs/rabbitmq.md` for every parameter and its default).
    pub async fn connect(url: &str) -> std::result::Result<Self, RabbitError> {
        Self::builder(url).connect().await
    }

    /// A builder, starting from the URL's settings.
    pub fn builder(url: &str) -> RabbitSourceBuilder {
        RabbitSourceBuilder {
            settings: Settings::parse(url),
        }
    }
}
