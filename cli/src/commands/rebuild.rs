//! `projectionist rebuild NAME [--yes]`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{bail, Result};
use projectionist::{Engine, Source, Store};

use super::{progress_to, Ctx};
use crate::args::RebuildArgs;
use crate::backend::{with_engine, Backend};
use crate::output;

pub async fn run(ctx: &Ctx, a: RebuildArgs) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let backend = Backend::open(&ctx.url).await?;
    with_engine!(&backend, Some(&config), |engine| rebuild(engine, &a).await?);
    Ok(())
}

async fn rebuild<S: Source, St: Store>(engine: Engine<S, St>, a: &RebuildArgs) -> Result<()> {
    engine.projection(&a.name)?;
    if !a.yes {
        let head = engine.source().head().await?;
        eprint!(
            "Rebuild {}? This empties its read model and replays {} events into it. [y/N] ",
            a.name,
            output::thousands(head.position.max(0) as u64)
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            bail!(
                "rebuild of {} not confirmed; nothing was changed (pass --yes to skip the question)",
                a.name
            );
        }
    }
    let engine = Arc::new(engine);
    let bar = output::bar(0, output::EVENTS_BAR);
    bar.set_prefix(a.name.clone());
    let report = engine.rebuild(&a.name, Some(progress_to(bar.clone()))).await;
    bar.finish_and_clear();
    let report = report?;
    println!(
        "rebuilt {}: {} events in {:.2} s ({} events/s), checkpoint {}",
        a.name,
        output::thousands(report.events),
        report.seconds,
        output::rate(report.events, report.seconds),
        report.checkpoint
    );
    Ok(())
}
