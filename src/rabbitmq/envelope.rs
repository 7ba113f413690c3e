//! The message body (a JSON envelope, the same shape as the NATS source's) and event identity.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::core::event::Event;

/// The namespace of the UUID v5 ids made from message ids that are not UUIDs:
/// `04a01922-d00c-46fd-94f4-c92475ca477e`. The id of such a message is
/// `Uuid::new_v5(&MESSAGE_ID_NAMESPACE, message_id.as_bytes())`, so that every delivery of it
/// gets the same one.
pub const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x04a0_1922_d00c_46fd_94f4_c924_75ca_477e);

/// A message body: one event, as JSON.
///
/// ```json
/// {"stream_id": "ORDER-001", "stream_version": 3, "type": "OrderShipped",
///  "data": {"order_id": "ORDER-001", "carrier": "DHL"},
///  "metadata": {"user_id": "u-7"}, "event_id": "5b0c…", "recorded_at": "2024-05-01T12:00:00Z"}
/// ```
///
/// `stream_id`, `stream_version` (1 for a stream's first event, then 2, 3, …), `type` and
/// `data` are required; `metadata` (an object), `event_id` (a UUID) and `recorded_at` (RFC
/// 3339) are optional, and other fields are ignored: the NATS source's envelope. The event's
/// identity, for deduplication, is the AMQP `message_id` property, else `event_id` (see
/// [`event_id`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub stream_id: String,
    pub stream_version: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_at: Option<DateTime<Utc>>,
}

impl Envelope {
    pub fn new(
        stream_id: impl Into<String>,
        stream_version: i64,
        event_type: impl Into<String>,
        data: Value,
    ) -> Self {
        Envelope {
            stream_id: stream_id.into(),
            stream_version,
            event_type: event_type.into(),
            data,
            metadata: None,
            event_id: None,
            recorded_at: None,
        }
    }

    /// The JSON body to publish.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing a struct of strings, numbers and JSON values cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An event's identity from a message id: the id itself when it is a UUID, else a UUID v5 of
/// it in [`MESSAGE_ID_NAMESPACE`].
pub fn event_id(message_id: &str) -> Uuid {
    Uuid::parse_str(message_id.trim())
        .unwrap_or_else(|_| Uuid::new_v5(&MESSAGE_ID_NAMESPACE, message_id.as_bytes()))
}

/// Why a message is not an event.
#[derive(Debug, PartialEq)]
pub(crate) struct Malformed(pub String);

/// Decodes a message into an event (position 0: the source numbers it). `message_id` and
/// `timestamp` (Unix seconds) are the AMQP properties; the timestamp, else the time of
/// receipt, stands in for a missing `recorded_at`.
pub(crate) fn decode(
    body: &[u8],
    message_id: Option<&str>,
    timestamp: Option<u64>,
) -> Result<Event, Malformed> {
    let wire = crate::core::envelope::decode(body).map_err(Malformed)?;
    let id = match (message_id.filter(|m| !m.trim().is_empty()), wire.event_id) {
        (Some(m), _) => event_id(m),
        (None, Some(e)) => e,
        (None, None) => {
            return Err(Malformed(
                "it has no identity to drop redeliveries by: set the AMQP message_id property \
                 (a UUID, or any string unique to the event) or the envelope's event_id"
                    .into(),
            ))
        }
    };
    let recorded_at = wire
        .recorded_at
        .or_else(|| timestamp.and_then(|s| Utc.timestamp_opt(i64::try_from(s).ok()?, 0).single()))
        .unwrap_or_else(Utc::now);
    Ok(Event {
        position: 0,
        txid: 0,
        stream_id: wire.stream_id,
        stream_version: wire.stream_version,
        event_type: wire.event_type,
        event_id: id,
        data: wire.data,
        metadata: wire.metadata,
        recorded_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_full_envelope_round_trips() {
        let id = Uuid::new_v4();
        let mut env = Envelope::new(
            "ORDER-1",
            3,
            "OrderShipped",
            json!({"carrier": "DHL", "n": [1, 2]}),
        );
        env.metadata = Some(json!({"user": "u-7"}));
        env.event_id = Some(id);
        env.recorded_at = Some("2024-05-01T12:00:00Z".parse().unwrap());
        let ev = decode(&env.to_json(), None, None).unwrap();
        assert_eq!(ev.stream_id, "ORDER-1");
        assert_eq!(ev.stream_version, 3);
        assert_eq!(ev.event_type, "OrderShipped");
        assert_eq!(ev.event_id, id);
        assert_eq!(ev.data_value().unwrap(), json!({"carrier": "DHL", "n": [1, 2]}));
        assert_eq!(ev.metadata_value().unwrap(), json!({"user": "u-7"}));
        assert_eq!(ev.recorded_at.to_rfc3339(), "2024-05-01T12:00:00+00:00");
    }

    #[test]
    fn the_message_id_property_comes_first_and_other_strings_map_to_stable_v5_ids() {
        let body = br#"{"stream_id":"s","stream_version":1,"type":"T","data":null,"event_id":"a1a2a3a4-b1b2-c1c2-d1d2-d3d4d5d6d7d8"}"#;
        let mid = Uuid::new_v4();
        assert_eq!(decode(body, Some(&mid.to_string()), None).unwrap().event_id, mid);
        assert_eq!(
            decode(body, None, None).unwrap().event_id.to_string(),
            "a1a2a3a4-b1b2-c1c2-d1d2-d3d4d5d6d7d8"
        );
        let a = decode(body, Some("order-1/3"), None).unwrap().event_id;
        assert_eq!(a, decode(body, Some("order-1/3"), None).unwrap().event_id);
        assert_eq!(a, Uuid::new_v5(&MESSAGE_ID_NAMESPACE, b"order-1/3"));
        assert_ne!(a, decode(body, Some("order-1/4"), None).unwrap().event_id);
        // The documented namespace.
        assert_eq!(
            MESSAGE_ID_NAMESPACE.to_string(),
            "04a01922-d00c-46fd-94f4-c92475ca477e"
        );
    }

    #[test]
    fn optional_fields_have_defaults() {
        let body =
            br#"{"stream_id":"s","stream_version":1,"type":"T","data":{"a":1},"metadata":null,"extra":true}"#;
        let ev = decode(body, Some("m-1"), Some(1_700_000_000)).unwrap();
        assert_eq!(&*ev.metadata, "{}");
        assert_eq!(ev.recorded_at.timestamp(), 1_700_000_000);
        assert_eq!(&*ev.data, r#"{"a":1}"#);
        let ev = decode(body, Some("m-1"), None).unwrap();
        assert!((Utc::now() - ev.recorded_at).num_seconds() < 5);
    }

    #[test]
    fn malformed_messages_say_why() {
        let cases: &[(&[u8], Option<&str>, &str)] = &[
            (b"\xff\xfe", Some("m"), "not JSON"),
            (b"not json", Some("m"), "not JSON"),
            (
                br#"{"stream_id":"s","type":"T","data":1}"#,
                Some("m"),
                "stream_version",
            ),
            (
                br#"{"stream_id":"s","stream_version":"1","type":"T","data":1}"#,
                Some("m"),
                "not an event envelope",
            ),
            (
                br#"{"stream_id":"s","stream_version":0,"type":"T","data":1}"#,
                Some("m"),
                "start at 1",
            ),
            (
                br#"{"stream_id":"","stream_version":1,"type":"T","data":1}"#,
                Some("m"),
                "`stream_id` is empty",
            ),
            (
                br#"{"stream_id":"s","stream_version":1,"type":"","data":1}"#,
                Some("m"),
                "`type` is empty",
            ),
            (
                br#"{"stream_id":"s","stream_version":1,"type":"T","data":1,"metadata":[1]}"#,
                Some("m"),
                "JSON object",
            ),
            (
                br#"{"stream_id":"s","stream_version":1,"type":"T","data":1}"#,
                None,
                "message_id",
            ),
            (
                br#"{"stream_id":"s","stream_version":1,"type":"T","data":1}"#,
                Some("  "),
                "message_id",
            ),
            (
                br#"{"stream_id":"s","stream_version":1,"type":"T","data":1,"event_id":"nope"}"#,
                Some("m"),
                "not an event envelope",
            ),
            (
                br#"{"stream_id":"s","stream_version":1,"type":"T","data":1,"recorded_at":"soon"}"#,
                Some("m"),
                "not an event envelope",
            ),
        ];
        for (body, mid, want) in cases {
            let Malformed(why) = decode(body, *mid, None).unwrap_err();
            assert!(why.contains(want), "{:?}: {why}", String::from_utf8_lossy(body));
        }
    }
}
