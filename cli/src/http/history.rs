//! The lag of each projection over the last 15 minutes, for the dashboard's chart: kept in
//! memory only, one bounded ring buffer per projection, sampled by the daemon from the
//! `status()` it reads every second for the metrics (one sample every [`EVERY`] at most).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use projectionist::Status;
use serde::Serialize;

/// How far back the history goes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The time between two samples.
pub const EVERY: Duration = Duration::from_secs(2);
/// Samples kept per projection: the window's worth.
pub const CAPACITY: usize = (WINDOW.as_secs() / EVERY.as_secs()) as usize;

/// One sample of a projection: its lag summed over its partitions (events) and the oldest
/// unapplied event's age over them (seconds), at a wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
}

/// The ring buffers, by projection.
#[derive(Debug, Default)]
pub struct LagHistory {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: Option<Instant>,
    by_projection: BTreeMap<String, VecDeque<Sample>>,
}

impl LagHistory {
    /// Records one sample per projection of `statuses`, unless the last one is younger than
    /// [`EVERY`]. A projection no longer in `statuses` keeps its samples until they age out.
    pub fn record(&self, statuses: &[Status]) {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        inner.last = Some(now);
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut per: BTreeMap<&str, (u64, f64)> = BTreeMap::new();
        for s in statuses {
            let e = per.entry(s.name.as_str()).or_insert((0, 0.0));
            e.0 += s.lag_events;
            e.1 = e.1.max(s.lag_seconds);
        }
        for (name, (lag_events, lag_seconds)) in per {
            let ring = inner.by_projection.entry(name.to_owned()).or_default();
            ring.push_back(Sample {
                at_ms,
                lag_events,
                lag_seconds,
            });
            while ring.len() > CAPACITY {
                ring.pop_front();
            }
        }
        let oldest = at_ms.saturating_sub(WINDOW.as_millis() as u64);
        for ring in inner.by_projection.values_mut() {
            while ring.front().is_some_and(|s| s.at_ms < oldest) {
                ring.pop_front();
            }
        }
        inner.by_projection.retain(|_, ring| !ring.is_empty());
    }

    /// The samples of every projection, oldest first.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<Sample>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .by_projection
            .iter()
            .map(|(name, ring)| (name.clone(), ring.iter().copied().collect()))
            .collect()
    }

    #[cfg(test)]
    fn age(&self, by: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.last = inner.last.and_then(|t| t.checked_sub(by));
        for ring in inner.by_projection.values_mut() {
            for s in ring.iter_mut() {
                s.at_ms = s.at_ms.saturating_sub(by.as_millis() as u64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, partition: u32, lag_events: u64, lag_seconds: f64) -> Status {
        Status {
            name: name.into(),
            partition,
            state: projectionist::RunState::Running,
            checkpoint: 0,
            checkpoint_txid: 0,
            head: 0,
            lag_events,
            lag_seconds,
            events_per_second: 0.0,
            errors: 0,
            dead_letters: 0,
            applied: 0,
            ignored: 0,
            priority: 0,
            reason: None,
            last_error: None,
            partitions: 2,
            owner: None,
        }
    }

    #[test]
    fn samples_sum_partitions_and_are_bounded_by_count_and_age() {
        let h = LagHistory::default();
        h.record(&[
            status("a", 0, 3, 1.5),
            status("a", 1, 4, 0.5),
            status("b", 0, 0, 0.0),
        ]);
        // Too soon: no second sample.
        h.record(&[status("a", 0, 9, 9.0)]);
        let s = h.snapshot();
        assert_eq!(s["a"].len(), 1);
        assert_eq!((s["a"][0].lag_events, s["a"][0].lag_seconds), (7, 1.5));
        assert_eq!(s["b"][0].lag_events, 0);
        for k in 0..CAPACITY + 10 {
            h.age(EVERY);
            h.record(&[status("a", 0, k as u64, 0.0)]);
        }
        let s = h.snapshot();
        assert_eq!(s["a"].len(), CAPACITY, "bounded by count");
        assert_eq!(s["a"].last().map(|x| x.lag_events), Some((CAPACITY + 9) as u64));
        assert!(!s.contains_key("b"), "b aged out: {:?}", s.get("b"));
        h.age(WINDOW + EVERY);
        h.record(&[]);
        assert!(h.snapshot().is_empty(), "every sample aged out");
    }
}
