//! The JSON envelope that broker sources (NATS JetStream, RabbitMQ) carry events in:
//!
//! ```json
//! {"stream_id": "ORDER-42", "stream_version": 3, "type": "OrderShipped",
//!  "data": {"carrier": "UPS"}, "metadata": {"user_id": "u1"},
//!  "event_id": "0190f5c4-1c7e-7b1a-9f6e-3c2d1b0a9f8e", "recorded_at": "2025-01-02T03:04:05Z"}
//! ```
//!
//! `stream_id`, `stream_version` (1 for a stream's first event, then 2, 3, …), `type` and `data`
//! are required; `metadata` (an object), `event_id` (a UUID) and `recorded_at` (RFC 3339) are
//! optional. Other fields are ignored, so that publishers may carry more. Each source fills in
//! the position, and the id and time when the envelope has none. A source whose messages carry
//! more (Kafka's record key and headers) may supply `stream_id`, `type` and `event_id` when the
//! envelope lacks them ([`Fallback`]).

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default, borrow)]
    stream_id: Option<Cow<'a, str>>,
    stream_version: i64,
    #[serde(default, rename = "type", borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    event_id: Option<Uuid>,
    #[serde(default)]
    recorded_at: Option<DateTime<Utc>>,
}

/// The event type of a message a source could not decode. Its `data` is
/// `{"error": WHY, "raw_base64": THE FIRST BYTES, "raw_length": N, "at": WHERE}`. Runners never
/// hand it to a projection: it fails at once with a decode error and goes through the
/// projection's error policy (a dead letter keeps the raw bytes), so it never blocks what
/// follows.
pub const MALFORMED_TYPE: &str = "projectionist.malformed";

/// How many raw bytes of a malformed message its dead letter keeps.
pub const MALFORMED_RAW_LIMIT: usize = 64 * 1024;

/// The `data` of a [`MALFORMED_TYPE`] event: why, where, and the first
/// [`MALFORMED_RAW_LIMIT`] bytes of the message in base64.
pub fn malformed_data(error: &str, at: &str, raw: &[u8]) -> Arc<str> {
    use base64::Engine as _;
    let kept = &raw[..raw.len().min(MALFORMED_RAW_LIMIT)];
    let value = serde_json::json!({
        "error": error,
        "at": at,
        "raw_length": raw.len(),
        "raw_base64": base64::engine::general_purpose::STANDARD.encode(kept),
    });
    Arc::from(value.to_string())
}

/// Why a [`MALFORMED_TYPE`] event's message could not be decoded (from its `data`).
pub fn malformed_reason(data: &str) -> String {
    serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "the message could not be decoded".to_owned())
}

/// A decoded, validated envelope. `data` and `metadata` are the JSON text as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub data: Arc<str>,
    pub metadata: Arc<str>,
    pub event_id: Option<Uuid>,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// What a message carries besides its payload, used where the envelope lacks the field.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fallback<'a> {
    /// The stream id (Kafka: the record key).
    pub stream_id: Option<&'a str>,
    /// The event type (Kafka: a header).
    pub event_type: Option<&'a str>,
    /// The event id (Kafka: a header).
    pub event_id: Option<Uuid>,
}

/// Decodes and validates an envelope. The error says what is wrong, for the log.
pub fn decode(payload: &[u8]) -> Result<Envelope, String> {
    decode_with(payload, Fallback::default())
}

/// Decodes and validates an envelope, taking what it lacks from `fallback`.
pub fn decode_with(payload: &[u8], fallback: Fallback<'_>) -> Result<Envelope, String> {
    let wire: Wire<'_> = serde_json::from_slice(payload).map_err(|e| {
        if e.is_data() {
            format!("not an event envelope: {e}")
        } else {
            format!("not JSON: {e}")
        }
    })?;
    let stream_id = match (wire.stream_id, fallback.stream_id) {
        (Some(s), _) => s.into_owned(),
        (None, Some(s)) => s.to_owned(),
        (None, None) => return Err("not an event envelope: missing field `stream_id`".into()),
    };
    let event_type = match (wire.event_type, fallback.event_type) {
        (Some(t), _) => t.into_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => return Err("not an event envelope: missing field `type`".into()),
    };
    if stream_id.is_empty() {
        return Err("`stream_id` is empty".into());
    }
    if wire.stream_version < 1 {
        return Err(format!(
            "`stream_version` is {}; versions start at 1 for a stream's first event",
            wire.stream_version
        ));
    }
    if event_type.is_empty() {
        return Err("`type` is empty".into());
    }
    let metadata: Arc<str> = match wire.metadata {
        None => Arc::from("{}"),
        Some(m) if m.get().trim_start().starts_with('{') => Arc::from(m.get()),
        Some(m) => {
            let shown: String = m.get().chars().take(40).collect();
            return Err(format!("`metadata` must be a JSON object, found {shown}"));
        }
    };
    Ok(Envelope {
        stream_id,
        stream_version: wire.stream_version,
        event_type,
        data: Arc::from(wire.data.get()),
        metadata,
        event_id: wire.event_id.or(fallback.event_id),
        recorded_at: wire.recorded_at,
    })
}
