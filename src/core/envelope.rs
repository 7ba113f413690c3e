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
//! the position, and the id and time when the envelope has none.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    stream_id: Cow<'a, str>,
    stream_version: i64,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default)]
    event_id: Option<Uuid>,
    #[serde(default)]
    recorded_at: Option<DateTime<Utc>>,
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

/// Decodes and validates an envelope. The error says what is wrong, for the log.
pub fn decode(payload: &[u8]) -> Result<Envelope, String> {
    let wire: Wire<'_> = serde_json::from_slice(payload).map_err(|e| {
        if e.is_data() {
            format!("not an event envelope: {e}")
        } else {
            format!("not JSON: {e}")
        }
    })?;
    if wire.stream_id.is_empty() {
        return Err("`stream_id` is empty".into());
    }
    if wire.stream_version < 1 {
        return Err(format!(
            "`stream_version` is {}; versions start at 1 for a stream's first event",
            wire.stream_version
        ));
    }
    if wire.event_type.is_empty() {
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
        stream_id: wire.stream_id.into_owned(),
        stream_version: wire.stream_version,
        event_type: wire.event_type.into_owned(),
        data: Arc::from(wire.data.get()),
        metadata,
        event_id: wire.event_id,
        recorded_at: wire.recorded_at,
    })
}
