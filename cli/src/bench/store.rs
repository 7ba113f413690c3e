//! The bench's phases, written once over the library's store traits. Each backend says only
//! what differs: its dialect's reference statement and rounding, its typed per-event handlers,
//! and how it runs SQL text. The declarative style runs on the CLI's type-erased engine, the
//! typed styles on the store's own body type.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use projectionist::backend::{
    AnyEngine, AnySource, AnyStore, DocumentStorage, InlineAppend, ShadowStore, Source, SqlStore, Store,
};
use projectionist::declarative::Config;
use projectionist::workload::{Orders, WorkloadEvent};
use projectionist::{
    Apply, Engine, EventLog, ExpectedVersion, Handlers, ProgressFn, Projection, StreamAppend,
};

use super::orders::{declarative_config, documents};
use super::{Mismatch, Style, PARTITIONS, REFERENCE_TABLE};

/// A store the bench runs on: its events, its read models and their SQL.
pub trait BenchStore: SqlStore + EventLog + Source + InlineAppend<Self> + ShadowStore + Clone
where
    Self::Tx: DocumentStorage + Sized,
{
    /// `total_amount` rounded to cents, in this dialect (compared with the reference).
    const ROUNDED_TOTAL: &'static str;

    /// `order_summary` as typed per-event handlers writing `table`.
    fn handlers(table: &str) -> Handlers<Self::Tx>;

    /// SQL text that creates the reference table and fills it with one set-based statement.
    fn reference_sql() -> String;

    /// Runs SQL text (several statements) outside any projection.
    fn execute(&self, sql: String) -> impl Future<Output = Result<()>> + Send;

    /// The per-event reference phase's name: what runs it on this backend.
    const PER_EVENT_LOOP: &'static str;

    /// Fills [`PER_EVENT_TABLE`](super::PER_EVENT_TABLE) with the declarative config's
    /// statements run per event without the engine: the speed of light of a per-event
    /// projection on this backend.
    fn per_event_loop(&self) -> impl Future<Output = Result<()>> + Send;

    /// Settles the database after the load (statistics). Default: nothing.
    fn after_load(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }

    /// Settles the database before the live phase. Default: nothing.
    fn before_live(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
}

/// The bench on one store.
pub struct Bench<St> {
    store: St,
    /// The database, without secrets.
    describe: String,
    batch_size: Option<usize>,
    /// Kept alive while the bench runs (a temporary folder).
    _keep: Option<tempfile::TempDir>,
}

/// The name of the live-latency projection.
pub const LIVE: &str = "bench_live";

impl<St> Bench<St>
where
    St: BenchStore,
    St::Tx: DocumentStorage + Sized,
{
    pub fn new(
        store: St,
        describe: String,
        batch_size: Option<usize>,
        keep: Option<tempfile::TempDir>,
    ) -> Self {
        Bench {
            store,
            describe,
            batch_size,
            _keep: keep,
        }
    }

    /// A short description of the database, without secrets.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The styles this backend runs: every one, and the partitioned declarative projection
    /// where the source reads partitions.
    pub fn styles(&self) -> Vec<Style> {
        let mut styles = Style::ALL.to_vec();
        if self.store.supports_partitions() {
            styles.push(Style::SqlPartitioned);
        }
        styles
    }

    /// An engine on the store's own events with `projection`.
    fn engine(&self, projection: Projection<dyn Apply<St::Tx>>) -> Result<Engine<St, St>> {
        let settings = self.store.runner_settings();
        let store = Arc::new(self.store.clone());
        Ok(Engine::new(store.clone(), store)
            .settings(settings)
            .with(projection)?)
    }

    /// `p` with `--batch-size` when one is given, else with its own default.
    fn sized(&self, p: Projection<dyn Apply<St::Tx>>) -> Projection<dyn Apply<St::Tx>> {
        match self.batch_size {
            Some(b) => p.batch_size(b),
            None => p,
        }
    }

    /// The declarative `order_summary`, as the CLI runs it: on its one engine type, over the
    /// type-erased store (so the phase also measures what the type erasure costs), reading
    /// `source`; `style` is [`Style::Sql`] or [`Style::SqlPartitioned`] (the store's events
    /// table), or [`Style::Kafka`] (a source whose own partitions the projection takes).
    fn declarative(&self, style: Style, source: AnySource) -> Result<AnyEngine> {
        let (name, table) = (style.projection(), style.table());
        let partitions = if style == Style::SqlPartitioned {
            PARTITIONS
        } else {
            1
        };
        let config = Config::parse(
            &declarative_config(name, table, self.batch_size, partitions),
            "bench",
        )?;
        let def = config
            .projections
            .first()
            .context("the bench config has a projection")?;
        let store = AnyStore::new(self.store.clone());
        let settings = store.runner_settings();
        let source = Arc::new(source);
        let projection =
            projectionist::declarative::projection(def).error_policy(projectionist::ErrorPolicy::Stop);
        Ok(AnyEngine::new(source, Arc::new(store))
            .settings(settings)
            .with(projection)?)
    }

    /// A typed style's projection, on the store's own body type.
    fn typed(&self, style: Style) -> Projection<dyn Apply<St::Tx>> {
        let (name, table) = (style.projection(), style.table());
        let p = match style {
            Style::Documents => Projection::new(name, documents(table)),
            _ => Projection::new(name, St::handlers(table)),
        };
        self.sized(p).error_policy(projectionist::ErrorPolicy::Stop)
    }

    /// Bulk-loads `events` (all or nothing), streaming them: memory stays flat.
    pub async fn load(&self, events: Orders, progress: &ProgressBar) -> Result<()> {
        let bar = progress.clone();
        let items = events.map(|e| {
            Ok(StreamAppend::new(
                e.stream_id.clone(),
                ExpectedVersion::Exact(e.stream_version - 1),
                vec![e.to_new_event()],
            ))
        });
        self.store
            .import(items, Some(Arc::new(move |n| bar.set_position(n))))
            .await?;
        self.store.after_load().await
    }

    /// Computes the reference read model with one set-based statement.
    pub async fn reference(&self) -> Result<()> {
        self.store.execute(St::reference_sql()).await
    }

    /// Runs SQL text on the bench's database (tests change a read model with it).
    #[cfg(test)]
    pub async fn execute(&self, sql: String) -> Result<()> {
        self.store.execute(sql).await
    }

    /// Computes the per-event reference read model (see [`BenchStore::per_event_loop`]).
    pub async fn per_event_loop(&self) -> Result<()> {
        self.store.per_event_loop().await
    }

    /// The per-event reference phase's name on this backend.
    pub fn per_event_loop_name(&self) -> &'static str {
        St::PER_EVENT_LOOP
    }

    /// Rebuilds `style`'s read model from the start of the store's events table; returns the
    /// events it applied.
    pub async fn rebuild(&self, style: Style, progress: &ProgressBar) -> Result<u64> {
        let progress = partition_progress(progress);
        let report = match style {
            Style::Kafka => anyhow::bail!("the Kafka style rebuilds from a Kafka source (rebuild_from)"),
            Style::Sql | Style::SqlPartitioned => {
                self.declarative(style, AnySource::new(self.store.clone()))?
                    .rebuild_with(style.projection(), progress)
                    .await?
            }
            _ => {
                let engine = self.engine(self.typed(style))?;
                engine.rebuild_with(style.projection(), progress).await?
            }
        };
        Ok(report.events)
    }

    /// Rebuilds the declarative `order_summary` ([`Style::Kafka`]'s table) from `source`, a
    /// source with partitions of its own; returns the events it applied.
    #[cfg(feature = "kafka")]
    pub async fn rebuild_from(&self, source: AnySource, progress: &ProgressBar) -> Result<u64> {
        let style = Style::Kafka;
        let report = self
            .declarative(style, source)?
            .rebuild_with(style.projection(), partition_progress(progress))
            .await?;
        Ok(report.events)
    }

    /// Rows of `table` that differ from the reference (both ways), and the two row counts.
    pub async fn compare(&self, table: &str) -> Result<Mismatch> {
        let cols = format!(
            "order_id, customer_name, status, item_count, {}, carrier, tracking_number, version",
            St::ROUNDED_TOTAL
        );
        let sql = format!(
            "SELECT (SELECT count(*) FROM {table}), (SELECT count(*) FROM {REFERENCE_TABLE}),
                    (SELECT count(*) FROM (SELECT {cols} FROM {table} EXCEPT SELECT {cols} FROM {REFERENCE_TABLE}) a)
                  + (SELECT count(*) FROM (SELECT {cols} FROM {REFERENCE_TABLE} EXCEPT SELECT {cols} FROM {table}) b)"
        );
        let rows = self.store.query_text(&sql).await?;
        let row = rows.rows.first().context("the comparison returned no row")?;
        let count = |i: usize| -> Result<u64> {
            let cell = row.get(i).context("the comparison returned too few columns")?;
            cell.parse()
                .with_context(|| format!("the comparison returned {cell:?}, not a count"))
        };
        Ok(Mismatch {
            rows: count(0)?,
            reference_rows: count(1)?,
            differing: count(2)?,
        })
    }

    /// Appends `events` at `rate` per second while a live runner projects them; returns the
    /// append-to-visible latency of each, and how long the appends took.
    pub async fn live(&self, events: Vec<WorkloadEvent>, rate: u32) -> Result<(Vec<Duration>, f64)> {
        self.store.before_live().await?;
        let projection = self.sized(Projection::new(LIVE, St::handlers("bench_live_summary")));
        let engine = Arc::new(self.engine(projection)?);
        let store = self.store.clone();
        super::live::measure(engine, events, rate, move |e| {
            let store = store.clone();
            async move {
                store
                    .append(
                        e.stream_id.clone(),
                        ExpectedVersion::Exact(e.stream_version - 1),
                        vec![e.to_new_event()],
                    )
                    .await
            }
        })
        .await
    }
}

/// A progress callback that shows on `bar` the sum of every partition's events.
fn partition_progress(bar: &ProgressBar) -> Option<ProgressFn> {
    let bar = bar.clone();
    let counts = Mutex::new(HashMap::new());
    Some(Arc::new(move |p| {
        let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.insert(p.partition, p.events);
        bar.set_position(counts.values().sum());
    }))
}
