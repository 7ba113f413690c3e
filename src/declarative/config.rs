//! The projections file: parsing and validation, with errors that name the file, the
//! projection, the key and what was expected.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::{created_tables, split_statements, Statement};
use crate::core::policy::{Backoff, ErrorPolicy};
use crate::core::projection::ProjectionOptions;

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
    /// Whether the projections file sets `batch_size` (else the store's default applies).
    pub batch_size_set: bool,
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
            batch_size_is_default: !self.batch_size_set,
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
    /// The daemon's `[http]` table, as written: the library does not read it (the command-line
    /// tool does).
    pub http: RawTable,
    /// Where events come from, when not from the database's events table: a broker URL
    /// (`nats://…`, `amqp://…`), a table source URL (`table+postgres://…`,
    /// `eventsourcing+sqlite://…`), or the URL made from a `[source]` table that maps an events
    /// table. The `--source` option overrides it.
    pub source: Option<String>,
}

/// The URL of a `[source]` table: `url` (a database URL, or a `table+…`/`eventsourcing+…`
/// URL), `kind` (`table`, the default, or `eventsourcing`) when the URL does not name it, the
/// mapping's keys as strings, and `[source.topics]` (topic → event type). Errors name the key.
fn source_table_url(t: &toml::Table) -> std::result::Result<String, (Option<String>, String)> {
    let text = |key: &str, v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.trim().to_owned()),
        other => Err((
            Some(key.to_owned()),
            format!("expected a string, found {}", describe(other)),
        )),
    };
    let url = match t.get("url") {
        Some(v) => text("url", v)?,
        None => {
            return Err((
                Some("url".into()),
                "missing: the database the events table lives in, e.g. \"postgres://app@db/shop\"".into(),
            ))
        }
    };
    let kind = match t.get("kind") {
        Some(v) => text("kind", v)?,
        None => "table".to_owned(),
    };
    if !matches!(kind.as_str(), "table" | "eventsourcing") {
        return Err((
            Some("kind".into()),
            format!("{kind:?}: use \"table\" or \"eventsourcing\""),
        ));
    }
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let mut url = if scheme.contains('+') {
        url
    } else if url.contains("://") {
        format!("{kind}+{url}")
    } else {
        // A bare path is a SQLite file.
        format!("{kind}+sqlite://{url}")
    };
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in t {
        match key.as_str() {
            "url" | "kind" => {}
            "topics" => {
                let toml::Value::Table(topics) = value else {
                    return Err((
                        Some("topics".into()),
                        format!(
                            "expected a table of topic = \"EventType\", found {}",
                            describe(value)
                        ),
                    ));
                };
                for (topic, event_type) in topics {
                    let event_type = text(&format!("topics.{topic}"), event_type)?;
                    query.append_pair("topic", &format!("{topic}={event_type}"));
                }
            }
            _ => {
                let value = match value {
                    toml::Value::Boolean(b) => {
                        if *b {
                            "on".to_owned()
                        } else {
                            "off".to_owned()
                        }
                    }
                    v => text(key, v)?,
                };
                query.append_pair(key, &value);
            }
        }
    }
    let query = query.finish();
    if !query.is_empty() {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&query);
    }
    Ok(url)
}

/// A table of the projections file that the library keeps as written without reading it: the
/// daemon's `[http]` table, which `projectionist run` reads. Its `Debug` shows the keys, never
/// the values (the table may hold the API token).
#[derive(Clone, Default)]
pub struct RawTable(Option<toml::Value>);

impl RawTable {
    /// The value as written; `None` when the file does not have it.
    pub fn get(&self) -> Option<&toml::Value> {
        self.0.as_ref()
    }
}

impl fmt::Debug for RawTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("RawTable(None)"),
            Some(toml::Value::Table(t)) => f.debug_set().entries(t.keys()).finish(),
            Some(_) => f.write_str("RawTable(not a table)"),
        }
    }
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
            Some(toml::Value::Table(t)) => Some(source_table_url(t).map_err(|(key, message)| {
                err(None, Some(key.map_or_else(|| "source".to_owned(), |k| format!("source.{k}"))), message)
            })?),
            Some(other) => {
                return Err(err(
                    None,
                    Some("source".into()),
                    format!(
                    "expected a source URL string such as \"nats://127.0.0.1:4222?stream=EVENTS\", or a [source] table \
                     mapping an events table, found {}",
                    describe(other)
                ),
                ))
            }
        };
        let http = RawTable(table.get("http").cloned());
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

/// How a config error names a value it did not expect: its type and a short form of it, such
/// as `an integer (5)`.
pub fn describe(v: &toml::Value) -> String {
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
        batch_size_set: t.get("batch_size").is_some(),
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
