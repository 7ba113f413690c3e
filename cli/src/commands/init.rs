//! `projectionist init`: create the store's tables and the configured read models.

use anyhow::Result;

use super::Ctx;
use crate::backend::Events;

pub async fn run(ctx: &Ctx) -> Result<()> {
    let existed = ctx.url.exists();
    let config = ctx.config_optional()?;
    let db = ctx.database().await?;
    let count = config.as_ref().map_or(0, |c| c.projections.len());
    let engine = ctx.engine(&db, &Events::database(&db), config.as_ref())?;
    engine.prepare().await?;
    // A server database exists before `init`; whether its tables did is what counts.
    let what = if !db.created.unwrap_or(!existed) {
        "already set up; checked"
    } else {
        "created"
    };
    println!(
        "{}: {what} the events, checkpoints and dead-letters tables",
        ctx.url
    );
    match &config {
        Some(c) => println!("{}: {count} projection(s) ready: {}", c.file, names(c)),
        None => println!(
            "no projections file ({}); read models are created when you add one",
            ctx.config_path().display()
        ),
    }
    Ok(())
}

fn names(c: &projectionist::declarative::Config) -> String {
    c.projections
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
