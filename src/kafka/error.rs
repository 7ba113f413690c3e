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

/// The refusal to read `what` (`partition TOPIC[N]`) for `projection` from `start`, below the
/// partition's low watermark `low`: retention dropped what the read model would miss.
pub(crate) fn truncated(what: &str, low: i64, start: i64, projection: &str) -> Error {
    config_error(format!(
        "Kafka {what} starts at offset {low} (its low watermark): retention already dropped \
         offsets {start}..{}, which projection {projection} has not applied, so its read model \
         would miss them. Replay them from elsewhere, or accept a partial history with \
         partial_history=accept in the source URL",
        low - 1
    ))
}

/// A setting or topic the user must fix.
pub(crate) fn config_error(message: String) -> Error {
    Error::Config(message)
}
