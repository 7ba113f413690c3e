//! `projectionist check`: validates the projections file without running any projection. The
//! file and its keys are read; every `setup` statement runs and every handler statement is
//! prepared (its named parameters checked) against the `--database` itself, in a transaction
//! that is rolled back (so setup SQL may use what the database already holds, and nothing is
//! kept), or, when that database does not exist yet, in a throwaway one of its kind; the
//! event types each projection handles are listed, and compared with those in the database's
//! events table. Exit 0 when clean, 2 with each problem named by file, projection, key and
//! statement.

use std::collections::BTreeMap;

use anyhow::Result;
use projectionist::backend::SqlStore;
use projectionist::declarative::{Config, ConfigError, ProjectionDef};

use super::test::only_projection;
use super::Ctx;
use crate::backend::Database;
use crate::exit::usage;
use crate::output;

/// The config key a setup error names: `handlers.TYPE` for a handler statement, else the step.
fn key_of(step: &str, message: &str) -> String {
    message
        .strip_prefix("handler for ")
        .and_then(|rest| rest.split([',', ' ']).next())
        .map_or_else(|| step.to_owned(), |t| format!("handlers.{t}"))
}

/// Runs `config`'s setup (one projection) on `db` and rolls it back: `Ok(None)` when every
/// statement prepares, else the failing step and message.
async fn prepare(db: &Database, config: &Config) -> Result<Option<(&'static str, String)>> {
    let engine = crate::backend::engine(db, db.events.clone(), Some(config))?;
    match engine.check_setup().await {
        Ok(()) => Ok(None),
        Err(projectionist::Error::Lifecycle { step, message, .. }) => Ok(Some((step, message))),
        Err(e) => Err(e.into()),
    }
}

/// The problems of one projection: its setup's, or each failing handler's (each handler is
/// prepared on its own once the whole projection fails, so that every one is named).
async fn problems_of(db: &Database, config: &Config, def: &ProjectionDef) -> Result<Vec<String>> {
    let only = only_projection(config, &def.name).map_err(usage)?;
    let problem = |step: &str, message: &str| {
        format!(
            "{}: projection {}: key `{}`: {message}",
            config.file,
            def.name,
            key_of(step, message)
        )
    };
    let Some((step, message)) = prepare(db, &only).await? else {
        return Ok(Vec::new());
    };
    if key_of(step, &message) == step {
        return Ok(vec![problem(step, &message)]);
    }
    let mut problems = Vec::new();
    for (event_type, statements) in &def.handlers {
        let mut one = def.clone();
        one.handlers = [(event_type.clone(), statements.clone())].into();
        let single = Config {
            projections: vec![one],
            ..only.clone()
        };
        if let Some((step, message)) = prepare(db, &single).await? {
            problems.push(problem(step, &message));
        }
    }
    Ok(problems)
}

/// Each projection's setup and handler statements, on the target database in rolled-back
/// transactions (or on a throwaway one when it does not exist yet): the problems.
async fn prepare_all(ctx: &Ctx, config: &Config) -> Result<Vec<String>> {
    if ctx.url.exists() {
        let db = ctx.database().await?;
        let mut problems = Vec::new();
        for def in &config.projections {
            problems.extend(problems_of(&db, config, def).await?);
        }
        return Ok(problems);
    }
    let scratch = ctx.url.backend()?.scratch(&ctx.url).await?;
    let mut problems = Vec::new();
    for def in &config.projections {
        match problems_of(&scratch.db, config, def).await {
            Ok(found) => problems.extend(found),
            Err(e) => {
                let _ = scratch.close().await;
                return Err(e);
            }
        }
    }
    scratch.close().await?;
    Ok(problems)
}

/// The event types of the database's events table, with their counts.
async fn stored_types(ctx: &Ctx) -> Result<BTreeMap<String, u64>> {
    let db = ctx.database().await?;
    let rows = db
        .store
        .query_text("SELECT event_type, count(*) FROM events GROUP BY event_type ORDER BY event_type")
        .await?;
    Ok(rows
        .rows
        .into_iter()
        .filter_map(|r| {
            let n = r.get(1)?.parse().ok()?;
            Some((r.into_iter().next()?, n))
        })
        .collect())
}

pub async fn run(ctx: &Ctx) -> Result<()> {
    let config = match ctx.config_required() {
        Ok(c) => c,
        Err(e) => {
            if let Some(problem) = e.downcast_ref::<ConfigError>() {
                println!("problem: {problem}");
                return Err(usage("1 problem found; nothing was run"));
            }
            return Err(e);
        }
    };
    println!(
        "{}: {} projection(s), keys valid",
        config.file,
        config.projections.len()
    );
    let rows: Vec<Vec<String>> = config
        .projections
        .iter()
        .map(|p| vec![p.name.clone(), p.event_types().join(", ")])
        .collect();
    print!("{}", output::table(&["PROJECTION", "HANDLES"], &rows));

    let problems = prepare_all(ctx, &config).await?;

    match ctx.source_url(Some(&config)) {
        Some((_, origin)) => {
            println!("events come from the source of {origin}: event types not compared with the log")
        }
        None if !ctx.url.exists() => println!(
            "no database at {}: event types not compared with the log",
            ctx.url
        ),
        None => {
            let stored = stored_types(ctx).await?;
            let total: u64 = stored.values().sum();
            println!(
                "events table of {}: {} event type(s), {} event(s)",
                ctx.url,
                stored.len(),
                output::thousands(total)
            );
            for p in &config.projections {
                let absent: Vec<String> = p
                    .event_types()
                    .into_iter()
                    .filter(|t| !stored.contains_key(t))
                    .collect();
                if !absent.is_empty() {
                    println!(
                        "warning: projection {} handles event types that never occur in the events table: {}",
                        p.name,
                        absent.join(", ")
                    );
                }
            }
            for (t, n) in &stored {
                if !config.projections.iter().any(|p| p.handlers.contains_key(t)) {
                    println!(
                        "warning: event type {t} ({} event(s)) is handled by no projection",
                        output::thousands(*n)
                    );
                }
            }
        }
    }
    for p in &problems {
        println!("problem: {p}");
    }
    if !problems.is_empty() {
        return Err(usage(format!(
            "{} problem(s) found; nothing was run",
            problems.len()
        )));
    }
    println!("ok: every statement prepares on {}", ctx.url.backend_name());
    Ok(())
}
