//! `projectionist run [--once] [--projection NAME]...`.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{catch_up_with_bars, report_lines, Ctx};
use crate::args::RunArgs;
use crate::backend::CliEngine;

pub async fn run(ctx: &Ctx, a: RunArgs) -> Result<()> {
    let config = ctx.config_required()?;
    let http_config = crate::http::HttpConfig::of(&config)?;
    let http = crate::http::Settings::resolve(&a.http, &http_config, &ctx.url, a.once)?;
    let db = ctx.database().await?;
    let events = ctx.events(&db, Some(&config)).await?;
    if let Some(what) = events.describe() {
        info!(source = %what, database = %ctx.url, "reading events from the source; read models and checkpoints stay in the database");
    }
    run_engine(ctx.engine(&db, &events, Some(&config))?, &a, http).await
}

async fn run_engine(engine: CliEngine, a: &RunArgs, http: Option<crate::http::Settings>) -> Result<()> {
    for name in &a.projections {
        engine.projection(name)?;
    }
    let engine = engine.lease_settings(projectionist::LeaseSettings {
        takeover: std::time::Duration::from_secs_f64(a.takeover_seconds),
    });
    if a.once {
        let reports = catch_up_with_bars(Arc::new(engine), &a.projections).await?;
        print!("{}", report_lines(&reports));
        return Ok(());
    }
    let shutdown = shutdown_on_signals()?;
    let names = if a.projections.is_empty() {
        engine.projections().iter().map(|p| p.name().to_owned()).collect()
    } else {
        a.projections.clone()
    };
    info!(projections = %names.join(", "), "running; stop with Ctrl-C or SIGTERM");
    let reports = match http {
        Some(http) => crate::http::serve(engine, names, http, shutdown).await?,
        None => {
            engine
                .run_only_until(a.projections.clone(), projectionist::when_true(shutdown))
                .await?
        }
    };
    info!("stopped");
    print!("{}", report_lines(&reports));
    Ok(())
}

/// A receiver that turns true on the first SIGINT or SIGTERM. A second signal exits at once.
fn shutdown_on_signals() -> Result<watch::Receiver<bool>> {
    let (tx, rx) = watch::channel(false);
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        #[cfg(unix)]
        let first = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            }
        };
        #[cfg(not(unix))]
        let first = async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        };
        let which = first.await;
        info!(
            signal = which,
            "shutting down after the current batches; signal again to stop at once"
        );
        let _ = tx.send(true);
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        warn!("second signal: exiting now; uncommitted batches are rolled back and re-applied on the next start");
        std::process::exit(130);
    });
    Ok(rx)
}
