//! Errors of the core, each saying what went wrong and what to do next.

use std::fmt;

use super::event::{Checkpoint, Event, ExpectedVersion};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A projection handler's failure. Error policies decide what happens next.
///
/// Any `std::error::Error` converts into it with `?`, so handlers can propagate database and
/// serde errors directly.
pub struct HandlerError {
    kind: HandlerErrorKind,
    message: String,
    source: Option<BoxError>,
}

/// Whether the payload failed to decode or the handler itself failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandlerErrorKind {
    /// The payload did not decode into the handler's type.
    Decode,
    /// The handler (or the statement it ran) failed.
    Handler,
}

impl HandlerError {
    /// A handler failure with a message.
    pub fn msg(message: impl Into<String>) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Handler,
            message: message.into(),
            source: None,
        }
    }

    /// A decode failure of `event`'s payload.
    pub fn decode(event: &Event, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Decode,
            message: format!(
                "cannot decode {} event at position {} of stream {}: {err}",
                event.event_type, event.position, event.stream_id
            ),
            source: Some(Box::new(err)),
        }
    }

    /// A message the source could not decode (an event of type
    /// [`MALFORMED_TYPE`](super::envelope::MALFORMED_TYPE)).
    pub fn malformed(event: &Event) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Decode,
            message: format!(
                "cannot decode the message at position {} of the source: {}",
                event.position,
                super::envelope::malformed_reason(&event.data)
            ),
            source: None,
        }
    }

    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    pub fn is_decode(&self) -> bool {
        self.kind == HandlerErrorKind::Decode
    }

    /// Adds context in front of the message.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The underlying error, if any.
    pub fn source_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(err: E) -> Self {
        HandlerError {
            kind: HandlerErrorKind::Handler,
            message: err.to_string(),
            source: Some(Box::new(err)),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

/// The failure of one event inside a batch: which one, and why.
#[derive(Debug)]
pub struct BatchFailure {
    /// Index of the failing event in the batch.
    pub index: usize,
    pub error: HandlerError,
}

/// Errors of the engine and its stores.
///
/// The variants fall into three groups:
///
/// - **Outcomes the caller handles**: [`Conflict`](Error::Conflict),
///   [`DuplicateEvent`](Error::DuplicateEvent), [`UnknownProjection`](Error::UnknownProjection),
///   [`UnknownDeadLetter`](Error::UnknownDeadLetter), [`Timeout`](Error::Timeout).
/// - **A projection failed**: [`Lifecycle`](Error::Lifecycle),
///   [`RebuildFailed`](Error::RebuildFailed), [`InlineProjection`](Error::InlineProjection).
/// - **Something else failed, and whose it is to fix**: the caller's
///   ([`InvalidInput`](Error::InvalidInput)), the configuration's ([`Config`](Error::Config)),
///   a missing capability ([`Unsupported`](Error::Unsupported)), the database's
///   ([`Database`](Error::Database)), the broker's ([`Broker`](Error::Broker)), the file
///   system's ([`Io`](Error::Io)), or projectionist's own ([`Internal`](Error::Internal)).
///
/// [`Error::is_retryable`] says whether the same operation may succeed later as it is (a lost
/// connection, a busy database); [`Error::is_fatal`] says whether it never will until someone
/// changes something. Runners retry the first kind with backoff and stop on the second.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An optimistic-concurrency conflict on append.
    #[error("concurrency conflict on stream {stream}: expected version {expected}, actual version {actual}; reload the stream and retry")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        actual: i64,
    },

    /// An event with this id is already stored.
    #[error("duplicate event id {event_id}: an event with this id is already stored (appends with explicit ids are idempotent only when retried whole)")]
    DuplicateEvent { event_id: uuid::Uuid },

    /// No projection with that name is registered.
    #[error("unknown projection {name:?}; known projections: {}", known.join(", "))]
    UnknownProjection { name: String, known: Vec<String> },

    /// No dead letter with that id.
    #[error("no dead letter with id {0}; list them with `projectionist dead-letters list`")]
    UnknownDeadLetter(i64),

    /// A projection's setup or reset failed.
    #[error("projection {projection}: {step} failed: {message}")]
    Lifecycle {
        projection: String,
        step: &'static str,
        message: String,
    },

    /// A rebuild met a failing event and stopped (rebuilds fail fast by default).
    #[error("rebuild of {projection} stopped at position {position} ({event_type} on stream {stream_id}): {message}; fix the handler or the event, then run the rebuild again to resume")]
    RebuildFailed {
        projection: String,
        position: i64,
        event_type: String,
        stream_id: String,
        message: String,
    },

    /// An inline projection failed inside an append: the append was rolled back whole.
    #[error("inline projection {projection} failed on the event at position {position}: {message}; the append was rolled back and nothing of it was written")]
    InlineProjection {
        projection: String,
        position: i64,
        message: String,
    },

    /// A dead letter's retry failed again: nothing was applied, and the attempt is recorded
    /// on the dead letter.
    #[error("dead letter {id} of projection {projection} failed again: {message}; it stays a dead letter (fix the handler or discard it)")]
    RetryFailed {
        id: i64,
        projection: String,
        message: String,
    },

    /// `wait_for` ran out of time. Not a failure: the projection is behind by `lag_events`.
    #[error("timed out waiting for projection {projection} to reach {target}: it is at {checkpoint}, {lag_events} events behind")]
    Timeout {
        projection: String,
        target: Checkpoint,
        checkpoint: Checkpoint,
        lag_events: u64,
    },

    /// A value passed to the call is not valid (an empty stream id, nothing to append, a
    /// projection registered twice, an unknown run state). Fix the call; retrying it as it is
    /// fails again.
    #[error("{0}")]
    InvalidInput(String),

    /// The configuration is wrong: a URL, a setting, a name the database or broker does not
    /// have, or a projection's options that do not match what is stored. Fix it and start
    /// again.
    #[error("{0}")]
    Config(String),

    /// The store, source or server cannot do what was asked (partitions without PostgreSQL,
    /// a replay from a RabbitMQ queue, PostgreSQL older than 13). Use one that can, or do
    /// without.
    #[error("{0}")]
    Unsupported(String),

    /// The database failed; the message says during which operation, and what the server said
    /// (with PostgreSQL's detail, hint and SQLSTATE).
    #[error("database error during {op}: {message}")]
    Database {
        op: &'static str,
        message: String,
        /// Whether retrying later may succeed (a lost connection, a busy database, a
        /// serialization failure).
        retryable: bool,
        /// The driver's error (`tokio_postgres::Error`, `rusqlite::Error`), when there is
        /// one. Read its codes with [`Error::sqlstate`] and [`Error::sqlite_code`]. It is not
        /// [`source`](std::error::Error::source): the message already says what it says.
        cause: Option<BoxError>,
    },

    /// A message broker (NATS JetStream, RabbitMQ) failed. The message names the broker and
    /// the operation.
    #[error("{message}")]
    Broker {
        /// Which broker: `"NATS JetStream"` or `"RabbitMQ"`.
        broker: &'static str,
        message: String,
        /// Whether retrying later may succeed (the broker is unreachable, a channel closed).
        retryable: bool,
    },

    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// An invariant of projectionist broke: a task panicked (in projectionist or in a
    /// projection's code), a lock was poisoned, a store answered what cannot be. Not
    /// retryable; the message says what happened. Report it (or fix the handler that
    /// panicked).
    #[error("internal error: {0}")]
    Internal(String),

    /// The engine is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl Error {
    /// A database error during `op`, keeping `err` as its cause and its text as the message
    /// (retryable, as most database failures of a store are transient; build
    /// [`Error::Database`] directly otherwise).
    pub fn database(op: &'static str, err: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Database {
            op,
            message: err.to_string(),
            retryable: true,
            cause: Some(Box::new(err)),
        }
    }

    /// The database driver's error behind an [`Error::Database`], if it kept one.
    pub fn database_cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Error::Database { cause, .. } => cause.as_deref(),
            _ => None,
        }
    }

    /// The SQLSTATE of a PostgreSQL [`Error::Database`] (`"40001"`: serialization failure,
    /// `"23505"`: unique violation, `"42P01"`: undefined table, ...), when the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        #[cfg(feature = "postgres")]
        if let Some(e) = self
            .database_cause()
            .and_then(|c| c.downcast_ref::<tokio_postgres::Error>())
        {
            return e.code().map(|c| c.code());
        }
        None
    }

    /// The extended result code of an SQLite [`Error::Database`] (`5`: busy, `2067`: unique
    /// constraint failed, ...), when SQLite returned one.
    pub fn sqlite_code(&self) -> Option<i32> {
        #[cfg(feature = "sqlite")]
        if let Some(rusqlite::Error::SqliteFailure(e, _)) = self
            .database_cause()
            .and_then(|c| c.downcast_ref::<rusqlite::Error>())
        {
            return Some(e.extended_code);
        }
        None
    }

    /// The failure of a task that `what` ran: a panic is [`Error::Internal`] with the panic's
    /// message; a task cancelled by the runtime shutting down is [`Error::Shutdown`].
    pub(crate) fn task(what: &str, err: tokio::task::JoinError) -> Self {
        let panic = match err.try_into_panic() {
            Ok(panic) => panic,
            Err(_) => return Error::Shutdown,
        };
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Error::Internal(format!(
            "{what} panicked: {message}; nothing of its work was committed"
        ))
    }

    /// Whether retrying the same operation later, unchanged, may succeed: a lost or refused
    /// connection, a busy or locked database, a serialization failure, an unreachable broker,
    /// a `wait_for` that timed out. Runners retry these with backoff.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database { retryable, .. } | Error::Broker { retryable, .. } => *retryable,
            Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::BrokenPipe
            ),
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// Whether retrying cannot help until someone changes something (the call, the
    /// configuration, the data, the code): every error that is not retryable, except
    /// [`Error::Shutdown`]. A runner that meets one stops and returns it.
    pub fn is_fatal(&self) -> bool {
        !self.is_retryable() && !matches!(self, Error::Shutdown)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::store::RunState;

    #[test]
    fn retryable_and_fatal_split_every_error_but_shutdown() {
        let db = |retryable| Error::Database {
            op: "reading events",
            message: "x".into(),
            retryable,
            cause: None,
        };
        let broker = |retryable| Error::Broker {
            broker: "RabbitMQ",
            message: "x".into(),
            retryable,
        };
        for e in [
            db(true),
            broker(true),
            Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        ] {
            assert!(e.is_retryable() && !e.is_fatal(), "{e:?}");
        }
        for e in [
            db(false),
            broker(false),
            Error::InvalidInput("x".into()),
            Error::Config("x".into()),
            Error::Unsupported("x".into()),
            Error::Internal("x".into()),
            Error::Io(std::io::ErrorKind::NotFound.into()),
            Error::UnknownDeadLetter(1),
        ] {
            assert!(!e.is_retryable() && e.is_fatal(), "{e:?}");
        }
        assert!(!Error::Shutdown.is_retryable() && !Error::Shutdown.is_fatal());
    }

    #[test]
    fn an_unknown_run_state_is_an_error_naming_it() {
        assert_eq!(RunState::parse("paused").unwrap(), RunState::Paused);
        for s in [
            RunState::Running,
            RunState::Paused,
            RunState::Stopped,
            RunState::Rebuilding,
        ] {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
        let err = RunState::parse("halted").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("\"halted\"")),
            "{err:?}"
        );
        let err = RunState::stored("orders", 3, "halted").unwrap_err();
        let text = err.to_string();
        assert!(!err.is_retryable(), "{err:?}");
        assert!(
            text.contains("orders partition 3")
                && text.contains("\"halted\"")
                && text.contains("projectionist resume orders"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_an_internal_error_with_the_panic_message() {
        let joined = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let err = Error::task("a projection worker", joined);
        assert!(
            matches!(&err, Error::Internal(m) if m.contains("a projection worker panicked: boom")),
            "{err:?}"
        );
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        assert!(matches!(
            Error::task("x", task.await.unwrap_err()),
            Error::Shutdown
        ));
    }
}
