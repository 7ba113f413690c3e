//! A RabbitMQ source (cargo feature `rabbitmq`), on [lapin](https://docs.rs/lapin).
//!
//! Each projection consumes its own durable queue, `<queue_prefix>.<projection>`, bound to a
//! topic exchange with the projection's subject as binding key. Messages are JSON
//! [`Envelope`]s. A message is acknowledged only after the commit that applied it (the runner
//! calls [`Source::acknowledge`]), so a crash redelivers instead of losing; redelivered events
//! are dropped by their id, which the store records in the same transaction as the read model
//! ([`Batch::deduplicate`]). The full story, with the URL parameters, is in `docs/rabbitmq.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use projectionist::rabbitmq::RabbitSource;
//! use projectionist::sqlite::SqliteStore;
//! use projectionist::Engine;
//!
//! let source = RabbitSource::builder("amqp://guest:guest@127.0.0.1:5672/%2f?exchange=events&prefetch=2000")
//!     .subject("order_summary", "orders.#")
//!     .connect()
//!     .await?;
//! let store = SqliteStore::open("app.db").await?;
//! let engine = Engine::new(Arc::new(source), Arc::new(store));
//! # let _ = engine;
//! # Ok(()) }
//! ```
//!
//! # Positions
//!
//! A queue has no positions, so the source numbers deliveries itself, per projection, one up
//! from a base: the larger of the reader's checkpoint and the source's clock anchor (the wall
//! clock in microseconds when the source was created; when another consumer held the queue
//! before this one got it, the clock when this one got it). The anchor keeps positions above
//! every checkpoint an earlier process committed (they grew by one per message, slower than
//! the clock), and lets [`Source::head`] answer before the first read. A failed commit reads
//! again from the same checkpoint and gets the same deliveries at the same positions; a
//! channel that dies takes its deliveries with it, and the broker redelivers them on the next
//! channel at new positions, where the ones already applied are dropped by id.

mod config;
mod envelope;
mod error;
mod ledger;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::core::error::Result;
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, Source};

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_EXCHANGE, DEFAULT_PREFETCH, DEFAULT_QUEUE_PREFIX, DEFAULT_RECONNECT_MAX,
    DEFAULT_RECONNECT_MIN, DEFAULT_SUBJECT,
};
pub use envelope::{event_id, Envelope, MESSAGE_ID_NAMESPACE};
pub use error::RabbitError;
/// The AMQP client this source uses, for publishers in the same program.
pub use lapin;

use config::Settings;
use ledger::Ledger;

/// Events from RabbitMQ: one durable queue per projection, acknowledged after each commit.
/// See the [module documentation](self).
pub struct RabbitSource {
    shared: Arc<Shared>,
}

/// Builds a [`RabbitSource`]; the builder's settings override the URL's parameters.
pub struct RabbitSourceBuilder {
    settings: std::result::Result<Settings, RabbitError>,
}

/// Counters of one projection's queue in this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Deliveries taken (the malformed ones excepted).
    pub delivered: u64,
    /// Of those, the ones the broker marked as redelivered (an earlier consumer did not
    /// acknowledge them: it crashed, or its channel closed).
    pub redelivered: u64,
    /// Malformed messages rejected (to the queue's dead-letter exchange, if it has one).
    pub rejected: u64,
    /// Deliveries held, not yet acknowledged.
    pub unacknowledged: usize,
    /// The position given last.
    pub position: i64,
}

struct Shared {
    settings: Settings,
    link: tokio::sync::Mutex<Link>,
    feeds: Mutex<HashMap<Arc<str>, Arc<Feed>>>,
    changes: watch::Sender<u64>,
    /// The wall clock (µs) when the source was created: the base of new positions.
    anchor: i64,
    /// The highest head reported: a drained queue skips to it, so that catch-ups end.
    reserved: AtomicI64,
    shutdown: watch::Sender<bool>,
    generations: AtomicU64,
}

/// The connection, and a channel for queue inspections.
#[derive(Default)]
struct Link {
    connection: Option<Connection>,
    control: Option<Channel>,
    /// The exchange was checked on this connection.
    exchange_ready: bool,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
    last_error: String,
}

/// One projection's queue and its consumer.
struct Feed {
    name: Arc<str>,
    queue: String,
    subject: String,
    state: Mutex<FeedState>,
    /// Serializes (re)starting the consumer.
    starting: tokio::sync::Mutex<()>,
    /// Another consumer held the queue when this one tried to consume.
    contended: AtomicBool,
    delivered: AtomicU64,
    redelivered: AtomicU64,
    rejected: AtomicU64,
}

#[derive(Default)]
struct FeedState {
    ledger: Option<Ledger>,
    /// The channel of the ledger's current generation.
    channel: Option<Channel>,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        // The state stays consistent across a panic elsewhere (every change is one step).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_live(&self) -> bool {
        let st = self.lock();
        st.ledger.as_ref().is_some_and(|l| l.generation != 0)
            && st.channel.as_ref().is_some_and(|c| c.status().connected())
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn broker(op: impl Into<String>) -> impl FnOnce(lapin::Error) -> RabbitError {
    let op = op.into();
    move |e| RabbitError::Broker {
        op,
        message: e.to_string(),
    }
}

/// The AMQP "soft" (channel-level) error code of `e`, if it is one.
fn soft_error(e: &lapin::Error) -> Option<AMQPSoftError> {
    match e.kind() {
        ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(s) => Some(s.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
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

    /// The URL, with its password masked.
    pub fn url(&self) -> &str {
        &self.shared.settings.redacted
    }

    /// The exchange the queues are bound to.
    pub fn exchange(&self) -> &str {
        &self.shared.settings.exchange
    }

    /// The queue `projection` consumes.
    pub fn queue(&self, projection: &str) -> std::result::Result<String, RabbitError> {
        self.shared.settings.queue(projection)
    }

    /// Counters of `projection`'s queue in this process (`None` before its first read).
    pub fn stats(&self, projection: &str) -> Option<QueueStats> {
        let feed = self.shared.existing_feed(projection)?;
        let st = feed.lock();
        Some(QueueStats {
            delivered: feed.delivered.load(Ordering::Relaxed),
            redelivered: feed.redelivered.load(Ordering::Relaxed),
            rejected: feed.rejected.load(Ordering::Relaxed),
            unacknowledged: st.ledger.as_ref().map_or(0, |l| l.entries.len()),
            position: st.ledger.as_ref().map_or(0, |l| l.last),
        })
    }

    /// Messages waiting in `projection`'s queue, not yet sent to a consumer (0 when the queue
    /// does not exist yet).
    pub async fn ready(&self, projection: &str) -> std::result::Result<u64, RabbitError> {
        let queue = self.shared.settings.queue(projection)?;
        Ok(u64::from(self.shared.ready(&queue).await?.unwrap_or(0)))
    }

    /// Closes the connection the way a network failure or a broker restart would: consumers
    /// stop, the broker requeues what is not acknowledged, and the next read reconnects. For
    /// tests of that path.
    #[doc(hidden)]
    pub async fn interrupt(&self) {
        let mut link = self.shared.link.lock().await;
        link.control = None;
        if let Some(conn) = link.connection.as_ref() {
            let _ = conn.close(200, "interrupted").await;
        }
    }

    /// Stops consuming and closes the connection: the broker requeues what is not
    /// acknowledged, for the next consumer. Dropping the source does the same, without
    /// waiting.
    pub async fn close(&self) {
        self.shared.shutdown.send_replace(true);
        let channels: Vec<Channel> = {
            let feeds = self.shared.feeds.lock().unwrap_or_else(|p| p.into_inner());
            feeds.values().filter_map(|f| f.lock().channel.take()).collect()
        };
        for c in channels {
            let _ = c.close(200, "projectionist is stopping").await;
        }
        let mut link = self.shared.link.lock().await;
        link.control = None;
        if let Some(conn) = link.connection.take() {
            let _ = conn.close(200, "projectionist is stopping").await;
        }
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

impl Drop for RabbitSource {
    fn drop(&mut self) {
        // Consumer tasks stop, and with the last channel the connection closes.
        self.shared.shutdown.send_replace(true);
    }
}

impl std::fmt::Debug for RabbitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSource")
            .field("url", &self.shared.settings.redacted)
            .field("exchange", &self.shared.settings.exchange)
            .finish()
    }
}

impl Shared {
    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn feeds(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Feed>>> {
        self.feeds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn existing_feed(&self, name: &str) -> Option<Arc<Feed>> {
        self.feeds().get(name).cloned()
    }

    fn feed(&self, name: &str) -> std::result::Result<Arc<Feed>, RabbitError> {
        if let Some(f) = self.existing_feed(name) {
            return Ok(f);
        }
        let queue = self.settings.queue(name)?;
        if !self.settings.projections().contains(name) {
            info!(
                projection = name,
                queue, "a projection not registered with the RabbitMQ source reads: its queue is declared now, and catch-ups count its waiting messages only from now on (register it with subject() or projection())"
            );
        }
        let mut feeds = self.feeds();
        let name: Arc<str> = Arc::from(name);
        Ok(feeds
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(Feed {
                    subject: self.settings.subject(&name).to_owned(),
                    name,
                    queue,
                    state: Mutex::new(FeedState::default()),
                    starting: tokio::sync::Mutex::new(()),
                    contended: AtomicBool::new(false),
                    delivered: AtomicU64::new(0),
                    redelivered: AtomicU64::new(0),
                    rejected: AtomicU64::new(0),
                })
            })
            .clone())
    }

    /// The projections this source knows: registered ones and those that read.
    fn known(&self) -> BTreeSet<String> {
        let mut names = self.settings.projections();
        names.extend(self.feeds().keys().map(|k| k.to_string()));
        names
    }

    /// The live connection (connecting first if needed, no sooner than the backoff allows).
    async fn connection(&self) -> std::result::Result<tokio::sync::MutexGuard<'_, Link>, RabbitError> {
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

    async fn open_connection(&self) -> std::result::Result<Connection, String> {
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
    async fn open_channel(&self) -> std::result::Result<Channel, RabbitError> {
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
    async fn declare_queue(
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
    async fn ready(&self, queue: &str) -> std::result::Result<Option<u32>, RabbitError> {
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

    /// Starts consuming the feed's queue on a new channel, unless a consumer is live.
    async fn start(self: &Arc<Self>, feed: &Arc<Feed>, after: i64) -> std::result::Result<(), RabbitError> {
        let _one_at_a_time = feed.starting.lock().await;
        if feed.is_live() {
            return Ok(());
        }
        let channel = self.open_channel().await?;
        let channel = self.declare_queue(channel, feed).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(broker("setting the prefetch (basic.qos)"))?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let tag = format!("projectionist.{}.{}.{generation}", feed.name, std::process::id());
        let exclusive = BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        };
        let consumer = match channel
            .basic_consume(&feed.queue, &tag, exclusive, FieldTable::default())
            .await
        {
            Ok(c) => c,
            Err(e)
                if matches!(
                    soft_error(&e),
                    Some(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED)
                ) =>
            {
                if !feed.contended.swap(true, Ordering::Relaxed) {
                    warn!(projection = %feed.name, queue = %feed.queue, "another consumer holds the queue; waiting for it to stop");
                }
                return Err(RabbitError::QueueInUse {
                    projection: feed.name.to_string(),
                    queue: feed.queue.clone(),
                });
            }
            Err(e) => return Err(broker(format!("consuming the queue {}", feed.queue))(e)),
        };
        // After another consumer held the queue, this reader's checkpoint may predate that
        // consumer's last commits: number above anything it can have committed.
        let contended = feed.contended.swap(false, Ordering::Relaxed);
        let base = if contended { now_micros() } else { self.anchor };
        {
            let mut st = feed.lock();
            let ledger = st.ledger.get_or_insert_with(|| Ledger::new(after, base));
            ledger.start(generation, if contended { base } else { 0 });
            st.channel = Some(channel.clone());
        }
        debug!(projection = %feed.name, queue = %feed.queue, generation, "consuming");
        let shared = self.clone();
        let feed = feed.clone();
        let mut shutdown = self.shutdown.subscribe();
        tokio::spawn(async move {
            let mut consumer = consumer;
            loop {
                let next = tokio::select! {
                    n = consumer.next() => n,
                    _ = shutdown.wait_for(|stop| *stop) => break,
                };
                match next {
                    Some(Ok(delivery)) => shared.deliver(&feed, generation, &channel, delivery).await,
                    Some(Err(e)) => {
                        warn!(projection = %feed.name, queue = %feed.queue, error = %e, "the consumer's channel closed; reconnecting, and the broker redelivers what was not acknowledged");
                        break;
                    }
                    None => {
                        warn!(projection = %feed.name, queue = %feed.queue, "the broker cancelled the consumer (was the queue deleted?); consuming again");
                        break;
                    }
                }
            }
            let dropped = {
                let mut st = feed.lock();
                let n = st.ledger.as_mut().map_or(0, |l| l.lost(generation));
                if st.ledger.as_ref().is_some_and(|l| l.generation == 0) {
                    st.channel = None;
                }
                n
            };
            if dropped > 0 {
                debug!(projection = %feed.name, dropped, "forgot the deliveries of a closed channel");
            }
            shared.bump();
        });
        Ok(())
    }

    /// Takes one delivery: numbers and keeps an event, or rejects a malformed message.
    async fn deliver(&self, feed: &Feed, generation: u64, channel: &Channel, d: lapin::message::Delivery) {
        let message_id = d.properties.message_id().as_ref().map(|m| m.as_str());
        match envelope::decode(&d.data, message_id, *d.properties.timestamp()) {
            Ok(event) => {
                let kept = feed
                    .lock()
                    .ledger
                    .as_mut()
                    .is_some_and(|l| l.push(generation, d.delivery_tag, event));
                if kept {
                    feed.delivered.fetch_add(1, Ordering::Relaxed);
                    if d.redelivered {
                        feed.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    self.bump();
                }
            }
            Err(envelope::Malformed(why)) => {
                feed.rejected.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("projectionist_rabbitmq_rejected_total", "projection" => feed.name.to_string())
                    .increment(1);
                warn!(
                    projection = %feed.name,
                    queue = %feed.queue,
                    routing_key = %d.routing_key.as_str(),
                    message_id = message_id.unwrap_or(""),
                    reason = %why,
                    "rejecting a malformed message: it goes to the queue's dead-letter exchange if one is configured, else the broker drops it"
                );
                let reject = BasicRejectOptions { requeue: false };
                if let Err(e) = channel.basic_reject(d.delivery_tag, reject).await {
                    warn!(projection = %feed.name, error = %e, "rejecting failed; the broker redelivers the message to the next consumer");
                }
            }
        }
    }

    /// When the feed has nothing after `after`, and its queue is empty, moves it past the
    /// positions the last head counted but no message filled: returns the new checkpoint.
    async fn skip_drained(&self, feed: &Feed, after: i64) -> std::result::Result<Option<i64>, RabbitError> {
        let reserved = self.reserved.load(Ordering::Relaxed);
        if reserved <= after {
            return Ok(None);
        }
        if self.ready(&feed.queue).await?.unwrap_or(0) > 0 {
            return Ok(None);
        }
        let mut st = feed.lock();
        let Some(ledger) = st.ledger.as_mut() else {
            return Ok(None);
        };
        if ledger.pending_after(after) > 0 || after < ledger.floor {
            return Ok(None);
        }
        ledger.skip_to(reserved);
        Ok(Some(reserved))
    }
}

impl Source for RabbitSource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let name = filter.projection.as_deref().ok_or(RabbitError::NoProjection)?;
        if filter.partition.is_some() {
            return Err(RabbitError::Partitioned {
                projection: name.to_owned(),
            }
            .into());
        }
        let feed = self.shared.feed(name)?;
        if !feed.is_live() {
            self.shared.start(&feed, after.position).await?;
        }
        let read = feed
            .lock()
            .ledger
            .as_mut()
            .map(|l| l.read(after.position, limit, filter));
        let batch = match read {
            Some(Ok(batch)) => batch,
            Some(Err(ledger::NoReplay { acknowledged })) => {
                return Err(RabbitError::NoReplay {
                    projection: name.to_owned(),
                    queue: feed.queue.clone(),
                    after: after.position,
                    acknowledged,
                }
                .into())
            }
            None => Batch {
                scanned_to: after,
                deduplicate: true,
                ..Batch::default()
            },
        };
        if batch.scanned_to.position <= after.position {
            if let Some(to) = self.shared.skip_drained(&feed, after.position).await? {
                return Ok(Batch {
                    scanned_to: Checkpoint::at(to),
                    deduplicate: true,
                    ..Batch::default()
                });
            }
        }
        Ok(batch)
    }

    /// The largest of, per known projection, its last position plus the messages ready in its
    /// queue (the anchor stands for the last position before a projection's first read). A
    /// catch-up runs to it: each projection reaches it by consuming what was ready, or, once
    /// its queue is drained, by skipping the positions no message filled.
    async fn head(&self) -> Result<Checkpoint> {
        let shared = &self.shared;
        let mut head = shared.reserved.load(Ordering::Relaxed).max(shared.anchor);
        for name in shared.known() {
            let queue = shared.settings.queue(&name)?;
            let ready = i64::from(shared.ready(&queue).await?.unwrap_or(0));
            let last = shared
                .existing_feed(&name)
                .and_then(|f| f.lock().ledger.as_ref().map(|l| l.last))
                .unwrap_or(shared.anchor);
            head = head.max(last + ready);
        }
        shared.reserved.fetch_max(head, Ordering::Relaxed);
        Ok(Checkpoint::at(head))
    }

    /// The largest backlog among the known projections: messages ready in the queue, plus
    /// deliveries held after `after`. (The Source API does not say which projection asks; with
    /// one projection per source it is exact.)
    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let shared = &self.shared;
        let mut lag = Lag::default();
        for name in shared.known() {
            let queue = shared.settings.queue(&name)?;
            let ready = u64::from(shared.ready(&queue).await?.unwrap_or(0));
            let (held, oldest) = match shared.existing_feed(&name) {
                Some(f) => {
                    let st = f.lock();
                    match st.ledger.as_ref() {
                        Some(l) => {
                            let start = l.entries.partition_point(|e| e.event.position <= after.position);
                            let oldest = l.entries.get(start).map(|e| e.event.recorded_at);
                            ((l.entries.len() - start) as u64, oldest)
                        }
                        None => (0, None),
                    }
                }
                None => (0, None),
            };
            if ready + held > lag.events {
                lag = Lag {
                    events: ready + held,
                    oldest,
                };
            }
        }
        Ok(lag)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    async fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> Result<()> {
        let Some(name) = filter.projection.as_deref() else {
            return Ok(());
        };
        let Some(feed) = self.shared.existing_feed(name) else {
            return Ok(());
        };
        let (plan, channel) = {
            let mut st = feed.lock();
            let plan = st.ledger.as_mut().map(|l| l.acknowledge(through.position));
            (plan, st.channel.clone())
        };
        let (generation, tag) = match plan {
            None | Some(Ok(None)) => return Ok(()),
            Some(Err(())) => {
                warn!(projection = name, checkpoint = %through, "the checkpoint moved beyond anything this source delivered: another runner committed this projection; acknowledging nothing");
                return Ok(());
            }
            Some(Ok(Some(t))) => t,
        };
        let Some(channel) = channel else {
            return Ok(());
        };
        let multiple = BasicAckOptions { multiple: true };
        if let Err(e) = channel.basic_ack(tag, multiple).await {
            // Close the channel rather than keep it with messages nobody will acknowledge:
            // the broker redelivers them, and they are dropped as already applied.
            let _ = channel.close(200, "acknowledgement failed").await;
            feed.lock().ledger.as_mut().map(|l| l.lost(generation));
            self.shared.bump();
            return Err(broker(format!("acknowledging messages of the queue {}", feed.queue))(e).into());
        }
        Ok(())
    }
}
