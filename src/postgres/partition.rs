//! Partitioned projections on PostgreSQL: reads of one partition, leases, and the seen-event
//! records of sources that redeliver.
//!
//! # Reading one partition
//!
//! `events.stream_hash` is generated at insert (see `schema.rs`); a projection with N
//! partitions reads `stream_hash % N = p` on the expression index
//! `events_partition_<N>_idx (stream_hash % N, xid, position)`, created on first use. Each
//! partition reads only its own rows: N partitions read the log once between them, not N
//! times.
//!
//! A partition's checkpoint must be able to move past rows of other partitions, or a
//! catch-up to the head would wait for ever on a partition whose streams got no event near
//! the head. So when a read returns fewer rows than asked, the partition has no readable event
//! left, and its checkpoint moves to the newest readable event of the whole log, taken in the
//! same statement (one snapshot): every event below it is either in this batch, in another
//! partition, or from a transaction that can no longer commit behind it.
//!
//! # Leases
//!
//! `projection_leases` has a row per partition with an owner, an expiry and a token that goes
//! up by one at every change of owner; `projection_nodes` has the processes with their
//! heartbeats. Commits check the token in their own transaction (`Sql::fence`).

use std::collections::HashSet;
use std::time::Duration;

use uuid::Uuid;

use super::error::{db, db_err};
use super::read::LAG_COUNT_CAP;
use super::rows::event_from_row;
use super::{partition_i32, quote, PgStore};
use crate::core::error::{Error, Result};
use crate::core::event::Checkpoint;
use crate::core::lease::{Lease, LeaseInfo, Member, Membership};
use crate::core::source::{Batch, Filter, Lag, PartitionSlice};

/// Seen-event records are pruned at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// A duration as float seconds, for `$n * interval '1 second'`.
fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Refuses a partition that does not exist.
fn check_slice(slice: PartitionSlice) -> Result<()> {
    if slice.count == 0 || slice.index >= slice.count {
        return Err(Error::InvalidInput(format!(
            "partition {} of {} does not exist",
            slice.index, slice.count
        )));
    }
    Ok(())
}

impl PgStore {
    /// The SQL that reads one partition out of `count`, with or without a type filter.
    fn partition_read_sql(&self, count: u32, filtered: bool) -> String {
        let s = quote(&self.inner.schema);
        let admitted = if filtered {
            "e.event_type = ANY($5::text[])"
        } else {
            "true"
        };
        format!(
            "WITH h AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin), \
             top AS MATERIALIZED (SELECT x.xid, x.position FROM {s}.events x \
               WHERE x.xid < (SELECT xmin FROM h) ORDER BY x.xid DESC, x.position DESC LIMIT 1), \
             r AS MATERIALIZED (SELECT e.position, e.xid, e.stream_id, e.stream_version, e.event_type, \
               e.event_id, e.data, e.metadata, e.recorded_at, {admitted} AS admitted \
               FROM {s}.events e \
               WHERE e.stream_hash % {count} = $4 AND e.xid >= $1 AND (e.xid, e.position) > ($1, $2) \
                 AND e.xid < (SELECT xmin FROM h) \
               ORDER BY e.xid, e.position LIMIT $3) \
             SELECT r.position, r.xid, \
               CASE WHEN r.admitted THEN r.stream_id END, \
               CASE WHEN r.admitted THEN r.stream_version END, \
               r.event_type, \
               CASE WHEN r.admitted THEN r.event_id END, \
               CASE WHEN r.admitted THEN r.data::text END, \
               CASE WHEN r.admitted THEN r.metadata::text END, \
               CASE WHEN r.admitted THEN r.recorded_at END, \
               r.admitted, (SELECT xid FROM top), (SELECT position FROM top) \
             FROM (SELECT 1) one LEFT JOIN r ON true ORDER BY r.xid, r.position"
        )
    }

    /// Creates the partition index for `count` partitions, once per process.
    async fn ensure_partition_index(&self, count: u32) -> Result<()> {
        {
            let done = self.inner.partition_indexes.lock().map_err(|_| poisoned())?;
            if done.contains(&count) {
                return Ok(());
            }
        }
        let s = quote(&self.inner.schema);
        let ddl = format!(
            "CREATE INDEX IF NOT EXISTS events_partition_{count}_idx ON {s}.events \
             ((stream_hash % {count}), xid, position)"
        );
        let err = db_err("creating the partition index");
        let mut client = self.client_for("creating the partition index").await?;
        let tx = client.transaction().await.map_err(&err)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(1886547822, hashtext($1))",
            &[&self.inner.schema],
        )
        .await
        .map_err(&err)?;
        tx.batch_execute(&ddl).await.map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        self.inner
            .partition_indexes
            .lock()
            .map_err(|_| poisoned())?
            .insert(count);
        Ok(())
    }

    /// Reads one partition (see the module documentation).
    pub(super) async fn read_partition(
        &self,
        after: Checkpoint,
        limit: usize,
        filter: &Filter,
        slice: PartitionSlice,
    ) -> Result<Batch> {
        check_slice(slice)?;
        self.ensure_partition_index(slice.count).await?;
        let client = self.client_for("reading events").await?;
        let err = db_err("reading events");
        let sql = self.partition_read_sql(slice.count, filter.types.is_some());
        let st = client.prepare_cached(&sql).await.map_err(&err)?;
        let limit = limit.max(1) as i64;
        let index = i64::from(slice.index);
        let rows = match &filter.types {
            None => {
                client
                    .query(&st, &[&after.txid, &after.position, &limit, &index])
                    .await
            }
            Some(types) => {
                let types: Vec<&str> = types.iter().map(String::as_str).collect();
                client
                    .query(&st, &[&after.txid, &after.position, &limit, &index, &types])
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
        let mut found = 0i64;
        let mut top = None;
        for r in &rows {
            if let (Some(txid), Some(position)) = (
                r.try_get::<_, Option<i64>>(10).map_err(&err)?,
                r.try_get::<_, Option<i64>>(11).map_err(&err)?,
            ) {
                top = Some(Checkpoint { txid, position });
            }
            let Some(position) = r.try_get::<_, Option<i64>>(0).map_err(&err)? else {
                continue;
            };
            found += 1;
            batch.scanned_to = Checkpoint {
                txid: r.try_get(1).map_err(&err)?,
                position,
            };
            if r.try_get::<_, bool>(9).map_err(&err)? {
                batch.events.push(event_from_row(r).map_err(&err)?);
            } else {
                batch.ignored += 1;
            }
        }
        if found < limit {
            // Nothing of this partition is readable beyond these rows: move past the rest of
            // the readable log too.
            if let Some(top) = top {
                batch.scanned_to = batch.scanned_to.max(top);
            }
        }
        Ok(batch)
    }

    /// The lag of one partition: its events after `after` (counted up to a cap), and the age
    /// of the oldest.
    pub(super) async fn lag_of_partition(&self, after: Checkpoint, slice: PartitionSlice) -> Result<Lag> {
        check_slice(slice)?;
        self.ensure_partition_index(slice.count).await?;
        let s = quote(&self.inner.schema);
        let count = slice.count;
        let client = self.client_for("measuring lag").await?;
        let err = db_err("measuring lag");
        let sql = format!(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM {s}.events WHERE stream_hash % {count} = $3 \
                     AND xid >= $1 AND (xid, position) > ($1, $2) ORDER BY xid, position LIMIT $4) c), \
                    (SELECT recorded_at FROM {s}.events WHERE stream_hash % {count} = $3 \
                     AND xid >= $1 AND (xid, position) > ($1, $2) ORDER BY xid, position LIMIT 1)"
        );
        let st = client.prepare_cached(&sql).await.map_err(&err)?;
        let r = client
            .query_one(
                &st,
                &[
                    &after.txid,
                    &after.position,
                    &i64::from(slice.index),
                    &LAG_COUNT_CAP,
                ],
            )
            .await
            .map_err(&err)?;
        let events: i64 = r.try_get(0).map_err(&err)?;
        Ok(Lag {
            events: events.max(0) as u64,
            oldest: r.try_get(1).map_err(&err)?,
        })
    }

    /// Which of `ids` were recorded as seen for `projection`. Prunes old records now and then.
    pub(super) async fn seen_ids(&self, projection: &str, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        let client = self.client_for("looking up seen events").await?;
        let err = db_err("looking up seen events");
        let due = {
            let mut last = self.inner.last_prune.lock().map_err(|_| poisoned())?;
            let due = last.is_none_or(|t| t.elapsed() >= PRUNE_EVERY);
            if due {
                *last = Some(std::time::Instant::now());
            }
            due
        };
        if due {
            let window = self.inner.seen_retention.as_secs_f64();
            let st = client
                .prepare_cached(&self.inner.sql.prune_seen)
                .await
                .map_err(&err)?;
            client.execute(&st, &[&window]).await.map_err(&err)?;
        }
        let st = client.prepare_cached(&self.inner.sql.seen).await.map_err(&err)?;
        let rows = client.query(&st, &[&projection, &ids]).await.map_err(&err)?;
        rows.iter()
            .map(|r| r.try_get::<_, Uuid>(0).map_err(&err))
            .collect()
    }

    pub(super) async fn lease_heartbeat(&self, m: &Member) -> Result<Membership> {
        let s = quote(&self.inner.schema);
        let err = db_err("renewing leases");
        let mut client = self.client_for("renewing leases").await?;
        let tx = client.transaction().await.map_err(&err)?;
        let ttl = seconds(m.ttl);
        let (projection, node) = (m.projection.as_ref(), m.node.as_ref());
        tx.execute(
            &format!(
                "INSERT INTO {s}.projection_nodes (projection, node) VALUES ($1, $2) \
                 ON CONFLICT (projection, node) DO UPDATE SET heartbeat_at = now()"
            ),
            &[&projection, &node],
        )
        .await
        .map_err(&err)?;
        let held = tx
            .query(
                &format!(
                    "UPDATE {s}.projection_leases SET expires_at = now() + $3::float8 * interval '1 second' \
                     WHERE projection = $1 AND owner = $2 RETURNING partition, token"
                ),
                &[&projection, &node, &ttl],
            )
            .await
            .map_err(&err)?;
        let live: i64 = tx
            .query_one(
                &format!(
                    "SELECT count(*) FROM {s}.projection_nodes WHERE projection = $1 \
                     AND heartbeat_at > now() - $2::float8 * interval '1 second'"
                ),
                &[&projection, &ttl],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&err)?;
        // Forget nodes long gone.
        tx.execute(
            &format!(
                "DELETE FROM {s}.projection_nodes WHERE projection = $1 \
                 AND heartbeat_at < now() - 10 * $2::float8 * interval '1 second'"
            ),
            &[&projection, &ttl],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        let mut leases = Vec::with_capacity(held.len());
        for r in &held {
            let p: i32 = r.try_get(0).map_err(&err)?;
            leases.push(Lease {
                partition: p.max(0) as u32,
                token: r.try_get(1).map_err(&err)?,
            });
        }
        leases.retain(|l| l.partition < m.partitions);
        leases.sort_by_key(|l| l.partition);
        Ok(Membership {
            held: leases,
            live_nodes: u32::try_from(live.max(1)).unwrap_or(u32::MAX),
        })
    }

    pub(super) async fn lease_acquire(&self, m: &Member, max: u32) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let s = quote(&self.inner.schema);
        let err = db_err("acquiring leases");
        let client = self.client_for("acquiring leases").await?;
        let count = partition_i32(m.partitions)?;
        let (projection, node) = (m.projection.as_ref(), m.node.as_ref());
        client
            .execute(
                &format!(
                    "INSERT INTO {s}.projection_leases (projection, partition) \
                     SELECT $1, g FROM generate_series(0, $2 - 1) g ON CONFLICT DO NOTHING"
                ),
                &[&projection, &count],
            )
            .await
            .map_err(&err)?;
        // Rows that an in-flight commit holds (FOR SHARE) are skipped, and tried again at the
        // next heartbeat.
        let rows = client
            .query(
                &format!(
                    "UPDATE {s}.projection_leases l SET owner = $2, token = l.token + 1, \
                       acquired_at = now(), expires_at = now() + $4::float8 * interval '1 second' \
                     FROM (SELECT partition FROM {s}.projection_leases \
                           WHERE projection = $1 AND partition < $3 \
                             AND (owner IS NULL OR expires_at IS NULL OR expires_at < now()) \
                           ORDER BY partition LIMIT $5 FOR UPDATE SKIP LOCKED) free \
                     WHERE l.projection = $1 AND l.partition = free.partition \
                     RETURNING l.partition, l.token"
                ),
                &[&projection, &node, &count, &seconds(m.ttl), &i64::from(max)],
            )
            .await
            .map_err(&err)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let p: i32 = r.try_get(0).map_err(&err)?;
            out.push(Lease {
                partition: p.max(0) as u32,
                token: r.try_get(1).map_err(&err)?,
            });
        }
        out.sort_by_key(|l| l.partition);
        Ok(out)
    }

    pub(super) async fn lease_release(&self, m: &Member, leases: &[Lease]) -> Result<()> {
        if leases.is_empty() {
            return Ok(());
        }
        let s = quote(&self.inner.schema);
        let client = self.client_for("releasing leases").await?;
        let partitions: Vec<i32> = leases
            .iter()
            .map(|l| partition_i32(l.partition))
            .collect::<Result<_>>()?;
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        client
            .execute(
                &format!(
                    "UPDATE {s}.projection_leases l SET owner = NULL, expires_at = NULL \
                     FROM unnest($3::int[], $4::bigint[]) AS g(partition, token) \
                     WHERE l.projection = $1 AND l.owner = $2 AND l.partition = g.partition \
                       AND l.token = g.token"
                ),
                &[&m.projection.as_ref(), &m.node.as_ref(), &partitions, &tokens],
            )
            .await
            .map_err(|e| db("releasing leases", e))?;
        Ok(())
    }

    pub(super) async fn lease_leave(&self, m: &Member) -> Result<()> {
        let s = quote(&self.inner.schema);
        let err = db_err("leaving the partition group");
        let mut client = self.client_for("leaving the partition group").await?;
        let tx = client.transaction().await.map_err(&err)?;
        let (projection, node) = (m.projection.as_ref(), m.node.as_ref());
        tx.execute(
            &format!(
                "UPDATE {s}.projection_leases SET owner = NULL, expires_at = NULL \
                 WHERE projection = $1 AND owner = $2"
            ),
            &[&projection, &node],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            &format!("DELETE FROM {s}.projection_nodes WHERE projection = $1 AND node = $2"),
            &[&projection, &node],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)
    }

    pub(super) async fn lease_infos(&self, projection: &str) -> Result<Vec<LeaseInfo>> {
        let s = quote(&self.inner.schema);
        let err = db_err("reading leases");
        let client = self.client_for("reading leases").await?;
        let rows = client
            .query(
                &format!(
                    "SELECT partition, CASE WHEN expires_at > now() THEN owner END, token, expires_at, \
                     acquired_at FROM {s}.projection_leases WHERE projection = $1 ORDER BY partition"
                ),
                &[&projection],
            )
            .await
            .map_err(&err)?;
        rows.iter()
            .map(|r| {
                let p: i32 = r.try_get(0)?;
                Ok(LeaseInfo {
                    projection: projection.to_owned(),
                    partition: p.max(0) as u32,
                    owner: r.try_get(1)?,
                    token: r.try_get(2)?,
                    expires_at: r.try_get(3)?,
                    acquired_at: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()
            .map_err(&err)
    }
}

fn poisoned() -> Error {
    Error::Internal("an internal lock was poisoned by a panic; restart the process".into())
}
