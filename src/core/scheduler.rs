//! Priority: when several projections have a backlog, higher priority ones get their batches
//! first, and lower priority ones are never starved.
//!
//! Workers take a permit before each batch; there are `slots` permits (1 on SQLite, where
//! writes are serialized anyway). When a permit frees, it goes to the waiting worker with the
//! highest *effective* priority, `priority + passed_over`, where `passed_over` counts the
//! grants that went to others while it waited (ties go to the earliest arrival).
//!
//! **Fairness rule:** a waiting worker gains one point per grant it is passed over for, and a
//! worker that is served starts again at its base priority. So a worker whose priority is `d`
//! below the highest waits at most `d + 1` grants per competitor (`(d + 1) × (W − 1)` with
//! `W` waiting workers) before it is served.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

struct Waiter {
    priority: i64,
    passed_over: i64,
    arrival: u64,
    wake: oneshot::Sender<()>,
}

struct State {
    free: usize,
    arrivals: u64,
    waiting: Vec<Waiter>,
}

/// Hands out batch permits by priority with aging.
#[derive(Clone)]
pub struct Scheduler {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scheduler")
    }
}

/// A batch permit; the slot frees when it is dropped.
pub struct Permit {
    scheduler: Scheduler,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.scheduler.release();
    }
}

impl Scheduler {
    /// A scheduler with `slots` concurrent batches (at least 1).
    pub fn new(slots: usize) -> Self {
        Scheduler {
            state: Arc::new(Mutex::new(State {
                free: slots.max(1),
                arrivals: 0,
                waiting: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a permit.
    pub async fn acquire(&self, priority: i32) -> Permit {
        let rx = {
            let mut st = self.lock();
            if st.free > 0 && st.waiting.is_empty() {
                st.free -= 1;
                return Permit {
                    scheduler: self.clone(),
                };
            }
            let (tx, rx) = oneshot::channel();
            st.arrivals += 1;
            let arrival = st.arrivals;
            st.waiting.push(Waiter {
                priority: i64::from(priority),
                passed_over: 0,
                arrival,
                wake: tx,
            });
            Self::grant(&mut st);
            rx
        };
        // The sender is only dropped after sending, or with the scheduler itself.
        let _ = rx.await;
        Permit {
            scheduler: self.clone(),
        }
    }

    fn release(&self) {
        let mut st = self.lock();
        st.free += 1;
        Self::grant(&mut st);
    }

    /// Gives free slots to the best waiters.
    fn grant(st: &mut State) {
        while st.free > 0 {
            // Drop waiters that gave up (their future was dropped).
            st.waiting.retain(|w| !w.wake.is_closed());
            let best = st
                .waiting
                .iter()
                .enumerate()
                .max_by(|(_, a), (_, b)| {
                    (a.priority + a.passed_over)
                        .cmp(&(b.priority + b.passed_over))
                        .then(b.arrival.cmp(&a.arrival))
                })
                .map(|(i, _)| i);
            let Some(i) = best else { return };
            let w = st.waiting.swap_remove(i);
            for other in &mut st.waiting {
                other.passed_over += 1;
            }
            if w.wake.send(()).is_ok() {
                st.free -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Three workers with backlogs of `n` batches each; returns the order of service.
    async fn serve(priorities: &[i32], n: usize) -> Vec<usize> {
        let s = Scheduler::new(1);
        let order = Arc::new(Mutex::new(Vec::new()));
        // Hold the slot until every worker waits, so that they compete from the start.
        let gate = s.acquire(0).await;
        let mut tasks = Vec::new();
        for (id, &p) in priorities.iter().enumerate() {
            let (s, order) = (s.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..n {
                    let _permit = s.acquire(p).await;
                    order.lock().unwrap().push(id);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        while s.lock().waiting.len() < priorities.len() {
            tokio::task::yield_now().await;
        }
        drop(gate);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        order
    }

    #[tokio::test]
    async fn higher_priority_first_and_lower_never_starved() {
        let order = serve(&[0, 5, 10], 40).await;
        let last = |id| order.iter().rposition(|&x| x == id).unwrap();
        let first = |id| order.iter().position(|&x| x == id).unwrap();
        // Served by priority: the highest backlog finishes first, the lowest last.
        assert!(last(2) < last(1) && last(1) < last(0), "{order:?}");
        assert_eq!(first(2), 0, "{order:?}");
        // The fairness rule: priority 0 is 10 below the top, so it waits at most
        // (10 + 1) × 2 = 22 grants for its first one, and likewise between later ones
        // while the others still have backlogs.
        let mut gap = 0;
        for &x in &order[..last(1)] {
            gap = if x == 0 { 0 } else { gap + 1 };
            assert!(gap <= 22, "priority 0 starved for {gap} grants: {order:?}");
        }
    }

    #[tokio::test]
    async fn equal_priorities_take_turns() {
        let order = serve(&[3, 3], 10).await;
        for pair in order.chunks(2) {
            assert_ne!(pair[0], pair[1], "{order:?}");
        }
    }
}
