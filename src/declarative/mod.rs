//! Declarative SQL projections: projections written as SQL in a TOML file, so that no Rust is
//! needed.
//!
//! This module is backend-neutral. It parses the config (with errors that name the file, the
//! projection, the key and what was expected), splits `setup` and `reset` SQL into statements,
//! and turns each handler statement's named parameters (`:stream_id`, `:data.customer.name`, …)
//! into positional placeholders plus an ordered list of [`ParamSource`]s. Values are always
//! bound, never spliced into the SQL text. Each backend renders the placeholders its own way
//! (`?N` for SQLite, `$N` for PostgreSQL) and binds the extracted [`ParamValue`]s; the one body
//! ([`SqlBody`]) runs on any store through [`SqlTx`](crate::core::sql::SqlTx).
//!
//! The format is documented in `docs/config.md`.

mod body;

pub use body::{projection, SqlBody};

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::core::error::HandlerError;
use crate::core::event::Event;
use crate::core::policy::{Backoff, ErrorPolicy};
use crate::core::projection::ProjectionOptions;

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// SQL lexing: enough of SQL to find parameters and statement ends
// ---------------------------------------------------------------------------------------------

/// What is wrong with a piece of SQL in the config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("unterminated {what} starting at character {offset}")]
    Unterminated { what: &'static str, offset: usize },
    #[error("unknown parameter `:{name}`; known parameters: {}", PARAMETER_NAMES.join(", "))]
    UnknownParameter { name: String },
    #[error("the statement is empty")]
    Empty,
    #[error(
        "holds more than one statement (a second one starts at character {offset}); \
         write a list of statements instead: [\"…\", \"…\"]"
    )]
    MultipleStatements { offset: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Plain SQL.
    Code,
    /// A string literal, quoted identifier or dollar-quoted string.
    Quoted,
    Comment,
    /// A named parameter, colon included.
    Param,
    /// A `;`.
    Semi,
}

#[derive(Clone, Copy, Debug)]
struct Seg {
    kind: Kind,
    start: usize,
    end: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The end (exclusive) of a quoted run starting at `start` with quote `q`. Doubled quotes
/// escape; with `backslash`, so does a backslash (PostgreSQL's `E'…'`).
fn quoted_end(b: &[u8], start: usize, q: u8, backslash: bool, what: &'static str) -> Result<usize, SqlError> {
    let mut j = start + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if j + 1 < b.len() && b[j + 1] == q {
                j += 2;
                continue;
            }
            return Ok(j + 1);
        }
        j += 1;
    }
    Err(SqlError::Unterminated { what, offset: start })
}

/// A PostgreSQL dollar-quote tag (`$$` or `$tag$`) at `i`, if there is one: its length.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'$') {
        return None;
    }
    let mut j = i + 1;
    if j < b.len() && b[j] == b'$' {
        return Some(2);
    }
    if j >= b.len() || !is_ident_start(b[j]) {
        return None;
    }
    while j < b.len() && is_ident(b[j]) {
        j += 1;
    }
    (j < b.len() && b[j] == b'$').then_some(j + 1 - i)
}

/// Splits SQL into code, quoted runs, comments, parameters and semicolons.
fn lex(sql: &str) -> Result<Vec<Seg>, SqlError> {
    let b = sql.as_bytes();
    let mut segs = Vec::new();
    let mut code_start = 0;
    let mut i = 0;
    let push = |segs: &mut Vec<Seg>, code_start: &mut usize, kind: Kind, start: usize, end: usize| {
        if *code_start < start {
            segs.push(Seg {
                kind: Kind::Code,
                start: *code_start,
                end: start,
            });
        }
        segs.push(Seg { kind, start, end });
        *code_start = end;
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'\'' => {
                let e_prefix = i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !is_ident(b[i - 2]));
                let end = quoted_end(b, i, b'\'', e_prefix, "string literal")?;
                push(&mut segs, &mut code_start, Kind::Quoted, i, end);
                i = end;
            }
            b'"' | b'`' => {
                let end = quoted_end(b, i, c, false, "quoted identifier")?;
                push(&mut segs, &mut code_start, Kind::Quoted, i, end);
                i = end;
            }
            b'-' if next == Some(b'-') => {
                let end = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p);
                push(&mut segs, &mut code_start, Kind::Comment, i, end);
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let end = b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map(|p| i + 2 + p + 2)
                    .ok_or(SqlError::Unterminated {
                        what: "block comment",
                        offset: i,
                    })?;
                push(&mut segs, &mut code_start, Kind::Comment, i, end);
                i = end;
            }
            b'$' => match dollar_tag(b, i) {
                Some(len) => {
                    let tag = &b[i..i + len];
                    let end = b[i + len..]
                        .windows(len)
                        .position(|w| w == tag)
                        .map(|p| i + len + p + len)
                        .ok_or(SqlError::Unterminated {
                            what: "dollar-quoted string",
                            offset: i,
                        })?;
                    push(&mut segs, &mut code_start, Kind::Quoted, i, end);
                    i = end;
                }
                None => i += 1,
            },
            b':' if next == Some(b':') => i += 2,
            b':' if next.is_some_and(is_ident_start) => {
                let mut j = i + 1;
                while j < b.len() && is_ident(b[j]) {
                    j += 1;
                }
                while j + 1 < b.len() && b[j] == b'.' && is_ident(b[j + 1]) {
                    j += 1;
                    while j < b.len() && is_ident(b[j]) {
                        j += 1;
                    }
                }
                push(&mut segs, &mut code_start, Kind::Param, i, j);
                i = j;
            }
            b';' => {
                push(&mut segs, &mut code_start, Kind::Semi, i, i + 1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    if code_start < b.len() {
        segs.push(Seg {
            kind: Kind::Code,
            start: code_start,
            end: b.len(),
        });
    }
    Ok(segs)
}

/// Whether a run of segments holds anything but whitespace and comments.
fn has_content(sql: &str, segs: &[Seg]) -> bool {
    segs.iter().any(|s| match s.kind {
        Kind::Comment | Kind::Semi => false,
        Kind::Code => !sql[s.start..s.end].trim().is_empty(),
        Kind::Quoted | Kind::Param => true,
    })
}

/// The words and quoted names of a statement's code, in order (for keyword checks), plus `.`
/// and `(` as words of their own.
fn words(sql: &str, segs: &[Seg]) -> Vec<String> {
    let mut out = Vec::new();
    for s in segs {
        match s.kind {
            Kind::Code => {
                let text = &sql[s.start..s.end];
                let mut word = String::new();
                for ch in text.chars() {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        word.push(ch);
                    } else {
                        if !word.is_empty() {
                            out.push(std::mem::take(&mut word));
                        }
                        if ch == '.' || ch == '(' {
                            out.push(ch.to_string());
                        }
                    }
                }
                if !word.is_empty() {
                    out.push(word);
                }
            }
            Kind::Quoted | Kind::Param => out.push(sql[s.start..s.end].to_owned()),
            Kind::Comment | Kind::Semi => {}
        }
    }
    out
}

/// Splits a script into statements at the semicolons that end them, keeping semicolons inside
/// string literals, quoted identifiers, comments, dollar-quoted strings and SQLite trigger
/// bodies (`CREATE TRIGGER … BEGIN …; …; END`). Empty statements are dropped.
pub fn split_statements(sql: &str) -> Result<Vec<String>, SqlError> {
    let segs = lex(sql)?;
    let mut out = Vec::new();
    let mut first = 0;
    let mut i = 0;
    while i <= segs.len() {
        let at_end = i == segs.len();
        if at_end || segs[i].kind == Kind::Semi {
            let stmt = &segs[first..i];
            if !at_end && in_trigger_body(sql, stmt) {
                i += 1;
                continue;
            }
            if has_content(sql, stmt) {
                let start = stmt.first().map_or(0, |s| s.start);
                let end = stmt.last().map_or(0, |s| s.end);
                out.push(sql[start..end].trim().to_owned());
            }
            first = i + 1;
        }
        i += 1;
    }
    Ok(out)
}

/// Whether `stmt` is a `CREATE TRIGGER` whose `BEGIN … END` body is still open.
fn in_trigger_body(sql: &str, stmt: &[Seg]) -> bool {
    let w: Vec<String> = words(sql, stmt).iter().map(|x| x.to_ascii_uppercase()).collect();
    let mut it = w.iter().map(String::as_str);
    if it.next() != Some("CREATE") {
        return false;
    }
    let mut second = it.next();
    if matches!(second, Some("TEMP" | "TEMPORARY")) {
        second = it.next();
    }
    if second != Some("TRIGGER") {
        return false;
    }
    let mut depth = 0i32;
    let mut opened = false;
    for word in w.iter() {
        match word.as_str() {
            "BEGIN" | "CASE" => {
                depth += 1;
                opened = true;
            }
            "END" => depth -= 1,
            _ => {}
        }
    }
    opened && depth > 0
}

/// The tables a script creates (`CREATE [TEMP] [VIRTUAL] TABLE [IF NOT EXISTS] name`), in
/// order, as written (quoted and schema-qualified names kept).
pub fn created_tables(statements: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for stmt in statements {
        let Ok(segs) = lex(stmt) else { continue };
        let w = words(stmt, &segs);
        let mut i = 0;
        let mut take = |word: &str| {
            if w.get(i).is_some_and(|x| x.eq_ignore_ascii_case(word)) {
                i += 1;
                true
            } else {
                false
            }
        };
        if !take("CREATE") {
            continue;
        }
        let _ = take("TEMP") || take("TEMPORARY");
        let _ = take("VIRTUAL") || take("UNLOGGED");
        if !take("TABLE") {
            continue;
        }
        if take("IF") && !(take("NOT") && take("EXISTS")) {
            continue;
        }
        let Some(name) = w.get(i) else { continue };
        let mut full = name.clone();
        if w.get(i + 1).is_some_and(|x| x == ".") {
            if let Some(second) = w.get(i + 2) {
                full = format!("{name}.{second}");
            }
        }
        out.push(full);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Statements with named parameters
// ---------------------------------------------------------------------------------------------

/// One handler statement, with its named parameters turned into positional slots.
///
/// `pieces` interleave with the parameter occurrences: piece 0, slot 0, piece 1, slot 1, …,
/// last piece. `slots[k]` is an index into `params`, which lists each distinct parameter once,
/// in order of first appearance; placeholders are numbered from 1 in that order.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    text: String,
    pieces: Vec<String>,
    slots: Vec<usize>,
    params: Vec<ParamSource>,
}

impl Statement {
    /// Parses one statement. Colons in `::` casts, string literals, quoted identifiers and
    /// comments are not parameters. A trailing semicolon is allowed; a second statement is not.
    pub fn parse(sql: &str) -> Result<Self, SqlError> {
        let segs = lex(sql)?;
        if !has_content(sql, &segs) {
            return Err(SqlError::Empty);
        }
        if let Some(semi) = segs.iter().position(|s| s.kind == Kind::Semi) {
            if has_content(sql, &segs[semi + 1..]) {
                let offset = segs[semi + 1..]
                    .iter()
                    .find(|s| has_content(sql, std::slice::from_ref(s)))
                    .map_or(segs[semi].end, |s| s.start);
                return Err(SqlError::MultipleStatements { offset });
            }
        }
        let mut pieces = Vec::new();
        let mut slots = Vec::new();
        let mut params: Vec<ParamSource> = Vec::new();
        let mut current = String::new();
        for s in &segs {
            let text = &sql[s.start..s.end];
            if s.kind != Kind::Param {
                current.push_str(text);
                continue;
            }
            let name = &text[1..];
            let p = ParamSource::parse(name).ok_or_else(|| SqlError::UnknownParameter {
                name: name.to_owned(),
            })?;
            let slot = match params.iter().position(|q| *q == p) {
                Some(k) => k,
                None => {
                    params.push(p);
                    params.len() - 1
                }
            };
            pieces.push(std::mem::take(&mut current));
            slots.push(slot);
        }
        pieces.push(current);
        Ok(Statement {
            text: sql.to_owned(),
            pieces,
            slots,
            params,
        })
    }

    /// The statement as written in the config.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The distinct parameters, in placeholder order (the first is placeholder 1).
    pub fn params(&self) -> &[ParamSource] {
        &self.params
    }

    /// Renders the SQL with `placeholder(n)` (1-based) in place of each parameter.
    pub fn render(&self, placeholder: impl Fn(usize) -> String) -> String {
        let mut out = String::with_capacity(self.text.len() + 8 * self.slots.len());
        for (k, piece) in self.pieces.iter().enumerate() {
            out.push_str(piece);
            if let Some(slot) = self.slots.get(k) {
                out.push_str(&placeholder(slot + 1));
            }
        }
        out
    }

    /// SQLite placeholders: `?1`, `?2`, …
    pub fn render_sqlite(&self) -> String {
        self.render(|n| format!("?{n}"))
    }

    /// PostgreSQL placeholders: `$1`, `$2`, …
    pub fn render_postgres(&self) -> String {
        self.render(|n| format!("${n}"))
    }

    /// Whether any parameter needs the decoded payload.
    pub fn needs_data(&self) -> bool {
        self.params.iter().any(ParamSource::needs_data)
    }

    /// Whether any parameter needs the decoded metadata.
    pub fn needs_metadata(&self) -> bool {
        self.params.iter().any(ParamSource::needs_metadata)
    }
}

// ---------------------------------------------------------------------------------------------
// Binding support shared by backends
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

/// A config error: which file, which projection, which key, and what was expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub projection: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(p) = &self.projection {
            write!(f, ": projection {p}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": key `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One declarative projection, validated.
#[derive(Clone, Debug)]
pub struct ProjectionDef {
    pub name: String,
    /// The setup statements, split.
    pub setup: Vec<String>,
    /// The reset statements: as configured, or `DELETE FROM` each table that `setup` creates.
    pub reset: Vec<String>,
    /// Whether `reset` is the default one.
    pub reset_is_default: bool,
    /// Statements per event type, run in order.
    pub handlers: BTreeMap<String, Vec<Statement>>,
    pub error_policy: ErrorPolicy,
    pub batch_size: usize,
    pub priority: i32,
    /// A missing JSON path is an error (through the error policy) instead of NULL.
    pub strict: bool,
    /// Partitions (1: not partitioned; see `Projection::partitions`).
    pub partitions: u32,
    /// The subject filter of a broker source (a NATS subject, or a RabbitMQ binding key);
    /// `None`: everything the source carries.
    pub subject: Option<String>,
}

impl ProjectionDef {
    /// The engine options this projection runs with.
    pub fn options(&self) -> ProjectionOptions {
        ProjectionOptions {
            batch_size: self.batch_size,
            priority: self.priority,
            policy: self.error_policy.clone().into(),
            partitions: self.partitions,
            ..ProjectionOptions::default()
        }
    }

    /// The handled event types, sorted.
    pub fn event_types(&self) -> Vec<String> {
        self.handlers.keys().cloned().collect()
    }
}

/// A projections file.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, as given (for messages).
    pub file: String,
    pub projections: Vec<ProjectionDef>,
    /// The daemon's `[http]` table (all keys optional).
    pub http: HttpConfig,
    /// Where events come from, when not from the database's events table: a broker URL
    /// (`nats://…`, `amqp://…`). The `--source` option overrides it.
    pub source: Option<String>,
}

/// Defaults of the optional keys.
pub const DEFAULT_ERROR_POLICY: &str = "retry_then_dead_letter";
pub const DEFAULT_MAX_RETRIES: u32 = 3;
pub const DEFAULT_BATCH_SIZE: usize = 1000;
pub const MAX_BATCH_SIZE: usize = 100_000;

const PROJECTION_KEYS: &[&str] = &[
    "name",
    "setup",
    "reset",
    "handlers",
    "error_policy",
    "max_retries",
    "batch_size",
    "priority",
    "strict",
    "description",
    "partitions",
    "subject",
];

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            projection: None,
            key: None,
            message: format!("cannot read the projections file: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let err = |projection: Option<&str>, key: Option<String>, message: String| ConfigError {
            file: file.to_owned(),
            projection: projection.map(str::to_owned),
            key,
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            err(
                None,
                None,
                format!("not valid TOML: {}", e.to_string().trim_end()),
            )
        })?;
        for key in table.keys() {
            if key != "projection" && key != "http" && key != "source" {
                return Err(err(
                    None,
                    Some(key.clone()),
                    "unknown key; expected [[projection]] entries, an optional [http] table and an optional source".into(),
                ));
            }
        }
        let source = match table.get("source") {
            None => None,
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
            Some(other) => {
                return Err(err(
                    None,
                    Some("source".into()),
                    format!(
                    "expected a broker URL string such as \"nats://127.0.0.1:4222?stream=EVENTS\", found {}",
                    describe(other)
                ),
                ))
            }
        };
        let http = HttpConfig::parse(table.get("http")).map_err(|(k, m)| err(None, Some(k), m))?;
        let entries = match table.get("projection") {
            None => {
                return Err(err(
                    None,
                    Some("projection".into()),
                    "no [[projection]] entries; add at least one (see docs/config.md)".into(),
                ))
            }
            Some(toml::Value::Array(a)) => a,
            Some(other) => {
                return Err(err(
                    None,
                    Some("projection".into()),
                    format!(
                        "expected an array of tables ([[projection]]), found {}",
                        describe(other)
                    ),
                ))
            }
        };
        if entries.is_empty() {
            return Err(err(
                None,
                Some("projection".into()),
                "no [[projection]] entries; add at least one (see docs/config.md)".into(),
            ));
        }
        let mut projections: Vec<ProjectionDef> = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = format!("#{}", i + 1);
            let def = parse_projection(entry, &label).map_err(|(p, k, m)| err(Some(&p), k, m))?;
            if projections.iter().any(|p| p.name == def.name) {
                return Err(err(
                    Some(&def.name),
                    Some("name".into()),
                    "a projection with this name is already defined; names must be unique".into(),
                ));
            }
            projections.push(def);
        }
        Ok(Config {
            file: file.to_owned(),
            projections,
            http,
            source,
        })
    }

    /// The projection called `name`.
    pub fn projection(&self, name: &str) -> Option<&ProjectionDef> {
        self.projections.iter().find(|p| p.name == name)
    }
}

fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => {
            let short: String = s.chars().take(40).collect();
            format!("a string ({short:?})")
        }
        toml::Value::Integer(i) => format!("an integer ({i})"),
        toml::Value::Float(x) => format!("a float ({x})"),
        toml::Value::Boolean(b) => format!("a boolean ({b})"),
        toml::Value::Datetime(d) => format!("a datetime ({d})"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
    }
}

type EntryError = (String, Option<String>, String);

/// Projection names: letters, digits, `_`, `-` and `.`, up to 128 characters.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_projection(entry: &toml::Value, label: &str) -> Result<ProjectionDef, EntryError> {
    let fail = |p: &str, key: &str, message: String| (p.to_owned(), Some(key.to_owned()), message);
    let toml::Value::Table(t) = entry else {
        return Err((
            label.to_owned(),
            None,
            format!("expected a table ([[projection]]), found {}", describe(entry)),
        ));
    };
    let name = match t.get("name") {
        None => {
            return Err(fail(
                label,
                "name",
                "missing; every projection needs a name".into(),
            ))
        }
        Some(toml::Value::String(s)) if valid_name(s) => s.clone(),
        Some(toml::Value::String(s)) => {
            return Err(fail(
                label,
                "name",
                format!(
                "expected a name of letters, digits, `_`, `-` or `.` (at most 128 characters), found {s:?}"
            ),
            ))
        }
        Some(other) => {
            return Err(fail(
                label,
                "name",
                format!("expected a string, found {}", describe(other)),
            ))
        }
    };
    let p = name.as_str();
    for key in t.keys() {
        if !PROJECTION_KEYS.contains(&key.as_str()) {
            return Err(fail(
                p,
                key,
                format!("unknown key; expected one of: {}", PROJECTION_KEYS.join(", ")),
            ));
        }
    }
    let setup_texts = sql_list(t.get("setup"), p, "setup")?;
    let mut setup = Vec::new();
    for (k, text) in setup_texts.iter().enumerate() {
        let key = if setup_texts.len() > 1 {
            format!("setup[{k}]")
        } else {
            "setup".to_owned()
        };
        setup.extend(split_statements(text).map_err(|e| fail(p, &key, format!("invalid SQL: {e}")))?);
    }
    let (reset, reset_is_default) = match t.get("reset") {
        None => {
            let mut tables = created_tables(&setup);
            tables.reverse();
            (tables.iter().map(|t| format!("DELETE FROM {t}")).collect(), true)
        }
        Some(_) => {
            let texts = sql_list(t.get("reset"), p, "reset")?;
            let mut out = Vec::new();
            for text in &texts {
                out.extend(
                    split_statements(text).map_err(|e| fail(p, "reset", format!("invalid SQL: {e}")))?,
                );
            }
            (out, false)
        }
    };
    let handlers_table = match t.get("handlers") {
        None => {
            return Err(fail(
                p,
                "handlers",
                "missing; expected a table from event type to SQL, e.g. [projection.handlers] OrderCreated = \"INSERT …\"".into(),
            ))
        }
        Some(toml::Value::Table(h)) => h,
        Some(other) => {
            return Err(fail(
                p,
                "handlers",
                format!("expected a table from event type to SQL, found {}", describe(other)),
            ))
        }
    };
    if handlers_table.is_empty() {
        return Err(fail(
            p,
            "handlers",
            "is empty; handle at least one event type".into(),
        ));
    }
    let mut handlers = BTreeMap::new();
    for (event_type, v) in handlers_table {
        let base = format!("handlers.{event_type}");
        if event_type.trim().is_empty() {
            return Err(fail(p, &base, "the event type must not be empty".into()));
        }
        let texts = match v {
            toml::Value::String(s) => vec![(base.clone(), s.as_str())],
            toml::Value::Array(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for (k, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(s) => out.push((format!("{base}[{k}]"), s.as_str())),
                        other => {
                            return Err(fail(
                                p,
                                &format!("{base}[{k}]"),
                                format!("expected a SQL string, found {}", describe(other)),
                            ))
                        }
                    }
                }
                out
            }
            toml::Value::Array(_) => {
                return Err(fail(
                    p,
                    &base,
                    "is an empty list; give at least one SQL statement".into(),
                ))
            }
            other => {
                return Err(fail(
                    p,
                    &base,
                    format!(
                        "expected a SQL string or a list of SQL strings, found {}",
                        describe(other)
                    ),
                ))
            }
        };
        let mut statements = Vec::new();
        for (key, text) in texts {
            statements.push(Statement::parse(text).map_err(|e| fail(p, &key, format!("invalid SQL: {e}")))?);
        }
        handlers.insert(event_type.clone(), statements);
    }
    let policy_name = match t.get("error_policy") {
        None => DEFAULT_ERROR_POLICY.to_owned(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(fail(
                p,
                "error_policy",
                format!(
                    "expected one of {}, found {}",
                    ErrorPolicy::NAMES.join(", "),
                    describe(other)
                ),
            ))
        }
    };
    let max_retries = int_in(
        t.get("max_retries"),
        p,
        "max_retries",
        0,
        1000,
        i64::from(DEFAULT_MAX_RETRIES),
    )?;
    let error_policy = ErrorPolicy::from_name(&policy_name, max_retries as u32, Backoff::default())
        .ok_or_else(|| {
            fail(
                p,
                "error_policy",
                format!(
                    "expected one of {}, found {policy_name:?}",
                    ErrorPolicy::NAMES.join(", ")
                ),
            )
        })?;
    let batch_size = int_in(
        t.get("batch_size"),
        p,
        "batch_size",
        1,
        MAX_BATCH_SIZE as i64,
        DEFAULT_BATCH_SIZE as i64,
    )? as usize;
    let priority = int_in(
        t.get("priority"),
        p,
        "priority",
        i64::from(i32::MIN),
        i64::from(i32::MAX),
        0,
    )? as i32;
    let strict = match t.get("strict") {
        None => false,
        Some(toml::Value::Boolean(b)) => *b,
        Some(other) => {
            return Err(fail(
                p,
                "strict",
                format!("expected true or false, found {}", describe(other)),
            ))
        }
    };
    let partitions = int_in(
        t.get("partitions"),
        p,
        "partitions",
        1,
        i64::from(crate::core::partition::MAX_PARTITIONS),
        1,
    )? as u32;
    let subject = match t.get("subject") {
        None => None,
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(other) => {
            return Err(fail(
                p,
                "subject",
                format!(
                    "expected a non-empty subject string such as \"orders.>\", found {}",
                    describe(other)
                ),
            ))
        }
    };
    if let Some(v) = t.get("description") {
        if !v.is_str() {
            return Err(fail(
                p,
                "description",
                format!("expected a string, found {}", describe(v)),
            ));
        }
    }
    Ok(ProjectionDef {
        name,
        setup,
        reset,
        reset_is_default,
        handlers,
        error_policy,
        batch_size,
        priority,
        strict,
        partitions,
        subject,
    })
}

/// A key that holds SQL: a string or a list of strings (absent: empty).
fn sql_list(v: Option<&toml::Value>, p: &str, key: &str) -> Result<Vec<String>, EntryError> {
    let fail = |k: String, m: String| (p.to_owned(), Some(k), m);
    match v {
        None => Ok(Vec::new()),
        Some(toml::Value::String(s)) => Ok(vec![s.clone()]),
        Some(toml::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(k, item)| match item {
                toml::Value::String(s) => Ok(s.clone()),
                other => Err(fail(
                    format!("{key}[{k}]"),
                    format!("expected a SQL string, found {}", describe(other)),
                )),
            })
            .collect(),
        Some(other) => Err(fail(
            key.to_owned(),
            format!(
                "expected SQL: a string or a list of strings, found {}",
                describe(other)
            ),
        )),
    }
}

fn int_in(
    v: Option<&toml::Value>,
    p: &str,
    key: &str,
    min: i64,
    max: i64,
    default: i64,
) -> Result<i64, EntryError> {
    match v {
        None => Ok(default),
        Some(toml::Value::Integer(i)) if (min..=max).contains(i) => Ok(*i),
        Some(other) => Err((
            p.to_owned(),
            Some(key.to_owned()),
            format!(
                "expected an integer from {min} to {max}, found {}",
                describe(other)
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's [http] table
// ---------------------------------------------------------------------------------------------

/// The `[http]` table: where `projectionist run` serves health, metrics, the JSON API and the
/// dashboard, where its API token comes from, and the lag limits of readiness.
#[derive(Clone, Default, PartialEq)]
pub struct HttpConfig {
    /// `listen`: the address to serve on (a bare port means 127.0.0.1).
    pub listen: Option<std::net::SocketAddr>,
    /// `api_token_env`: the environment variable that holds the API bearer token.
    pub api_token_env: Option<String>,
    /// `api_token`: the API bearer token itself (a secret: never printed).
    pub api_token: Option<String>,
    /// `max_lag_events`: not ready when a projection lags more events than this.
    pub max_lag_events: Option<u64>,
    /// `max_lag_seconds`: not ready when a projection's oldest unapplied event is older.
    pub max_lag_seconds: Option<f64>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("api_token_env", &self.api_token_env)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("max_lag_events", &self.max_lag_events)
            .field("max_lag_seconds", &self.max_lag_seconds)
            .finish()
    }
}

const HTTP_KEYS: &[&str] = &[
    "listen",
    "api_token_env",
    "api_token",
    "max_lag_events",
    "max_lag_seconds",
];

/// Parses a listen address: `HOST:PORT`, `:PORT` or `PORT` (the last two on 127.0.0.1).
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    if let Ok(port) = s.strip_prefix(':').unwrap_or(s).parse::<u16>() {
        return Ok(std::net::SocketAddr::from((loopback, port)));
    }
    s.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("expected an address such as 127.0.0.1:9464, [::1]:9464 or a port, found {s:?}"))
}

impl HttpConfig {
    fn parse(v: Option<&toml::Value>) -> Result<Self, (String, String)> {
        let fail = |k: &str, m: String| (format!("http.{k}"), m);
        let t = match v {
            None => return Ok(HttpConfig::default()),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                return Err((
                    "http".into(),
                    format!("expected a table ([http]), found {}", describe(other)),
                ))
            }
        };
        for key in t.keys() {
            if !HTTP_KEYS.contains(&key.as_str()) {
                return Err(fail(
                    key,
                    format!("unknown key; known keys: {}", HTTP_KEYS.join(", ")),
                ));
            }
        }
        let string = |k: &str| -> Result<Option<String>, (String, String)> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
                Some(toml::Value::String(_)) => {
                    Err(fail(k, "expected a non-empty string, found an empty one".into()))
                }
                // Never echo a value that may be a secret.
                Some(other) if k == "api_token" => Err(fail(
                    k,
                    format!(
                        "expected a string, found {}",
                        describe(other).split(' ').next().unwrap_or("another type")
                    ),
                )),
                Some(other) => Err(fail(k, format!("expected a string, found {}", describe(other)))),
            }
        };
        let listen = match string("listen")? {
            None => None,
            Some(s) => Some(parse_listen(&s).map_err(|m| fail("listen", m))?),
        };
        let api_token_env = string("api_token_env")?;
        if let Some(name) = &api_token_env {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(fail(
                    "api_token_env",
                    format!(
                        "expected the name of an environment variable (letters, digits, _), found {name:?}"
                    ),
                ));
            }
        }
        let api_token = string("api_token")?;
        if api_token.is_some() && api_token_env.is_some() {
            return Err(fail(
                "api_token",
                "give either api_token or api_token_env, not both".into(),
            ));
        }
        let max_lag_events = match t.get("max_lag_events") {
            None => None,
            Some(toml::Value::Integer(i)) if *i >= 1 => Some(*i as u64),
            Some(other) => {
                return Err(fail(
                    "max_lag_events",
                    format!("expected a positive integer, found {}", describe(other)),
                ))
            }
        };
        let max_lag_seconds = match t.get("max_lag_seconds") {
            None => None,
            Some(toml::Value::Integer(i)) if *i > 0 => Some(*i as f64),
            Some(toml::Value::Float(x)) if x.is_finite() && *x > 0.0 => Some(*x),
            Some(other) => {
                return Err(fail(
                    "max_lag_seconds",
                    format!("expected a positive number of seconds, found {}", describe(other)),
                ))
            }
        };
        Ok(HttpConfig {
            listen,
            api_token_env,
            api_token,
            max_lag_events,
            max_lag_seconds,
        })
    }
}

#[cfg(test)]
mod http_config_tests {
    use super::*;

    const P: &str = "[[projection]]\nname = \"p\"\nhandlers = { E = \"SELECT 1\" }\n";

    fn parse(extra: &str) -> Result<HttpConfig, ConfigError> {
        Config::parse(&format!("{P}{extra}"), "f.toml").map(|c| c.http)
    }

    #[test]
    fn the_http_table_is_optional_and_parsed() {
        assert_eq!(parse("").ok(), Some(HttpConfig::default()));
        let h = parse(
            "[http]\nlisten = \"9464\"\napi_token_env = \"MY_TOKEN\"\nmax_lag_events = 500\nmax_lag_seconds = 30\n",
        )
        .ok();
        let h = h.unwrap_or_default();
        assert_eq!(h.listen, Some(([127, 0, 0, 1], 9464).into()));
        assert_eq!(h.api_token_env.as_deref(), Some("MY_TOKEN"));
        assert_eq!(h.max_lag_events, Some(500));
        assert_eq!(h.max_lag_seconds, Some(30.0));
        assert_eq!(parse_listen(":80"), Ok(([127, 0, 0, 1], 80).into()));
        assert_eq!(parse_listen("0.0.0.0:1"), Ok(([0, 0, 0, 0], 1).into()));
    }

    #[test]
    fn bad_http_keys_name_the_key() {
        let e = |extra: &str| parse(extra).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e("[http]\nlisten = \"nowhere\"\n"),
            "f.toml: key `http.listen`: expected an address such as 127.0.0.1:9464, [::1]:9464 or a port, found \"nowhere\""
        );
        assert!(e("[http]\nlisen = 1\n").contains("key `http.lisen`: unknown key"));
        assert!(e("[http]\nmax_lag_events = 0\n")
            .contains("key `http.max_lag_events`: expected a positive integer"));
        assert!(e("[http]\nmax_lag_seconds = \"x\"\n").contains("key `http.max_lag_seconds`"));
        assert!(e("[http]\napi_token_env = \"A B\"\n").contains("key `http.api_token_env`"));
        let top = Config::parse(&format!("http = 3\n{P}"), "f.toml")
            .err()
            .map(|e| e.to_string());
        assert!(top.unwrap_or_default().contains("key `http`: expected a table"));
        assert!(e("[daemon]\nx = 1\n").contains("key `daemon`: unknown key"));
    }

    #[test]
    fn the_token_never_shows_in_debug_or_errors() {
        let h = parse("[http]\napi_token = \"s3cret-token\"\n").unwrap_or_default();
        assert_eq!(h.api_token.as_deref(), Some("s3cret-token"));
        assert!(!format!("{h:?}").contains("s3cret"));
        let e = parse("[http]\napi_token = 12345678\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("key `http.api_token`: expected a string, found an") && !e.contains("12345678"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod tests;
