//! Leases on SQLite: one `run` process per projection (or per partition) and file.
//!
//! Two daemons on one file would otherwise both run every projection, each commit of one
//! fencing the other's batch (exact, but wasted work and a warning per batch). Here the core's
//! coordinator runs every projection under a lease, as it runs the partitions of a partitioned
//! projection on PostgreSQL (see [`crate::core::coordinator`]): the first process takes the
//! lease, a second one waits as a standby and takes it over when the first releases it (a
//! clean stop) or lets it expire (a crash). A projection with partitions of the source's own
//! (Kafka with `assignment=leases`) has a lease per partition, shared out between the
//! processes the same way. Every commit checks, in its write transaction, that the lease
//! still carries its owner and token ([`check_fence`]); SQLite serializes writers, so a
//! takeover and a commit never overlap.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::{db_err, SqliteStore};
use crate::core::error::Result;
use crate::core::lease::{Fence, Lease, LeaseInfo, Member, Membership};
use crate::core::store::CommitError;

/// The partitions leased: 1 for a projection leased whole.
fn count(m: &Member) -> u32 {
    m.partitions.max(1)
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn ttl_ms(m: &Member) -> i64 {
    i64::try_from(m.ttl.as_millis()).unwrap_or(i64::MAX / 4)
}

/// Refuses the commit unless `projection`'s lease of `partition` still has the fence's owner
/// and token. Runs inside the commit's write transaction.
pub(super) fn check_fence(
    tx: &Connection,
    projection: &str,
    partition: u32,
    fence: &Fence,
) -> Result<(), CommitError> {
    let held = tx
        .prepare_cached(
            "SELECT 1 FROM projection_leases WHERE projection = ?1 AND partition = ?2 \
             AND owner = ?3 AND token = ?4",
        )
        .and_then(|mut st| {
            st.query_row(params![projection, partition, &*fence.owner, fence.token], |_| {
                Ok(())
            })
            .optional()
        })
        .map_err(db_err("checking the projection's lease"))?;
    match held {
        Some(()) => Ok(()),
        None => Err(CommitError::LeaseLost),
    }
}

/// The leases an `UPDATE … RETURNING partition, token` returned.
fn returned_leases(
    tx: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Lease>> {
    let mut st = tx.prepare_cached(sql)?;
    let rows = st.query_map(params, |r| {
        Ok(Lease {
            partition: r.get(0)?,
            token: r.get(1)?,
        })
    })?;
    let mut out: Vec<Lease> = rows.collect::<rusqlite::Result<_>>()?;
    out.sort_by_key(|l| l.partition);
    Ok(out)
}

impl SqliteStore {
    pub(super) async fn lease_heartbeat(&self, m: &Member) -> Result<Membership> {
        let m = m.clone();
        self.write(move |tx| {
            let (now, ttl) = (now_ms(), ttl_ms(&m));
            let (projection, node) = (m.projection.as_ref(), m.node.as_ref());
            tx.execute(
                "INSERT INTO projection_nodes (projection, node, heartbeat_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (projection, node) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                params![projection, node, now],
            )?;
            let held = returned_leases(
                tx,
                "UPDATE projection_leases SET expires_at = ?3 WHERE projection = ?1 AND owner = ?2 \
                 AND partition < ?4 RETURNING partition, token",
                params![projection, node, now + ttl, count(&m)],
            )?;
            let live: i64 = tx.query_row(
                "SELECT count(*) FROM projection_nodes WHERE projection = ?1 AND heartbeat_at > ?2",
                params![projection, now - ttl],
                |r| r.get(0),
            )?;
            // Forget nodes long gone.
            tx.execute(
                "DELETE FROM projection_nodes WHERE projection = ?1 AND heartbeat_at < ?2",
                params![projection, now - 10 * ttl],
            )?;
            Ok(Membership {
                held,
                live_nodes: u32::try_from(live.max(1)).unwrap_or(u32::MAX),
            })
        })
        .await
    }

    pub(super) async fn lease_acquire(&self, m: &Member, max: u32) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let m = m.clone();
        self.write(move |tx| {
            let (now, ttl) = (now_ms(), ttl_ms(&m));
            let (projection, node) = (m.projection.as_ref(), m.node.as_ref());
            let count = count(&m);
            for partition in 0..count {
                tx.execute(
                    "INSERT OR IGNORE INTO projection_leases (projection, partition) VALUES (?1, ?2)",
                    params![projection, partition],
                )?;
            }
            returned_leases(
                tx,
                "UPDATE projection_leases SET owner = ?2, token = token + 1, acquired_at = ?3, \
                   expires_at = ?3 + ?4 \
                 WHERE projection = ?1 AND partition IN (SELECT partition FROM projection_leases \
                   WHERE projection = ?1 AND partition < ?5 \
                     AND (owner IS NULL OR expires_at IS NULL OR expires_at < ?3) \
                   ORDER BY partition LIMIT ?6) \
                 RETURNING partition, token",
                params![projection, node, now, ttl, count, max],
            )
        })
        .await
    }

    pub(super) async fn lease_release(&self, m: &Member, leases: &[Lease]) -> Result<()> {
        let (m, leases) = (m.clone(), leases.to_vec());
        self.write(move |tx| {
            for l in &leases {
                tx.execute(
                    "UPDATE projection_leases SET owner = NULL, expires_at = NULL \
                     WHERE projection = ?1 AND owner = ?2 AND partition = ?3 AND token = ?4",
                    params![m.projection.as_ref(), m.node.as_ref(), l.partition, l.token],
                )?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn lease_leave(&self, m: &Member) -> Result<()> {
        let m = m.clone();
        self.write(move |tx| {
            let (projection, node) = (m.projection.as_ref(), m.node.as_ref());
            tx.execute(
                "UPDATE projection_leases SET owner = NULL, expires_at = NULL WHERE projection = ?1 AND owner = ?2",
                params![projection, node],
            )?;
            tx.execute(
                "DELETE FROM projection_nodes WHERE projection = ?1 AND node = ?2",
                params![projection, node],
            )?;
            Ok(())
        })
        .await
    }

    pub(super) async fn lease_infos(&self, projection: &str) -> Result<Vec<LeaseInfo>> {
        let projection = projection.to_owned();
        let now = now_ms();
        self.read(move |conn| {
            let mut st = conn.prepare(
                "SELECT partition, CASE WHEN expires_at > ?2 THEN owner END, token, expires_at, acquired_at \
                 FROM projection_leases WHERE projection = ?1 ORDER BY partition",
            )?;
            let rows = st.query_map(params![projection, now], |r| {
                let time = |ms: Option<i64>| ms.and_then(DateTime::<Utc>::from_timestamp_millis);
                Ok(LeaseInfo {
                    projection: projection.clone(),
                    partition: r.get(0)?,
                    owner: r.get(1)?,
                    token: r.get(2)?,
                    expires_at: time(r.get(3)?),
                    acquired_at: time(r.get(4)?),
                })
            })?;
            rows.collect()
        })
        .await
    }
}
