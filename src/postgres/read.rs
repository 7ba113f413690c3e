//! Reading events (the [`Source`]) and the wake-up of runners whose read was blocked behind a
//! transaction still open.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::error::db_err;
use super::listen::bump;
use super::rows::event_from_row;
use super::sql::EVENT_COLUMNS;
use super::{quote, Inner, PgStore};
use crate::core::error::Result;
use crate::core::event::{Checkpoint, Event};
use crate::core::source::{Batch, Filter, Lag, Source};

/// How many rows `Source::lag` counts before it estimates from positions instead.
pub(super) const LAG_COUNT_CAP: i64 = 100_000;

impl PgStore {
    /// Every event of one stream, in version order.
    pub async fn read_stream(&self, stream_id: impl Into<String>) -> Result<Vec<Event>> {
        let stream_id = stream_id.into();
        let client = self.client_for("reading a stream").await?;
        let err = db_err("reading a stream");
        let st = client
            .prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM {}.events WHERE stream_id = $1 ORDER BY stream_version",
                quote(&self.inner.schema)
            ))
            .await
            .map_err(&err)?;
        let rows = client.query(&st, &[&stream_id]).await.map_err(&err)?;
        rows.iter().map(|r| event_from_row(r).map_err(&err)).collect()
    }

    /// The number of events stored (visible to a new transaction).
    pub async fn event_count(&self) -> Result<u64> {
        let client = self.client_for("counting events").await?;
        let n: i64 = client
            .query_one(
                &format!("SELECT count(*) FROM {}.events", quote(&self.inner.schema)),
                &[],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_err("counting events"))?;
        Ok(n.max(0) as u64)
    }

    /// The plan of the read query (`EXPLAIN`), for checking that it is an index range scan.
    pub async fn explain_read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<String> {
        let client = self.client_for("explaining the read").await?;
        let limit = limit.max(1) as i64;
        let err = db_err("explaining the read");
        let rows = match &filter.types {
            None => {
                client
                    .query(
                        &format!("EXPLAIN {}", self.inner.sql.read_all),
                        &[&after.txid, &after.position, &limit],
                    )
                    .await
            }
            Some(types) => {
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                client
                    .query(
                        &format!("EXPLAIN {}", self.inner.sql.read_filtered),
                        &[&after.txid, &after.position, &limit, &types],
                    )
                    .await
            }
        }
        .map_err(&err)?;
        let lines: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        Ok(lines.join("\n"))
    }

    /// Nothing was readable after `after`. If committed events wait behind an open
    /// transaction, look again soon: that transaction may end without any notification (a
    /// rollback).
    async fn probe_blocked(&self, after: Checkpoint) -> Result<()> {
        let client = self.client_for("reading events").await?;
        let err = db_err("reading events");
        let st = client
            .prepare_cached(&self.inner.sql.blocked)
            .await
            .map_err(&err)?;
        let blocked = client
            .query_opt(&st, &[&after.txid, &after.position])
            .await
            .map_err(&err)?
            .is_some();
        if blocked {
            self.wake_later();
        }
        Ok(())
    }

    /// Schedules a wake-up of the runners: used when a read found only events of transactions
    /// that are still open, which commit (or roll back) without a notification reaching the
    /// runners in every case. Backs off while the same transaction stays open.
    fn wake_later(&self) {
        let delay = {
            let mut w = self.inner.wake.lock().unwrap_or_else(|p| p.into_inner());
            if w.pending {
                return;
            }
            w.pending = true;
            let d = w.delay;
            w.delay = (d * 2).min(Duration::from_millis(100));
            d
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(inner) = weak.upgrade() {
                inner.wake.lock().unwrap_or_else(|p| p.into_inner()).pending = false;
                bump(&inner.changes);
            }
        });
    }

    fn reset_wake(&self) {
        self.inner.wake.lock().unwrap_or_else(|p| p.into_inner()).delay = Duration::from_millis(1);
    }
}

impl Source for PgStore {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        if let Some(slice) = filter.partition {
            let batch = self.read_partition(after, limit, filter, slice).await?;
            if batch.events.is_empty() && batch.scanned_to <= after {
                self.probe_blocked(after).await?;
            } else {
                self.reset_wake();
            }
            return Ok(batch);
        }
        let sql = &self.inner.sql;
        let client = self.client_for("reading events").await?;
        let err = db_err("reading events");
        let limit = limit.max(1) as i64;
        // Runs outside any transaction, so that this reader's own transaction never holds the
        // snapshot's xmin back.
        let rows = match &filter.types {
            None => {
                let st = client.prepare_cached(&sql.read_all).await.map_err(&err)?;
                client.query(&st, &[&after.txid, &after.position, &limit]).await
            }
            Some(types) => {
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                let st = client.prepare_cached(&sql.read_filtered).await.map_err(&err)?;
                client
                    .query(&st, &[&after.txid, &after.position, &limit, &types])
                    .await
            }
        }
        .map_err(&err)?;
        let mut batch = Batch {
            events: Vec::with_capacity(rows.len()),
            scanned_to: after,
            ignored: 0,
            deduplicate: false,
        };
        for r in &rows {
            let admitted: bool = r.try_get(9).map_err(&err)?;
            batch.scanned_to = Checkpoint {
                txid: r.try_get(1).map_err(&err)?,
                position: r.try_get(0).map_err(&err)?,
            };
            if admitted {
                batch.events.push(event_from_row(r).map_err(&err)?);
            } else {
                batch.ignored += 1;
            }
        }
        drop(client);
        if rows.is_empty() {
            self.probe_blocked(after).await?;
        } else {
            self.reset_wake();
        }
        Ok(batch)
    }

    async fn head(&self) -> Result<Checkpoint> {
        let client = self.client_for("reading the head").await?;
        let err = db_err("reading the head");
        let st = client.prepare_cached(&self.inner.sql.head).await.map_err(&err)?;
        match client.query_opt(&st, &[]).await.map_err(&err)? {
            None => Ok(Checkpoint::START),
            Some(r) => Ok(Checkpoint {
                txid: r.try_get(0).map_err(&err)?,
                position: r.try_get(1).map_err(&err)?,
            }),
        }
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        let client = self.client_for("measuring lag").await?;
        let err = db_err("measuring lag");
        let st = client.prepare_cached(&self.inner.sql.lag).await.map_err(&err)?;
        let r = client
            .query_one(&st, &[&after.txid, &after.position, &LAG_COUNT_CAP])
            .await
            .map_err(&err)?;
        let counted: i64 = r.try_get(0).map_err(&err)?;
        let oldest: Option<DateTime<Utc>> = r.try_get(1).map_err(&err)?;
        let max_position: i64 = r.try_get(2).map_err(&err)?;
        // Past the cap, estimate from positions (positions have gaps after rollbacks, so this
        // is an upper bound).
        let events = if counted >= LAG_COUNT_CAP {
            counted.max(max_position - after.position)
        } else {
            counted
        };
        Ok(Lag {
            events: events.max(0) as u64,
            oldest,
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    fn supports_partitions(&self) -> bool {
        true
    }

    fn reads_beside(&self) -> bool {
        true
    }

    /// A read runs on its own pooled connection, outside any transaction.
    fn reads_ahead(&self) -> bool {
        true
    }

    async fn partition_lag(&self, after: Checkpoint, filter: &crate::core::source::Filter) -> Result<Lag> {
        match filter.partition {
            Some(slice) => self.lag_of_partition(after, slice).await,
            None => self.lag(after).await,
        }
    }
}
