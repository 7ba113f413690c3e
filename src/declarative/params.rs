//! Named parameters: where each one's value comes from in an event, and the values to bind.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::core::error::HandlerError;
use crate::core::event::Event;
use crate::core::sql::SqlValue;

/// Where a named parameter's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ParamSource {
    /// `:stream_id`
    StreamId,
    /// `:stream_version`
    StreamVersion,
    /// `:position`
    Position,
    /// `:event_type`
    EventType,
    /// `:event_id` (text, lower-case hyphenated UUID)
    EventId,
    /// `:recorded_at` (text, RFC 3339 UTC with microseconds)
    RecordedAt,
    /// `:data` (the whole payload as JSON text) or `:data.a.b` (a path into it).
    Data(Vec<String>),
    /// `:metadata` (the whole metadata as JSON text) or `:metadata.a.b`.
    Metadata(Vec<String>),
}

/// The parameter names a handler statement may use, for error messages.
pub const PARAMETER_NAMES: &[&str] = &[
    ":stream_id",
    ":stream_version",
    ":position",
    ":event_type",
    ":event_id",
    ":recorded_at",
    ":data",
    ":data.PATH",
    ":metadata",
    ":metadata.PATH",
];

impl ParamSource {
    /// Parses a parameter name without its colon, such as `data.customer.name`.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.split('.');
        let head = parts.next()?;
        let path: Vec<String> = parts.map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return None;
        }
        let plain = |p: ParamSource| if path.is_empty() { Some(p) } else { None };
        match head {
            "stream_id" => plain(ParamSource::StreamId),
            "stream_version" => plain(ParamSource::StreamVersion),
            "position" => plain(ParamSource::Position),
            "event_type" => plain(ParamSource::EventType),
            "event_id" => plain(ParamSource::EventId),
            "recorded_at" => plain(ParamSource::RecordedAt),
            "data" => Some(ParamSource::Data(path)),
            "metadata" => Some(ParamSource::Metadata(path)),
            _ => None,
        }
    }

    /// The parameter as written in SQL, such as `:data.customer.name`.
    pub fn name(&self) -> String {
        let (head, path) = match self {
            ParamSource::StreamId => ("stream_id", None),
            ParamSource::StreamVersion => ("stream_version", None),
            ParamSource::Position => ("position", None),
            ParamSource::EventType => ("event_type", None),
            ParamSource::EventId => ("event_id", None),
            ParamSource::RecordedAt => ("recorded_at", None),
            ParamSource::Data(p) => ("data", Some(p)),
            ParamSource::Metadata(p) => ("metadata", Some(p)),
        };
        let mut out = format!(":{head}");
        for seg in path.into_iter().flatten() {
            out.push('.');
            out.push_str(seg);
        }
        out
    }

    /// A value of the kind this parameter always binds, for typing its placeholder before
    /// any event: the positions are integers, the other event fields text, a whole payload or
    /// metadata JSON. `None` for a JSON path, whose kind depends on the event.
    pub fn sample(&self) -> Option<SqlValue<'static>> {
        match self {
            ParamSource::StreamVersion | ParamSource::Position => Some(SqlValue::Int(0)),
            ParamSource::StreamId
            | ParamSource::EventType
            | ParamSource::EventId
            | ParamSource::RecordedAt => Some(SqlValue::Text(Cow::Borrowed(""))),
            ParamSource::Data(path) | ParamSource::Metadata(path) if path.is_empty() => {
                Some(SqlValue::Json(Cow::Borrowed("{}")))
            }
            ParamSource::Data(_) | ParamSource::Metadata(_) => None,
        }
    }

    /// Whether the value comes from the payload (which then has to be decoded).
    pub fn needs_data(&self) -> bool {
        matches!(self, ParamSource::Data(_))
    }

    /// Whether the value comes from the metadata.
    pub fn needs_metadata(&self) -> bool {
        matches!(self, ParamSource::Metadata(_))
    }

    /// Takes the value from `event`. `data` and `metadata` are the decoded payload and
    /// metadata, which the caller decodes once per event when any parameter needs them.
    pub fn extract<'a>(
        &self,
        event: &'a Event,
        data: Option<&'a Value>,
        metadata: Option<&'a Value>,
    ) -> ParamValue<'a> {
        match self {
            ParamSource::StreamId => ParamValue::Text(Cow::Borrowed(&event.stream_id)),
            ParamSource::StreamVersion => ParamValue::Integer(event.stream_version),
            ParamSource::Position => ParamValue::Integer(event.position),
            ParamSource::EventType => ParamValue::Text(Cow::Borrowed(&event.event_type)),
            ParamSource::EventId => ParamValue::Text(Cow::Owned(event.event_id.hyphenated().to_string())),
            ParamSource::RecordedAt => ParamValue::Text(Cow::Owned(
                event
                    .recorded_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            )),
            ParamSource::Data(path) if path.is_empty() => ParamValue::Json(Cow::Borrowed(&event.data)),
            ParamSource::Metadata(path) if path.is_empty() => {
                ParamValue::Json(Cow::Borrowed(&event.metadata))
            }
            ParamSource::Data(path) => data.map_or(ParamValue::Missing, |v| lookup(v, path)),
            ParamSource::Metadata(path) => metadata.map_or(ParamValue::Missing, |v| lookup(v, path)),
        }
    }
}

impl fmt::Display for ParamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Follows `path` into `value`: object keys by name, array elements by index.
fn lookup<'a>(value: &'a Value, path: &[String]) -> ParamValue<'a> {
    let mut v = value;
    for seg in path {
        let next = match v {
            Value::Object(map) => map.get(seg.as_str()),
            Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return ParamValue::Missing,
        }
    }
    ParamValue::from_json(v)
}

/// A value to bind, in backend-neutral form.
#[derive(Clone, Debug, PartialEq)]
pub enum ParamValue<'a> {
    /// JSON `null`.
    Null,
    /// The JSON path does not exist in the event. Binds as NULL unless the projection is strict.
    Missing,
    Integer(i64),
    Real(f64),
    Text(Cow<'a, str>),
    /// A JSON boolean (SQLite binds it as 0 or 1).
    Bool(bool),
    /// A JSON object or array (or a whole payload), as JSON text.
    Json(Cow<'a, str>),
}

impl<'a> ParamValue<'a> {
    /// The bound form of a JSON value: numbers as integer or real, strings as text, booleans
    /// as booleans, objects and arrays as JSON text.
    pub fn from_json(v: &'a Value) -> Self {
        match v {
            Value::Null => ParamValue::Null,
            Value::Bool(b) => ParamValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => ParamValue::Integer(i),
                None => ParamValue::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => ParamValue::Text(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => ParamValue::Json(Cow::Owned(v.to_string())),
        }
    }
}

/// An event's payload and metadata, decoded once for all the statements that need them.
pub struct Decoded {
    pub data: Option<Value>,
    pub metadata: Option<Value>,
}

impl Decoded {
    /// Decodes what the statements need. An undecodable payload is a decode error, which goes
    /// through the projection's error policy.
    pub fn of(event: &Event, need_data: bool, need_metadata: bool) -> Result<Self, HandlerError> {
        let data = if need_data {
            Some(serde_json::from_str(&event.data).map_err(|e| HandlerError::decode(event, e))?)
        } else {
            None
        };
        let metadata = if need_metadata {
            Some(serde_json::from_str(&event.metadata).map_err(|e| HandlerError::decode(event, e))?)
        } else {
            None
        };
        Ok(Decoded { data, metadata })
    }

    /// The value of `param` for `event`; with `strict`, a missing path is an error.
    pub fn value<'a>(
        &'a self,
        event: &'a Event,
        param: &ParamSource,
        strict: bool,
    ) -> Result<ParamValue<'a>, HandlerError> {
        let v = param.extract(event, self.data.as_ref(), self.metadata.as_ref());
        if strict && v == ParamValue::Missing {
            return Err(HandlerError::msg(format!(
                "{param} is missing from the {} event at position {} of stream {} (strict = true); \
                 fix the event or the handler, or set strict = false to bind NULL",
                event.event_type, event.position, event.stream_id
            )));
        }
        Ok(v)
    }
}
