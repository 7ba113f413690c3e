//! `projectionist rebuild NAME [--yes] [--blue-green [--abandon]]`.

use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use projectionist::backend::Source;
use projectionist::RunState;

use super::{progress_to, Ctx};
use crate::args::RebuildArgs;
use crate::backend::CliEngine;
use crate::exit::usage;
use crate::output;
use crate::signals::Stop;

pub async fn run(ctx: &Ctx, a: RebuildArgs) -> Result<()> {
    let config = ctx.config_required()?;
    let stop = Stop::install("stopping the rebuild after its current batch")?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    let events = ctx.events(&db, Some(&config)).await?;
    if a.blue_green {
        if !events.source.reads_beside() {
            return Err(usage(
                "--blue-green builds the new version beside the live one, and a broker source keeps one \
                 consumer per projection (--source or the config's `source`); run a plain rebuild instead",
            ));
        }
        let engine = ctx.engine(&db, &events, Some(&config))?;
        return blue_green(&engine, &a, &stop).await;
    }
    events.check_replay()?;
    rebuild(ctx.engine(&db, &events, Some(&config))?, &a, &stop).await
}

fn confirm(question: &str, name: &str) -> Result<()> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        bail!("rebuild of {name} not confirmed; nothing was changed (pass --yes to skip the question)");
    }
    Ok(())
}

async fn rebuild(engine: CliEngine, a: &RebuildArgs, stop: &Stop) -> Result<()> {
    engine.projection(&a.name)?;
    if !a.yes {
        let head = engine.source().head().await?;
        confirm(
            &format!(
                "Rebuild {}? This empties its read model and replays {} events into it.",
                a.name,
                output::thousands(head.position.max(0) as u64)
            ),
            &a.name,
        )?;
    }
    let bar = output::bar(0, output::EVENTS_BAR);
    bar.set_prefix(a.name.clone());
    let report = engine
        .rebuild_until(&a.name, Some(progress_to(bar.clone())), stop.receiver())
        .await;
    bar.finish_and_clear();
    let report = report?;
    if report.state == RunState::Rebuilding {
        println!(
            "rebuild of {} stopped at checkpoint {} after {} events; `projectionist rebuild {}` resumes it",
            a.name,
            report.checkpoint,
            output::thousands(report.events),
            a.name
        );
        stop.log_stopped("the rebuild's batches up to its checkpoint are committed");
        return Ok(());
    }
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

async fn blue_green(engine: &CliEngine, a: &RebuildArgs, stop: &Stop) -> Result<()> {
    let name = a.name.as_str();
    engine.projection(name)?;
    if a.abandon {
        if engine.abandon_blue_green(name).await? {
            println!("abandoned the blue/green rebuild of {name}; the current version is unchanged");
        } else {
            println!("no blue/green rebuild of {name} to abandon");
        }
        return Ok(());
    }
    if !a.yes {
        confirm(
            &format!(
                "Rebuild {name} blue/green? The current version keeps serving until the new one is swapped in."
            ),
            name,
        )?;
    }
    let bar = output::bar(0, output::EVENTS_BAR);
    bar.set_prefix(format!("{name} (blue/green)"));
    // A signal drops the build: its batch in flight is rolled back, and the batches before it
    // stay in the shadow, where the next `rebuild --blue-green` resumes.
    let report = tokio::select! {
        r = engine.rebuild_blue_green(name, Some(progress_to(bar.clone()))) => r,
        _ = stop.wait() => {
            bar.finish_and_clear();
            println!("blue/green rebuild of {name} stopped; `projectionist rebuild {name} --blue-green` resumes it");
            stop.log_stopped("the current version keeps serving");
            return Ok(());
        }
    };
    bar.finish_and_clear();
    let r = report?;
    println!(
        "rebuilt {name} blue/green: {} events in {:.2} s ({} events/s), swapped {} in one transaction \
         (locks held {:.1} ms), checkpoint {}",
        output::thousands(r.events),
        r.seconds,
        output::rate(r.events, r.seconds),
        r.tables.join(", "),
        r.swap_lock.as_secs_f64() * 1000.0,
        r.checkpoint
    );
    Ok(())
}
