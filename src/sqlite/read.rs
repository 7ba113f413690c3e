//! Reading events: the [`Source`], and reads of one stream.

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::watch;

use super::rows::{event_from_row, parse_time, EVENT_COLUMNS};
use super::{db_err, SqliteStore};
use crate::core::error::Result;
use crate::core::event::{Checkpoint, Event};
use crate::core::source::{Batch, Filter, Lag, Source};

impl SqliteStore {
    /// Every event of one stream, in version order.
    pub async fn read_stream(&self, stream_id: impl Into<String>) -> Result<Vec<Event>> {
        let stream_id = stream_id.into();
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 ORDER BY stream_version"
            ))?;
            let rows = st.query_map([stream_id], |r| event_from_row(r, 0))?;
            rows.collect()
        })
        .await
    }

    /// The number of events stored.
    pub async fn event_count(&self) -> Result<u64> {
        self.read(|conn| conn.query_row("SELECT count(*) FROM events", [], |r| r.get::<_, i64>(0)))
            .await
            .map(|n| n.max(0) as u64)
    }
}

/// Reads up to `limit` admitted events after `after`, on any connection (inside a write
/// transaction it also sees that transaction's own appends).
pub(super) fn read_batch(
    conn: &Connection,
    after: Checkpoint,
    limit: usize,
    filter: &Filter,
) -> Result<Batch> {
    let limit = limit.max(1);
    let err = db_err("reading events");
    let mut st = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > ?1 ORDER BY position LIMIT ?2"
        ))
        .map_err(&err)?;
    // Filtered-out rows are cheap (only two columns are read), so a read looks further than
    // `limit` to fill its batch.
    let scan = limit.saturating_mul(8) as i64;
    let mut rows = st.query(params![after.position, scan]).map_err(&err)?;
    let mut batch = Batch {
        events: Vec::with_capacity(limit.min(4096)),
        scanned_to: after,
        ignored: 0,
        deduplicate: false,
    };
    while let Some(row) = rows.next().map_err(&err)? {
        let position: i64 = row.get(0).map_err(&err)?;
        let admitted = match row.get_ref(3).map_err(&err)?.as_str() {
            Ok(t) => filter.admits(t),
            Err(_) => false,
        };
        batch.scanned_to = Checkpoint::at(position);
        if admitted {
            batch
                .events
                .push(event_from_row(row, 0).map_err(db_err("decoding an event row"))?);
            if batch.events.len() >= limit {
                break;
            }
        } else {
            batch.ignored += 1;
        }
    }
    Ok(batch)
}

impl Source for SqliteStore {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let filter = filter.clone();
        self.blocking(move |inner| read_batch(&inner.reader(), after, limit, &filter))
            .await
    }

    async fn head(&self) -> Result<Checkpoint> {
        self.read(|conn| conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| r.get(0)))
            .await
            .map(Checkpoint::at)
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        self.read(move |conn| {
            let head: i64 =
                conn.query_row("SELECT coalesce(max(position), 0) FROM events", [], |r| r.get(0))?;
            let oldest: Option<String> = conn
                .prepare_cached(
                    "SELECT recorded_at FROM events WHERE position > ?1 ORDER BY position LIMIT 1",
                )?
                .query_row([after.position], |r| r.get(0))
                .optional()?;
            // Positions are dense in SQLite (one writer at a time, no reuse), so the difference
            // is the count without a scan.
            Ok(Lag {
                events: (head - after.position).max(0) as u64,
                oldest: oldest.as_deref().and_then(parse_time),
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

    /// A read runs on the reader connection, beside the writer's commit (WAL readers never
    /// wait for the writer). An in-memory database has one connection only, so a read ahead
    /// would wait for the commit anyway.
    fn reads_ahead(&self) -> bool {
        self.inner.reader.is_some()
    }
}
