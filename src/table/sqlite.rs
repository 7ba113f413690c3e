//! A foreign SQLite table as the event source. SQLite serializes writers, so positions commit
//! in order and reads need no gap guard.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::watch;

use super::decode::{check_sample, Decoder, Raw, RawRow};
use super::mapping::{quote, TableMapping};
use crate::core::error::{Error, Result};
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, Source};
use crate::sqlite::{db_err, parse_time};

/// The names SQLite gives the rowid of a table without an `INTEGER PRIMARY KEY` of its own.
const ROWID: &[&str] = &["rowid", "oid", "_rowid_"];

/// A foreign SQLite table of events. Cheap to clone.
#[derive(Clone)]
pub struct SqliteTableSource {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    mapping: TableMapping,
    decoder: Decoder,
    read: String,
    oldest: Option<String>,
    head: String,
    undecodable: AtomicU64,
    changes: watch::Sender<u64>,
}

impl SqliteTableSource {
    /// Opens the file read-only, checks the mapping against the table and a sample event.
    pub async fn open(mapping: TableMapping) -> Result<SqliteTableSource> {
        tokio::task::spawn_blocking(move || Self::open_blocking(mapping))
            .await
            .map_err(|e| Error::Internal(format!("opening a table source: {e}")))?
    }

    fn open_blocking(mapping: TableMapping) -> Result<SqliteTableSource> {
        let path = Path::new(&mapping.connect);
        if !path.exists() {
            return Err(Error::Config(format!(
                "no SQLite file at {}: check the table source URL",
                mapping.connect
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err("opening the events table's database"))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err("opening the events table's database"))?;
        check_columns(&conn, &mapping)?;
        let m = &mapping;
        let col = |c: &str| quote(c);
        let opt = |c: &Option<String>| c.as_ref().map_or_else(|| "NULL".to_owned(), |c| col(c));
        let table = quote(&m.table);
        let pos = col(&m.position);
        let read = format!(
            "SELECT {pos}, CAST({s} AS TEXT), {v}, CAST({t} AS TEXT), {d}, {md}, CAST({e} AS TEXT), {r} \
             FROM {table} WHERE {pos} > ?1 ORDER BY {pos} LIMIT ?2",
            s = col(&m.stream_id),
            v = col(&m.stream_version),
            t = col(&m.event_type),
            d = col(&m.data),
            md = opt(&m.metadata),
            e = opt(&m.event_id),
            r = opt(&m.recorded_at),
        );
        let source = SqliteTableSource {
            inner: Arc::new(Inner {
                decoder: Decoder::new(&mapping)?,
                head: format!("SELECT max({pos}) FROM {table}"),
                oldest: m.recorded_at.as_ref().map(|r| {
                    format!(
                        "SELECT {} FROM {table} WHERE {pos} > ?1 ORDER BY {pos} LIMIT 1",
                        col(r)
                    )
                }),
                read,
                conn: Mutex::new(conn),
                undecodable: AtomicU64::new(0),
                changes: watch::channel(0).0,
                mapping,
            }),
        };
        {
            let conn = source.conn();
            let mut st = conn
                .prepare(&source.inner.read)
                .map_err(db_err("reading a sample event"))?;
            let sample = st
                .query_row(rusqlite::params![i64::MIN, 1], raw_row)
                .optional()
                .map_err(db_err("reading a sample event"))?;
            if let Some(row) = sample {
                check_sample(&source.inner.decoder, &source.inner.mapping, row)?;
            }
        }
        Ok(source)
    }

    /// Rows whose payload could not be decoded, passed over (each logged at WARN).
    pub fn undecodable(&self) -> u64 {
        self.inner.undecodable.load(Ordering::Relaxed)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SqliteTableSource) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::Internal(format!("reading a table source: {e}")))?
    }
}

fn check_columns(conn: &Connection, m: &TableMapping) -> Result<()> {
    let err = db_err("checking the mapped table");
    let (schema, table) = match m.table.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => ("main".to_owned(), m.table.clone()),
    };
    let mut st = conn
        .prepare(&format!(
            "SELECT name, upper(type) FROM {}.pragma_table_info(?1)",
            quote(&schema)
        ))
        .map_err(&err)?;
    let columns: Vec<(String, String)> = st
        .query_map([&table], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(&err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(&err)?;
    if columns.is_empty() {
        return Err(Error::Config(format!(
            "table {} does not exist in {}: check `table`",
            m.table, m.connect
        )));
    }
    for (role, column) in m.columns() {
        if role == "position" && ROWID.contains(&column.to_ascii_lowercase().as_str()) {
            continue;
        }
        let Some((_, ty)) = columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(column)) else {
            let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
            return Err(Error::Config(format!(
                "{}: no column `{column}` (mapped as {role}); its columns are {}",
                m.table,
                names.join(", ")
            )));
        };
        if matches!(role, "position" | "stream_version") && !ty.contains("INT") {
            return Err(Error::Config(format!(
                "{}.{column} (mapped as {role}) has type {ty}; {role} needs an INTEGER column",
                m.table
            )));
        }
    }
    Ok(())
}

fn raw(v: ValueRef<'_>) -> Raw {
    match v {
        ValueRef::Null => Raw::Null,
        ValueRef::Blob(b) => Raw::Bytes(b.to_vec()),
        ValueRef::Text(t) => Raw::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Integer(i) => Raw::Text(i.to_string()),
        ValueRef::Real(f) => Raw::Text(f.to_string()),
    }
}

fn raw_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        position: r.get(0)?,
        stream_id: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
        stream_version: r.get::<_, Option<i64>>(2)?.unwrap_or_default(),
        event_type: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        data: raw(r.get_ref(4)?),
        metadata: raw(r.get_ref(5)?),
        event_id: r.get(6)?,
        recorded_at: match r.get_ref(7)? {
            ValueRef::Text(t) => parse_time(&String::from_utf8_lossy(t)),
            ValueRef::Integer(secs) => chrono::DateTime::from_timestamp(secs, 0),
            _ => None,
        },
    })
}

impl Source for SqliteTableSource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let filter = filter.clone();
        self.blocking(move |this| {
            let inner = &this.inner;
            let conn = this.conn();
            let err = db_err("reading the events table");
            let mut st = conn.prepare_cached(&inner.read).map_err(&err)?;
            let mut rows = st
                .query(rusqlite::params![after.position, limit.max(1) as i64])
                .map_err(&err)?;
            let mut batch = Batch {
                events: Vec::with_capacity(limit.min(4096)),
                scanned_to: after,
                ignored: 0,
                deduplicate: false,
            };
            while let Some(row) = rows.next().map_err(&err)? {
                let raw = raw_row(row).map_err(&err)?;
                let position = raw.position;
                batch.scanned_to = Checkpoint::at(position);
                if !filter.admits(&inner.decoder.event_type(&raw.event_type)) {
                    batch.ignored += 1;
                    continue;
                }
                inner
                    .decoder
                    .push(&mut batch, raw, &inner.mapping.table, &inner.undecodable);
            }
            Ok(batch)
        })
        .await
    }

    async fn head(&self) -> Result<Checkpoint> {
        self.blocking(|this| {
            let head: Option<i64> = this
                .conn()
                .query_row(&this.inner.head, [], |r| r.get(0))
                .map_err(db_err("reading the head"))?;
            Ok(head.map_or(Checkpoint::START, Checkpoint::at))
        })
        .await
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let head = self.head().await?;
        self.blocking(move |this| {
            let oldest = match &this.inner.oldest {
                Some(q) => this
                    .conn()
                    .query_row(q, [after.position], |r| r.get::<_, Option<String>>(0))
                    .optional()
                    .map_err(db_err("measuring lag"))?
                    .flatten()
                    .and_then(|t| parse_time(&t)),
                None => None,
            };
            // Positions may have gaps (deleted rows, AUTOINCREMENT after rollbacks): an upper
            // bound.
            Ok(Lag {
                events: (head.position - after.position).max(0) as u64,
                oldest,
            })
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn reads_beside(&self) -> bool {
        true
    }
}
