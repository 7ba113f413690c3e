//! The JSON-lines import format: one event per line, with `stream_id`, `type`, `data`, and
//! optionally `metadata`, `event_id` and `expected_version`. Blank lines are skipped.

use std::borrow::Cow;
use std::fmt;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use projectionist::{ExpectedVersion, NewEvent};
use serde::Deserialize;
use serde_json::value::RawValue;

use uuid::Uuid;

/// One event to import.
#[derive(Clone, Debug, PartialEq)]
pub struct ImportEvent {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub event: NewEvent,
}

/// A malformed line: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// 1-based column (in bytes).
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}: {}", self.line, self.column, self.reason)
    }
}

impl std::error::Error for LineError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    stream_id: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(default, borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    expected_version: Option<i64>,
}

/// The 1-based column of `"key"` in `line`, or 1.
fn column_of(line: &[u8], key: &str) -> usize {
    let needle = format!("\"{key}\"");
    line.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .map_or(1, |p| p + 1)
}

/// serde_json's message without its " at line L column C" suffix.
fn reason_of(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(p) => text[..p].to_owned(),
        None => text,
    }
}

/// Event ids for imported events that have none: UUIDv7 (time-ordered), from the import's
/// start time, a per-import random part and a counter. They sort in import order, so the
/// `event_id` index grows at its end instead of at random places, and making them costs no
/// system call.
pub struct EventIds {
    millis: u64,
    salt: [u8; 4],
    counter: u64,
}

impl Default for EventIds {
    fn default() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let random = Uuid::new_v4().into_bytes();
        EventIds {
            millis,
            salt: [random[0], random[1], random[2], random[15]],
            counter: 0,
        }
    }
}

impl EventIds {
    pub fn next_id(&mut self) -> Uuid {
        self.counter += 1;
        let c = self.counter.to_be_bytes();
        // Bytes 0..3 lose their top bits to the version and variant; the counter sits after.
        let bytes = [
            self.salt[0],
            self.salt[1],
            self.salt[2],
            c[2],
            c[3],
            c[4],
            c[5],
            c[6],
            c[7],
            self.salt[3],
        ];
        uuid::Builder::from_unix_timestamp_millis(self.millis, &bytes).into_uuid()
    }
}

/// Parses one line. `Ok(None)` for a blank line. Events without an `event_id` get a fresh v4.
#[cfg(test)]
pub fn parse_line(line_no: u64, raw: &[u8]) -> Result<Option<ImportEvent>, LineError> {
    parse_line_with(line_no, raw, &mut Uuid::new_v4)
}

/// Parses one line, taking ids for events without one from `new_id`.
pub fn parse_line_with(
    line_no: u64,
    raw: &[u8],
    new_id: &mut dyn FnMut() -> Uuid,
) -> Result<Option<ImportEvent>, LineError> {
    let mut bytes = raw;
    if line_no == 1 {
        bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    }
    while let Some((last, rest)) = bytes.split_last() {
        if matches!(last, b'\n' | b'\r') {
            bytes = rest;
        } else {
            break;
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let fail = |column: usize, reason: String| LineError {
        line: line_no,
        column,
        reason,
    };
    if let Some(p) = bytes.iter().position(|b| !b.is_ascii_whitespace()) {
        if bytes[p] != b'{' {
            return Err(fail(
                p + 1,
                "expected a JSON object with stream_id, type and data".into(),
            ));
        }
    }
    let parsed: Line<'_> =
        serde_json::from_slice(bytes).map_err(|e| fail(e.column().max(1), reason_of(&e)))?;
    if parsed.stream_id.trim().is_empty() {
        return Err(fail(
            column_of(bytes, "stream_id"),
            "stream_id must not be empty".into(),
        ));
    }
    if parsed.event_type.trim().is_empty() {
        return Err(fail(column_of(bytes, "type"), "type must not be empty".into()));
    }
    // Kept as the line's own JSON text: nothing is re-parsed or re-printed.
    let metadata = match parsed.metadata.map(|m| m.get().trim_start()) {
        None | Some("null") => "{}",
        Some(m) if m.starts_with('{') => m,
        Some(_) => {
            return Err(fail(
                column_of(bytes, "metadata"),
                "metadata must be a JSON object".into(),
            ))
        }
    };
    let expected = match parsed.expected_version {
        Some(v) if v < 0 => {
            return Err(fail(
                column_of(bytes, "expected_version"),
                format!("expected_version must be 0 (no stream yet) or more, found {v}"),
            ))
        }
        v => ExpectedVersion::from_option(v),
    };
    let id = match parsed.event_id {
        Some(id) => Uuid::parse_str(&id).map_err(|e| {
            fail(
                column_of(bytes, "event_id"),
                format!("event_id is not a UUID ({e})"),
            )
        })?,
        None => new_id(),
    };
    // Both texts come from the parsed line, so they are valid JSON.
    let event = NewEvent::from_json_text(parsed.event_type.into_owned(), parsed.data.get())
        .and_then(|e| e.with_metadata_text(metadata))
        .map_err(|e| fail(e.column().max(1), reason_of(&e)))?
        .with_id(id);
    Ok(Some(ImportEvent {
        stream_id: parsed.stream_id.into_owned(),
        expected,
        event,
    }))
}

/// What an import in progress has read, shared with the progress bar and the error report.
#[derive(Default)]
pub struct ImportState {
    /// Bytes read so far.
    pub bytes: AtomicU64,
    /// The line last read (the one an error is about).
    pub line: AtomicU64,
    /// The malformed line, if one stopped the import.
    pub error: Mutex<Option<LineError>>,
    /// Set by a signal: the next line read ends the import with [`projectionist::Error::Shutdown`],
    /// and the import is rolled back.
    pub stopped: AtomicBool,
}

impl ImportState {
    pub fn line_error(&self) -> Option<LineError> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// Lazily parsed lines of a reader, as import items.
pub struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    line: u64,
    state: Arc<ImportState>,
    ids: EventIds,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, state: Arc<ImportState>) -> Self {
        Lines {
            reader,
            buf: Vec::with_capacity(512),
            line: 0,
            state,
            ids: EventIds::default(),
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = projectionist::Result<ImportEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.state.stopped.load(Ordering::Relaxed) {
                return Some(Err(projectionist::Error::Shutdown));
            }
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => {
                    self.line += 1;
                    self.state.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    self.state.line.store(self.line, Ordering::Relaxed);
                    let ids = &mut self.ids;
                    match parse_line_with(self.line, &self.buf, &mut || ids.next_id()) {
                        Ok(None) => continue,
                        Ok(Some(e)) => return Some(Ok(e)),
                        Err(le) => {
                            let shown = le.to_string();
                            if let Ok(mut slot) = self.state.error.lock() {
                                *slot = Some(le);
                            }
                            return Some(Err(projectionist::Error::InvalidInput(shown)));
                        }
                    }
                }
                Err(e) => {
                    return Some(Err(projectionist::Error::Io(std::io::Error::new(
                        e.kind(),
                        format!("cannot read line {}: {e}", self.line + 1),
                    ))))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    #[test]
    fn a_full_line_parses() {
        let line = br#"{"stream_id":"S-1","type":"T","data":{"a":1},"metadata":{"u":"x"},"event_id":"00000000-0000-0000-0000-000000000001","expected_version":0}"#;
        let e = parse_line(1, line).unwrap().unwrap();
        assert_eq!(e.stream_id, "S-1");
        assert_eq!(e.expected, ExpectedVersion::NoStream);
        assert_eq!(e.event.event_type, "T");
        assert_eq!(e.event.data_value().unwrap(), json!({"a": 1}));
        assert_eq!(e.event.metadata_value().unwrap(), json!({"u": "x"}));
        assert_eq!(e.event.data_json(), r#"{"a":1}"#);
        assert_eq!(e.event.event_id, Uuid::from_u128(1));
        assert_eq!(parse_line(3, b"  \r\n").unwrap(), None);
    }

    #[test]
    fn generated_ids_are_v7_unique_and_ordered() {
        let mut ids = EventIds::default();
        let a: Vec<Uuid> = (0..1000).map(|_| ids.next_id()).collect();
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a[0].get_version_num(), 7);
    }

    #[test]
    fn malformed_lines_say_where_and_why() {
        let e = parse_line(7, br#"{"stream_id":"S","type":"T"}"#).unwrap_err();
        assert_eq!(e.line, 7);
        assert!(e.reason.contains("missing field `data`"), "{e}");
        let e = parse_line(2, br#"{"stream_id":"S","type":"T","data":{"a":}}"#).unwrap_err();
        assert_eq!(e.column, 41, "{e}");
        let e = parse_line(2, br#"{"stream_id":"S","tpye":"T","data":1}"#).unwrap_err();
        assert!(e.reason.contains("unknown field `tpye`"), "{e}");
        let e = parse_line(2, br#"{"stream_id":"","type":"T","data":1}"#).unwrap_err();
        assert_eq!((e.column, e.reason.as_str()), (2, "stream_id must not be empty"));
        let e = parse_line(2, br#"{"stream_id":"S","type":"T","data":1,"event_id":"nope"}"#).unwrap_err();
        assert!(e.reason.contains("event_id is not a UUID"), "{e}");
        let e = parse_line(
            2,
            br#"{"stream_id":"S","type":"T","data":1,"expected_version":-1}"#,
        )
        .unwrap_err();
        assert!(e.reason.contains("expected_version"), "{e}");
        let e = parse_line(2, b"[1,2]").unwrap_err();
        assert!(e.reason.contains("JSON object"), "{e}");
    }

    fn good_line() -> impl Strategy<Value = (String, String, Value)> {
        (
            "[A-Za-z0-9_\\-]{1,12}",
            "[A-Za-z]{1,12}",
            prop_oneof![
                any::<i64>().prop_map(Value::from),
                "\\PC{0,20}".prop_map(Value::from),
                ("\\PC{0,10}", any::<bool>()).prop_map(|(k, b)| json!({ k: b, "n": null })),
            ],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// No input makes the parser panic; errors always carry the line and a column.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), line in 1u64..1000) {
            if let Err(e) = parse_line(line, &bytes) {
                prop_assert_eq!(e.line, line);
                prop_assert!(e.column >= 1);
            }
        }

        /// Well-formed lines round-trip.
        #[test]
        fn well_formed_lines_round_trip((stream, ty, data) in good_line()) {
            let line = json!({"stream_id": stream, "type": ty, "data": data}).to_string();
            let e = parse_line(1, line.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(e.stream_id, stream);
            prop_assert_eq!(&e.event.event_type, &ty);
            prop_assert_eq!(e.event.data_value().unwrap(), data);
        }

        /// In a file of good lines with one broken line, the import stops at that line number.
        #[test]
        fn the_broken_line_is_named(n in 1usize..40, broken in 0usize..40, cut in 1usize..30) {
            let broken = broken % n;
            let mut text = String::new();
            for i in 0..n {
                let line = json!({"stream_id": format!("S-{i}"), "type": "T", "data": {"i": i}}).to_string();
                if i == broken {
                    text.push_str(&line[..cut.min(line.len() - 1)]);
                } else {
                    text.push_str(&line);
                }
                text.push('\n');
            }
            let state = Arc::new(ImportState::default());
            let results: Vec<_> = Lines::new(text.as_bytes(), state.clone()).collect();
            let first_err = results.iter().position(|r| r.is_err());
            prop_assert_eq!(first_err, Some(broken));
            let le = state.line_error();
            prop_assert_eq!(le.map(|e| e.line), Some(broken as u64 + 1));
        }
    }
}
