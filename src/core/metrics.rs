//! Metrics, through the `metrics` facade: the binary installs a Prometheus exporter; a library
//! user may install any recorder, or none (then these calls cost next to nothing).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `projectionist_events_applied_total` | counter | projection, partition |
//! | `projectionist_batch_duration_seconds` | histogram | projection, partition |
//! | `projectionist_checkpoint_position` | gauge | projection, partition |
//! | `projectionist_errors_total` | counter | projection, partition |
//! | `projectionist_dead_letters_total` | counter | projection, partition |
//! | `projectionist_fenced_total` | counter | projection, partition |
//! | `projectionist_redelivered_total` | counter | projection, partition |
//! | `projectionist_partitions_owned` | gauge | projection |
//! | `projectionist_wait_for_seconds` | histogram | projection, outcome (`reached`, `timeout`) |

use std::time::Duration;

fn labels(projection: &str, partition: u32) -> [(&'static str, String); 2] {
    [
        ("projection", projection.to_owned()),
        ("partition", partition.to_string()),
    ]
}

/// A committed batch of `events` that took `took`, leaving the checkpoint at `position`.
pub fn batch(projection: &str, partition: u32, events: u64, took: Duration, position: i64) {
    let l = labels(projection, partition);
    metrics::counter!("projectionist_events_applied_total", &l).increment(events);
    metrics::histogram!("projectionist_batch_duration_seconds", &l).record(took.as_secs_f64());
    metrics::gauge!("projectionist_checkpoint_position", &l).set(position as f64);
}

/// An event failed (once per failing event, whatever its policy then does).
pub fn failure(projection: &str, partition: u32) {
    metrics::counter!("projectionist_errors_total", &labels(projection, partition)).increment(1);
}

/// An event became a dead letter.
pub fn dead_letter(projection: &str, partition: u32) {
    metrics::counter!("projectionist_dead_letters_total", &labels(projection, partition)).increment(1);
}

/// A commit lost its compare-and-set to another runner.
pub fn fenced(projection: &str, partition: u32) {
    metrics::counter!("projectionist_fenced_total", &labels(projection, partition)).increment(1);
}

/// A `wait_for` returned after `waited`.
pub fn wait_for(projection: &str, reached: bool, waited: Duration) {
    let outcome = if reached { "reached" } else { "timeout" };
    metrics::histogram!(
        "projectionist_wait_for_seconds",
        "projection" => projection.to_owned(),
        "outcome" => outcome
    )
    .record(waited.as_secs_f64());
}

/// Events a broker redelivered after they were applied, dropped.
pub fn redelivered(projection: &str, partition: u32, events: u64) {
    metrics::counter!("projectionist_redelivered_total", &labels(projection, partition)).increment(events);
}

/// The number of partitions of `projection` this process holds.
pub fn partitions_owned(projection: &str, owned: usize) {
    metrics::gauge!("projectionist_partitions_owned", "projection" => projection.to_owned())
        .set(owned as f64);
}
