//! Appending events (the [`EventLog`]): optimistic concurrency per stream, inline projections in
//! the append's transaction, and the bulk import.

use std::collections::HashMap;

use chrono::Utc;
use rusqlite::{params, Connection, ErrorCode, TransactionBehavior};
use uuid::Uuid;

use super::inline::apply_inline;
use super::rows::format_time;
use super::{db_err, Inner, SqliteProjection, SqliteStore};
use crate::core::error::{Error, Result};
use crate::core::event::{Appended, Checkpoint, ImportProgress, StreamAppend, IMPORT_KNOWN_STREAMS};
use crate::core::log::EventLog;

impl EventLog for SqliteStore {
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        self.append_with_inline(appends, Vec::new()).await
    }

    async fn import<I>(&self, items: I, progress: Option<ImportProgress>) -> Result<u64>
    where
        I: Iterator<Item = Result<StreamAppend>> + Send + 'static,
    {
        let n = self
            .blocking(move |inner| {
                let n = appending(inner, "importing", |tx, versions, now| {
                    let mut n = 0u64;
                    for item in items {
                        let a = item?;
                        append_in(tx, versions, &a, now)?;
                        let len = a.events.len() as u64;
                        n += len;
                        if let Some(p) = &progress {
                            if n % 4096 < len {
                                p(n);
                            }
                        }
                    }
                    Ok(n)
                })?;
                if let Some(p) = &progress {
                    p(n);
                }
                Ok(n)
            })
            .await?;
        Inner::bump(&self.inner.changes);
        Ok(n)
    }
}

impl SqliteStore {
    /// Appends, then applies the `inline` projections to everything up to the new head, all
    /// in one transaction. A failing inline handler rolls the whole append back.
    pub(super) async fn append_with_inline(
        &self,
        appends: Vec<StreamAppend>,
        inline: Vec<SqliteProjection>,
    ) -> Result<Vec<Appended>> {
        let any_inline = !inline.is_empty();
        let out = self
            .blocking(move |inner| {
                appending(inner, "appending", |tx, versions, now| {
                    let mut out = Vec::with_capacity(appends.len());
                    for a in &appends {
                        out.push(append_in(tx, versions, a, now)?);
                    }
                    for p in &inline {
                        apply_inline(tx, p)?;
                    }
                    Ok(out)
                })
            })
            .await?;
        Inner::bump(&self.inner.changes);
        if any_inline {
            Inner::bump(&self.inner.checkpoints);
        }
        Ok(out)
    }
}

/// Runs `f` in a write transaction, with the stream versions it knows and the time to record,
/// and commits when `f` succeeds. `what` names the write in errors.
fn appending<T>(
    inner: &Inner,
    what: &'static str,
    f: impl FnOnce(&Connection, &mut Versions, &str) -> Result<T>,
) -> Result<T> {
    let mut conn = inner.writer();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_err(what))?;
    let mut versions = Versions::new(&tx)?;
    let out = f(&tx, &mut versions, &format_time(Utc::now()))?;
    tx.commit().map_err(db_err(what))?;
    Ok(out)
}

/// Stream versions known inside one write transaction.
struct Versions {
    known: HashMap<String, i64>,
    /// The events table was empty when the transaction began: every stream starts at 0.
    started_empty: bool,
}

impl Versions {
    fn new(tx: &Connection) -> Result<Self> {
        let started_empty = tx
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM events)", [], |r| r.get(0))
            .map_err(db_err("reading the events table"))?;
        Ok(Versions {
            known: HashMap::new(),
            started_empty,
        })
    }

    /// Validates an append and returns its stream's current version.
    fn check(&mut self, tx: &Connection, a: &StreamAppend) -> Result<i64> {
        if a.events.is_empty() {
            return Err(Error::InvalidInput(format!(
                "nothing to append to stream {}",
                a.stream_id
            )));
        }
        if a.stream_id.is_empty() {
            return Err(Error::InvalidInput("stream_id must not be empty".into()));
        }
        crate::core::event::check_nesting(a)?;
        let current = match self.known.get(&a.stream_id) {
            Some(v) => *v,
            None if self.started_empty => 0,
            None => tx
                .prepare_cached("SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = ?1")
                .and_then(|mut st| st.query_row([&a.stream_id], |r| r.get::<_, i64>(0)))
                .map_err(db_err("reading the stream version"))?,
        };
        if !a.expected.admits(current) {
            return Err(Error::Conflict {
                stream: a.stream_id.clone(),
                expected: a.expected,
                actual: current,
            });
        }
        Ok(current)
    }

    fn set(&mut self, stream_id: &str, version: i64) {
        match self.known.get_mut(stream_id) {
            Some(v) => *v = version,
            None => {
                if self.known.len() >= IMPORT_KNOWN_STREAMS {
                    // Forgotten streams are read from the table again, which holds this
                    // transaction's rows: the table is no longer empty for them.
                    self.known.clear();
                    self.started_empty = false;
                }
                self.known.insert(stream_id.to_owned(), version);
            }
        }
    }
}

/// Appends one stream's events inside `tx`. `versions` caches stream versions across the
/// appends of one transaction.
fn append_in(tx: &Connection, versions: &mut Versions, a: &StreamAppend, now: &str) -> Result<Appended> {
    let current = versions.check(tx, a)?;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO events (stream_id, stream_version, event_type, event_id, data, metadata, recorded_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(db_err("preparing the append"))?;
    let mut version = current;
    let mut first = 0;
    let mut last = 0;
    let mut id_buf = Uuid::encode_buffer();
    for ev in &a.events {
        version += 1;
        let (data, metadata) = (ev.data_json(), ev.metadata_json());
        let event_id: &str = ev.event_id.hyphenated().encode_lower(&mut id_buf);
        match insert.execute(params![
            a.stream_id,
            version,
            ev.event_type,
            event_id,
            data,
            metadata,
            now
        ]) {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                let msg = e.to_string();
                if msg.contains("event_id") {
                    return Err(Error::DuplicateEvent {
                        event_id: ev.event_id,
                    });
                }
                return Err(Error::Conflict {
                    stream: a.stream_id.clone(),
                    expected: a.expected,
                    actual: version,
                });
            }
            Err(e) => return Err(db_err("appending an event")(e)),
        }
        last = tx.last_insert_rowid();
        if first == 0 {
            first = last;
        }
    }
    versions.set(&a.stream_id, version);
    Ok(Appended {
        first_position: first,
        last_position: last,
        stream_version: version,
        token: Checkpoint::at(last),
    })
}
