//! The orders workload of DESIGN.md: seeded, deterministic, used by the quickstart, the
//! tests and `projectionist bench`, so that every figure compares.
//!
//! Each order is its own stream `ORDER-nnnnnnn` with, in order: `OrderCreated`, one to four
//! `ItemAdded`, `OrderConfirmed`, then either `OrderShipped` (90%) followed by
//! `OrderDelivered` (90% of those), or `OrderCancelled`. About 1,000 orders are open at once,
//! and each next event comes from a random open order.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::core::event::NewEvent;

/// One generated event.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadEvent {
    pub stream_id: String,
    /// 1-based version within its stream.
    pub stream_version: i64,
    pub event_type: &'static str,
    pub data: Value,
}

impl WorkloadEvent {
    pub fn to_new_event(&self) -> NewEvent {
        NewEvent::new(self.event_type, self.data.clone())
    }

    /// The event as a JSON line for `projectionist import`.
    pub fn to_json_line(&self) -> String {
        json!({"stream_id": self.stream_id, "type": self.event_type, "data": self.data}).to_string()
    }
}

const CUSTOMERS: &[&str] = &[
    "Alice Johnson",
    "Bob Smith",
    "Carol Díaz",
    "Dmitri Petrov",
    "Eve O'Neil",
    "Farah Khan",
    "Guo Wei",
    "Hana Sato",
    "Ivan Horvat",
    "Julia Rossi",
    "Kwame Mensah",
    "Lena Fischer",
];
const ITEMS: &[(&str, u32)] = &[
    ("Wireless Keyboard", 7999),
    ("Mouse", 3999),
    ("Monitor", 18950),
    ("USB-C Hub", 4500),
    ("Laptop Stand", 2999),
    ("Webcam", 6499),
    ("Headset", 8900),
    ("Desk Lamp", 3450),
];
const CARRIERS: &[&str] = &["FedEx", "UPS", "DHL", "USPS"];
const REASONS: &[&str] = &["customer request", "payment failed", "out of stock"];

/// Open orders at once.
pub const OPEN_ORDERS: usize = 1000;

/// Every event type the workload produces.
pub const EVENT_TYPES: [&str; 6] = [
    "OrderCreated",
    "ItemAdded",
    "OrderConfirmed",
    "OrderShipped",
    "OrderDelivered",
    "OrderCancelled",
];

struct Open {
    number: u64,
    /// Next step: 0 created, 1..=items item added, then confirmed, shipped/cancelled, delivered.
    step: u32,
    items: u32,
    version: i64,
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    Delivered,
    ShippedOnly,
    Cancelled,
}

/// The orders workload, as an iterator of exactly `events` events.
pub struct Orders {
    rng: ChaCha8Rng,
    open: Vec<Open>,
    next_order: u64,
    remaining: u64,
}

impl Orders {
    /// `events` events generated from `seed`.
    pub fn new(seed: u64, events: u64) -> Self {
        Orders {
            rng: ChaCha8Rng::seed_from_u64(seed),
            open: Vec::with_capacity(OPEN_ORDERS),
            next_order: 1,
            remaining: events,
        }
    }

    fn open_one(&mut self) {
        let items = self.rng.gen_range(1..=4);
        let roll: f64 = self.rng.gen();
        let outcome = if roll < 0.9 {
            if self.rng.gen::<f64>() < 0.9 {
                Outcome::Delivered
            } else {
                Outcome::ShippedOnly
            }
        } else {
            Outcome::Cancelled
        };
        self.open.push(Open {
            number: self.next_order,
            step: 0,
            items,
            version: 0,
            outcome,
        });
        self.next_order += 1;
    }
}

/// The stream id of order `n`.
pub fn order_id(n: u64) -> String {
    format!("ORDER-{n:07}")
}

impl Iterator for Orders {
    type Item = WorkloadEvent;

    fn next(&mut self) -> Option<WorkloadEvent> {
        if self.remaining == 0 {
            return None;
        }
        while self.open.len() < OPEN_ORDERS {
            self.open_one();
        }
        let i = self.rng.gen_range(0..self.open.len());
        let o = &mut self.open[i];
        let id = order_id(o.number);
        let step = o.step;
        let (event_type, data, done) = if step == 0 {
            let c = (o.number as usize * 7 + 3) % CUSTOMERS.len();
            (
                "OrderCreated",
                json!({"order_id": id, "customer_id": format!("CUST-{:03}", c + 1), "customer_name": CUSTOMERS[c]}),
                false,
            )
        } else if step <= o.items {
            let (name, cents) = ITEMS[self.rng.gen_range(0..ITEMS.len())];
            let quantity = self.rng.gen_range(1..=3);
            (
                "ItemAdded",
                json!({"order_id": id, "item_name": name, "quantity": quantity, "unit_price": f64::from(cents) / 100.0}),
                false,
            )
        } else if step == o.items + 1 {
            ("OrderConfirmed", json!({"order_id": id}), false)
        } else if step == o.items + 2 {
            match o.outcome {
                Outcome::Cancelled => {
                    let r = REASONS[self.rng.gen_range(0..REASONS.len())];
                    ("OrderCancelled", json!({"order_id": id, "reason": r}), true)
                }
                outcome => {
                    let carrier = CARRIERS[self.rng.gen_range(0..CARRIERS.len())];
                    let tracking = format!("{:010}", self.rng.gen_range(0..10_000_000_000u64));
                    (
                        "OrderShipped",
                        json!({"order_id": id, "carrier": carrier, "tracking_number": tracking}),
                        outcome == Outcome::ShippedOnly,
                    )
                }
            }
        } else {
            ("OrderDelivered", json!({"order_id": id}), true)
        };
        let o = &mut self.open[i];
        o.step += 1;
        o.version += 1;
        let version = o.version;
        if done {
            self.open.swap_remove(i);
        }
        self.remaining -= 1;
        Some(WorkloadEvent {
            stream_id: id,
            stream_version: version,
            event_type,
            data,
        })
    }
}

/// Seed 002's ORDER-001 story: created, two items, confirmed, shipped, delivered.
pub fn order_001_story() -> Vec<WorkloadEvent> {
    let id = "ORDER-001";
    let events = [
        (
            "OrderCreated",
            json!({"order_id": id, "customer_id": "CUST-001", "customer_name": "Alice Johnson"}),
        ),
        (
            "ItemAdded",
            json!({"order_id": id, "item_name": "Wireless Keyboard", "quantity": 1, "unit_price": 79.99}),
        ),
        (
            "ItemAdded",
            json!({"order_id": id, "item_name": "Mouse", "quantity": 1, "unit_price": 39.99}),
        ),
        ("OrderConfirmed", json!({"order_id": id})),
        (
            "OrderShipped",
            json!({"order_id": id, "carrier": "FedEx", "tracking_number": "1234567890"}),
        ),
        ("OrderDelivered", json!({"order_id": id})),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, (t, d))| WorkloadEvent {
            stream_id: id.into(),
            stream_version: i as i64 + 1,
            event_type: t,
            data: d,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn deterministic_and_well_formed() {
        let a: Vec<_> = Orders::new(7, 20_000).collect();
        let b: Vec<_> = Orders::new(7, 20_000).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 20_000);
        let c: Vec<_> = Orders::new(8, 20_000).collect();
        assert_ne!(a, c);

        // Versions are dense per stream and every stream starts with OrderCreated.
        let mut last: HashMap<&str, i64> = HashMap::new();
        for e in &a {
            let v = last.entry(&e.stream_id).or_insert(0);
            assert_eq!(e.stream_version, *v + 1);
            if *v == 0 {
                assert_eq!(e.event_type, "OrderCreated");
            }
            assert!(EVENT_TYPES.contains(&e.event_type), "{} is listed", e.event_type);
            *v += 1;
        }
        let per_order = a.len() as f64 / last.len() as f64;
        // Many orders are still open at the cut, so the ratio is below the ~6.3 of complete orders.
        assert!(per_order > 3.0 && per_order < 7.0, "{per_order}");
    }

    #[test]
    fn complete_orders_average_about_six_events() {
        let events: Vec<_> = Orders::new(1, 200_000).collect();
        let mut count: HashMap<&str, u32> = HashMap::new();
        let mut closed = std::collections::HashSet::new();
        for e in &events {
            *count.entry(&e.stream_id).or_default() += 1;
            if matches!(e.event_type, "OrderDelivered" | "OrderCancelled") {
                closed.insert(e.stream_id.as_str());
            }
        }
        let closed_events: u32 = closed.iter().map(|s| count[s]).sum();
        let avg = f64::from(closed_events) / closed.len() as f64;
        assert!((5.8..7.0).contains(&avg), "{avg}");
    }
}
