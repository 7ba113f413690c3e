//! From a foreign table's row to an [`Event`]: the payload's bytes or text to JSON text
//! (decompressed, decrypted and unwrapped for Python `eventsourcing`), a deterministic event id
//! where the table has none, and the event type of a topic.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::eventsourcing::Eventsourcing;
use super::mapping::{Compression, TableMapping};
use crate::core::error::{Error, Result};
use crate::core::event::Event;
use crate::core::source::Batch;

/// The most bytes a decompressed payload may have (a guard against a zlib bomb).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024 * 1024;

/// A payload column's value as the database gave it.
#[derive(Debug)]
pub enum Raw {
    Text(String),
    Bytes(Vec<u8>),
    Null,
}

/// One row of the table, with the columns converted to their roles.
#[derive(Debug)]
pub struct RawRow {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub data: Raw,
    pub metadata: Raw,
    pub event_id: Option<String>,
    pub recorded_at: Option<DateTime<Utc>>,
}

/// Decodes rows of one mapped table.
pub struct Decoder {
    /// Namespaces the event ids derived from positions, so that two tables never share one.
    namespace: Uuid,
    compression: Compression,
    eventsourcing: Option<Eventsourcing>,
}

impl Decoder {
    pub fn new(mapping: &TableMapping) -> Result<Self> {
        Ok(Decoder {
            namespace: Uuid::new_v5(
                &Uuid::NAMESPACE_URL,
                format!("projectionist-table:{}", mapping.table).as_bytes(),
            ),
            compression: mapping.compression,
            eventsourcing: mapping
                .eventsourcing
                .as_ref()
                .map(Eventsourcing::new)
                .transpose()?,
        })
    }

    /// The event type a row's type column stands for (a topic's type for `eventsourcing`).
    pub fn event_type<'a>(&'a self, column: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.eventsourcing {
            Some(es) => es.event_type(column),
            None => std::borrow::Cow::Borrowed(column),
        }
    }

    /// The event of `row`, or why its payload cannot be read.
    pub fn event(&self, row: RawRow) -> std::result::Result<Event, String> {
        let event_type = self.event_type(&row.event_type).into_owned();
        let (data, timestamp) = self.payload(row.data)?;
        let metadata = match row.metadata {
            Raw::Null => Arc::from("{}"),
            raw => self.json_text(raw).map_err(|e| format!("metadata: {e}"))?,
        };
        let event_id = match row.event_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => {
                Uuid::parse_str(id).unwrap_or_else(|_| Uuid::new_v5(&self.namespace, id.as_bytes()))
            }
            _ => Uuid::new_v5(&self.namespace, row.position.to_string().as_bytes()),
        };
        Ok(Event {
            position: row.position,
            txid: 0,
            stream_id: row.stream_id,
            stream_version: row.stream_version,
            event_type,
            event_id,
            data,
            metadata,
            recorded_at: row
                .recorded_at
                .or(timestamp)
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
        })
    }

    /// The payload as JSON text, and the time `eventsourcing` recorded inside it.
    fn payload(&self, raw: Raw) -> std::result::Result<(Arc<str>, Option<DateTime<Utc>>), String> {
        match &self.eventsourcing {
            Some(es) => {
                let bytes = match raw {
                    Raw::Bytes(b) => b,
                    Raw::Text(t) => t.into_bytes(),
                    Raw::Null => return Err("the state is NULL".into()),
                };
                let bytes = es.decrypt(bytes)?;
                let bytes = inflate(bytes, self.compression).map_err(|e| {
                    if es.encrypts() {
                        e
                    } else {
                        format!("{e}; if the application encrypts its events (CIPHER_KEY), give cipher_key=…")
                    }
                })?;
                es.unwrap_state(&bytes)
            }
            None => Ok((self.json_text(raw)?, None)),
        }
    }

    /// Adds `row`'s event to `batch`; a row whose payload cannot be read is passed over,
    /// counted in `undecodable` and the metric, and logged at WARN with its position.
    pub fn push(&self, batch: &mut Batch, row: RawRow, table: &str, undecodable: &AtomicU64) {
        let position = row.position;
        match self.event(row) {
            Ok(event) => batch.events.push(event),
            Err(why) => {
                undecodable.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(super::METRIC_UNDECODABLE, "table" => table.to_owned()).increment(1);
                tracing::warn!(
                    table,
                    position,
                    "an event cannot be read and is passed over: {why}"
                );
                batch.ignored += 1;
            }
        }
    }

    /// A JSON column's text: checked to be JSON, so that handlers get what the contract says.
    fn json_text(&self, raw: Raw) -> std::result::Result<Arc<str>, String> {
        let text = match raw {
            Raw::Text(t) => t,
            Raw::Bytes(b) => {
                let b = inflate(b, self.compression)?;
                String::from_utf8(b).map_err(|e| format!("not UTF-8 text: {e}"))?
            }
            Raw::Null => return Ok(Arc::from("null")),
        };
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| format!("not JSON: {e}"))?;
        Ok(Arc::from(text))
    }
}

/// `bytes` decompressed per `compression`, bounded by [`MAX_PAYLOAD_BYTES`].
pub fn inflate(bytes: Vec<u8>, compression: Compression) -> std::result::Result<Vec<u8>, String> {
    match compression {
        Compression::None => Ok(bytes),
        Compression::Zlib => {
            let mut out = Vec::with_capacity(bytes.len() * 4);
            flate2::read::ZlibDecoder::new(&bytes[..])
                .take(MAX_PAYLOAD_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("not zlib data: {e}"))?;
            if out.len() > MAX_PAYLOAD_BYTES {
                return Err(format!("decompresses to more than {MAX_PAYLOAD_BYTES} bytes"));
            }
            Ok(out)
        }
    }
}

/// Checks a sample row at setup: a mapping whose first event cannot be decoded is a setup
/// error naming the column and the position, not a stream of skipped events.
pub fn check_sample(decoder: &Decoder, mapping: &TableMapping, row: RawRow) -> Result<()> {
    let position = row.position;
    decoder.event(row).map(|_| ()).map_err(|why| {
        Error::Config(format!(
            "{}: the event at {} = {position} cannot be read: column {} (data): {why}{}",
            mapping.table,
            mapping.position,
            mapping.data,
            match mapping.compression {
                Compression::None => "; if it is zlib-compressed, set compression=zlib",
                Compression::Zlib => "",
            }
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn mapping(url: &str) -> TableMapping {
        TableMapping::from_url(url).unwrap()
    }

    fn row(data: Raw) -> RawRow {
        RawRow {
            position: 7,
            stream_id: "s".into(),
            stream_version: 1,
            event_type: "T".into(),
            data,
            metadata: Raw::Null,
            event_id: None,
            recorded_at: None,
        }
    }

    const URL: &str = "table+sqlite:///x?table=t&position=p&stream_id=s&stream_version=v&event_type=e&data=d";

    #[test]
    fn text_bytes_and_zlib_payloads_decode_and_ids_are_stable() {
        let d = Decoder::new(&mapping(URL)).unwrap();
        let a = d.event(row(Raw::Text(r#"{"a":1}"#.into()))).unwrap();
        let b = d.event(row(Raw::Bytes(br#"{"a":1}"#.to_vec()))).unwrap();
        assert_eq!(&*a.data, r#"{"a":1}"#);
        assert_eq!(a.event_id, b.event_id, "the id derives from table and position");
        assert_eq!(&*a.metadata, "{}");
        assert!(d
            .event(row(Raw::Text("{oops".into())))
            .unwrap_err()
            .contains("not JSON"));

        let z = Decoder::new(&mapping(&format!("{URL}&compression=zlib"))).unwrap();
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(br#"{"b":2}"#).unwrap();
        let e = z.event(row(Raw::Bytes(enc.finish().unwrap()))).unwrap();
        assert_eq!(&*e.data, r#"{"b":2}"#);
        assert!(z
            .event(row(Raw::Bytes(b"plain".to_vec())))
            .unwrap_err()
            .contains("zlib"));
    }
}
