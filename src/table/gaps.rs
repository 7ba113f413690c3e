//! The gap guard's bookkeeping: the position gaps a PostgreSQL read saw below a visible row,
//! the transactions that may still fill each, and when each was settled.
//!
//! The argument (docs/config.md, "Table sources"): positions come from a sequence with
//! `CACHE 1`, which hands out values in increasing order in real time. A gap `g` below a row
//! `r` that a read saw committed was handed out before `r`, so before that read, to a
//! transaction that had started by then. That transaction either ended before the read's
//! snapshot (had it committed, `g` would be visible: so it rolled back, or `g` was never
//! used), or it was still running, and so holds its virtual-transaction lock when the guard
//! lists those locks right after the read. Once every transaction of that list has ended, a
//! read whose snapshot is taken afterwards sees `g` if it was ever committed. Anything still
//! missing then is a hole for ever, and the reader passes it. No timer decides anything.
//!
//! This module holds no database code: [`Gaps`] records the lists and verdicts, the source
//! asks PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The most gaps under watch at once; the oldest is forgotten first (a reader that meets it
/// again watches it anew, which is as sound).
const MAX_WATCHES: usize = 4096;

/// One gap seen by a read: positions `start..=end`, and the transactions that were running
/// right after that read (their virtual transaction ids, and prepared transactions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub start: i64,
    pub end: i64,
    pub candidates: Vec<String>,
    /// The check epoch at which every candidate was found ended; `None` while one runs.
    pub settled_at: Option<u64>,
}

/// The gaps under watch, shared by every reader of one table.
#[derive(Debug, Default)]
pub struct Gaps {
    watches: Mutex<Vec<Watch>>,
    /// Counts finished checks; a reader trusts only verdicts reached before its own read.
    epoch: AtomicU64,
    /// Positions passed as holes (settled and still empty).
    holes: AtomicU64,
}

impl Gaps {
    /// The watches a check must ask about: those not yet settled that lie after `after`.
    /// Settled watches wholly at or before `after` are dropped (a reader still behind them
    /// meets the gap again, and a new watch is as sound as the old).
    pub fn pending(&self, after: i64) -> Vec<Watch> {
        let mut watches = self.lock();
        watches.retain(|w| w.end > after || w.settled_at.is_none());
        watches
            .iter()
            .filter(|w| w.end > after && w.settled_at.is_none())
            .cloned()
            .collect()
    }

    /// Records the result of a check: `running` holds the candidates still running. Watches
    /// none of whose candidates runs are settled at a new epoch.
    pub fn checked(&self, running: &[String]) {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let mut watches = self.lock();
        for w in watches.iter_mut().filter(|w| w.settled_at.is_none()) {
            w.candidates.retain(|c| running.contains(c));
            if w.candidates.is_empty() {
                w.settled_at = Some(epoch);
            }
        }
    }

    /// The epoch a reader notes just before its read: verdicts at or before it hold for the
    /// read's snapshot.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether the gap `start..=end` seen by a read that noted `epoch` is settled: a watch
    /// covering it was settled by a check that finished before the read.
    pub fn settled(&self, start: i64, end: i64, epoch: u64) -> bool {
        self.lock()
            .iter()
            .any(|w| w.start <= start && w.end >= end && w.settled_at.is_some_and(|s| s <= epoch))
    }

    /// Whether the gap is under watch already (settled or not).
    pub fn watched(&self, start: i64, end: i64) -> bool {
        self.lock().iter().any(|w| w.start <= start && w.end >= end)
    }

    /// Starts watching the gap `start..=end` with the transactions running after the read that
    /// saw it. With none running, the next check settles it.
    pub fn watch(&self, start: i64, end: i64, candidates: Vec<String>) {
        let mut watches = self.lock();
        if watches.len() >= MAX_WATCHES {
            watches.remove(0);
        }
        if !watches.iter().any(|w| w.start <= start && w.end >= end) {
            watches.push(Watch {
                start,
                end,
                candidates,
                settled_at: None,
            });
        }
    }

    /// Counts `n` positions passed as holes.
    pub fn passed(&self, n: u64) {
        self.holes.fetch_add(n, Ordering::Relaxed);
    }

    /// Positions passed as holes so far.
    pub fn holes(&self) -> u64 {
        self.holes.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Watch>> {
        self.watches.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_settles_only_for_reads_after_every_candidate_ended() {
        let gaps = Gaps::default();
        gaps.watch(5, 7, vec!["3/10".into(), "4/2".into()]);
        assert!(gaps.watched(6, 7));
        let before = gaps.epoch();
        gaps.checked(&["4/2".into()]);
        assert!(!gaps.settled(5, 7, gaps.epoch()), "4/2 still runs");
        gaps.checked(&[]);
        assert!(
            !gaps.settled(5, 7, before),
            "a read noted before the check cannot use it"
        );
        assert!(gaps.settled(5, 7, gaps.epoch()));
        assert!(
            gaps.settled(6, 6, gaps.epoch()),
            "a part of a settled gap is settled"
        );
        assert!(!gaps.settled(5, 9, gaps.epoch()), "a wider gap is not");
        assert!(gaps.pending(4).is_empty());
    }

    #[test]
    fn a_gap_with_no_candidate_settles_at_the_next_check() {
        let gaps = Gaps::default();
        gaps.watch(1, 1, vec![]);
        let before = gaps.epoch();
        assert!(!gaps.settled(1, 1, before));
        gaps.checked(&[]);
        assert!(gaps.settled(1, 1, gaps.epoch()));
    }
}
