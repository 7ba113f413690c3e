//! The mapping of a foreign events table: which columns hold what, how the payload is
//! encoded, and how it is parsed from a source URL.
//!
//! ```text
//! table+postgres://USER@HOST/DB?table=SCHEMA.TABLE&position=COL&stream_id=COL
//!     &stream_version=COL&event_type=COL&data=COL[&metadata=COL][&event_id=COL]
//!     [&recorded_at=COL][&compression=zlib][&gap_guard=off]
//! table+sqlite:///PATH?table=…                        (the same keys)
//! eventsourcing+postgres://USER@HOST/DB?application=NAME[&schema=S][&topic=TOPIC=TYPE…]
//! eventsourcing+sqlite:///PATH[?table=stored_events]
//! ```

use std::collections::BTreeMap;

use url::Url;

use crate::core::error::{Error, Result};

/// The database a table lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableDatabase {
    Postgres,
    Sqlite,
}

/// How the payload bytes are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    /// zlib (RFC 1950), as Python's `zlib.compress` writes it.
    Zlib,
}

/// What the preset of Python `eventsourcing` adds to a mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsourcingPreset {
    /// Topic (`package.module:Class.Event`) → event type, for topics whose default (the last
    /// dotted component) is not wanted.
    pub topics: BTreeMap<String, String>,
    /// The AES key (base64, as the library's `CIPHER_KEY`) of encrypted states.
    pub cipher_key: Option<String>,
}

/// Which columns of a foreign table hold an event's parts. Names are SQL identifiers; the
/// table may be schema-qualified (`schema.table`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableMapping {
    pub database: TableDatabase,
    /// The connection URL of the database (`postgres://…`, or the SQLite file path).
    pub connect: String,
    pub table: String,
    /// A monotonically assigned integer: the order events are read in.
    pub position: String,
    pub stream_id: String,
    pub stream_version: String,
    pub event_type: String,
    /// `jsonb`, `json`, `text` holding JSON, or `bytea`/`BLOB` holding UTF-8 JSON.
    pub data: String,
    pub compression: Compression,
    pub metadata: Option<String>,
    pub event_id: Option<String>,
    pub recorded_at: Option<String>,
    /// Whether PostgreSQL reads hold back at position gaps until they are settled (see
    /// docs/config.md). Off only for tests and for tables whose writers commit in position
    /// order (one writer, or a table lock).
    pub gap_guard: bool,
    /// Set for Python `eventsourcing`'s tables.
    pub eventsourcing: Option<EventsourcingPreset>,
}

/// The URL schemes of table sources.
pub const SCHEMES: &[&str] = &[
    "table+postgres",
    "table+postgresql",
    "table+sqlite",
    "eventsourcing+postgres",
    "eventsourcing+postgresql",
    "eventsourcing+sqlite",
];

fn config(message: impl Into<String>) -> Error {
    Error::Config(message.into())
}

/// Whether `name` is a plain SQL identifier, optionally schema-qualified once.
pub fn valid_identifier(name: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match name.split_once('.') {
        Some((schema, table)) => part(schema) && part(table),
        None => part(name),
    }
}

/// `name` quoted for SQL, keeping a schema qualification (`"schema"."table"`).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub fn quote(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

impl TableMapping {
    /// Parses a table source URL (see the module documentation). Errors name the key and say
    /// what is expected.
    pub fn from_url(url: &str) -> Result<TableMapping> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            config(format!(
                "not a table source URL: expected one of {}",
                SCHEMES.join(", ")
            ))
        })?;
        let scheme = scheme.to_ascii_lowercase();
        let (preset, backend) = scheme
            .split_once('+')
            .ok_or_else(|| config(format!("unknown table source scheme `{scheme}`")))?;
        let database = match backend {
            "postgres" | "postgresql" => TableDatabase::Postgres,
            "sqlite" => TableDatabase::Sqlite,
            other => {
                return Err(config(format!(
                    "unknown database `{other}` in `{scheme}`: use postgres or sqlite"
                )))
            }
        };
        let parsed = Url::parse(&format!("{backend}://{rest}"))
            .map_err(|e| config(format!("invalid table source URL: {e}")))?;
        let mut params: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        // What is not ours goes on to the database (e.g. sslmode).
        let ours = |k: &str| {
            matches!(
                k,
                "table"
                    | "position"
                    | "stream_id"
                    | "stream_version"
                    | "event_type"
                    | "data"
                    | "metadata"
                    | "event_id"
                    | "recorded_at"
                    | "compression"
                    | "gap_guard"
                    | "application"
                    | "topic"
                    | "cipher_key"
            ) || (database == TableDatabase::Postgres && k == "schema")
        };
        let mut own = Vec::new();
        params.retain(|(k, v)| {
            if ours(k) {
                own.push((k.clone(), v.clone()));
                false
            } else {
                true
            }
        });
        let connect = match database {
            TableDatabase::Postgres => {
                let mut base = parsed.clone();
                base.set_query(None);
                if !params.is_empty() {
                    base.query_pairs_mut().extend_pairs(params.iter());
                }
                base.to_string()
            }
            TableDatabase::Sqlite => {
                if !params.is_empty() {
                    let keys: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
                    return Err(config(format!(
                        "unknown key(s) {} in the table source URL",
                        keys.join(", ")
                    )));
                }
                let path = rest.split(['?', '#']).next().unwrap_or_default();
                let path = percent_decode(path);
                if path.is_empty() {
                    return Err(config(
                        "the table source URL names no SQLite file: use table+sqlite:///PATH",
                    ));
                }
                path
            }
        };
        match preset {
            "table" => Self::mapped(database, connect, &own),
            "eventsourcing" => Self::eventsourcing(database, connect, &own),
            other => Err(config(format!(
                "unknown table source kind `{other}` in `{scheme}`: use table+… or eventsourcing+…"
            ))),
        }
    }

    fn mapped(database: TableDatabase, connect: String, params: &[(String, String)]) -> Result<Self> {
        let get = |key: &str| last(params, key);
        let required = |key: &str| {
            get(key).ok_or_else(|| {
                config(format!(
                    "the table source needs `{key}`: the column that holds the event's {}",
                    match key {
                        "table" => "table (the table itself, schema-qualified if needed)",
                        "position" => "position (a monotonically assigned integer)",
                        "stream_id" => "stream (aggregate) id",
                        "stream_version" => "version within its stream",
                        "event_type" => "type",
                        _ => "payload (JSON)",
                    }
                ))
            })
        };
        for (key, _) in params {
            if matches!(key.as_str(), "application" | "topic" | "cipher_key" | "schema") {
                return Err(config(format!(
                    "`{key}` belongs to the eventsourcing+… sources, not to table+…"
                )));
            }
        }
        let mapping = TableMapping {
            database,
            connect,
            table: required("table")?,
            position: required("position")?,
            stream_id: required("stream_id")?,
            stream_version: required("stream_version")?,
            event_type: required("event_type")?,
            data: required("data")?,
            compression: compression(get("compression"))?,
            metadata: get("metadata"),
            event_id: get("event_id"),
            recorded_at: get("recorded_at"),
            gap_guard: gap_guard(get("gap_guard"))?,
            eventsourcing: None,
        };
        mapping.check_names()?;
        Ok(mapping)
    }

    fn eventsourcing(database: TableDatabase, connect: String, params: &[(String, String)]) -> Result<Self> {
        let get = |key: &str| last(params, key);
        let mut topics = BTreeMap::new();
        for (key, value) in params {
            match key.as_str() {
                "topic" => {
                    let (topic, event_type) = value.rsplit_once('=').ok_or_else(|| {
                        config(format!(
                            "topic={value:?}: write topic=TOPIC=TYPE, e.g. topic=orders.domain:Order.Created=OrderCreated"
                        ))
                    })?;
                    topics.insert(topic.to_owned(), event_type.to_owned());
                }
                "application" | "schema" | "table" | "compression" | "cipher_key" | "gap_guard" => {}
                other => {
                    return Err(config(format!(
                        "`{other}` is not a setting of the eventsourcing+… sources: their columns are \
                         the library's own (application, schema, table, compression, cipher_key, topic)"
                    )))
                }
            }
        }
        let table = match (database, get("table"), get("application")) {
            (_, Some(table), _) => table,
            // The library's PostgreSQL tables are named after the application, lower-cased.
            (TableDatabase::Postgres, None, Some(app)) => format!("{}_events", app.to_lowercase()),
            (TableDatabase::Postgres, None, None) => {
                return Err(config(
                    "eventsourcing+postgres needs `application=NAME` (its table is NAME_events, lower-cased) or `table=`",
                ))
            }
            (TableDatabase::Sqlite, None, _) => "stored_events".to_owned(),
        };
        let table = match (database, get("schema")) {
            (TableDatabase::Postgres, Some(schema)) if !table.contains('.') => format!("{schema}.{table}"),
            _ => table,
        };
        let mapping = TableMapping {
            database,
            connect,
            table,
            position: match database {
                TableDatabase::Postgres => "notification_id".into(),
                // The SQLite recorder's notification id is the table's rowid.
                TableDatabase::Sqlite => "rowid".into(),
            },
            stream_id: "originator_id".into(),
            stream_version: "originator_version".into(),
            event_type: "topic".into(),
            data: "state".into(),
            compression: compression(get("compression"))?,
            metadata: None,
            event_id: None,
            recorded_at: None,
            gap_guard: gap_guard(get("gap_guard"))?,
            eventsourcing: Some(EventsourcingPreset {
                topics,
                cipher_key: get("cipher_key"),
            }),
        };
        mapping.check_names()?;
        Ok(mapping)
    }

    fn check_names(&self) -> Result<()> {
        let columns = [
            ("table", Some(&self.table)),
            ("position", Some(&self.position)),
            ("stream_id", Some(&self.stream_id)),
            ("stream_version", Some(&self.stream_version)),
            ("event_type", Some(&self.event_type)),
            ("data", Some(&self.data)),
            ("metadata", self.metadata.as_ref()),
            ("event_id", self.event_id.as_ref()),
            ("recorded_at", self.recorded_at.as_ref()),
        ];
        for (key, name) in columns {
            if let Some(name) = name {
                let ok = if key == "table" {
                    valid_identifier(name)
                } else {
                    valid_identifier(name) && !name.contains('.')
                };
                if !ok {
                    return Err(config(format!(
                        "{key}={name:?} is not a plain SQL identifier (letters, digits and _, not starting with a digit{})",
                        if key == "table" { ", optionally schema.table" } else { "" }
                    )));
                }
            }
        }
        Ok(())
    }

    /// The mapped columns, by role, for messages and checks.
    pub fn columns(&self) -> Vec<(&'static str, &str)> {
        let mut columns = vec![
            ("position", self.position.as_str()),
            ("stream_id", self.stream_id.as_str()),
            ("stream_version", self.stream_version.as_str()),
            ("event_type", self.event_type.as_str()),
            ("data", self.data.as_str()),
        ];
        for (role, column) in [
            ("metadata", &self.metadata),
            ("event_id", &self.event_id),
            ("recorded_at", &self.recorded_at),
        ] {
            if let Some(c) = column {
                columns.push((role, c.as_str()));
            }
        }
        columns
    }

    /// What the source reads, for logs: the table and database, without credentials.
    pub fn describe(&self) -> String {
        let kind = if self.eventsourcing.is_some() {
            "eventsourcing table"
        } else {
            "table"
        };
        match self.database {
            TableDatabase::Postgres => {
                let place = Url::parse(&self.connect)
                    .map(|u| format!("{}{}", u.host_str().unwrap_or(""), u.path()))
                    .unwrap_or_default();
                format!("{kind} {} on PostgreSQL {place}", self.table)
            }
            TableDatabase::Sqlite => format!("{kind} {} in SQLite {}", self.table, self.connect),
        }
    }
}

/// The last value of `key` in `params` (a later parameter overrides an earlier one).
fn last(params: &[(String, String)], key: &str) -> Option<String> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

fn compression(value: Option<String>) -> Result<Compression> {
    match value.as_deref() {
        None | Some("" | "none") => Ok(Compression::None),
        Some("zlib") => Ok(Compression::Zlib),
        Some(other) => Err(config(format!("compression={other:?}: use zlib or none"))),
    }
}

fn gap_guard(value: Option<String>) -> Result<bool> {
    match value.as_deref() {
        None | Some("on" | "true") => Ok(true),
        Some("off" | "false") => Ok(false),
        Some(other) => Err(config(format!("gap_guard={other:?}: use on or off"))),
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_mapping_keeps_the_connection_parameters() {
        let m = TableMapping::from_url(
            "table+postgres://app:pw@db:5432/shop?table=es.events&position=id&stream_id=aggregate_id\
             &stream_version=version&event_type=kind&data=payload&sslmode=disable&compression=zlib",
        )
        .unwrap();
        assert_eq!(m.database, TableDatabase::Postgres);
        assert_eq!(m.connect, "postgres://app:pw@db:5432/shop?sslmode=disable");
        assert_eq!(m.table, "es.events");
        assert_eq!(m.compression, Compression::Zlib);
        assert!(m.gap_guard);
        assert_eq!(m.metadata, None);
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let e = TableMapping::from_url("table+sqlite:///x.db?table=t&position=p").unwrap_err();
        assert!(e.to_string().contains("`stream_id`"), "{e}");
        let e = TableMapping::from_url(
            "table+sqlite:///x.db?table=t&position=p;drop&stream_id=s&stream_version=v&event_type=e&data=d",
        )
        .unwrap_err();
        assert!(e.to_string().contains("position=\"p;drop\""), "{e}");
        let e = TableMapping::from_url("table+sqlite:///x.db?table=t&bogus=1").unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn the_eventsourcing_preset_names_the_library_tables() {
        let m = TableMapping::from_url(
            "eventsourcing+postgresql://u@h/db?application=Orders&topic=shop:Order.Created=OrderCreated",
        )
        .unwrap();
        assert_eq!(m.table, "orders_events");
        assert_eq!(m.position, "notification_id");
        let preset = m.eventsourcing.unwrap();
        assert_eq!(preset.topics["shop:Order.Created"], "OrderCreated");
        let m = TableMapping::from_url("eventsourcing+sqlite:///var/app/db.sqlite").unwrap();
        assert_eq!(
            (m.table.as_str(), m.position.as_str()),
            ("stored_events", "rowid")
        );
        assert_eq!(m.connect, "/var/app/db.sqlite");
    }
}
