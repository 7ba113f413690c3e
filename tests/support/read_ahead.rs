//! One scenario for the read ahead of full batches, run on SQLite and PostgreSQL alike: a
//! document projection in batches of three, one failing fold in the middle of a batch.
//!
//! Full batches make the runner read the next batch while it commits; the failing fold still
//! commits the events before it, goes through its policy alone, and the batches after it follow
//! (the read made ahead of the failing batch is not used).
#![allow(dead_code)]

use projectionist::{DeadLetter, Documents, EventLog, ExpectedVersion, HandlerError, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The batch size that puts the failing event in the middle of a batch.
pub const BATCH_SIZE: usize = 3;

/// The read model once every event is applied, as `k|n|last` rows in key order.
pub const EXPECTED: [&str; 4] = ["s0|5|v5", "s1|5|v5", "s2|4|v5", "s3|5|v5"];

/// A document without its key among its fields: the key column is set from the key.
#[derive(Default, Serialize, Deserialize)]
pub struct Count {
    n: i64,
    last: Option<String>,
}

#[derive(Deserialize)]
struct Add {
    n: i64,
}

/// `counts`: per stream, the sum of its `Add` events and its last version; a negative `n`
/// fails the fold. `integer` is the dialect's 64-bit integer type.
pub fn counts(integer: &str) -> Documents<Count> {
    Documents::<Count>::new("counts", "k")
        .setup_sql(format!(
            "CREATE TABLE IF NOT EXISTS counts (k TEXT PRIMARY KEY, n {integer} NOT NULL, last TEXT)"
        ))
        .on("Add", |d: &mut Count, ev, a: Add| {
            if a.n < 0 {
                return Err(HandlerError::msg("negative"));
            }
            d.n += a.n;
            d.last = Some(format!("v{}", ev.stream_version));
            Ok(())
        })
}

/// One event per append, streams interleaved: s2's third event is the 11th event, the middle
/// of the fourth batch of three.
pub async fn append(store: &impl EventLog) {
    for v in 1..=5_i64 {
        for s in 0..4 {
            let n = if (s, v) == (2, 3) { -1 } else { 1 };
            store
                .append(
                    &format!("s{s}"),
                    ExpectedVersion::Exact(v - 1),
                    vec![NewEvent::new("Add", json!({ "n": n }))],
                )
                .await
                .unwrap();
        }
    }
}

/// The read model's rows and dead letters are exactly the scenario's.
pub fn check(rows: &[String], dead_letters: &[DeadLetter]) {
    assert_eq!(rows, EXPECTED);
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert_eq!(
        (
            dead_letters[0].event.stream_id.as_str(),
            dead_letters[0].event.stream_version
        ),
        ("s2", 3)
    );
}
