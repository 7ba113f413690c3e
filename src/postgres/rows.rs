//! Decoding rows: events, checkpoint records and dead letters.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use super::error::db_err;
use crate::core::error::Error;
use crate::core::event::{Checkpoint, Event};
use crate::core::store::{DeadLetter, ProjectionRecord, RunState};

pub(super) fn event_from_row(r: &Row) -> Result<Event, tokio_postgres::Error> {
    let data: Option<String> = r.try_get(6)?;
    let metadata: Option<String> = r.try_get(7)?;
    Ok(Event {
        position: r.try_get(0)?,
        txid: r.try_get(1)?,
        stream_id: r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        stream_version: r.try_get::<_, Option<i64>>(3)?.unwrap_or_default(),
        event_type: r.try_get(4)?,
        event_id: r.try_get::<_, Option<Uuid>>(5)?.unwrap_or_default(),
        data: Arc::from(data.as_deref().unwrap_or("null")),
        metadata: Arc::from(metadata.as_deref().unwrap_or("{}")),
        recorded_at: r.try_get::<_, Option<DateTime<Utc>>>(8)?.unwrap_or_default(),
    })
}

/// A checkpoint record; `op` names the reading operation in errors. An unknown run state is
/// an error naming it, never a guess.
pub(super) fn record_from_row(r: &Row, op: &'static str) -> Result<ProjectionRecord, Error> {
    let err = db_err(op);
    let name: String = r.try_get(0).map_err(&err)?;
    let partition = r.try_get::<_, i32>(1).map_err(&err)?.max(0) as u32;
    let state: String = r.try_get(4).map_err(&err)?;
    let state = RunState::stored(&name, partition, &state)?;
    let count =
        |i: usize| -> Result<u64, tokio_postgres::Error> { Ok(r.try_get::<_, i64>(i)?.max(0) as u64) };
    let rest = move || -> Result<ProjectionRecord, tokio_postgres::Error> {
        Ok(ProjectionRecord {
            name,
            partition,
            checkpoint: Checkpoint {
                txid: r.try_get(2)?,
                position: r.try_get(3)?,
            },
            state,
            reason: r.try_get(5)?,
            applied: count(6)?,
            ignored: count(7)?,
            errors: count(8)?,
            events_per_second: r.try_get(9)?,
            last_error: r.try_get(10)?,
            updated_at: r.try_get(11)?,
            dead_letters: count(12)?,
        })
    };
    rest().map_err(&err)
}

pub(super) fn dead_letter_from_row(r: &Row) -> Result<DeadLetter, tokio_postgres::Error> {
    let data: String = r.try_get(9)?;
    let metadata: String = r.try_get(10)?;
    Ok(DeadLetter {
        id: r.try_get(0)?,
        projection: r.try_get(1)?,
        partition: r.try_get::<_, i32>(2)?.max(0) as u32,
        event: Event {
            position: r.try_get(3)?,
            txid: r.try_get(4)?,
            stream_id: r.try_get(5)?,
            stream_version: r.try_get(6)?,
            event_type: r.try_get(7)?,
            event_id: r.try_get(8)?,
            data: Arc::from(data),
            metadata: Arc::from(metadata),
            recorded_at: r.try_get(11)?,
        },
        error: r.try_get(12)?,
        attempts: r.try_get::<_, i32>(13)?.max(0) as u32,
        first_failed_at: r.try_get(14)?,
        last_failed_at: r.try_get(15)?,
    })
}
