//! `projectionist bench`: see `crate::bench`.

use anyhow::{bail, Result};

use crate::args::BenchArgs;
use crate::backend::Location;
#[cfg(feature = "postgres")]
use crate::bench::PgBench;
#[cfg(feature = "sqlite")]
use crate::bench::SqliteBench;
use crate::bench::{self, Settings};
use crate::commands::Ctx;

/// The global `--database` default: the bench then uses a temporary database instead.
#[cfg(feature = "sqlite")]
const DEFAULT_DATABASE: &str = "sqlite://projectionist.db";

pub async fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    if a.events == 0 {
        bail!(crate::exit::usage("--events must be at least 1"));
    }
    let settings = Settings {
        events: a.events,
        seed: a.seed,
        live_seconds: a.live_seconds,
        live_rate: a.live_rate,
    };
    let batch_size = a
        .batch_size
        .map(|b| b.clamp(1, projectionist::declarative::MAX_BATCH_SIZE));
    let phases: Vec<bench::Phase> = match &ctx.url.location {
        #[cfg(feature = "sqlite")]
        Location::Sqlite(path) => {
            let path = (ctx.url.to_string() != DEFAULT_DATABASE).then_some(path.as_path());
            let backend = SqliteBench::open(path, batch_size).await?;
            bench::run(&backend, &settings, a.json).await?
        }
        Location::SqliteMemory => {
            bail!(crate::exit::usage(
                "the bench needs a database file (or no --database, for a temporary one)"
            ))
        }
        #[cfg(feature = "postgres")]
        Location::Postgres(url) => {
            let backend = PgBench::open(url.expose(), ctx.url.to_string(), batch_size).await?;
            bench::run(&backend, &settings, a.json).await?
        }
        #[cfg(not(all(feature = "sqlite", feature = "postgres")))]
        _ => bail!(crate::exit::usage(format!(
            "--database {}: this build of projectionist has no support for that database",
            ctx.url
        ))),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&phases)?);
    } else {
        bench::print_table(&phases);
    }
    Ok(())
}
