//! The JSON envelope of an event message, and its decoding into an [`Event`].
//!
//! ```json
//! {"stream_id": "ORDER-42", "stream_version": 3, "type": "OrderShipped",
//!  "data": {"carrier": "UPS"}, "metadata": {"user_id": "u1"},
//!  "event_id": "0190f5c4-1c7e-7b1a-9f6e-3c2d1b0a9f8e", "recorded_at": "2025-01-02T03:04:05Z"}
//! ```
//!
//! `stream_id`, `stream_version` (1 for a stream's first event, then 2, 3, …), `type` and `data`
//! are required; `metadata` (an object), `event_id` (a UUID) and `recorded_at` (RFC 3339) are
//! optional. Other fields are ignored, so that publishers may carry more. The event's position
//! is the message's stream sequence.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::core::event::Event;

/// The id of an event whose envelope has none: a UUID v5 (under the URL namespace) of
/// `nats-jetstream:STREAM:SEQUENCE`, stable across redeliveries and rebuilds.
pub fn derived_event_id(stream: &str, sequence: u64) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("nats-jetstream:{stream}:{sequence}").as_bytes(),
    )
}

/// Decodes the message at `sequence` of `stream` (the envelope: [`crate::core::envelope`]).
/// `published` (the time the server stored the message) stands in for a missing
/// `recorded_at`. The error says what is wrong, for the log.
pub fn decode(
    payload: &[u8],
    stream: &str,
    sequence: u64,
    published: DateTime<Utc>,
) -> Result<Event, String> {
    let position = i64::try_from(sequence).map_err(|_| format!("stream sequence {sequence} is too large"))?;
    let e = crate::core::envelope::decode(payload)?;
    Ok(Event {
        position,
        txid: 0,
        stream_id: e.stream_id,
        stream_version: e.stream_version,
        event_type: e.event_type,
        event_id: e.event_id.unwrap_or_else(|| derived_event_id(stream, sequence)),
        data: e.data,
        metadata: e.metadata,
        recorded_at: e.recorded_at.unwrap_or(published),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-01-02T03:04:05Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap()
    }

    #[test]
    fn a_full_envelope_decodes_byte_for_byte() {
        let id = Uuid::new_v4();
        let text = format!(
            r#"{{"stream_id":"ORDER-1","stream_version":2,"type":"ItemAdded","data":{{"b":1, "a":[2]}},"metadata":{{"u":"x"}},"event_id":"{id}","recorded_at":"2024-05-06T07:08:09.5Z","extra":true}}"#
        );
        let e = decode(text.as_bytes(), "EVENTS", 7, at()).unwrap();
        assert_eq!(e.position, 7);
        assert_eq!(e.txid, 0);
        assert_eq!(e.stream_id, "ORDER-1");
        assert_eq!(e.stream_version, 2);
        assert_eq!(e.event_type, "ItemAdded");
        assert_eq!(&*e.data, r#"{"b":1, "a":[2]}"#);
        assert_eq!(&*e.metadata, r#"{"u":"x"}"#);
        assert_eq!(e.event_id, id);
        assert_eq!(e.recorded_at.to_rfc3339(), "2024-05-06T07:08:09.500+00:00");
    }

    #[test]
    fn optional_fields_default_stably() {
        let text = br#"{"stream_id":"S","stream_version":1,"type":"T","data":null,"metadata":null}"#;
        let a = decode(text, "EVENTS", 9, at()).unwrap();
        let b = decode(text, "EVENTS", 9, at()).unwrap();
        assert_eq!(&*a.metadata, "{}");
        assert_eq!(&*a.data, "null");
        assert_eq!(a.recorded_at, at());
        assert_eq!(a.event_id, b.event_id, "derived ids are stable");
        assert_eq!(a.event_id.get_version_num(), 5);
        assert_ne!(a.event_id, decode(text, "EVENTS", 10, at()).unwrap().event_id);
        assert_ne!(a.event_id, decode(text, "OTHER", 9, at()).unwrap().event_id);
    }

    #[test]
    fn escaped_strings_decode() {
        let text = br#"{"stream_id":"A\"B","stream_version":1,"type":"T\u00e9","data":{}}"#;
        let e = decode(text, "S", 1, at()).unwrap();
        assert_eq!(e.stream_id, "A\"B");
        assert_eq!(e.event_type, "Té");
    }

    #[test]
    fn malformed_envelopes_say_why() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not JSON"),
            (b"\xff\xfe", "not JSON"),
            (b"{\"stream_id\":", "not JSON"),
            (b"[1,2]", "not an event envelope"),
            (br#"{"stream_version":1,"type":"T","data":{}}"#, "stream_id"),
            (br#"{"stream_id":"S","type":"T","data":{}}"#, "stream_version"),
            (
                br#"{"stream_id":"S","stream_version":"1","type":"T","data":{}}"#,
                "not an event envelope",
            ),
            (br#"{"stream_id":"S","stream_version":1,"data":{}}"#, "type"),
            (br#"{"stream_id":"S","stream_version":1,"type":"T"}"#, "data"),
            (
                br#"{"stream_id":"","stream_version":1,"type":"T","data":{}}"#,
                "`stream_id` is empty",
            ),
            (
                br#"{"stream_id":"S","stream_version":0,"type":"T","data":{}}"#,
                "versions start at 1",
            ),
            (
                br#"{"stream_id":"S","stream_version":1,"type":"","data":{}}"#,
                "`type` is empty",
            ),
            (
                br#"{"stream_id":"S","stream_version":1,"type":"T","data":{},"metadata":[1]}"#,
                "JSON object",
            ),
            (
                br#"{"stream_id":"S","stream_version":1,"type":"T","data":{},"event_id":"nope"}"#,
                "not an event envelope",
            ),
            (
                br#"{"stream_id":"S","stream_version":1,"type":"T","data":{},"recorded_at":"yesterday"}"#,
                "not an event envelope",
            ),
        ];
        for (payload, needle) in cases {
            let err = decode(payload, "S", 1, at()).expect_err(&String::from_utf8_lossy(payload));
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        assert!(decode(
            br#"{"stream_id":"S","stream_version":1,"type":"T","data":{}}"#,
            "S",
            u64::MAX,
            at()
        )
        .unwrap_err()
        .contains("too large"));
    }
}
