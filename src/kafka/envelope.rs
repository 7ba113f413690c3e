//! A Kafka record as an [`Event`]: the shared JSON envelope ([`crate::core::envelope`]) in the
//! value, with the record key as the stream id and the headers `type` (or `event_type`) and
//! `event_id` standing in when the envelope lacks them. The position is the record's offset
//! plus one, so that a partition's checkpoint 0 means "nothing applied".
//!
//! A record that does not decode becomes an event of type
//! [`MALFORMED_TYPE`](crate::core::envelope::MALFORMED_TYPE) carrying why and its raw bytes
//! (bounded): the runner fails it under the projection's error policy.

use chrono::{DateTime, Utc};
use rdkafka::message::{Headers, Message};
use uuid::Uuid;

use crate::core::envelope::{decode_with, malformed_data, Fallback, MALFORMED_TYPE};
use crate::core::event::Event;

/// The id of an event whose envelope and headers have none: a UUID v5 (under the URL
/// namespace) of `kafka:TOPIC:PARTITION:OFFSET`, stable across redeliveries and rebuilds.
pub fn derived_event_id(topic: &str, partition: i32, offset: i64) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("kafka:{topic}:{partition}:{offset}").as_bytes(),
    )
}

fn header<'m, M: Message>(message: &'m M, names: &[&str]) -> Option<&'m str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| names.contains(&h.key))
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Decodes one record of `topic`'s partition `partition`.
pub fn decode<M: Message>(message: &M, topic: &str, partition: i32) -> Event {
    let offset = message.offset();
    let key = message
        .key()
        .and_then(|k| std::str::from_utf8(k).ok())
        .filter(|k| !k.is_empty());
    let recorded_at = message
        .timestamp()
        .to_millis()
        .and_then(DateTime::<Utc>::from_timestamp_millis)
        .unwrap_or_else(Utc::now);
    let event_type = header(message, &["type", "event_type"]).filter(|t| !t.is_empty());
    let header_id = header(message, &["event_id"]);
    let payload = message.payload().unwrap_or_default();
    let derived = derived_event_id(topic, partition, offset);
    let parsed_id = match header_id.map(Uuid::parse_str) {
        Some(Err(e)) => Err(format!("header `event_id` is not a UUID: {e}")),
        Some(Ok(id)) => Ok(Some(id)),
        None => Ok(None),
    };
    let decoded = parsed_id.and_then(|event_id| {
        decode_with(
            payload,
            Fallback {
                stream_id: key,
                event_type,
                event_id,
            },
        )
    });
    match decoded {
        Ok(e) => Event {
            position: offset + 1,
            txid: 0,
            stream_id: e.stream_id,
            stream_version: e.stream_version,
            event_type: e.event_type,
            event_id: e.event_id.unwrap_or(derived),
            data: e.data,
            metadata: e.metadata,
            recorded_at: e.recorded_at.unwrap_or(recorded_at),
        },
        Err(why) => Event {
            position: offset + 1,
            txid: 0,
            stream_id: key.map_or_else(|| format!("{topic}-{partition}"), str::to_owned),
            stream_version: 0,
            event_type: MALFORMED_TYPE.to_owned(),
            event_id: derived,
            data: malformed_data(&why, &format!("{topic}[{partition}]@{offset}"), payload),
            metadata: "{}".into(),
            recorded_at,
        },
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    fn record(key: Option<&str>, payload: &[u8], headers: &[(&str, &str)]) -> OwnedMessage {
        let mut h = OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        OwnedMessage::new(
            Some(payload.to_vec()),
            key.map(|k| k.as_bytes().to_vec()),
            "orders".into(),
            Timestamp::CreateTime(1_700_000_000_000),
            3,
            41,
            Some(h),
        )
    }

    #[test]
    fn the_envelope_decodes_with_position_offset_plus_one() {
        let m = record(
            Some("ignored"),
            br#"{"stream_id":"ORDER-1","stream_version":2,"type":"ItemAdded","data":{"q":1}}"#,
            &[],
        );
        let e = decode(&m, "orders", 3);
        assert_eq!(e.position, 42);
        assert_eq!(e.stream_id, "ORDER-1");
        assert_eq!(e.event_type, "ItemAdded");
        assert_eq!(&*e.data, r#"{"q":1}"#);
        assert_eq!(e.event_id, derived_event_id("orders", 3, 41));
        assert_eq!(e.recorded_at.timestamp_millis(), 1_700_000_000_000);
    }

    #[test]
    fn key_and_headers_stand_in() {
        let id = Uuid::new_v4();
        let m = record(
            Some("ORDER-7"),
            br#"{"stream_version":1,"data":{}}"#,
            &[("type", "OrderCreated"), ("event_id", &id.to_string())],
        );
        let e = decode(&m, "orders", 3);
        assert_eq!(e.stream_id, "ORDER-7");
        assert_eq!(e.event_type, "OrderCreated");
        assert_eq!(e.event_id, id);
    }

    #[test]
    fn a_malformed_record_keeps_why_and_its_bytes() {
        let m = record(Some("ORDER-9"), b"\xffnot json", &[]);
        let e = decode(&m, "orders", 3);
        assert_eq!(e.event_type, MALFORMED_TYPE);
        assert_eq!(e.stream_id, "ORDER-9");
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert!(data["error"].as_str().unwrap().contains("not JSON"));
        assert_eq!(data["at"], "orders[3]@41");
        assert_eq!(data["raw_length"], 9);
        let bad_id = record(
            None,
            br#"{"stream_id":"S","stream_version":1,"type":"T","data":{}}"#,
            &[("event_id", "nope")],
        );
        let e = decode(&bad_id, "orders", 3);
        assert_eq!(e.event_type, MALFORMED_TYPE);
        assert_eq!(e.stream_id, "orders-3");
    }
}
