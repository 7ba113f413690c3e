//! `projectionist status [--json]`.

use anyhow::Result;

use super::Ctx;
use crate::args::StatusArgs;
use crate::backend::CliEngine;
use crate::output;

pub async fn run(ctx: &Ctx, a: StatusArgs) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    let events = ctx.events(&db, Some(&config)).await?;
    let engine = ctx.engine(&db, &events, Some(&config))?;
    print!("{}", render(&engine, a.json).await?);
    Ok(())
}

/// The status of every projection, as a table or as JSON.
pub async fn render(engine: &CliEngine, json: bool) -> Result<String> {
    let statuses = engine.status().await?;
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&statuses)?));
    }
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.partition.to_string(),
                s.state.to_string(),
                s.checkpoint.to_string(),
                s.head.to_string(),
                s.lag_events.to_string(),
                format!("{:.1}", s.lag_seconds),
                format!("{:.0}", s.events_per_second),
                s.errors.to_string(),
                s.dead_letters.to_string(),
                s.owner.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut header = vec![
        "PROJECTION",
        "PARTITION",
        "STATE",
        "CHECKPOINT",
        "HEAD",
        "LAG",
        "LAG_S",
        "EVENTS/S",
        "ERRORS",
        "DEAD_LETTERS",
        "OWNER",
    ];
    // The owner column only matters to partitioned projections.
    let rows = if statuses.iter().any(|s| s.partitions > 1) {
        rows
    } else {
        header.pop();
        rows.into_iter()
            .map(|mut r| {
                r.pop();
                r
            })
            .collect()
    };
    let mut out = output::table(&header, &rows);
    for s in &statuses {
        if let Some(reason) = &s.reason {
            if s.state != projectionist::RunState::Running {
                out.push_str(&format!("{} is {}: {reason}\n", s.name, s.state));
            }
        }
        if let Some(err) = &s.last_error {
            out.push_str(&format!("{} last error: {err}\n", s.name));
        }
    }
    Ok(out)
}
