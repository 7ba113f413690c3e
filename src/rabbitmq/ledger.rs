//! One projection's deliveries: the positions given to them, the ones not yet acknowledged,
//! and which channel (generation) each came on. No I/O, so that its rules are unit-tested.

use std::collections::{HashSet, VecDeque};

use crate::core::event::{Checkpoint, Event};
use crate::core::source::{Batch, Filter};

/// A delivery not yet acknowledged.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    /// The channel it came on.
    pub generation: u64,
    /// Its delivery tag on that channel.
    pub tag: u64,
    /// The event, with its position.
    pub event: Event,
}

/// The deliveries of one projection's queue.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// The position given last (positions go up by one per delivery).
    pub last: i64,
    /// Every position at or below is acknowledged: reads from below it cannot be served.
    pub floor: i64,
    /// The furthest a read has looked (its `scanned_to`): commits never go beyond it.
    pub served: i64,
    /// Deliveries not yet acknowledged, in position order.
    pub entries: VecDeque<Entry>,
    /// The channel deliveries are taken from; 0 when there is none.
    pub generation: u64,
}

/// What the reader asked for was acknowledged already.
#[derive(Debug, PartialEq)]
pub(crate) struct NoReplay {
    pub acknowledged: i64,
}

impl Ledger {
    /// A ledger for a reader at checkpoint `after`, numbering deliveries from `base + 1`
    /// (`base >= after`).
    pub fn new(after: i64, base: i64) -> Self {
        let base = base.max(after);
        Ledger {
            last: base,
            floor: after,
            served: base,
            entries: VecDeque::new(),
            generation: 0,
        }
    }

    /// Takes deliveries from channel `generation` from now on; positions continue above
    /// `base` if it is higher than the last one. Deliveries of earlier channels are
    /// forgotten: those channels are closed, and the broker redelivers their messages.
    pub fn start(&mut self, generation: u64, base: i64) {
        self.generation = generation;
        self.last = self.last.max(base);
        self.entries.retain(|e| e.generation == generation);
    }

    /// Gives a delivery of channel `generation` the next position and keeps it. Returns
    /// `false` (and drops it) if that channel is no longer the ledger's.
    pub fn push(&mut self, generation: u64, tag: u64, mut event: Event) -> bool {
        if generation != self.generation || generation == 0 {
            return false;
        }
        self.last += 1;
        event.position = self.last;
        event.txid = 0;
        self.entries.push_back(Entry {
            generation,
            tag,
            event,
        });
        true
    }

    /// Deliveries whose position is above `after`.
    pub fn pending_after(&self, after: i64) -> usize {
        self.entries.len() - self.entries.partition_point(|e| e.event.position <= after)
    }

    /// Up to `limit` admitted events after `after`, always the same ones (with the same
    /// positions) for the same `after` while their channel lives. Within one read, a second
    /// delivery of an event id is passed over (it is acknowledged with the batch).
    pub fn read(&mut self, after: i64, limit: usize, filter: &Filter) -> Result<Batch, NoReplay> {
        if after < self.floor {
            return Err(NoReplay {
                acknowledged: self.floor,
            });
        }
        if after > self.served {
            self.rebase(after);
        }
        let limit = limit.max(1);
        let start = self.entries.partition_point(|e| e.event.position <= after);
        let mut batch = Batch {
            events: Vec::with_capacity((self.entries.len() - start).min(limit)),
            scanned_to: Checkpoint::at(after),
            ignored: 0,
            deduplicate: true,
        };
        let mut ids = HashSet::new();
        for e in self.entries.range(start..) {
            batch.scanned_to = Checkpoint::at(e.event.position);
            if !filter.admits(&e.event.event_type) {
                batch.ignored += 1;
                continue;
            }
            if !ids.insert(e.event.event_id) {
                continue;
            }
            batch.events.push(e.event.clone());
            if batch.events.len() >= limit {
                break;
            }
        }
        self.served = self.served.max(batch.scanned_to.position);
        Ok(batch)
    }

    /// The reader's checkpoint is beyond anything this ledger served: another runner
    /// committed this projection. The deliveries this one has not had acknowledged were
    /// not applied by it, so they are numbered again from `after + 1` (those the other
    /// runner applied are dropped by their ids).
    fn rebase(&mut self, after: i64) {
        let mut next = after;
        for e in self.entries.iter_mut().filter(|e| e.event.position > self.floor) {
            next += 1;
            e.event.position = next;
        }
        self.last = self.last.max(next);
        self.served = after;
    }

    /// Moves past positions that no delivery filled (up to `to`): the queue is drained
    /// below a head that counted more messages than arrived.
    pub fn skip_to(&mut self, to: i64) {
        self.last = self.last.max(to);
        self.served = self.served.max(to);
    }

    /// Everything up to `through` is committed: forgets those deliveries and returns the
    /// tag to acknowledge (with `multiple`) on the current channel, if it has any of them.
    /// `Err` when `through` is beyond anything served: no commit of this source's batches
    /// can be there (another runner moved the checkpoint), and nothing is acknowledged.
    pub fn acknowledge(&mut self, through: i64) -> Result<Option<(u64, u64)>, ()> {
        if through > self.served {
            return Err(());
        }
        self.floor = self.floor.max(through);
        let mut tag = None;
        while let Some(e) = self.entries.front() {
            if e.event.position > through {
                break;
            }
            if e.generation == self.generation {
                tag = Some((e.generation, e.tag));
            }
            self.entries.pop_front();
        }
        Ok(tag)
    }

    /// Channel `generation` closed: the broker redelivers its unacknowledged messages on a
    /// new one, with new positions, so its deliveries are forgotten. Returns how many.
    pub fn lost(&mut self, generation: u64) -> usize {
        if generation != self.generation {
            return 0;
        }
        self.generation = 0;
        let n = self.entries.len();
        self.entries.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use uuid::Uuid;

    use super::*;

    fn ev(ty: &str, id: Uuid) -> Event {
        Event {
            position: 0,
            txid: 0,
            stream_id: "s".into(),
            stream_version: 1,
            event_type: ty.into(),
            event_id: id,
            data: Arc::from("{}"),
            metadata: Arc::from("{}"),
            recorded_at: chrono::Utc::now(),
        }
    }

    fn positions(b: &Batch) -> Vec<i64> {
        b.events.iter().map(|e| e.position).collect()
    }

    fn filled(after: i64, base: i64, n: u64) -> Ledger {
        let mut l = Ledger::new(after, base);
        l.start(1, 0);
        for tag in 1..=n {
            assert!(l.push(1, tag, ev("A", Uuid::new_v4())));
        }
        l
    }

    #[test]
    fn positions_start_above_the_base_and_a_re_read_serves_the_same_ones() {
        let mut l = filled(10, 10, 5);
        let all = Filter::default();
        let b = l.read(10, 3, &all).unwrap();
        assert_eq!(positions(&b), [11, 12, 13]);
        assert_eq!(b.scanned_to, Checkpoint::at(13));
        assert!(b.deduplicate);
        // The commit failed: the runner reads from the same checkpoint again.
        let again = l.read(10, 3, &all).unwrap();
        assert_eq!(positions(&again), [11, 12, 13]);
        assert_eq!(
            b.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            again.events.iter().map(|e| e.event_id).collect::<Vec<_>>()
        );
        // A base above the checkpoint (a clock anchor) numbers from there.
        let mut l = filled(10, 1_000, 2);
        assert_eq!(positions(&l.read(10, 9, &all).unwrap()), [1_001, 1_002]);
    }

    #[test]
    fn acknowledging_picks_the_last_tag_at_or_below_and_forgets_those() {
        let mut l = filled(0, 0, 5);
        l.read(0, 10, &Filter::default()).unwrap();
        assert_eq!(l.acknowledge(3), Ok(Some((1, 3))));
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.floor, 3);
        assert_eq!(l.acknowledge(3), Ok(None), "nothing more to acknowledge");
        // Reading below what was acknowledged is a replay.
        assert_eq!(
            l.read(2, 10, &Filter::default()).unwrap_err(),
            NoReplay { acknowledged: 3 }
        );
        assert_eq!(positions(&l.read(3, 10, &Filter::default()).unwrap()), [4, 5]);
        // Beyond anything served: not a commit of this source's batches.
        assert_eq!(l.acknowledge(6), Err(()));
        assert_eq!(l.entries.len(), 2);
    }

    #[test]
    fn filtered_out_and_repeated_ids_are_scanned_over_and_acknowledged_with_the_batch() {
        let mut l = Ledger::new(0, 0);
        l.start(1, 0);
        let dup = Uuid::new_v4();
        l.push(1, 1, ev("A", dup));
        l.push(1, 2, ev("B", Uuid::new_v4()));
        l.push(1, 3, ev("A", dup));
        l.push(1, 4, ev("A", Uuid::new_v4()));
        let only_a = Filter::types(Some(&["A".to_owned()]));
        let b = l.read(0, 10, &only_a).unwrap();
        assert_eq!(positions(&b), [1, 4]);
        assert_eq!(b.ignored, 1);
        assert_eq!(b.scanned_to, Checkpoint::at(4));
        assert_eq!(l.acknowledge(4), Ok(Some((1, 4))));
        assert!(l.entries.is_empty());
    }

    #[test]
    fn a_lost_channel_forgets_its_deliveries_and_later_ones_get_new_positions() {
        let mut l = filled(0, 0, 4);
        let b = l.read(0, 10, &Filter::default()).unwrap();
        assert_eq!(positions(&b), [1, 2, 3, 4]);
        assert_eq!(l.lost(1), 4);
        assert!(
            !l.push(1, 5, ev("A", Uuid::new_v4())),
            "deliveries of a dead channel are dropped"
        );
        // The commit of the batch read before succeeded: nothing left to acknowledge.
        assert_eq!(l.acknowledge(4), Ok(None));
        l.start(2, 0);
        let redelivered = b.events[0].event_id;
        l.push(2, 1, ev("A", redelivered));
        let again = l.read(4, 10, &Filter::default()).unwrap();
        assert_eq!(positions(&again), [5]);
        assert_eq!(again.events[0].event_id, redelivered);
        assert_eq!(l.acknowledge(5), Ok(Some((2, 1))));
    }

    #[test]
    fn a_new_channel_forgets_the_deliveries_of_the_old_one() {
        let mut l = filled(0, 0, 3);
        l.start(2, 0);
        assert!(l.entries.is_empty());
        l.push(2, 1, ev("A", Uuid::new_v4()));
        assert_eq!(positions(&l.read(0, 10, &Filter::default()).unwrap()), [4]);
    }

    #[test]
    fn a_checkpoint_beyond_everything_served_renumbers_the_unapplied_deliveries() {
        let mut l = filled(0, 0, 3);
        assert_eq!(positions(&l.read(0, 10, &Filter::default()).unwrap()), [1, 2, 3]);
        // Another runner committed this projection up to 50.
        assert_eq!(l.acknowledge(50), Err(()));
        let b = l.read(50, 10, &Filter::default()).unwrap();
        assert_eq!(positions(&b), [51, 52, 53]);
        assert_eq!(l.acknowledge(53), Ok(Some((1, 3))));
    }

    #[test]
    fn skipping_moves_past_unfilled_positions() {
        let mut l = filled(0, 0, 0);
        let b = l.read(0, 10, &Filter::default()).unwrap();
        assert!(b.events.is_empty() && b.scanned_to == Checkpoint::at(0));
        l.skip_to(7);
        assert_eq!(l.acknowledge(7), Ok(None));
        l.push(1, 1, ev("A", Uuid::new_v4()));
        assert_eq!(positions(&l.read(7, 10, &Filter::default()).unwrap()), [8]);
        assert_eq!(l.pending_after(7), 1);
    }
}
