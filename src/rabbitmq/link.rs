//! The link to the broker: the connection (reconnected with backoff), channels with the
//! exchange checked, queue declarations and inspections.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tracing::{info, warn};

use super::builder::RabbitSourceBuilder;
use super::config::Settings;
use super::feed::Feed;
use super::{RabbitError, Shared};

/// The connection, and a channel for queue inspections.
#[derive(Default)]
pub(super) struct Link {
    pub(super) connection: Option<Connection>,
    pub(super) control: Option<Channel>,
    /// The exchange was checked on this connection.
    pub(super) exchange_ready: bool,
    pub(super) failures: u32,
    pub(super) retry_at: Option<tokio::time::Instant>,
    pub(super) last_error: String,
}

pub(super) fn broker(op: impl Into<String>) -> impl FnOnce(lapin::Error) -> RabbitError {
    let op = op.into();
    move |e| RabbitError::Broker {
        op,
        message: e.to_string(),
    }
}

/// The AMQP "soft" (channel-level) error code of `e`, if it is one.
pub(super) fn soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(s) => Some(s.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

/// A plain AMQP connection to the broker of a source URL (the source's own query parameters
/// are ignored), for publishers in the same program.
pub async fn amqp_connection(url: &str) -> std::result::Result<Connection, RabbitError> {
    let settings = Settings::parse(url)?;
    let source = RabbitSourceBuilder {
        settings: Ok(settings),
    }
    .build()?;
    source
        .shared
        .open_connection()
        .await
        .map_err(|message| RabbitError::Connect {
            url: source.shared.settings.redacted.clone(),
            message,
        })
}

impl Shared {
    /// The live connection (connecting first if needed, no sooner than the backoff allows).
    pub(super) async fn connection(
        &self,
    ) -> std::result::Result<tokio::sync::MutexGuard<'_, Link>, RabbitError> {
        let mut link = self.link.lock().await;
        if link.connection.as_ref().is_some_and(|c| c.status().connected()) {
            return Ok(link);
        }
        let s = &self.settings;
        if let Some(at) = link.retry_at {
            let now = tokio::time::Instant::now();
            if now < at {
                return Err(RabbitError::Connect {
                    url: s.redacted.clone(),
                    message: format!(
                        "{} (next attempt in {} ms)",
                        link.last_error,
                        (at - now).as_millis()
                    ),
                });
            }
        }
        let was_connected = link.connection.is_some();
        link.connection = None;
        link.control = None;
        link.exchange_ready = false;
        match self.open_connection().await {
            Ok(conn) => {
                if was_connected || link.failures > 0 {
                    info!(url = %s.redacted, "reconnected to RabbitMQ");
                } else {
                    info!(url = %s.redacted, "connected to RabbitMQ");
                }
                link.connection = Some(conn);
                link.failures = 0;
                link.retry_at = None;
                Ok(link)
            }
            Err(message) => {
                link.failures = link.failures.saturating_add(1);
                let delay = s
                    .reconnect_min
                    .saturating_mul(1u32 << link.failures.saturating_sub(1).min(16))
                    .min(s.reconnect_max);
                link.retry_at = Some(tokio::time::Instant::now() + delay);
                link.last_error = message.clone();
                warn!(url = %s.redacted, error = %message, retry_in = ?delay, "cannot connect to RabbitMQ");
                Err(RabbitError::Connect {
                    url: s.redacted.clone(),
                    message,
                })
            }
        }
    }

    pub(super) async fn open_connection(&self) -> std::result::Result<Connection, String> {
        let s = &self.settings;
        let mut uri: AMQPUri = s.amqp_url.parse().map_err(|e: String| format!("bad URL: {e}"))?;
        // The client's URL parser takes only domain names for hosts: keep IP addresses.
        uri.authority.host = s.host.clone();
        let props = ConnectionProperties::default()
            .with_connection_name(format!("projectionist (pid {})", std::process::id()).into());
        match tokio::time::timeout(s.connect_timeout, Connection::connect_uri(uri, props)).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", s.connect_timeout)),
        }
    }

    /// A new channel, with the exchange checked on this connection.
    pub(super) async fn open_channel(&self) -> std::result::Result<Channel, RabbitError> {
        let mut link = self.connection().await?;
        let conn = link.connection.as_ref().ok_or_else(|| RabbitError::Broker {
            op: "opening a channel".into(),
            message: "the connection closed".into(),
        })?;
        let channel = conn.create_channel().await.map_err(broker("opening a channel"))?;
        if link.exchange_ready {
            return Ok(channel);
        }
        let exchange = self.settings.exchange.clone();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let channel = match channel
            .exchange_declare(&exchange, ExchangeKind::Topic, passive, FieldTable::default())
            .await
        {
            Ok(()) => channel,
            Err(e) if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) => {
                // The broker closed that channel; declare on a new one.
                let channel = conn.create_channel().await.map_err(broker("opening a channel"))?;
                let durable = ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .exchange_declare(&exchange, ExchangeKind::Topic, durable, FieldTable::default())
                    .await
                    .map_err(broker(format!("declaring the durable topic exchange {exchange}")))?;
                info!(exchange, "declared the durable topic exchange");
                channel
            }
            Err(e) => return Err(broker(format!("checking the exchange {exchange}"))(e)),
        };
        link.exchange_ready = true;
        Ok(channel)
    }

    /// Declares the feed's queue if it is missing (durable), binds it, and returns a usable
    /// channel (a failed passive declare closes the one it ran on).
    pub(super) async fn declare_queue(
        &self,
        channel: Channel,
        feed: &Feed,
    ) -> std::result::Result<Channel, RabbitError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let channel = match channel
            .queue_declare(&feed.queue, passive, FieldTable::default())
            .await
        {
            Ok(_) => channel,
            Err(e) if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) => {
                let channel = self.open_channel().await?;
                let durable = QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                };
                channel
                    .queue_declare(&feed.queue, durable, FieldTable::default())
                    .await
                    .map_err(broker(format!("declaring the durable queue {}", feed.queue)))?;
                info!(projection = %feed.name, queue = %feed.queue, "declared the durable queue");
                channel
            }
            Err(e) => return Err(broker(format!("checking the queue {}", feed.queue))(e)),
        };
        channel
            .queue_bind(
                &feed.queue,
                &self.settings.exchange,
                &feed.subject,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker(format!(
                "binding the queue {} to the exchange {} with key {:?}",
                feed.queue, self.settings.exchange, feed.subject
            )))?;
        Ok(channel)
    }

    /// The number of messages ready in `queue` (not yet sent to a consumer), or `None` when
    /// the queue does not exist.
    pub(super) async fn ready(&self, queue: &str) -> std::result::Result<Option<u32>, RabbitError> {
        let mut link = self.connection().await?;
        let control = match link.control.as_ref().filter(|c| c.status().connected()) {
            Some(c) => c.clone(),
            None => {
                let conn = link.connection.as_ref().ok_or_else(|| RabbitError::Broker {
                    op: "opening a channel".into(),
                    message: "the connection closed".into(),
                })?;
                let c = conn.create_channel().await.map_err(broker("opening a channel"))?;
                link.control = Some(c.clone());
                c
            }
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        match control.queue_declare(queue, passive, FieldTable::default()).await {
            Ok(q) => Ok(Some(q.message_count())),
            Err(e) => {
                link.control = None;
                if soft_error(&e) == Some(AMQPSoftError::NOTFOUND) {
                    Ok(None)
                } else {
                    Err(broker(format!("inspecting the queue {queue}"))(e))
                }
            }
        }
    }
}
