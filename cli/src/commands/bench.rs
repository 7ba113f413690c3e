//! `projectionist bench`: see `crate::bench`.

use anyhow::{bail, Result};

use crate::args::BenchArgs;
use crate::backend::BenchRun;
use crate::bench::{self, Settings};
use crate::commands::Ctx;
use crate::signals::Stop;

/// The global `--database` default: an embedded store then benches a temporary database.
const DEFAULT_DATABASE: &str = "sqlite://projectionist.db";

pub async fn run(ctx: &Ctx, a: BenchArgs) -> Result<()> {
    if a.events == 0 {
        bail!(crate::exit::usage("--events must be at least 1"));
    }
    let kafka = match ctx.source_flag.as_deref() {
        None => None,
        Some(url) if url.trim_start().to_ascii_lowercase().starts_with("kafka://") => {
            if !cfg!(feature = "kafka") {
                bail!(crate::exit::usage(
                    "bench --source kafka://…: this build of projectionist has no Kafka support \
                     (build it with the `kafka` feature)"
                ));
            }
            Some(url.to_owned())
        }
        Some(_) => bail!(crate::exit::usage(
            "bench --source takes a Kafka broker (kafka://HOST:9092): the bench produces its events \
             to a fresh topic there and rebuilds from it; other sources are not benched"
        )),
    };
    let run = BenchRun {
        settings: Settings {
            events: a.events,
            seed: a.seed,
            live_seconds: a.live_seconds,
            live_rate: a.live_rate,
            kafka,
        },
        batch_size: a
            .batch_size
            .map(|b| b.clamp(1, projectionist::declarative::MAX_BATCH_SIZE)),
        quiet: a.json,
    };
    let given = ctx.url.to_string() != DEFAULT_DATABASE;
    let stop = Stop::install("stopping the benchmark")?;
    // A signal drops the benchmark where it is: its batch in flight is rolled back, and its
    // data (a temporary database, or a schema made fresh at every start) is not kept.
    let phases = tokio::select! {
        phases = ctx.url.backend()?.bench(&ctx.url, given, &run) => phases?,
        _ = stop.wait() => {
            stop.log_stopped("the benchmark was abandoned; nothing was measured");
            return Ok(());
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&phases)?);
    } else {
        bench::print_table(&phases);
    }
    Ok(())
}
