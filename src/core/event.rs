//! The event envelope, the checkpoint it produces, and typed decoding with upcasting.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::error::HandlerError;

/// How far a projection (or one partition of it) has applied its source.
///
/// Checkpoints order lexicographically by `(txid, position)`. Sources that commit in position
/// order (SQLite, brokers) always use `txid = 0`; PostgreSQL records the writing transaction's
/// id so that readers never pass an event whose transaction is still open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The writing transaction's id (0 where the source has none).
    pub txid: i64,
    /// The event's position in its source.
    pub position: i64,
}

impl Checkpoint {
    /// The checkpoint before any event.
    pub const START: Checkpoint = Checkpoint { txid: 0, position: 0 };

    /// A checkpoint at `position`, for sources without transaction ids.
    pub const fn at(position: i64) -> Self {
        Checkpoint { txid: 0, position }
    }

    /// Parses the textual form written by [`Checkpoint`]'s `Display`: `POSITION` or `TXID:POSITION`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.split_once(':') {
            Some((tx, pos)) => Some(Checkpoint {
                txid: tx.trim().parse().ok()?,
                position: pos.trim().parse().ok()?,
            }),
            None => Some(Checkpoint::at(text.trim().parse().ok()?)),
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.txid == 0 {
            write!(f, "{}", self.position)
        } else {
            write!(f, "{}:{}", self.txid, self.position)
        }
    }
}

/// A recorded event, as a source delivers it.
///
/// `data` and `metadata` stay raw JSON text until a handler asks for them, so that events a
/// projection does not handle are never decoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the source (global sequence for event stores, stream sequence for brokers).
    pub position: i64,
    /// The writing transaction's id where the source records one, else 0.
    #[serde(default)]
    pub txid: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub event_id: Uuid,
    /// The payload as JSON text.
    pub data: Arc<str>,
    /// The metadata as JSON text (`{}` when there is none).
    pub metadata: Arc<str>,
    pub recorded_at: DateTime<Utc>,
}

impl Event {
    /// The checkpoint that says "this event and everything before it is applied".
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            txid: self.txid,
            position: self.position,
        }
    }

    /// Decodes the payload into `T`, without upcasting.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_str(&self.data).map_err(|e| HandlerError::decode(self, e))
    }

    /// Decodes the metadata into `M`.
    pub fn metadata_as<M: DeserializeOwned>(&self) -> Result<M, HandlerError> {
        serde_json::from_str(&self.metadata).map_err(|e| HandlerError::decode(self, e))
    }

    /// The payload as a JSON value.
    pub fn data_value(&self) -> Result<Value, HandlerError> {
        self.decode()
    }

    /// The metadata as a JSON value.
    pub fn metadata_value(&self) -> Result<Value, HandlerError> {
        self.metadata_as()
    }
}

/// An event to append: its type, payload and metadata. The store assigns the rest.
///
/// The payload and metadata are kept as JSON text, so that an import writes each line's bytes
/// as they came (key order included) without parsing them into a tree and printing them again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    pub event_type: String,
    data: String,
    metadata: String,
    /// Set it to make appends idempotent; a fresh v4 UUID otherwise.
    pub event_id: Uuid,
}

impl NewEvent {
    /// An event of `event_type` with `data` and no metadata.
    pub fn new(event_type: impl Into<String>, data: Value) -> Self {
        NewEvent {
            event_type: event_type.into(),
            data: data.to_string(),
            metadata: "{}".into(),
            event_id: Uuid::new_v4(),
        }
    }

    /// An event whose payload is the serialized `payload`.
    pub fn from_payload<T: Serialize>(
        event_type: impl Into<String>,
        payload: &T,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self::new(event_type, serde_json::to_value(payload)?))
    }

    /// An event whose payload is JSON text, kept byte for byte. Fails when it is not JSON.
    pub fn from_json_text(
        event_type: impl Into<String>,
        data: impl Into<String>,
    ) -> Result<Self, serde_json::Error> {
        let data = data.into();
        validate_json(&data)?;
        Ok(NewEvent {
            event_type: event_type.into(),
            data,
            metadata: "{}".into(),
            event_id: Uuid::new_v4(),
        })
    }

    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = metadata.to_string();
        self
    }

    /// Metadata as JSON text, kept byte for byte. Fails when it is not JSON.
    pub fn with_metadata_text(mut self, metadata: impl Into<String>) -> Result<Self, serde_json::Error> {
        let metadata = metadata.into();
        validate_json(&metadata)?;
        self.metadata = metadata;
        Ok(self)
    }

    pub fn with_id(mut self, event_id: Uuid) -> Self {
        self.event_id = event_id;
        self
    }

    /// The payload as JSON text.
    pub fn data_json(&self) -> &str {
        &self.data
    }

    /// The metadata as JSON text.
    pub fn metadata_json(&self) -> &str {
        &self.metadata
    }

    /// The payload parsed.
    pub fn data_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.data)
    }

    /// The metadata parsed.
    pub fn metadata_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.metadata)
    }
}

fn validate_json(text: &str) -> Result<(), serde_json::Error> {
    if let Err(depth) = check_depth(text) {
        return Err(serde::de::Error::custom(too_deep(depth)));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map(|_| ())
}

/// How deeply arrays and objects may nest in an event's payload or metadata. Both stores
/// refuse deeper JSON when it is appended or imported, alike: serde (typed handlers) and the
/// declarative parameters cannot decode it (their limit is 128), and PostgreSQL's `jsonb`
/// refuses much deeper JSON with a stack-depth error.
pub const MAX_JSON_DEPTH: usize = 128;

fn too_deep(depth: usize) -> String {
    format!(
        "JSON nested more than {MAX_JSON_DEPTH} levels deep (found {depth}): an event's data and \
         metadata may nest arrays and objects at most {MAX_JSON_DEPTH} deep"
    )
}

/// `Err(depth)` when arrays and objects in JSON `text` nest deeper than [`MAX_JSON_DEPTH`]
/// (the depth reached, which may stop short of the deepest). Strings are skipped; the text is
/// not otherwise checked.
fn check_depth(text: &str) -> Result<(), usize> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(depth);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Refuses events of `append` whose data or metadata nest deeper than [`MAX_JSON_DEPTH`]:
/// what both stores check before they write.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn check_nesting(append: &StreamAppend) -> crate::core::error::Result<()> {
    for e in &append.events {
        for (what, text) in [("data", &e.data), ("metadata", &e.metadata)] {
            if let Err(depth) = check_depth(text) {
                return Err(crate::core::error::Error::InvalidInput(format!(
                    "stream {}: event {} ({}): its {what} is {}",
                    append.stream_id,
                    e.event_id,
                    e.event_type,
                    too_deep(depth)
                )));
            }
        }
    }
    Ok(())
}

/// What the writer believes the stream's current version is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    #[default]
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have this version.
    Exact(i64),
}

impl ExpectedVersion {
    /// `Some(n)` becomes `Exact(n)` (with 0 meaning "no stream"), `None` becomes `Any`.
    pub fn from_option(v: Option<i64>) -> Self {
        match v {
            None => ExpectedVersion::Any,
            Some(0) => ExpectedVersion::NoStream,
            Some(n) => ExpectedVersion::Exact(n),
        }
    }

    /// Checks `actual` (0 for a stream that does not exist).
    pub fn admits(self, actual: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(n) => actual == n,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream (0)"),
            ExpectedVersion::Exact(n) => write!(f, "{n}"),
        }
    }
}

/// Events to append to one stream, with the version the writer expects it to be at.
#[derive(Clone, Debug)]
pub struct StreamAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl StreamAppend {
    pub fn new(stream_id: impl Into<String>, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        StreamAppend {
            stream_id: stream_id.into(),
            expected,
            events,
        }
    }
}

/// Called during an import with the number of events imported so far.
pub type ImportProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// The most streams whose versions an import remembers between its appends. Past it, the
/// import forgets them and reads an unknown stream's version from the events table again (an
/// index probe that sees the import's own rows), so that an import's memory does not grow with
/// the number of streams in the log: 10,000,000 orders events hold about 1,400,000 streams.
/// Streams are mostly written close together in a log, so a recent stream is usually known.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) const IMPORT_KNOWN_STREAMS: usize = 65_536;

/// What an append returns: where the events landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    /// The first appended event's position.
    pub first_position: i64,
    /// The last appended event's position.
    pub last_position: i64,
    /// The stream's version after the append.
    pub stream_version: i64,
    /// Pass this to `wait_for` for read-your-writes on an async projection.
    pub token: Checkpoint,
}

type UpcastFn = dyn Fn(Value) -> Result<Value, HandlerError> + Send + Sync;

impl Appended {
    /// The result of a one-stream append made through a many-streams append.
    pub(crate) fn only(mut out: Vec<Appended>) -> crate::core::error::Result<Appended> {
        out.pop().ok_or_else(|| {
            crate::core::error::Error::Internal("an append of one stream returned no result".into())
        })
    }
}

/// Schema evolution: transforms the raw JSON of old event shapes before typed decoding.
///
/// Upcasters run in registration order for their event type; `rename` maps an old type name to
/// the one handlers are registered under.
#[derive(Clone, Default)]
pub struct Upcasters {
    by_type: HashMap<String, Vec<Arc<UpcastFn>>>,
    renames: HashMap<String, String>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("types", &self.by_type.keys().collect::<Vec<_>>())
            .field("renames", &self.renames)
            .finish()
    }
}

impl Upcasters {
    /// Adds a transformation for `event_type`'s payload (the type's name after renames).
    pub fn add<F>(&mut self, event_type: impl Into<String>, f: F)
    where
        F: Fn(Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    {
        self.by_type
            .entry(event_type.into())
            .or_default()
            .push(Arc::new(f));
    }

    /// Treats events recorded as `old` as events of type `new`.
    pub fn rename(&mut self, old: impl Into<String>, new: impl Into<String>) {
        self.renames.insert(old.into(), new.into());
    }

    /// The type name handlers see for a recorded type.
    pub fn resolve<'a>(&'a self, recorded: &'a str) -> &'a str {
        self.renames.get(recorded).map(String::as_str).unwrap_or(recorded)
    }

    /// Every recorded type name that resolves to `handled`, `handled` included.
    pub fn aliases_of<'a>(&'a self, handled: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        std::iter::once(handled).chain(
            self.renames
                .iter()
                .filter(move |(_, new)| new.as_str() == handled)
                .map(|(old, _)| old.as_str()),
        )
    }

    /// Decodes `event`'s payload as `T`, running the upcasters of its (resolved) type first.
    pub fn decode<T: DeserializeOwned>(&self, event: &Event) -> Result<T, HandlerError> {
        match self.by_type.get(self.resolve(&event.event_type)) {
            None => event.decode(),
            Some(chain) => {
                let mut value = event.data_value()?;
                for up in chain {
                    value = up(value)?;
                }
                serde_json::from_value(value).map_err(|e| HandlerError::decode(event, e))
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty() && self.renames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn json_deeper_than_the_limit_is_refused_and_strings_do_not_count() {
        assert!(NewEvent::from_json_text("T", nested(MAX_JSON_DEPTH)).is_ok());
        let deep = NewEvent::from_json_text("T", nested(100_000))
            .unwrap_err()
            .to_string();
        assert!(deep.contains("nested more than 128 levels deep"), "{deep}");
        assert!(NewEvent::new("T", serde_json::json!({}))
            .with_metadata_text(nested(MAX_JSON_DEPTH + 1))
            .is_err());
        // Brackets and escaped quotes inside strings are text.
        let text = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(NewEvent::from_json_text("T", text).is_ok());
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    #[test]
    fn appends_of_deep_values_built_in_code_are_refused_too() {
        let mut v = serde_json::json!(1);
        for _ in 0..=MAX_JSON_DEPTH {
            v = serde_json::json!([v]);
        }
        let a = StreamAppend::new("s", ExpectedVersion::Any, vec![NewEvent::new("T", v)]);
        let e = check_nesting(&a).unwrap_err();
        assert!(
            matches!(e, crate::core::error::Error::InvalidInput(ref m) if m.contains("its data is JSON nested")),
            "{e}"
        );
    }
}
