//! `projectionist pause NAME` and `projectionist resume NAME`.

use anyhow::Result;

use super::Ctx;
use crate::args::NameArg;
use crate::backend::{with_engine, Backend, EventSource};

pub async fn pause(ctx: &Ctx, a: NameArg) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let backend = Backend::open(&ctx.url).await?;
    // Pausing needs no events: it works while the broker is down.
    with_engine!(&backend, &EventSource::Database, Some(&config), |engine| engine
        .pause(&a.name)
        .await?);
    println!(
        "paused {}: its runners stop after their current batch (resume with `projectionist resume {}`)",
        a.name, a.name
    );
    Ok(())
}

pub async fn resume(ctx: &Ctx, a: NameArg) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let backend = Backend::open(&ctx.url).await?;
    with_engine!(&backend, &EventSource::Database, Some(&config), |engine| engine
        .resume(&a.name)
        .await?);
    println!("resumed {}", a.name);
    Ok(())
}
