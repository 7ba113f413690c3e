//! NATS JetStream as a source of events (feature `nats`).
//!
//! Each message of a JetStream stream is one event, a JSON envelope (see [`envelope`]); its
//! position is the message's stream sequence. Each projection reads through its own durable
//! pull consumer, named [`NatsSource::consumer_name`] (`projectionist-` and the projection's
//! name by default), filtered to the projection's subject when it has one.
//!
//! **Exactly-once effect.** The read model and the checkpoint commit in one transaction of the
//! store (SQLite or PostgreSQL); the source acknowledges messages only after that commit
//! ([`Source::acknowledge`]). A message redelivered after a crash sits at or below the
//! committed checkpoint and is dropped (and acknowledged again), so every event changes the
//! read model exactly once. The store's checkpoint is the truth: the consumer's ack floor is
//! only an optimisation, and the consumer is recreated to deliver from the checkpoint
//! whenever the two disagree.
//!
//! **Acknowledgement.** Consumers use `AckPolicy::All`: one acknowledgement of the last message
//! of a committed batch covers the whole batch, including the messages the projection ignored.
//! Commits happen in stream order, so acknowledging "everything up to here" is exactly what a
//! commit makes durable. `max_deliver` is unlimited, so the server never drops a message.
//!
//! **Malformed envelopes** never stall a projection: each is logged at WARN with its stream
//! sequence, subject and what is wrong, counted (metric `projectionist_nats_malformed_total`
//! and [`NatsSource::malformed`]), passed over like an event of an unhandled type (counted as
//! ignored) and acknowledged with its batch.
//!
//! Partitioned projections are refused: scale out with one process per projection instead.
//! See docs/nats.md.

mod address;
pub mod envelope;
mod reader;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use async_nats;
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use self::address::{valid_name, valid_subject, Address};
use self::reader::{Env, Reader};
use crate::core::error::{Error, Result};
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, Source};

/// The default prefix of consumer names.
pub const DEFAULT_CONSUMER_PREFIX: &str = "projectionist-";
/// The metric counting malformed envelopes, labelled by projection.
pub const METRIC_MALFORMED: &str = "projectionist_nats_malformed_total";

/// A broker failure during `op` (retryable: the client reconnects, and the operation is
/// tried again).
pub(crate) fn broker(op: impl std::fmt::Display, err: impl std::fmt::Display) -> Error {
    let message = err.to_string();
    let hint = if message.contains("no responders") {
        "; is JetStream enabled on the server (nats-server -js)?"
    } else {
        ""
    };
    Error::Broker {
        broker: "NATS JetStream",
        message: format!("NATS JetStream: {op}: {message}{hint}"),
        retryable: true,
    }
}

/// A JetStream stream as a [`Source`]. Cheap to clone; clones share the connection and the
/// consumers.
#[derive(Clone)]
pub struct NatsSource {
    inner: Arc<Inner>,
}

struct Inner {
    env: Arc<Env>,
    prefix: String,
    subjects: HashMap<String, String>,
    default_subject: Option<String>,
    readers: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<Reader>>>>,
    shown: String,
}

impl std::fmt::Debug for NatsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSource")
            .field("url", &self.inner.shown)
            .finish()
    }
}

/// Builds a [`NatsSource`]: the servers, the stream, subject filters and credentials.
///
/// ```no_run
/// # async fn f() -> projectionist::Result<()> {
/// use projectionist::nats::NatsSource;
/// let source = NatsSource::builder("nats://127.0.0.1:4222")?
///     .stream("EVENTS")
///     .subject("order_summary", "orders.>")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsSourceBuilder {
    address: Address,
    subjects: HashMap<String, String>,
    creds_file: Option<PathBuf>,
    ack_wait: Duration,
    max_ack_pending: i64,
    connect_timeout: Duration,
}

impl std::fmt::Debug for NatsSourceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSourceBuilder")
            .field("address", &self.address)
            .field("subjects", &self.subjects)
            .finish_non_exhaustive()
    }
}

impl NatsSourceBuilder {
    /// The stream to read (overrides the URL's `?stream=`).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.address.stream = Some(name.into());
        self
    }

    /// The subject filter of one projection (`orders.>`, `orders.*.created`, …): its consumer
    /// only sees the stream's messages on those subjects.
    pub fn subject(mut self, projection: impl Into<String>, subject: impl Into<String>) -> Self {
        self.subjects.insert(projection.into(), subject.into());
        self
    }

    /// The subject filter of projections that have none of their own (overrides the URL's
    /// `?subject=`). Without one, a projection reads the whole stream.
    pub fn default_subject(mut self, subject: impl Into<String>) -> Self {
        self.address.subject = Some(subject.into());
        self
    }

    /// The prefix of consumer names (default `projectionist-`; overrides the URL's
    /// `?consumer_prefix=`).
    pub fn consumer_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.address.consumer_prefix = Some(prefix.into());
        self
    }

    /// Authenticates with a user and password (overrides the URL's `USER:PASSWORD@`).
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.address.user_password = Some((user.into(), password.into()));
        self.address.token = None;
        self
    }

    /// Authenticates with a token (overrides the URL's `TOKEN@`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.address.token = Some(token.into());
        self.address.user_password = None;
        self
    }

    /// Authenticates with a `.creds` file (overrides the URL's `?creds=`).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.creds_file = Some(path.into());
        self
    }

    /// How long the server waits for an acknowledgement before it redelivers (default 60 s).
    /// Delivered messages stay buffered meanwhile, so a redelivery costs only bandwidth.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// The most unacknowledged messages per consumer (default 50,000; -1: no limit). A batch
    /// never holds more.
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.max_ack_pending = max;
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn check(&self) -> Result<(String, String)> {
        let stream = self.address.stream.clone().ok_or_else(|| {
            Error::Config(
                "no JetStream stream named: add ?stream=NAME to the NATS source URL (e.g. nats://127.0.0.1:4222?stream=EVENTS)"
                    .into(),
            )
        })?;
        if !valid_name(&stream) {
            return Err(Error::Config(format!(
                "{stream:?} cannot name a JetStream stream: no whitespace, '.', '*', '>' or path separators"
            )));
        }
        let prefix = self
            .address
            .consumer_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_CONSUMER_PREFIX.to_owned());
        if !prefix.is_empty() && !valid_name(&prefix) {
            return Err(Error::Config(format!(
                "consumer prefix {prefix:?} cannot start a consumer name: no whitespace, '.', '*', '>' or path separators"
            )));
        }
        for (projection, subject) in self
            .subjects
            .iter()
            .map(|(p, s)| (Some(p.as_str()), s))
            .chain(self.address.subject.iter().map(|s| (None, s)))
        {
            if !valid_subject(subject) {
                let whose = projection.map_or("the default subject".to_owned(), |p| {
                    format!("projection {p}'s subject")
                });
                return Err(Error::Config(format!(
                    "{whose} {subject:?} is not a NATS subject filter: dot-separated tokens without spaces, \
                     `*` for one token and `>` as the last one, e.g. \"orders.>\""
                )));
            }
        }
        Ok((stream, prefix))
    }

    /// Connects, and checks that the stream exists and that every subject filter lies within
    /// its subjects.
    pub async fn connect(self) -> Result<NatsSource> {
        let (stream_name, prefix) = self.check()?;
        let shown = format!("{}?stream={stream_name}", self.address.servers.join(","));
        let servers_shown = self.address.servers.join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name("projectionist")
            .connection_timeout(self.connect_timeout)
            .event_callback(move |event| {
                let servers = servers_shown.clone();
                async move {
                    use async_nats::Event;
                    match event {
                        Event::Disconnected => {
                            tracing::warn!(nats = %servers, "disconnected from NATS; reconnecting (reads are retried meanwhile)")
                        }
                        Event::SlowConsumer(_) | Event::ServerError(_) | Event::ClientError(_) => {
                            tracing::warn!(nats = %servers, %event, "NATS connection problem")
                        }
                        other => tracing::debug!(nats = %servers, event = %other, "NATS connection event"),
                    }
                }
            });
        if let Some((user, password)) = self.address.user_password.clone() {
            options = options.user_and_password(user, password);
        }
        if let Some(token) = self.address.token.clone() {
            options = options.token(token);
        }
        let creds = self
            .creds_file
            .clone()
            .or_else(|| self.address.creds.as_ref().map(PathBuf::from));
        if let Some(path) = creds {
            options = options.credentials_file(&path).await.map_err(|e| {
                Error::Config(format!(
                    "cannot use the NATS credentials file {}: {e}",
                    path.display()
                ))
            })?;
        }
        let servers = self
            .address
            .servers
            .iter()
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| Error::Config(format!("bad NATS server address {s}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let client = options
            .connect(servers)
            .await
            .map_err(|e| broker(format!("cannot connect to {shown}"), e))?;
        let context = jetstream::new(client.clone());
        let stream = context.get_stream(&stream_name).await.map_err(|e| {
            use async_nats::jetstream::context::GetStreamErrorKind;
            match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Error::Config(format!(
                        "NATS at {} has no JetStream stream {stream_name}; create it (for example \
                         `nats stream add {stream_name} --subjects 'events.>'`) or name another with ?stream=NAME",
                        self.address.servers.join(",")
                    ))
                }
                _ => broker(format!("reading the info of stream {stream_name}"), e),
            }
        })?;
        let stream_subjects = stream.cached_info().config.subjects.clone();
        if !stream_subjects.is_empty() {
            for (whose, subject) in self
                .subjects
                .iter()
                .map(|(p, s)| (format!("projection {p}'s subject"), s))
                .chain(
                    self.address
                        .subject
                        .iter()
                        .map(|s| ("the default subject".to_owned(), s)),
                )
            {
                if !stream_subjects.iter().any(|s| subject_within(subject, s)) {
                    return Err(Error::Config(format!(
                        "{whose} {subject:?} is not within the subjects of stream {stream_name} ({}); \
                         its consumer would never see a message",
                        stream_subjects.join(", ")
                    )));
                }
            }
        }
        let (changes, _) = watch::channel(0u64);
        Ok(NatsSource {
            inner: Arc::new(Inner {
                env: Arc::new(Env {
                    client,
                    stream,
                    stream_name,
                    changes,
                    malformed: AtomicU64::new(0),
                    ack_wait: self.ack_wait,
                    max_ack_pending: self.max_ack_pending,
                }),
                prefix,
                subjects: self.subjects,
                default_subject: self.address.subject,
                readers: Mutex::new(HashMap::new()),
                shown,
            }),
        })
    }
}

/// Whether every subject that `filter` matches is matched by the stream subject `within`.
fn subject_within(filter: &str, within: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let w: Vec<&str> = within.split('.').collect();
    for (i, wt) in w.iter().enumerate() {
        if *wt == ">" {
            return i < f.len();
        }
        let Some(ft) = f.get(i) else { return false };
        let ok = match (*ft, *wt) {
            (">", _) => false,
            ("*", w) => w == "*",
            (f, w) => w == "*" || f == w,
        };
        if !ok {
            return false;
        }
    }
    f.len() == w.len()
}

impl NatsSource {
    /// A builder from a URL: `nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT][,HOST…][?stream=NAME]
    /// [&subject=FILTER][&consumer_prefix=P][&creds=PATH]`.
    pub fn builder(url: &str) -> Result<NatsSourceBuilder> {
        Ok(NatsSourceBuilder {
            address: Address::parse(url)?,
            subjects: HashMap::new(),
            creds_file: None,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 50_000,
            connect_timeout: Duration::from_secs(5),
        })
    }

    /// Connects to the URL (which names the stream) with the default settings.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::builder(url)?.connect().await
    }

    /// The stream read.
    pub fn stream_name(&self) -> &str {
        &self.inner.env.stream_name
    }

    /// The servers and the stream, without credentials.
    pub fn location(&self) -> &str {
        &self.inner.shown
    }

    /// The connection, e.g. to publish events.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.env.client
    }

    /// The subject filter of `projection`, if it has one.
    pub fn subject_of(&self, projection: &str) -> Option<&str> {
        self.inner
            .subjects
            .get(projection)
            .or(self.inner.default_subject.as_ref())
            .map(String::as_str)
    }

    /// The durable consumer of `projection`: the prefix and the projection's name, where
    /// characters that cannot be in a consumer name (such as `.`) become `_` and a short hash
    /// of the name is appended to keep names apart.
    pub fn consumer_name(&self, projection: &str) -> String {
        consumer_name(&self.inner.prefix, projection)
    }

    /// Malformed envelopes met so far (each logged at WARN and passed over).
    pub fn malformed(&self) -> u64 {
        self.inner.env.malformed.load(Ordering::Relaxed)
    }

    /// Deletes `projection`'s durable consumer, if it exists (its progress lives in the store,
    /// so the next read creates it again at the checkpoint). Returns whether it existed.
    pub async fn delete_consumer(&self, projection: &str) -> Result<bool> {
        let name = self.consumer_name(projection);
        if let Ok(mut readers) = self.inner.readers.lock() {
            readers.remove(projection);
        }
        match self.inner.env.stream.consumer_info(&name).await {
            Ok(_) => {}
            Err(e) if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound => {
                return Ok(false)
            }
            Err(e) => return Err(broker(format!("reading the info of consumer {name}"), e)),
        }
        self.inner
            .env
            .stream
            .delete_consumer(&name)
            .await
            .map_err(|e| broker(format!("deleting the consumer {name}"), e))?;
        Ok(true)
    }

    fn reader(&self, projection: &Arc<str>) -> Arc<tokio::sync::Mutex<Reader>> {
        let mut readers = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        readers
            .entry(projection.clone())
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Reader::new(
                    projection.clone(),
                    self.consumer_name(projection),
                    self.subject_of(projection).map(str::to_owned),
                )))
            })
            .clone()
    }

    fn existing_reader(&self, projection: &str) -> Option<Arc<tokio::sync::Mutex<Reader>>> {
        self.inner
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(projection)
            .cloned()
    }
}

fn consumer_name(prefix: &str, projection: &str) -> String {
    let mut name: String = projection
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name != projection || name.is_empty() || name.len() > 128 {
        use md5::{Digest, Md5};
        let digest = Md5::digest(projection.as_bytes());
        name.truncate(128);
        name.push('-');
        for b in &digest[..4] {
            name.push_str(&format!("{b:02x}"));
        }
    }
    format!("{prefix}{name}")
}

impl NatsSource {
    /// Up to `limit` messages after `after`, read from the stream by sequence (no consumer,
    /// nothing acknowledged): what a reader with no projection gets. Malformed envelopes are
    /// counted as ignored, as for projections.
    async fn peek(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let env = &self.inner.env;
        let last = env.last_sequence().await?;
        let mut batch = Batch {
            scanned_to: after,
            ..Batch::default()
        };
        let mut next = position(after) + 1;
        while next <= last && batch.events.len() + (batch.ignored as usize) < limit.max(1) {
            let message = env
                .stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(">")
                .send()
                .await
                .map_err(|e| broker(format!("reading message {next} of stream {}", env.stream_name), e))?;
            let published = i64::try_from(message.time.unix_timestamp_nanos())
                .map(DateTime::<Utc>::from_timestamp_nanos)
                .unwrap_or_default();
            match envelope::decode(&message.payload, &env.stream_name, message.sequence, published) {
                Ok(event) if filter.admits(&event.event_type) => batch.events.push(event),
                _ => batch.ignored += 1,
            }
            batch.scanned_to = Checkpoint::at(i64::try_from(message.sequence).unwrap_or(i64::MAX));
            next = message.sequence + 1;
        }
        Ok(batch)
    }
}

fn position(checkpoint: Checkpoint) -> u64 {
    u64::try_from(checkpoint.position).unwrap_or(0)
}

impl Source for NatsSource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let Some(projection) = filter.projection.as_ref() else {
            // No projection: an inspection (`projectionist events`), read message by message
            // from the stream itself, with no consumer to leave behind.
            return self.peek(after, limit, filter).await;
        };
        if let Some(p) = filter.partition.filter(|p| p.count > 1) {
            return Err(Error::Unsupported(format!(
                "projection {projection} has {} partitions, and a NATS source does not partition: set partitions = 1 \
                 (scale out with one process per projection instead)",
                p.count
            )));
        }
        let reader = self.reader(projection);
        let mut reader = reader.lock().await;
        let after = position(after);
        reader.ensure(&self.inner.env, after, limit).await?;
        reader.read(&self.inner.env, after, limit, filter).await
    }

    async fn head(&self) -> Result<Checkpoint> {
        let last = self.inner.env.last_sequence().await?;
        Ok(Checkpoint::at(i64::try_from(last).unwrap_or(i64::MAX)))
    }

    /// The messages of the whole stream after `after` (a projection with a subject filter
    /// sees fewer), and the time the first of them was stored.
    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let env = &self.inner.env;
        let last = env.last_sequence().await?;
        let after = position(after);
        if last <= after {
            return Ok(Lag::default());
        }
        let oldest = env
            .stream
            .raw_message_builder()
            .sequence(after + 1)
            .next_by_subject(">")
            .send()
            .await
            .ok()
            .and_then(|m| i64::try_from(m.time.unix_timestamp_nanos()).ok())
            .map(DateTime::<Utc>::from_timestamp_nanos);
        Ok(Lag {
            events: last - after,
            oldest,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.env.changes.subscribe()
    }

    async fn acknowledge(&self, filter: &Filter, through: Checkpoint) -> Result<()> {
        let Some(reader) = filter.projection.as_deref().and_then(|p| self.existing_reader(p)) else {
            return Ok(());
        };
        let reader = reader.lock().await;
        reader.acknowledge(&self.inner.env, position(through)).await
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn consumer_names_are_valid_and_distinct() {
        assert_eq!(
            consumer_name("projectionist-", "order_summary"),
            "projectionist-order_summary"
        );
        let dotted = consumer_name("projectionist-", "orders.v2");
        let underscored = consumer_name("projectionist-", "orders_v2");
        assert!(dotted.starts_with("projectionist-orders_v2-"), "{dotted}");
        assert_ne!(dotted, underscored);
        assert!(valid_name(&dotted));
        assert!(valid_name(&consumer_name("", "a b>*")));
        let long = consumer_name("p-", &"x".repeat(300));
        assert!(valid_name(&long) && long.len() < 150, "{long}");
    }

    #[test]
    fn subject_containment() {
        for (filter, within) in [
            ("orders.>", "orders.>"),
            ("orders.created", "orders.>"),
            ("orders.*.x", "orders.>"),
            ("orders.*", "orders.*"),
            ("orders.a", "orders.*"),
            ("a.b.c", ">"),
            ("orders", "orders"),
        ] {
            assert!(subject_within(filter, within), "{filter} in {within}");
        }
        for (filter, within) in [
            ("orders", "orders.>"),
            ("orders.>", "orders.*"),
            ("orders.a.b", "orders.*"),
            ("payments.>", "orders.>"),
            ("orders.*", "orders.a"),
            ("orders.a", "orders"),
        ] {
            assert!(!subject_within(filter, within), "{filter} not in {within}");
        }
    }

    #[test]
    fn builders_check_their_settings() {
        let err = |b: NatsSourceBuilder| b.check().unwrap_err().to_string();
        let b = || NatsSource::builder("nats://h").unwrap();
        assert!(err(b()).contains("?stream=NAME"));
        assert!(err(b().stream("A.B")).contains("cannot name a JetStream stream"));
        assert!(err(b().stream("S").subject("p", "a..b")).contains("projection p's subject"));
        assert!(err(b().stream("S").default_subject("a b")).contains("default subject"));
        assert!(err(b().stream("S").consumer_prefix("x.")).contains("consumer prefix"));
        let (stream, prefix) = b().stream("S").subject("p", "orders.>").check().unwrap();
        assert_eq!((stream.as_str(), prefix.as_str()), ("S", DEFAULT_CONSUMER_PREFIX));
        let built = NatsSource::builder("nats://u:pw@h?stream=S").unwrap().token("t");
        assert!(!format!("{built:?}").contains("pw"));
    }
}
