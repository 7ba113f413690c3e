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
//!
//! # Layout
//!
//! `builder` and `config` hold the settings, `link` the connection and its channels, `feed`
//! each projection's consumer, `ledger` the deliveries it numbers, `read` the [`Source`];
//! `envelope` decodes messages.

mod builder;
mod config;
mod envelope;
mod error;
mod feed;
mod ledger;
mod link;
mod read;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lapin::Channel;
use tokio::sync::watch;

pub use builder::RabbitSourceBuilder;
pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_EXCHANGE, DEFAULT_PREFETCH, DEFAULT_QUEUE_PREFIX, DEFAULT_RECONNECT_MAX,
    DEFAULT_RECONNECT_MIN, DEFAULT_SUBJECT,
};
pub use envelope::{event_id, Envelope, MESSAGE_ID_NAMESPACE};
pub use error::RabbitError;
/// The AMQP client this source uses, for publishers in the same program.
pub use lapin;
pub use link::amqp_connection;

use config::Settings;
use feed::Feed;
use link::Link;

#[cfg(doc)]
use crate::core::source::{Batch, Source};

/// Events from RabbitMQ: one durable queue per projection, acknowledged after each commit.
/// See the [module documentation](self).
pub struct RabbitSource {
    shared: Arc<Shared>,
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

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl RabbitSource {
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
}
