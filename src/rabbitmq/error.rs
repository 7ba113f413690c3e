//! The RabbitMQ source's errors, each saying what went wrong and what to do next.

use crate::core::error::Error;

/// What can go wrong with a [`RabbitSource`](super::RabbitSource).
///
/// The [`Source`](crate::Source) methods return the engine's [`Error`], with the same message:
/// broker failures ([`Connect`](RabbitError::Connect), [`Broker`](RabbitError::Broker),
/// [`QueueInUse`](RabbitError::QueueInUse)) become retryable [`Error::Broker`] errors (the
/// runner retries them with backoff), [`Config`](RabbitError::Config) becomes
/// [`Error::Config`], [`NoReplay`](RabbitError::NoReplay) and
/// [`Partitioned`](RabbitError::Partitioned) [`Error::Unsupported`], and
/// [`NoProjection`](RabbitError::NoProjection) [`Error::InvalidInput`].
#[derive(Debug, thiserror::Error)]
pub enum RabbitError {
    /// The URL or an option is not valid.
    #[error("RabbitMQ source URL {url}: {message}")]
    Config { url: String, message: String },

    /// The broker cannot be reached or refused the connection.
    #[error("cannot connect to RabbitMQ at {url}: {message}; is the broker running, and are the host, port, credentials and virtual host right?")]
    Connect { url: String, message: String },

    /// A broker operation failed (the channel or connection may have closed).
    #[error("RabbitMQ {op} failed: {message}")]
    Broker { op: String, message: String },

    /// Another consumer holds the projection's queue (the source consumes exclusively).
    #[error("RabbitMQ queue {queue} of projection {projection} is consumed by another process (projectionist consumes each queue exclusively, so that one runner applies it in order); this runner waits until that one stops")]
    QueueInUse { projection: String, queue: String },

    /// A read asked for messages that were already acknowledged, and so deleted by the broker.
    #[error("RabbitMQ cannot replay: projection {projection} asks to read after position {after}, but its queue {queue} already acknowledged (and the broker deleted) everything up to position {acknowledged}. A rebuild or a checkpoint moved back needs a replayable source: NATS JetStream, or the events table (SQLite or PostgreSQL)")]
    NoReplay {
        projection: String,
        queue: String,
        after: i64,
        acknowledged: i64,
    },

    /// The reader is a partition of a partitioned projection.
    #[error("projection {projection} is partitioned, but a RabbitMQ queue has no partitions: set partitions = 1 for projections that read from RabbitMQ (the queue keeps its order, and one runner consumes it)")]
    Partitioned { projection: String },

    /// The read carries no projection name.
    #[error("the RabbitMQ source keeps one queue per projection and needs the reading projection's name (Filter::projection); the engine's runners always set it")]
    NoProjection,
}

impl RabbitError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RabbitError::Connect { .. } | RabbitError::Broker { .. } | RabbitError::QueueInUse { .. }
        )
    }
}

impl From<RabbitError> for Error {
    fn from(e: RabbitError) -> Self {
        let message = e.to_string();
        match e {
            RabbitError::Connect { .. } | RabbitError::Broker { .. } | RabbitError::QueueInUse { .. } => {
                Error::Broker {
                    broker: "RabbitMQ",
                    message,
                    retryable: true,
                }
            }
            RabbitError::Config { .. } => Error::Config(message),
            RabbitError::NoReplay { .. } | RabbitError::Partitioned { .. } => Error::Unsupported(message),
            RabbitError::NoProjection => Error::InvalidInput(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rabbit_error_keeps_its_message_under_the_engine_error_of_its_kind() {
        let cases = [
            RabbitError::Connect {
                url: "amqp://h".into(),
                message: "refused".into(),
            },
            RabbitError::QueueInUse {
                projection: "p".into(),
                queue: "q".into(),
            },
            RabbitError::Config {
                url: "amqp://h".into(),
                message: "bad prefetch".into(),
            },
            RabbitError::NoReplay {
                projection: "p".into(),
                queue: "q".into(),
                after: 0,
                acknowledged: 3,
            },
            RabbitError::NoProjection,
        ];
        for e in cases {
            let (text, retryable) = (e.to_string(), e.is_retryable());
            let ours = Error::from(e);
            assert_eq!(ours.to_string(), text);
            assert_eq!(ours.is_retryable(), retryable, "{ours:?}");
            assert_eq!(ours.is_fatal(), !retryable, "{ours:?}");
        }
        assert!(matches!(
            Error::from(RabbitError::Partitioned {
                projection: "p".into()
            }),
            Error::Unsupported(_)
        ));
        assert!(matches!(
            Error::from(RabbitError::Broker {
                op: "publishing".into(),
                message: "channel closed".into()
            }),
            Error::Broker {
                broker: "RabbitMQ",
                retryable: true,
                ..
            }
        ));
    }
}
