//! `projectionist events`: the event log (the events table, a table source, or a NATS stream
//! read by sequence with no consumer), filtered by
//! stream, type, position and time, as a
//! table or JSON lines; `--follow` tails it live. It reads in batches and prints as it goes,
//! so memory stays bounded on any log size.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use projectionist::backend::{Filter, Source};
use projectionist::{Checkpoint, Event};

use super::Ctx;
use crate::args::EventsArgs;
use crate::exit::usage;

/// Events per read.
const BATCH: usize = 1000;
/// How often `--follow` looks for new events when no change is signalled (appends from other
/// processes on SQLite are seen this way).
const POLL: Duration = Duration::from_millis(200);

fn parse_time(flag: &str, text: &str) -> Result<DateTime<Utc>> {
    let parsed = DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        });
    parsed.map_err(|_| {
        usage(format!(
            "{flag} {text:?} is not a time; give RFC 3339 (2026-01-31T12:00:00Z) or a date (2026-01-31, UTC)"
        ))
    })
}

/// Which events are printed.
struct Wanted {
    streams: Vec<String>,
    from: Option<i64>,
    to: Option<i64>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

impl Wanted {
    fn admits(&self, e: &Event) -> bool {
        (self.streams.is_empty() || self.streams.contains(&e.stream_id))
            && self.from.is_none_or(|p| e.position >= p)
            && self.to.is_none_or(|p| e.position <= p)
            && self.since.is_none_or(|t| e.recorded_at >= t)
            && self.until.is_none_or(|t| e.recorded_at < t)
    }

    /// Whether no later event can be admitted: positions only grow where the source has no
    /// transaction ids (on PostgreSQL the read order is by transaction, then position).
    fn past_the_end(&self, e: &Event) -> bool {
        e.txid == 0 && self.to.is_some_and(|p| e.position > p)
    }
}

fn json_line(e: &Event) -> String {
    let text = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "{{\"position\":{},\"stream_id\":{},\"stream_version\":{},\"type\":{},\"event_id\":\"{}\",\"recorded_at\":\"{}\",\"data\":{},\"metadata\":{}}}",
        e.position,
        text(&e.stream_id),
        e.stream_version,
        text(&e.event_type),
        e.event_id,
        e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        e.data,
        e.metadata
    )
}

const DATA_WIDTH: usize = 60;

fn table_line(e: &Event) -> String {
    let mut data: String = e.data.chars().take(DATA_WIDTH).collect();
    if e.data.chars().count() > DATA_WIDTH {
        data.push('…');
    }
    format!(
        "{:>10}  {:<20}  {:>7}  {:<20}  {}  {data}",
        e.position,
        e.stream_id,
        e.stream_version,
        e.event_type,
        e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f")
    )
}

pub async fn run(ctx: &Ctx, a: EventsArgs) -> Result<()> {
    match print_events(ctx, a).await {
        // A reader that stops early (`projectionist events | head`) closes the pipe.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

async fn print_events(ctx: &Ctx, a: EventsArgs) -> Result<()> {
    let wanted = Wanted {
        streams: a.streams.clone(),
        from: a.from,
        to: a.to,
        since: a.since.as_deref().map(|t| parse_time("--since", t)).transpose()?,
        until: a.until.as_deref().map(|t| parse_time("--until", t)).transpose()?,
    };
    let config = ctx.config_optional()?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    // The database's events table, or a table source (`--source table+…`, `eventsourcing+…`).
    let events = ctx.events(&db, config.as_ref()).await?;
    if !events.source.can_replay() {
        return Err(usage(
            "`projectionist events` reads sources that keep their events (the events table, a table source, \
             a NATS JetStream stream); a RabbitMQ queue hands each message out once, so it cannot be \
             inspected without taking messages from the projections",
        ));
    }
    let source = events.source.clone();
    let filter = Filter::types((!a.types.is_empty()).then_some(&a.types[..]));
    let mut changes = source.changes();
    let mut out = std::io::stdout().lock();
    if !a.json {
        writeln!(
            out,
            "{:>10}  {:<20}  {:>7}  {:<20}  {:<23}  DATA",
            "POSITION", "STREAM", "VERSION", "TYPE", "RECORDED_AT"
        )?;
    }
    let mut after = Checkpoint::START;
    let mut printed: u64 = 0;
    loop {
        let batch = source
            .read(after, BATCH, &filter)
            .await
            .context("cannot read the events")?;
        let moved = batch.scanned_to != after && batch.scanned_to != Checkpoint::START;
        for e in &batch.events {
            if wanted.past_the_end(e) {
                return Ok(());
            }
            if !wanted.admits(e) {
                continue;
            }
            let line = if a.json { json_line(e) } else { table_line(e) };
            writeln!(out, "{line}")?;
            printed += 1;
            if a.limit.is_some_and(|n| printed >= n) {
                return Ok(());
            }
        }
        if moved {
            after = batch.scanned_to;
            continue;
        }
        if !a.follow {
            return Ok(());
        }
        out.flush()?;
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}
