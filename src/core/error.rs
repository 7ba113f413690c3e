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

    /// Another runner moved the checkpoint: this one lost the compare-and-set.
    #[error("checkpoint conflict on projection {projection} partition {partition}: expected {expected}, found {actual}; another runner owns it")]
    Fenced {
        projection: String,
        partition: u32,
        expected: Checkpoint,
        actual: Checkpoint,
    },

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

    /// `wait_for` ran out of time. Not a failure: the projection is behind by `lag_events`.
    #[error("timed out waiting for projection {projection} to reach {target}: it is at {checkpoint}, {lag_events} events behind")]
    Timeout {
        projection: String,
        target: Checkpoint,
        checkpoint: Checkpoint,
        lag_events: u64,
    },

    /// Invalid input or configuration.
    #[error("{0}")]
    Invalid(String),

    /// The database failed; the message says which operation.
    #[error("database error during {op}: {message}")]
    Database {
        op: &'static str,
        message: String,
        retryable: bool,
    },

    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// The engine is shutting down.
    #[error("shutting down")]
    Shutdown,
}

impl Error {
    /// A database error during `op`.
    pub fn database(op: &'static str, err: impl fmt::Display) -> Self {
        Error::Database {
            op,
            message: err.to_string(),
            retryable: true,
        }
    }

    /// Whether retrying the same operation later may succeed (lost connection, busy database).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Database { retryable: true, .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
