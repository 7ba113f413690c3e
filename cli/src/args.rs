//! Command-line arguments.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// Projectionist: event projections for CQRS and event-sourced systems, run beside your app.
///
/// Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
#[derive(Debug, Parser)]
#[command(name = "projectionist", version, propagate_version = true)]
pub struct Cli {
    /// The database: sqlite://PATH (or a bare path) for the embedded store.
    #[arg(
        long,
        global = true,
        env = "PROJECTIONIST_DATABASE_URL",
        default_value = "sqlite://projectionist.db",
        hide_env_values = true
    )]
    pub database: String,

    /// The projections file (default: projectionist.toml when present).
    #[arg(long, global = true, env = "PROJECTIONIST_CONFIG")]
    pub config: Option<PathBuf>,

    /// Where commands that read events (run, status, rebuild, wait) take them from, instead
    /// of the database's events table: nats://HOST:4222?stream=NAME (NATS JetStream),
    /// amqp://… (RabbitMQ), table+postgres://…?table=… (an events table you already have) or
    /// eventsourcing+postgres://…?application=NAME (Python eventsourcing's store). Overrides the
    /// config's `source`; read models and checkpoints stay in --database.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "PROJECTIONIST_SOURCE",
        hide_env_values = true
    )]
    pub source: Option<String>,

    /// One-shot commands: wait up to DURATION (e.g. 30s, 2m) for an unreachable database,
    /// retrying with backoff, instead of failing at once. The daemon (`run` without --once)
    /// always waits.
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_wait)]
    pub wait_for_database: Option<std::time::Duration>,

    /// Log format on stderr (the level comes from PROJECTIONIST_LOG or RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up an example here: an embedded database with ~100,000 order events, example SQL
    /// projections run to the head, and their read models queried.
    Quickstart(QuickstartArgs),
    /// Create the store's tables and the configured projections' read models (idempotent).
    Init,
    /// Append one event; prints its position.
    Append(AppendArgs),
    /// Import events from JSON lines (a file, or - for stdin), all or nothing.
    Import(ImportArgs),
    /// Run the configured projections (until SIGINT or SIGTERM, or to the head with --once).
    Run(RunArgs),
    /// Show each projection's state, checkpoint, lag, rate, errors and dead letters.
    Status(StatusArgs),
    /// Empty a projection's read model and replay every event into it.
    Rebuild(RebuildArgs),
    /// List, retry or discard dead letters.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Pause a projection: its runners stop after their current batch, in every process.
    Pause(NameArg),
    /// Resume a paused or stopped projection.
    Resume(NameArg),
    /// Wait until a projection has applied an append's token (read-your-writes); exit code 3
    /// on timeout.
    Wait(WaitArgs),
    /// Print the orders benchmark workload as JSON lines (input for `import`).
    Generate(GenerateArgs),
    /// Measure throughput, latency and memory on the orders workload, as ratios to the
    /// database's own set-based SQL and to its own per-event loop (see BENCHMARKS.md). On
    /// PostgreSQL the bench's schema is `projectionist_bench`, or the URL's `?schema=NAME`
    /// (which must be empty or a previous bench's): dropped and created fresh. With --source
    /// kafka://HOST:9092 it also produces the events to a fresh 8-partition topic there and
    /// rebuilds from it, as a ratio to the rebuild from the events table.
    Bench(BenchArgs),
    /// Run projection tests (*.test.toml): given events, expected rows, dead letters or errors,
    /// each in a throwaway database; exit code 1 when one fails.
    Test(TestArgs),
    /// Check the projections file without running anything: its keys, every statement
    /// prepared on a throwaway database of the --database's kind, the event types handled;
    /// exit code 2 with each problem named.
    Check,
    /// Show the events table: filter by stream, type, position and time; a table or JSON
    /// lines; --follow to tail it live.
    Events(EventsArgs),
    /// Print the JSON Schema of projectionist.toml, for editors (see docs/config.md).
    Schema,
    /// Print a shell completion script: source it from your shell's startup file.
    Completions(CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a folder with --dir.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Overwrite an existing database and projections file.
    #[arg(long)]
    pub force: bool,
    /// Orders-workload events to import (plus the 6 events of ORDER-001).
    #[arg(long, default_value_t = 100_000, hide = true)]
    pub events: u64,
    /// Seed of the orders workload.
    #[arg(long, default_value_t = 2, hide = true)]
    pub seed: u64,
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream to append to.
    #[arg(long = "stream", value_name = "S")]
    pub stream: String,
    /// The event type.
    #[arg(long = "type", value_name = "T")]
    pub event_type: String,
    /// The payload, as JSON.
    #[arg(long, value_name = "JSON")]
    pub data: String,
    /// Metadata, as a JSON object.
    #[arg(long, value_name = "JSON")]
    pub metadata: Option<String>,
    /// The stream's current version (0: the stream must not exist yet); a mismatch is a conflict.
    #[arg(long, value_name = "N")]
    pub expected_version: Option<i64>,
    /// The event id (a UUID); a fresh one when absent.
    #[arg(long, value_name = "UUID")]
    pub event_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A JSON-lines file, or - for standard input.
    #[arg(value_name = "FILE|-")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Stop once every projection reaches the head.
    #[arg(long)]
    pub once: bool,
    /// Run only this projection (repeatable; default: all).
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
    /// Partitioned projections: a partition whose owner process died is taken over by
    /// another `run` process within SECONDS (leases live 80% of it, renewed every 20%).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = parse_takeover)]
    pub takeover_seconds: f64,
    #[command(flatten)]
    pub http: HttpArgs,
}

fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    crate::commands::parse_duration(s)
        .ok_or_else(|| format!("expected a duration such as 500ms, 30s or 2m, found {s:?}"))
}

fn parse_takeover(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, found {s:?}"))?;
    if !(0.5..=3600.0).contains(&v) {
        return Err(format!("expected between 0.5 and 3600 seconds, found {v}"));
    }
    Ok(v)
}

/// The daemon's HTTP server (health, metrics, JSON API, dashboard); see docs/operations.md.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Serve health, metrics, the JSON API and the dashboard on ADDR (HOST:PORT, or a port on
    /// 127.0.0.1). Overrides `[http] listen`.
    #[arg(long, value_name = "ADDR", value_parser = crate::http::parse_listen)]
    pub listen: Option<std::net::SocketAddr>,
    /// The environment variable that holds the API bearer token for the POST actions
    /// (default: PROJECTIONIST_API_TOKEN). Without a token the actions are disabled.
    #[arg(long, value_name = "VAR")]
    pub api_token_env: Option<String>,
    /// Not ready (/health/ready answers 503) when a projection lags more events than N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_lag_events: Option<u64>,
    /// Not ready when a projection's oldest unapplied event is older than SECONDS.
    #[arg(long, value_name = "SECONDS")]
    pub max_lag_seconds: Option<f64>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON: an array with one object per projection partition.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection to rebuild.
    pub name: String,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Build the new version beside the current one (which keeps serving), then swap the two
    /// in one transaction. Resumes an interrupted blue/green rebuild.
    #[arg(long)]
    pub blue_green: bool,
    /// With --blue-green: drop an interrupted blue/green build instead of running one.
    #[arg(long, requires = "blue_green")]
    pub abandon: bool,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The projection to wait for.
    pub name: String,
    /// The token `projectionist append` printed: POSITION (SQLite) or TXID:POSITION (PostgreSQL).
    #[arg(long, value_name = "TOKEN")]
    pub position: String,
    /// How long to wait: e.g. 500ms, 2s, 1m (default 10s).
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub timeout: String,
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// The projection's name.
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List open dead letters.
    List {
        /// Only this projection's.
        #[arg(long, value_name = "NAME")]
        projection: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply a dead letter's event again; on success the dead letter is gone.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Retry {
        /// The dead letter's id.
        id: Option<i64>,
        /// Retry every open dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete a dead letter without applying it.
    Discard {
        /// The dead letter's id.
        id: i64,
    },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Events to generate.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Seed.
    #[arg(long, default_value_t = 2)]
    pub seed: u64,
    /// Add seed 002's ORDER-001 story first.
    #[arg(long)]
    pub with_story: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Events of the orders workload to generate and load.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seed of the workload.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the phases as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Events per batch for every projection (default: each style's own default, 1,000 for
    /// per-event styles, 5,000 on SQLite, and 30,000 for documents).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Seconds of live appends for the latency phase (0 skips it).
    #[arg(long, default_value_t = 5)]
    pub live_seconds: u64,
    /// Appends per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub live_rate: u32,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files, or folders searched for *.test.toml (default: the current folder).
    #[arg(value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Also write the results as JUnit XML to FILE, for CI systems.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Record the actual rows into the test file where an expectation has none or differs
    /// (snapshot style); review them before committing.
    #[arg(long)]
    pub update: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this stream's events (repeatable).
    #[arg(long = "stream", value_name = "S")]
    pub streams: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Only events at this position or after.
    #[arg(long, value_name = "POSITION")]
    pub from: Option<i64>,
    /// Only events at this position or before.
    #[arg(long, value_name = "POSITION")]
    pub to: Option<i64>,
    /// Only events recorded at this time or after (RFC 3339, or a date in UTC).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events recorded before this time (RFC 3339, or a date in UTC).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Keep printing new events as they are appended (until Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write projectionist.1 and one page per command (projectionist-test.1, …) into DIR.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}
