//! Deduplication for sources that redeliver: the ids of applied events, recorded in the
//! commit's transaction, and their pruning after the retention window.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use rusqlite::{params, Connection, ErrorCode};
use uuid::Uuid;

use super::{db_err, Inner, SqliteStore};
use crate::core::error::{Error, Result};
#[cfg(doc)]
use crate::core::source::Batch;
use crate::core::store::CommitError;

/// How long a [`SqliteStore`] keeps the ids of applied events from sources that redeliver,
/// unless [`SqliteStore::dedup_retention`] says otherwise: 24 hours.
pub const DEFAULT_DEDUP_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Seen ids are pruned in chunks of this many rows, one short transaction each.
const PRUNE_CHUNK: i64 = 10_000;

/// Whether seen ids are due for pruning: never pruned in this process, or the last prune was
/// an eighth of the retention window ago (at least 1 s, at most 10 minutes).
pub(super) fn prune_due(last: i64, now: i64, window_secs: u64) -> bool {
    let every = (window_secs / 8).clamp(1, 600) as i64;
    last == 0 || now - last >= every
}

/// Deletes seen ids recorded before `cutoff` (Unix seconds), in chunks of short transactions
/// so that commits wait for one chunk at most.
fn prune_seen_before(inner: &Inner, cutoff: i64) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let n = inner
            .writer()
            .prepare_cached(
                "DELETE FROM projection_seen_events WHERE (projection, event_id) IN \
                 (SELECT projection, event_id FROM projection_seen_events WHERE seen_at < ?1 LIMIT ?2)",
            )
            .and_then(|mut st| st.execute(params![cutoff, PRUNE_CHUNK]))
            .map_err(db_err("pruning seen event ids"))?;
        total += n as u64;
        if (n as i64) < PRUNE_CHUNK {
            return Ok(total);
        }
    }
}

/// Records event ids as seen by `projection`, inside the commit's transaction. An id that is
/// already recorded fails the commit (and so writes nothing of it).
pub(super) fn record_seen(
    tx: &Connection,
    projection: &str,
    ids: &[Uuid],
    now: i64,
) -> Result<(), CommitError> {
    let mut st = tx
        .prepare_cached(
            "INSERT INTO projection_seen_events (projection, event_id, seen_at) VALUES (?1, ?2, ?3)",
        )
        .map_err(db_err("recording seen event ids"))?;
    for id in ids {
        match st.execute(params![projection, id, now]) {
            Ok(_) => {}
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                return Err(CommitError::Store(Error::Database {
                    op: "recording seen event ids",
                    message: format!(
                        "event {id} is already recorded as applied by projection {projection}: a redelivered \
                         event reached a commit (another runner applied it first, or it came twice in one \
                         batch); nothing of this commit was written, and a re-read drops it"
                    ),
                    retryable: true,
                    cause: Some(Box::new(e)),
                }))
            }
            Err(e) => return Err(CommitError::Store(db_err("recording seen event ids")(e))),
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Sets how long the ids of applied events are kept for deduplication (sources that may
    /// redeliver, such as RabbitMQ; see [`Batch::deduplicate`]). A redelivery that arrives
    /// later than this after the first delivery was applied is applied again, so choose it
    /// longer than the longest time a message can stay unacknowledged or be redelivered
    /// (consumer outages included). Default: [`DEFAULT_DEDUP_RETENTION`] (24 hours), at
    /// least one second. Applies to every clone of this store. Older ids are pruned in the
    /// background, about every eighth of the window (at most every 10 minutes).
    pub fn dedup_retention(self, window: Duration) -> Self {
        self.inner
            .dedup_retention
            .store(window.as_secs().max(1), Ordering::Relaxed);
        self
    }

    /// The dedup retention in force (see [`dedup_retention`](Self::dedup_retention)).
    pub fn dedup_window(&self) -> Duration {
        Duration::from_secs(self.inner.dedup_retention.load(Ordering::Relaxed))
    }

    /// Deletes the seen event ids older than the dedup retention now, and returns how many.
    /// Commits do this on their own periodically; this is for operators and tests.
    pub async fn prune_seen(&self) -> Result<u64> {
        let cutoff = Utc::now().timestamp() - self.dedup_window().as_secs() as i64;
        self.blocking(move |inner| prune_seen_before(inner, cutoff)).await
    }

    /// Starts a background prune of seen ids when one is due (see `prune_due`).
    pub(super) fn maybe_prune(&self) {
        let now = Utc::now().timestamp();
        let window = self.inner.dedup_retention.load(Ordering::Relaxed);
        let last = self.inner.last_prune.load(Ordering::Relaxed);
        if !prune_due(last, now, window) || self.inner.pruning.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.last_prune.store(now, Ordering::Relaxed);
        let inner = self.inner.clone();
        let cutoff = now - window as i64;
        tokio::task::spawn_blocking(move || {
            match prune_seen_before(&inner, cutoff) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "pruned seen event ids older than the dedup retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "pruning seen event ids failed; retrying at the next interval")
                }
            }
            inner.pruning.store(false, Ordering::Release);
        });
    }

    /// Which of `ids` `projection` has recorded as applied (`Store::seen`).
    pub(super) async fn seen_ids(&self, projection: &str, ids: &[Uuid]) -> Result<HashSet<Uuid>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let projection = projection.to_owned();
        let ids = ids.to_vec();
        self.read(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT 1 FROM projection_seen_events WHERE projection = ?1 AND event_id = ?2",
            )?;
            let mut seen = HashSet::new();
            for id in ids {
                if st.exists(params![projection, id])? {
                    seen.insert(id);
                }
            }
            Ok(seen)
        })
        .await
    }
}
