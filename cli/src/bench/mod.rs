//! `projectionist bench`: the orders workload of DESIGN.md, measured in one run against the
//! database's own speed of light.
//!
//! Phases, each checked against the reference read model (a mismatch fails the run):
//! 1. load: generate the workload deterministically and bulk-load it;
//! 2. reference: `order_summary` computed inside the database by one set-based
//!    `INSERT … SELECT … GROUP BY stream_id`;
//! 3. the per-event reference: the declarative config's statements run per event without the
//!    engine (PostgreSQL: a PL/pgSQL loop over the events table; SQLite: prepared statements
//!    run by this process), the speed of light of a per-event projection;
//! 4. rebuild of `order_summary` as a declarative SQL projection;
//! 5. the same as a typed document projection (fold by key);
//! 6. the same as typed per-event handlers;
//! 7. where the source reads partitions (PostgreSQL): the declarative projection again, split
//!    into [`PARTITIONS`] partitions that one process runs side by side;
//! 8. with `--source kafka://HOST:9092`: the same events produced to a fresh topic of
//!    [`PARTITIONS`] partitions, fetched back by a bare consumer (the broker alone), and the
//!    declarative projection rebuilt from the topic, as a ratio to its rebuild from the events
//!    table (phase 4);
//! 9. live latency from append to visible at a steady rate;
//!
//! and the peak resident memory of each phase. Every throughput is also given as a ratio to
//! each reference measured in the same run.
//!
//! The phases are written once over the library's store traits (`store`); each backend module
//! opens its database and says what differs (its dialect's reference statement, its typed
//! handlers).

#[cfg(feature = "kafka")]
mod kafka;
mod live;
mod orders;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use projectionist::backend::DocumentStorage;
use projectionist::workload::{Orders, WorkloadEvent};
use serde::Serialize;

use crate::output;

pub use store::{Bench, BenchStore};

/// The read-model styles measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Sql,
    Documents,
    Handlers,
    /// The declarative projection split into [`PARTITIONS`] partitions, all in this process.
    SqlPartitioned,
    /// The declarative projection read from a Kafka topic of [`PARTITIONS`] partitions.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    Kafka,
}

/// The partitions of [`Style::SqlPartitioned`].
pub const PARTITIONS: u32 = 8;
const _: () = assert!(
    PARTITIONS == 8,
    "Style::SqlPartitioned's title names 8 partitions"
);

impl Style {
    /// The styles every backend runs ([`Style::SqlPartitioned`] only runs where the source
    /// reads partitions).
    pub const ALL: [Style; 3] = [Style::Sql, Style::Documents, Style::Handlers];

    pub fn table(self) -> &'static str {
        match self {
            Style::Sql => "bench_sql_summary",
            Style::Documents => "bench_doc_summary",
            Style::Handlers => "bench_typed_summary",
            Style::SqlPartitioned => "bench_sql_partitioned_summary",
            Style::Kafka => "bench_kafka_summary",
        }
    }

    pub fn projection(self) -> &'static str {
        match self {
            Style::Sql => "bench_sql",
            Style::Documents => "bench_documents",
            Style::Handlers => "bench_handlers",
            Style::SqlPartitioned => "bench_sql_partitioned",
            Style::Kafka => "bench_kafka",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Style::Sql => "rebuild: declarative SQL projection",
            Style::Documents => "rebuild: typed document projection",
            Style::Handlers => "rebuild: typed per-event handlers",
            Style::SqlPartitioned => "rebuild: declarative SQL, 8 partitions in 1 process",
            Style::Kafka => "rebuild: declarative SQL from Kafka, 8 partitions",
        }
    }
}

/// The reference read model's table.
pub const REFERENCE_TABLE: &str = "bench_reference_summary";

/// The per-event reference's table.
pub const PER_EVENT_TABLE: &str = "bench_loop_summary";

/// The columns of `order_summary` (DESIGN.md), in order.
pub const COLUMNS: &str =
    "order_id, customer_name, status, item_count, total_amount, carrier, tracking_number, version";

/// How a read model differs from the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub rows: u64,
    pub reference_rows: u64,
    pub differing: u64,
}

impl Mismatch {
    pub fn is_exact(&self) -> bool {
        self.rows == self.reference_rows && self.differing == 0
    }
}

/// One phase's result, as `--json` prints it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub name: String,
    pub events: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// Throughput relative to the set-based reference phase of the same run.
    pub ratio_to_reference: Option<f64>,
    /// Throughput relative to the per-event reference phase of the same run.
    pub ratio_to_per_event_loop: Option<f64>,
    /// Kafka phases: throughput relative to the declarative projection's rebuild from the
    /// events table in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_events_table: Option<f64>,
    /// Peak resident memory during the phase, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Whether the result equals the reference read model.
    pub verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
}

impl Phase {
    /// A phase that measured `events` in `secs`, its peak memory `rss`.
    #[cfg(feature = "kafka")]
    fn of(name: &str, (events, secs, rss): (u64, f64, Option<f64>)) -> Phase {
        Phase {
            name: name.into(),
            events,
            seconds: secs,
            events_per_second: events as f64 / secs,
            peak_rss_mib: rss,
            ..Phase::default()
        }
    }
}

/// Bench settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub events: u64,
    pub seed: u64,
    pub live_seconds: u64,
    pub live_rate: u32,
    /// `kafka://HOST:9092[?SETTING=VALUE…]`: the Kafka phases run on these brokers.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub kafka: Option<String>,
}

/// Resets the peak-resident-memory mark (Linux), so the next reading is this phase's peak.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory since the last reset, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<(T, f64, Option<f64>)> {
    reset_peak_rss();
    let started = Instant::now();
    let out = f.await?;
    Ok((out, started.elapsed().as_secs_f64(), peak_rss_mib()))
}

/// Runs every phase on `backend`; fails after printing if a read model differs.
pub async fn run<St>(backend: &Bench<St>, s: &Settings, quiet: bool) -> Result<Vec<Phase>>
where
    St: BenchStore,
    St::Tx: DocumentStorage + Sized,
{
    let mut phases = Vec::new();
    let say = |msg: String| {
        if !quiet {
            eprintln!("{msg}");
        }
    };
    say(format!(
        "bench: {} events of the orders workload (seed {}) on {}",
        s.events,
        s.seed,
        backend.describe()
    ));

    // 1. Load (generating the events as it goes).
    let events = Orders::new(s.seed, s.events);
    let bar = output::bar(
        s.events,
        "{prefix:>22} [{bar:36}] {human_pos:>9}/{human_len:9} events  {per_sec:>12}",
    );
    bar.set_prefix("load");
    let ((), secs, rss) = timed(backend.load(events, &bar)).await?;
    bar.finish_and_clear();
    phases.push(Phase {
        name: "load: bulk import".into(),
        events: s.events,
        seconds: secs,
        events_per_second: s.events as f64 / secs,
        peak_rss_mib: rss,
        ..Phase::default()
    });

    // 2. Reference.
    let ((), secs, rss) = timed(backend.reference()).await?;
    let reference_rate = s.events as f64 / secs;
    phases.push(Phase {
        name: "reference: set-based SQL in the database".into(),
        events: s.events,
        seconds: secs,
        events_per_second: reference_rate,
        peak_rss_mib: rss,
        verified: Some(true),
        ..Phase::default()
    });
    say(format!("  reference: {} events/s", output::rate(s.events, secs)));

    // 3. The per-event reference.
    let ((), secs, rss) = timed(backend.per_event_loop()).await?;
    let loop_rate = s.events as f64 / secs;
    let mismatch = verify(backend, PER_EVENT_TABLE).await?;
    let mut failed = Vec::new();
    if !mismatch.is_exact() {
        failed.push(format!("{PER_EVENT_TABLE}: {mismatch:?}"));
    }
    phases.push(Phase {
        name: backend.per_event_loop_name().into(),
        events: s.events,
        seconds: secs,
        events_per_second: loop_rate,
        peak_rss_mib: rss,
        verified: Some(mismatch.is_exact()),
        ..Phase::default()
    });
    say(format!(
        "  per-event reference: {} events/s",
        output::rate(s.events, secs)
    ));

    // 4–7. Rebuilds.
    for style in backend.styles() {
        let bar = output::bar(s.events, output::EVENTS_BAR);
        bar.set_prefix(style.projection());
        let measured = timed(backend.rebuild(style, &bar)).await?;
        bar.finish_and_clear();
        let phase = checked(backend, style, s.events, measured, &mut failed).await?;
        say(format!(
            "  {}: {} events/s",
            phase.name,
            output::rate(s.events, phase.seconds)
        ));
        phases.push(phase);
    }

    // 8. Kafka.
    #[cfg(feature = "kafka")]
    if let Some(url) = &s.kafka {
        let kafka = kafka_phases(backend, s, url, &phases, &mut failed, &say).await?;
        phases.extend(kafka);
    }

    // 9. Live latency.
    if s.live_seconds > 0 && s.live_rate > 0 {
        let n = s.live_seconds * u64::from(s.live_rate);
        let live: Vec<WorkloadEvent> = Orders::new(s.seed, s.events + n)
            .skip(s.events as usize)
            .collect();
        say(format!("  live: {n} appends at {}/s ...", s.live_rate));
        let ((mut lat, secs), _, rss) = timed(backend.live(live, s.live_rate)).await?;
        lat.sort_unstable();
        phases.push(Phase {
            name: format!("live: append to visible at {}/s", s.live_rate),
            events: lat.len() as u64,
            seconds: secs,
            events_per_second: lat.len() as f64 / secs,
            peak_rss_mib: rss,
            p50_ms: Some(percentile(&lat, 50.0)),
            p99_ms: Some(percentile(&lat, 99.0)),
            max_ms: Some(percentile(&lat, 100.0)),
            ..Phase::default()
        });
    }

    // Every throughput as a ratio to both references (not the live phase: its rate is the
    // rate it was given).
    for p in phases.iter_mut() {
        if p.p50_ms.is_none() {
            p.ratio_to_reference = Some(p.events_per_second / reference_rate);
            p.ratio_to_per_event_loop = Some(p.events_per_second / loop_rate);
        }
    }

    if !failed.is_empty() {
        print_table(&phases);
        bail!("read models differ from the reference: {}", failed.join("; "));
    }
    Ok(phases)
}

/// A rebuild phase of `style` that `measured` (events applied, seconds, peak memory), its read
/// model compared with the reference (a difference is added to `failed`).
async fn checked<St>(
    backend: &Bench<St>,
    style: Style,
    events: u64,
    (applied, secs, rss): (u64, f64, Option<f64>),
    failed: &mut Vec<String>,
) -> Result<Phase>
where
    St: BenchStore,
    St::Tx: DocumentStorage + Sized,
{
    let mismatch = verify(backend, style.table()).await?;
    if !mismatch.is_exact() {
        failed.push(format!("{}: {mismatch:?} ({applied} applied)", style.table()));
    }
    Ok(Phase {
        name: style.title().into(),
        events,
        seconds: secs,
        events_per_second: events as f64 / secs,
        peak_rss_mib: rss,
        verified: Some(mismatch.is_exact()),
        ..Phase::default()
    })
}

/// The Kafka phases on the brokers of `url`: produce the workload to a fresh topic, fetch it
/// back with a bare consumer, and rebuild the declarative projection from it; the last two as
/// ratios to the declarative rebuild from the events table, found in `done`.
#[cfg(feature = "kafka")]
async fn kafka_phases<St>(
    backend: &Bench<St>,
    s: &Settings,
    url: &str,
    done: &[Phase],
    failed: &mut Vec<String>,
    say: &impl Fn(String),
) -> Result<Vec<Phase>>
where
    St: BenchStore,
    St::Tx: DocumentStorage + Sized,
{
    let table_rate = done
        .iter()
        .find(|p| p.name == Style::Sql.title())
        .map(|p| p.events_per_second);
    let topic = kafka::KafkaBench::create(url).await?;
    say(format!("  kafka: {}", topic.describe()));
    let mut out = Vec::new();

    let bar = output::bar(s.events, output::EVENTS_BAR);
    bar.set_prefix("kafka produce");
    let (sent, secs, rss) = timed(topic.produce(Orders::new(s.seed, s.events), &bar)).await?;
    bar.finish_and_clear();
    say(format!("  kafka produce: {} events/s", output::rate(sent, secs)));
    out.push(Phase::of(
        "kafka: produce to a fresh topic, 8 partitions",
        (sent, secs, rss),
    ));

    let (read, secs, rss) = timed(topic.fetch()).await?;
    if read != sent {
        failed.push(format!("kafka fetch: read {read} records of {sent}"));
    }
    say(format!("  kafka fetch: {} events/s", output::rate(read, secs)));
    out.push(Phase {
        verified: Some(read == sent),
        ..Phase::of("kafka: bare consumer fetch (broker alone)", (read, secs, rss))
    });

    let source = topic.source().await?;
    let bar = output::bar(s.events, output::EVENTS_BAR);
    bar.set_prefix(Style::Kafka.projection());
    let measured = timed(backend.rebuild_from(source, &bar)).await?;
    bar.finish_and_clear();
    let phase = checked(backend, Style::Kafka, s.events, measured, failed).await?;
    say(format!(
        "  {}: {} events/s",
        phase.name,
        output::rate(s.events, phase.seconds)
    ));
    out.push(phase);

    for p in out.iter_mut().skip(1) {
        p.ratio_to_events_table = table_rate.map(|t| p.events_per_second / t);
    }
    Ok(out)
}

/// How `table` differs from the reference read model.
async fn verify<St>(backend: &Bench<St>, table: &str) -> Result<Mismatch>
where
    St: BenchStore,
    St::Tx: DocumentStorage + Sized,
{
    #[cfg(test)]
    tests::corrupt(backend, table).await?;
    backend.compare(table).await
}

/// The results as a table.
pub fn print_table(phases: &[Phase]) {
    let kafka = phases.iter().any(|p| p.ratio_to_events_table.is_some());
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            let mut row = vec![
                p.name.clone(),
                output::thousands(p.events),
                format!("{:.2}", p.seconds),
                output::thousands(p.events_per_second.round() as u64),
                p.ratio_to_reference.map_or("-".into(), |r| format!("{r:.3}")),
                p.ratio_to_per_event_loop
                    .map_or("-".into(), |r| format!("{r:.3}")),
                match (p.p50_ms, p.p99_ms, p.max_ms) {
                    (Some(a), Some(b), Some(c)) => format!("p50 {a:.2} / p99 {b:.2} / max {c:.2} ms"),
                    _ => "-".into(),
                },
                p.peak_rss_mib.map_or("-".into(), |m| format!("{m:.0}")),
                match p.verified {
                    Some(true) => "exact".into(),
                    Some(false) => "MISMATCH".into(),
                    None => "-".into(),
                },
            ];
            if kafka {
                let ratio = p.ratio_to_events_table.map_or("-".into(), |r| format!("{r:.3}"));
                row.insert(6, ratio);
            }
            row
        })
        .collect();
    let mut header = vec![
        "PHASE",
        "EVENTS",
        "SECONDS",
        "EVENTS/S",
        "× SET-BASED",
        "× PER-EVENT LOOP",
        "LATENCY",
        "PEAK RSS MIB",
        "CHECK",
    ];
    if kafka {
        header.insert(6, "× EVENTS TABLE");
    }
    print!("{}", output::table(&header, &rows));
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The table the next run changes before comparing it (one test sets it).
    static CORRUPT: Mutex<Option<&'static str>> = Mutex::new(None);

    pub(super) async fn corrupt<St>(backend: &Bench<St>, table: &str) -> Result<()>
    where
        St: BenchStore,
        St::Tx: DocumentStorage + Sized,
    {
        let wanted = *CORRUPT.lock().unwrap_or_else(|p| p.into_inner());
        if wanted == Some(table) {
            backend
                .execute(format!(
                    "UPDATE {table} SET item_count = item_count + 1 WHERE order_id = \
                     (SELECT min(order_id) FROM {table})"
                ))
                .await?;
        }
        Ok(())
    }

    /// A read model that differs from the reference in one row fails the run, for each
    /// verified phase: the per-event reference and every rebuild.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_read_model_fails_the_run() {
        let settings = Settings {
            events: 400,
            seed: 7,
            live_seconds: 0,
            live_rate: 0,
            kafka: None,
        };
        let tables = [
            PER_EVENT_TABLE,
            Style::Sql.table(),
            Style::Documents.table(),
            Style::Handlers.table(),
        ];
        for table in tables {
            *CORRUPT.lock().unwrap_or_else(|p| p.into_inner()) = Some(table);
            let bench = sqlite::open(None, None)
                .await
                .expect("a temporary bench database");
            let out = run(&bench, &settings, true).await;
            let err = out.expect_err("a wrong read model must fail the run").to_string();
            assert!(
                err.contains("differ from the reference") && err.contains(table),
                "{table}: {err}"
            );
        }
        *CORRUPT.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let bench = sqlite::open(None, None)
            .await
            .expect("a temporary bench database");
        let phases = run(&bench, &settings, true)
            .await
            .expect("an untouched run passes");
        assert!(phases.iter().all(|p| p.verified != Some(false)));
    }
}
