//! Python `eventsourcing` (9.x) stored events: topics to event types, AES-GCM decryption with
//! the library's `CIPHER_KEY`, and its JSON transcoding unwrapped into plain JSON.
//!
//! The library writes an event's state as JSON in which values of other types are tagged
//! objects `{"_type_": NAME, "_data_": VALUE}`. They become plain JSON here:
//!
//! | `_type_` | becomes |
//! |---|---|
//! | `uuid_hex` | the UUID as text, `8-4-4-4-12` hex |
//! | `datetime_iso` | the ISO 8601 text as it is |
//! | `decimal_str` | a JSON number (a double: exact up to 15 significant digits) |
//! | any other | its `_data_` value |
//!
//! So `:data.order_id` and `:data.quantity` work in declarative SQL as for any other source.
//! The state's `timestamp` becomes the event's `recorded_at`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm, Nonce};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::mapping::EventsourcingPreset;
use crate::core::error::{Error, Result};

/// The library's AES-GCM layout: a 12-byte nonce, the 16-byte tag, then the ciphertext.
const NONCE: usize = 12;
const TAG: usize = 16;

enum Cipher {
    Aes128(Box<Aes128Gcm>),
    Aes256(Box<Aes256Gcm>),
}

/// The decoding side of one application's stored events.
pub struct Eventsourcing {
    topics: BTreeMap<String, String>,
    cipher: Option<Cipher>,
}

impl Eventsourcing {
    pub fn new(preset: &EventsourcingPreset) -> Result<Self> {
        let cipher = match preset.cipher_key.as_deref() {
            None => None,
            Some(key) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(key.trim())
                    .map_err(|e| {
                        Error::Config(format!(
                            "cipher_key is not base64 ({e}): give the application's CIPHER_KEY"
                        ))
                    })?;
                Some(match bytes.len() {
                    16 => Cipher::Aes128(Box::new(
                        Aes128Gcm::new_from_slice(&bytes)
                            .map_err(|e| Error::Config(format!("cipher_key: {e}")))?,
                    )),
                    32 => Cipher::Aes256(Box::new(
                        Aes256Gcm::new_from_slice(&bytes)
                            .map_err(|e| Error::Config(format!("cipher_key: {e}")))?,
                    )),
                    n => {
                        return Err(Error::Unsupported(format!(
                            "cipher_key holds {n} bytes: AES-128 (16) and AES-256 (32) keys are supported"
                        )))
                    }
                })
            }
        };
        Ok(Eventsourcing {
            topics: preset.topics.clone(),
            cipher,
        })
    }

    /// The event type of a topic: its mapping, else the last dotted component of the class
    /// path (`shop.domain:Order.Created` → `Created`).
    pub fn event_type<'a>(&'a self, topic: &'a str) -> Cow<'a, str> {
        if let Some(t) = self.topics.get(topic) {
            return Cow::Borrowed(t);
        }
        let class = topic.rsplit_once(':').map_or(topic, |(_, c)| c);
        Cow::Borrowed(class.rsplit_once('.').map_or(class, |(_, last)| last))
    }

    /// Whether a cipher key was given.
    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }

    /// The state decrypted, when the application encrypts.
    pub fn decrypt(&self, bytes: Vec<u8>) -> std::result::Result<Vec<u8>, String> {
        let Some(cipher) = &self.cipher else {
            return Ok(bytes);
        };
        if bytes.len() < NONCE + TAG {
            return Err("too short to be an AES-GCM encrypted state".into());
        }
        let nonce = Nonce::from_slice(&bytes[..NONCE]);
        // The library writes nonce + tag + ciphertext; AES-GCM decrypts ciphertext + tag.
        let mut sealed = Vec::with_capacity(bytes.len() - NONCE);
        sealed.extend_from_slice(&bytes[NONCE + TAG..]);
        sealed.extend_from_slice(&bytes[NONCE..NONCE + TAG]);
        let plain = match cipher {
            Cipher::Aes128(c) => c.decrypt(nonce, &sealed[..]),
            Cipher::Aes256(c) => c.decrypt(nonce, &sealed[..]),
        };
        plain.map_err(|_| "cannot be decrypted with cipher_key (a wrong key, or not encrypted)".to_owned())
    }

    /// The state's JSON with the tagged values unwrapped, and its `timestamp`.
    pub fn unwrap_state(
        &self,
        bytes: &[u8],
    ) -> std::result::Result<(Arc<str>, Option<DateTime<Utc>>), String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            if self.cipher.is_none() && std::str::from_utf8(bytes).is_err() {
                format!(
                    "not JSON ({e}): the state looks encrypted or compressed; give cipher_key=… (the \
                     application's CIPHER_KEY) or compression=zlib"
                )
            } else {
                format!("not JSON: {e}")
            }
        })?;
        let value = unwrap(value);
        let timestamp = value
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let text = serde_json::to_string(&value).map_err(|e| e.to_string())?;
        Ok((Arc::from(text), timestamp))
    }
}

/// `value` with every `{"_type_": …, "_data_": …}` replaced by plain JSON.
fn unwrap(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            if map.len() == 2 {
                if let (Some(Value::String(kind)), Some(data)) = (map.get("_type_"), map.get("_data_")) {
                    return tagged(kind, data.clone());
                }
            }
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, unwrap(v)))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(unwrap).collect()),
        other => other,
    }
}

fn tagged(kind: &str, data: Value) -> Value {
    match (kind, data) {
        ("uuid_hex", Value::String(hex)) => match uuid::Uuid::parse_str(&hex) {
            Ok(id) => Value::String(id.hyphenated().to_string()),
            Err(_) => Value::String(hex),
        },
        ("decimal_str", Value::String(text)) => match text.parse::<f64>() {
            Ok(n) if n.is_finite() => {
                serde_json::Number::from_f64(n).map_or(Value::String(text), Value::Number)
            }
            _ => Value::String(text),
        },
        (_, data) => unwrap(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(topics: &[(&str, &str)], key: Option<&str>) -> Eventsourcing {
        Eventsourcing::new(&EventsourcingPreset {
            topics: topics
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            cipher_key: key.map(str::to_owned),
        })
        .unwrap()
    }

    #[test]
    fn topics_become_types() {
        let e = es(&[("shop:Order.Made", "OrderCreated")], None);
        assert_eq!(e.event_type("__main__:Order.ItemAdded"), "ItemAdded");
        assert_eq!(e.event_type("shop:Order.Made"), "OrderCreated");
        assert_eq!(e.event_type("plain"), "plain");
    }

    #[test]
    fn tagged_values_unwrap() {
        let e = es(&[], None);
        let state = br#"{"order_id":"ORDER-1","id":{"_type_":"uuid_hex","_data_":"0123456789abcdef0123456789abcdef"},
            "price":{"_type_":"decimal_str","_data_":"12.50"},"timestamp":{"_type_":"datetime_iso","_data_":"2024-05-01T10:00:00.250000+00:00"},
            "items":[{"_type_":"decimal_str","_data_":"1"}]}"#;
        let (json, ts) = e.unwrap_state(state).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["id"], "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(v["price"], 12.5);
        assert_eq!(v["items"][0], 1.0);
        assert_eq!(v["timestamp"], "2024-05-01T10:00:00.250000+00:00");
        assert_eq!(ts.unwrap().timestamp_millis(), 1_714_557_600_250);
    }

    #[test]
    fn aes_gcm_states_decrypt_with_the_key_and_fail_without() {
        let key = [7u8; 32];
        let b64 = base64::engine::general_purpose::STANDARD.encode(key);
        let cipher = Aes256Gcm::new_from_slice(&key).unwrap();
        let nonce = [1u8; NONCE];
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), &br#"{"a":1}"#[..])
            .unwrap();
        let (ct, tag) = sealed.split_at(sealed.len() - TAG);
        let stored = [&nonce[..], tag, ct].concat();
        let with = es(&[], Some(&b64));
        assert_eq!(with.decrypt(stored.clone()).unwrap(), br#"{"a":1}"#);
        let without = es(&[], None);
        let plain = without.decrypt(stored).unwrap();
        assert!(without.unwrap_state(&plain).unwrap_err().contains("cipher_key"));
    }
}
