//! Rows and timestamps: events, checkpoint records and dead letters, with the columns each
//! decoder expects.

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use rusqlite::types::Type;
use rusqlite::Row;
use uuid::Uuid;

use crate::core::event::{Checkpoint, Event};
use crate::core::store::{DeadLetter, ProjectionRecord, RunState};

/// The format of timestamps in the database: RFC 3339, UTC, microseconds.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Parses a stored timestamp: RFC 3339, or SQLite's own `YYYY-MM-DD HH:MM:SS[.fff]` (UTC).
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

/// A timestamp projectionist stored in `column`; unreadable text is an error naming it.
fn stored_time(column: usize, text: &str) -> rusqlite::Result<DateTime<Utc>> {
    parse_time(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            Type::Text,
            format!("{text:?} is not a timestamp (expected RFC 3339, or YYYY-MM-DD HH:MM:SS)").into(),
        )
    })
}

pub(super) const EVENT_COLUMNS: &str =
    "position, stream_id, stream_version, event_type, event_id, data, metadata, recorded_at";

/// Reads an event from a row of `EVENT_COLUMNS` starting at column `at`.
pub(super) fn event_from_row(row: &Row<'_>, at: usize) -> rusqlite::Result<Event> {
    let text = |i: usize| -> rusqlite::Result<&str> {
        row.get_ref(at + i)?.as_str().map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(at + i, rusqlite::types::Type::Text, Box::new(e))
        })
    };
    let event_id = text(4)?;
    Ok(Event {
        position: row.get(at)?,
        txid: 0,
        stream_id: text(1)?.to_owned(),
        stream_version: row.get(at + 2)?,
        event_type: text(3)?.to_owned(),
        event_id: Uuid::parse_str(event_id).unwrap_or_else(|_| {
            tracing::warn!(event_id, "event_id is not a UUID; using the nil UUID");
            Uuid::nil()
        }),
        data: Arc::from(text(5)?),
        metadata: Arc::from(text(6)?),
        recorded_at: parse_time(text(7)?).unwrap_or_default(),
    })
}

pub(super) const RECORD_COLUMNS: &str = "c.projection, c.partition, c.txid, c.position, c.state, c.reason, c.applied, c.ignored, c.errors, \
     c.events_per_second, c.last_error, c.updated_at, \
     (SELECT count(*) FROM projection_dead_letters d WHERE d.projection = c.projection AND d.partition = c.partition)";

/// A checkpoint record. An unknown run state or an unreadable timestamp is an error naming
/// it, never a guess.
pub(super) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<ProjectionRecord> {
    let name: String = row.get(0)?;
    let partition: u32 = row.get(1)?;
    let state: String = row.get(4)?;
    let state = RunState::stored(&name, partition, &state)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, Type::Text, Box::new(e)))?;
    let updated: Option<String> = row.get(11)?;
    let count = |i: usize| -> rusqlite::Result<u64> { Ok(row.get::<_, i64>(i)?.max(0) as u64) };
    Ok(ProjectionRecord {
        name,
        partition,
        checkpoint: Checkpoint {
            txid: row.get(2)?,
            position: row.get(3)?,
        },
        state,
        reason: row.get(5)?,
        applied: count(6)?,
        ignored: count(7)?,
        errors: count(8)?,
        events_per_second: row.get(9)?,
        last_error: row.get(10)?,
        updated_at: updated.as_deref().map(|t| stored_time(11, t)).transpose()?,
        dead_letters: count(12)?,
    })
}

pub(super) const DEAD_LETTER_COLUMNS: &str =
    "id, projection, partition, position, stream_id, stream_version, event_type, event_id, \
     data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at, txid";

pub(super) fn dead_letter_from_row(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    let mut event = event_from_row(row, 3)?;
    event.txid = row.get(15)?;
    let first: String = row.get(13)?;
    let last: String = row.get(14)?;
    Ok(DeadLetter {
        id: row.get(0)?,
        projection: row.get(1)?,
        partition: row.get(2)?,
        event,
        error: row.get(11)?,
        attempts: row.get(12)?,
        first_failed_at: stored_time(13, &first)?,
        last_failed_at: stored_time(14, &last)?,
    })
}
