//! `projectionist dead-letters list|retry|discard`.

use anyhow::{bail, Result};

use super::Ctx;
use crate::args::DeadLetterCommand;
use crate::backend::{CliEngine, Events};
use crate::output;

pub async fn run(ctx: &Ctx, c: DeadLetterCommand) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    // Dead letters hold their events: retrying one reads no source.
    let engine = ctx.engine(&db, &Events::database(&db), Some(&config))?;
    match c {
        DeadLetterCommand::List { projection, json } => list(&engine, projection.as_deref(), json).await,
        DeadLetterCommand::Retry { id, all } => retry(&engine, id, all).await,
        DeadLetterCommand::Discard { id } => {
            engine.discard_dead_letter(id).await?;
            println!("discarded dead letter {id}");
            Ok(())
        }
    }
}

async fn list(engine: &CliEngine, projection: Option<&str>, json: bool) -> Result<()> {
    let letters = engine.dead_letters(projection).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&letters)?);
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|d| {
            let error: String = d
                .error
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(100)
                .collect();
            vec![
                d.id.to_string(),
                d.projection.clone(),
                d.event.position.to_string(),
                d.event.stream_id.clone(),
                d.event.event_type.clone(),
                d.attempts.to_string(),
                d.last_failed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                error,
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "ID",
                "PROJECTION",
                "POSITION",
                "STREAM",
                "TYPE",
                "ATTEMPTS",
                "LAST_FAILED",
                "ERROR"
            ],
            &rows
        )
    );
    Ok(())
}

async fn retry(engine: &CliEngine, id: Option<i64>, all: bool) -> Result<()> {
    let ids: Vec<i64> = match (id, all) {
        (Some(id), _) => vec![id],
        (None, _) => engine.dead_letters(None).await?.iter().map(|d| d.id).collect(),
    };
    if ids.is_empty() {
        println!("no dead letters to retry");
        return Ok(());
    }
    let mut failed = 0;
    for id in &ids {
        match engine.retry_dead_letter(*id).await {
            Ok(()) => println!("dead letter {id}: applied and removed"),
            Err(projectionist::Error::RetryFailed { message, .. }) => {
                failed += 1;
                println!("dead letter {id}: still failing: {message}");
            }
            // Listed a moment ago, gone now: another process (a concurrent `retry --all`, the
            // API) retried or discarded it, in its own transaction. Nothing left to do.
            Err(projectionist::Error::UnknownDeadLetter(_)) if all => {
                println!("dead letter {id}: skipped, another process already retried or discarded it");
            }
            Err(e) => return Err(e.into()),
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} dead letter(s) still fail; fix the cause (the projection's SQL or the data), then retry, or discard them",
            ids.len()
        );
    }
    Ok(())
}
