//! `projectionist run [--once] [--projection NAME]...`.
//!
//! The daemon (without `--once`) starts whether or not its database and broker answer: it
//! serves HTTP at once and waits for them (see [`reach`]). `--once` is a one-shot command:
//! it fails at once on an unreachable database, unless `--wait-for-database` is given.

use std::sync::Arc;

use anyhow::Result;
use projectionist::declarative::Config;
use tracing::info;

use super::reach::{self, Patience, Waiting};
use super::{catch_up_with_bars, report_lines, Ctx};
use crate::args::RunArgs;
use crate::backend::CliEngine;
use crate::signals::Stop;

pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<()> {
    let config = ctx.config_required()?;
    let http_config = crate::http::HttpConfig::of(&config)?;
    let http = crate::http::Settings::resolve(&a.http, &http_config, &ctx.url, a.once)?;
    if a.once {
        let stop = Stop::install("stopping after the current batches")?;
        let db = ctx.database().await?;
        let events = ctx.events(&db, Some(&config)).await?;
        let engine = with_leases(ctx.engine(&db, &events, Some(&config))?, &a)?;
        let reports = catch_up_with_bars(Arc::new(engine), &a.projections, Some(stop.receiver())).await?;
        print!("{}", report_lines(&reports));
        if stop.stopped() {
            stop.log_stopped("every batch in flight was committed; `run --once` again goes on from there");
        }
        return Ok(());
    }
    let stop = Stop::install("shutting down after the current batches")?;
    let waiting = Waiting::default();
    let connect = connect(ctx, &config, &a, &stop, &waiting);
    let reports = match http {
        Some(http) => crate::http::serve(connect, http, stop.receiver(), waiting.clone()).await?,
        None => match connect.await? {
            Some((engine, _)) => engine.run_only_until(a.projections.clone(), stop.wait()).await?,
            None => Vec::new(),
        },
    };
    stop.log_stopped("every batch in flight was committed");
    print!("{}", report_lines(&reports));
    Ok(())
}

/// Reaches the database and the source, waiting for them with backoff until they answer (or
/// a signal comes: `None`), and builds the engine and the names of the projections it runs.
async fn connect(
    ctx: &Ctx,
    config: &Config,
    a: &RunArgs,
    stop: &Stop,
    waiting: &Waiting,
) -> Result<Option<(CliEngine, Vec<String>)>> {
    let patience = || Patience {
        limit: None,
        stop: Some(stop),
        waiting: Some(waiting),
    };
    let Some(db) = reach::reach("the database", patience(), || ctx.open_database()).await? else {
        return Ok(None);
    };
    let Some(events) = reach::reach("the event source", patience(), || ctx.events(&db, Some(config))).await?
    else {
        return Ok(None);
    };
    if let Some(what) = events.describe() {
        info!(source = %what, database = %ctx.url, "reading events from the source; read models and checkpoints stay in the database");
    }
    let engine = with_leases(ctx.engine(&db, &events, Some(config))?, a)?;
    let names = if a.projections.is_empty() {
        engine.projections().iter().map(|p| p.name().to_owned()).collect()
    } else {
        a.projections.clone()
    };
    info!(projections = %names.join(", "), "running; stop with Ctrl-C or SIGTERM");
    Ok(Some((engine, names)))
}

/// Checks the `--projection` names and sets the lease timing.
fn with_leases(engine: CliEngine, a: &RunArgs) -> Result<CliEngine> {
    for name in &a.projections {
        engine.projection(name)?;
    }
    Ok(engine.lease_settings(projectionist::LeaseSettings {
        takeover: std::time::Duration::from_secs_f64(a.takeover_seconds),
    }))
}
