//! `projectionist pause NAME` and `projectionist resume NAME`.

use anyhow::Result;

use super::Ctx;
use crate::args::NameArg;
use crate::backend::Events;

pub async fn pause(ctx: &Ctx, a: NameArg) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    // Pausing needs no events: it works while the broker is down.
    let engine = ctx.engine(&db, &Events::database(&db), Some(&config))?;
    engine.pause(&a.name).await?;
    println!(
        "paused {}: its runners stop after their current batch (resume with `projectionist resume {}`)",
        a.name, a.name
    );
    Ok(())
}

pub async fn resume(ctx: &Ctx, a: NameArg) -> Result<()> {
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    let engine = ctx.engine(&db, &Events::database(&db), Some(&config))?;
    engine.resume(&a.name).await?;
    println!("resumed {}", a.name);
    Ok(())
}
