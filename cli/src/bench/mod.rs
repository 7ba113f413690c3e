//! `projectionist bench`: the orders workload of DESIGN.md, measured in one run against the
//! database's own speed of light.
//!
//! Phases, each checked against the reference read model (a mismatch fails the run):
//! 1. load: generate the workload deterministically and bulk-load it;
//! 2. reference: `order_summary` computed inside the database by one set-based
//!    `INSERT … SELECT … GROUP BY stream_id`;
//! 3. rebuild of `order_summary` as a declarative SQL projection;
//! 4. the same as a typed document projection (fold by key);
//! 5. the same as typed per-event handlers;
//! 6. live latency from append to visible at a steady rate;
//!
//! and the peak resident memory of each phase.

mod orders;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use projectionist::workload::{Orders, WorkloadEvent};
use projectionist::{Appended, Checkpoint, Engine, Source, Store};
use serde::Serialize;

use crate::output;

#[cfg(feature = "postgres")]
pub use postgres::PgBench;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteBench;

/// The read-model styles measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Sql,
    Documents,
    Handlers,
}

impl Style {
    pub const ALL: [Style; 3] = [Style::Sql, Style::Documents, Style::Handlers];

    pub fn table(self) -> &'static str {
        match self {
            Style::Sql => "bench_sql_summary",
            Style::Documents => "bench_doc_summary",
            Style::Handlers => "bench_typed_summary",
        }
    }

    pub fn projection(self) -> &'static str {
        match self {
            Style::Sql => "bench_sql",
            Style::Documents => "bench_documents",
            Style::Handlers => "bench_handlers",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Style::Sql => "rebuild: declarative SQL projection",
            Style::Documents => "rebuild: typed document projection",
            Style::Handlers => "rebuild: typed per-event handlers",
        }
    }
}

/// The reference read model's table.
pub const REFERENCE_TABLE: &str = "bench_reference_summary";

/// The columns of `order_summary` (DESIGN.md), in order.
pub const COLUMNS: &str =
    "order_id, customer_name, status, item_count, total_amount, carrier, tracking_number, version";

/// What one backend must do for the bench.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// A short description of the database, without secrets.
    fn describe(&self) -> String;
    /// Bulk-loads `events` (all or nothing), streaming them: memory stays flat.
    async fn load(&self, events: Orders, progress: &indicatif::ProgressBar) -> Result<()>;
    /// Computes the reference read model with one set-based statement.
    async fn reference(&self) -> Result<()>;
    /// Rebuilds `style`'s read model from the start; returns the events it applied.
    async fn rebuild(&self, style: Style, progress: &indicatif::ProgressBar) -> Result<u64>;
    /// Rows of `table` that differ from the reference (both ways), and the two row counts.
    async fn compare(&self, table: &str) -> Result<Mismatch>;
    /// Appends `events` at `rate` per second while a live runner projects them; returns the
    /// append-to-visible latency of each, and how long the appends took.
    async fn live(&self, events: Vec<WorkloadEvent>, rate: u32) -> Result<(Vec<Duration>, f64)>;
}

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
    /// Throughput relative to the reference phase of the same run.
    pub ratio_to_reference: Option<f64>,
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

/// `p` with `batch_size` when one is given, else with its own default.
pub fn sized<B: ?Sized>(
    p: projectionist::Projection<B>,
    batch_size: Option<usize>,
) -> projectionist::Projection<B> {
    match batch_size {
        Some(b) => p.batch_size(b),
        None => p,
    }
}

/// The name of the live-latency projection.
pub const LIVE: &str = "bench_live";

/// Runs `engine`'s projection [`LIVE`] live, appends `events` at `rate` per second with
/// `append`, and returns each event's latency from the start of its append until the live
/// projection's checkpoint passed it (its effect is then visible: same transaction), and the
/// seconds from the first append to the last one's visibility.
pub async fn measure_live<S, St, F, Fut>(
    engine: Arc<Engine<S, St>>,
    events: Vec<WorkloadEvent>,
    rate: u32,
    append: F,
) -> Result<(Vec<Duration>, f64)>
where
    S: Source,
    St: Store,
    F: Fn(WorkloadEvent) -> Fut,
    Fut: std::future::Future<Output = projectionist::Result<Appended>>,
{
    engine.catch_up(&[], None).await?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let runner = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.run(&[], shutdown).await })
    };
    // Appended tokens waiting to become visible, with when their append started.
    let pending: Arc<Mutex<BTreeMap<Checkpoint, Instant>>> = Arc::default();
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let total = events.len();
    // An append that the runner applied before the appender recorded it is found at once.
    let nudge = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let (engine, pending, latencies, nudge) =
            (engine.clone(), pending.clone(), latencies.clone(), nudge.clone());
        let mut changes = engine.store().checkpoint_changes();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = changes.changed() => {}
                    _ = nudge.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
                let Ok(Some(record)) = engine.store().record(LIVE, 0).await else {
                    continue;
                };
                let now = Instant::now();
                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                let still = p.split_off(&Checkpoint {
                    txid: record.checkpoint.txid,
                    position: record.checkpoint.position + 1,
                });
                let mut l = latencies.lock().unwrap_or_else(|e| e.into_inner());
                l.extend(p.values().map(|t0| now - *t0));
                *p = still;
                if l.len() >= total {
                    return;
                }
            }
        })
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for e in events {
        tick.tick().await;
        let t0 = Instant::now();
        let appended = append(e).await?;
        pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(appended.token, t0);
        nudge.notify_one();
    }
    let finished = tokio::time::timeout(Duration::from_secs(30), watcher).await;
    let _ = stop.send(true);
    runner.await??;
    if finished.is_err() {
        bail!("the live projection did not catch up within 30 s of the last append");
    }
    let seconds = started.elapsed().as_secs_f64();
    let out = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((out, seconds))
}

/// Bench settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub events: u64,
    pub seed: u64,
    pub live_seconds: u64,
    pub live_rate: u32,
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
pub async fn run<B: Backend>(backend: &B, s: &Settings, quiet: bool) -> Result<Vec<Phase>> {
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
        ratio_to_reference: Some(1.0),
        peak_rss_mib: rss,
        verified: Some(true),
        ..Phase::default()
    });
    say(format!("  reference: {} events/s", output::rate(s.events, secs)));

    // 3–5. Rebuilds.
    let mut failed = Vec::new();
    for style in Style::ALL {
        let bar = output::bar(s.events, output::EVENTS_BAR);
        bar.set_prefix(style.projection());
        let (applied, secs, rss) = timed(backend.rebuild(style, &bar)).await?;
        bar.finish_and_clear();
        let mismatch = backend.compare(style.table()).await?;
        if !mismatch.is_exact() {
            failed.push(format!("{}: {mismatch:?}", style.table()));
        }
        let rate = s.events as f64 / secs;
        say(format!(
            "  {}: {} events/s ({applied} applied)",
            style.title(),
            output::rate(s.events, secs)
        ));
        phases.push(Phase {
            name: style.title().into(),
            events: s.events,
            seconds: secs,
            events_per_second: rate,
            ratio_to_reference: Some(rate / reference_rate),
            peak_rss_mib: rss,
            verified: Some(mismatch.is_exact()),
            ..Phase::default()
        });
    }

    // 6. Live latency.
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

    if !failed.is_empty() {
        print_table(&phases);
        bail!("read models differ from the reference: {}", failed.join("; "));
    }
    Ok(phases)
}

/// The results as a table.
pub fn print_table(phases: &[Phase]) {
    let rows: Vec<Vec<String>> = phases
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                output::thousands(p.events),
                format!("{:.2}", p.seconds),
                output::thousands(p.events_per_second.round() as u64),
                p.ratio_to_reference.map_or("-".into(), |r| format!("{r:.3}")),
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
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "PHASE",
                "EVENTS",
                "SECONDS",
                "EVENTS/S",
                "× REFERENCE",
                "LATENCY",
                "PEAK RSS MIB",
                "CHECK"
            ],
            &rows
        )
    );
}
