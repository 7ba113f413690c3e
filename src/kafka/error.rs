//! Kafka failures as the core's errors.

use crate::core::error::Error;

/// A broker failure during `op` (retryable: librdkafka reconnects, and the operation is tried
/// again).
pub(crate) fn broker(op: impl std::fmt::Display, err: impl std::fmt::Display) -> Error {
    Error::Broker {
        broker: "Kafka",
        message: format!("Kafka: {op}: {err}"),
        retryable: true,
    }
}

/// A setting or topic the user must fix.
pub(crate) fn config_error(message: String) -> Error {
    Error::Config(message)
}
