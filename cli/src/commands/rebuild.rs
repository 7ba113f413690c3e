//! `projectionist rebuild NAME [--yes] [--blue-green [--abandon]]`.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::{bail, Result};
use projectionist::{Engine, Source, Store};

use super::{progress_to, Ctx};
use crate::args::RebuildArgs;
use crate::backend::{with_engine, Backend, EventSource};
use crate::exit::usage;
use crate::output;

pub async fn run(ctx: &Ctx, a: RebuildArgs) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let backend = Backend::open(&ctx.url).await?;
    if a.blue_green {
        if EventSource::url(ctx.source_flag.as_deref(), Some(&config)).is_some() {
            return Err(usage(
                "--blue-green rebuilds from the database's events table and does not read a broker source \
                 (--source or the config's `source`); run a plain rebuild instead",
            ));
        }
        return blue_green(&backend, &config, &a).await;
    }
    if let Some((url, origin)) = EventSource::url(ctx.source_flag.as_deref(), Some(&config)) {
        if url.to_ascii_lowercase().starts_with("amqp") {
            return Err(usage(format!(
                "{origin} is a RabbitMQ queue, which cannot replay: a rebuild needs a replayable source \
                 (NATS JetStream, or the database's events table); nothing was changed"
            )));
        }
    }
    let source = ctx.event_source(Some(&config)).await?;
    with_engine!(&backend, &source, Some(&config), |engine| rebuild(engine, &a)
        .await?);
    Ok(())
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

async fn rebuild<S: Source, St: Store>(engine: Engine<S, St>, a: &RebuildArgs) -> Result<()> {
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

/// What the blue/green commands need from either backend's engine.
struct BlueGreenOutcome {
    events: u64,
    seconds: f64,
    swap_ms: f64,
    checkpoint: String,
    tables: Vec<String>,
}

async fn blue_green(
    backend: &Backend,
    config: &projectionist::declarative::Config,
    a: &RebuildArgs,
) -> Result<()> {
    let name = a.name.as_str();
    if a.abandon {
        let existed = match backend {
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(store) => {
                crate::backend::sqlite_engine(store, Some(config))?
                    .abandon_blue_green(name)
                    .await?
            }
            #[cfg(feature = "postgres")]
            Backend::Postgres(store) => {
                crate::backend::pg_engine(store, Some(config))?
                    .abandon_blue_green(name)
                    .await?
            }
            #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
            _ => unreachable!("{}", crate::backend::NO_STORE),
        };
        if existed {
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
    let progress = Some(progress_to(bar.clone()));
    let outcome: projectionist::Result<BlueGreenOutcome> = match backend {
        #[cfg(feature = "sqlite")]
        Backend::Sqlite(store) => {
            let engine = crate::backend::sqlite_engine(store, Some(config))?;
            engine.projection(name)?;
            engine
                .rebuild_blue_green(name, progress)
                .await
                .map(|r| BlueGreenOutcome {
                    events: r.events,
                    seconds: r.seconds,
                    swap_ms: r.swap_lock.as_secs_f64() * 1000.0,
                    checkpoint: r.checkpoint.to_string(),
                    tables: r.tables,
                })
        }
        #[cfg(feature = "postgres")]
        Backend::Postgres(store) => {
            let engine = crate::backend::pg_engine(store, Some(config))?;
            engine.projection(name)?;
            engine
                .rebuild_blue_green(name, progress)
                .await
                .map(|r| BlueGreenOutcome {
                    events: r.events,
                    seconds: r.seconds,
                    swap_ms: r.swap_lock.as_secs_f64() * 1000.0,
                    checkpoint: r.checkpoint.to_string(),
                    tables: r.tables,
                })
        }
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        _ => unreachable!("{}", crate::backend::NO_STORE),
    };
    bar.finish_and_clear();
    let r = outcome?;
    println!(
        "rebuilt {name} blue/green: {} events in {:.2} s ({} events/s), swapped {} in one transaction \
         (locks held {:.1} ms), checkpoint {}",
        output::thousands(r.events),
        r.seconds,
        output::rate(r.events, r.seconds),
        r.tables.join(", "),
        r.swap_ms,
        r.checkpoint
    );
    Ok(())
}
