//! One module per command: plain functions over the one engine type, [`CliEngine`].

mod append;
mod bench;
mod check;
mod completions;
mod dead_letters;
mod events;
mod generate;
mod import;
mod init;
mod man;
mod pause;
mod quickstart;
pub mod reach;
mod rebuild;
mod run;
mod schema;
mod status;
mod test;
mod wait;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use projectionist::declarative::Config;
use projectionist::{Progress, ProgressFn, WorkerReport};

use crate::args::{Cli, Command};
use crate::backend::{CliEngine, Database, DatabaseUrl, Events};
use crate::exit::usage;
use crate::output;

pub use wait::parse_duration;

/// The projections file used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "projectionist.toml";

/// What every command knows: the database and where the projections file is.
pub struct Ctx {
    pub url: DatabaseUrl,
    /// `--config`, if given.
    pub config_flag: Option<PathBuf>,
    /// `--source`, if given.
    pub source_flag: Option<String>,
    /// `--wait-for-database`: how long one-shot commands wait for an unreachable database.
    pub wait_for_database: Option<Duration>,
}

impl Ctx {
    /// The projections file's path: `--config`, or the default.
    pub fn config_path(&self) -> &Path {
        self.config_flag.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))
    }

    /// The projections, if there is a projections file. A `--config` that does not exist is an
    /// error; a missing default file is not.
    pub fn config_optional(&self) -> Result<Option<Config>> {
        let path = self.config_path();
        if self.config_flag.is_none() && !path.exists() {
            return Ok(None);
        }
        if !path.exists() {
            return Err(usage(format!(
                "{}: no such projections file (given by --config); check the path",
                path.display()
            )));
        }
        let config = Config::load(path)?;
        // The library keeps the `[http]` table as written: every command checks it, as
        // every command checks the rest of the file.
        crate::http::HttpConfig::of(&config)?;
        Ok(Some(config))
    }

    /// The projections; a usage error when there is no projections file.
    pub fn config_required(&self) -> Result<Config> {
        self.config_optional()?.ok_or_else(|| {
            usage(format!(
                "no projections file: {DEFAULT_CONFIG} is not in this folder; pass --config FILE, \
                 or run `projectionist quickstart` to create an example"
            ))
        })
    }

    /// Opens the `--database` (creating it and the engine's tables if needed). An unreachable
    /// database fails at once, unless `--wait-for-database` says how long to wait for it.
    pub async fn database(&self) -> Result<Database> {
        let Some(limit) = self.wait_for_database else {
            return self.open_database().await;
        };
        let patience = reach::Patience {
            limit: Some(limit),
            stop: None,
            waiting: None,
        };
        reach::reach("the database", patience, || self.open_database())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stopped while waiting for the database"))
    }

    /// Opens the `--database` once, failing at once when it does not answer.
    pub async fn open_database(&self) -> Result<Database> {
        self.url.backend()?.open(&self.url).await
    }

    /// Where events come from for the projections of `config`: `--source`, else the config's
    /// `source`, else the database's events table (see [`Events`]).
    pub async fn events(&self, db: &Database, config: Option<&Config>) -> Result<Events> {
        Events::open(self.source_url(config), db, config).await
    }

    /// The source URL in force, if any, and where it comes from.
    pub fn source_url<'a>(&'a self, config: Option<&'a Config>) -> Option<(&'a str, String)> {
        Events::url(self.source_flag.as_deref(), config)
    }

    /// The engine over `db` and `events` with the projections of `config`.
    pub fn engine(&self, db: &Database, events: &Events, config: Option<&Config>) -> Result<CliEngine> {
        Ok(crate::backend::engine(db, events.source.clone(), config)?)
    }

    /// Fails unless the database exists (for commands that only make sense on one).
    pub fn require_database(&self) -> Result<()> {
        if self.url.exists() {
            return Ok(());
        }
        anyhow::bail!(
            "no database at {}; create one with `projectionist init` (or `projectionist quickstart` \
             for an example), or pass --database",
            self.url
        )
    }
}

pub async fn dispatch(cli: Cli) -> Result<()> {
    let ctx = Ctx {
        url: DatabaseUrl::parse(&cli.database)?,
        config_flag: cli.config,
        source_flag: cli.source,
        wait_for_database: cli.wait_for_database,
    };
    match cli.command {
        Command::Quickstart(a) => quickstart::run(&ctx, a).await,
        Command::Init => init::run(&ctx).await,
        Command::Append(a) => append::run(&ctx, a).await,
        Command::Import(a) => import::run(&ctx, a).await,
        Command::Run(a) => run::run(&ctx, a).await,
        Command::Status(a) => status::run(&ctx, a).await,
        Command::Rebuild(a) => rebuild::run(&ctx, a).await,
        Command::DeadLetters(c) => dead_letters::run(&ctx, c).await,
        Command::Pause(a) => pause::pause(&ctx, a).await,
        Command::Resume(a) => pause::resume(&ctx, a).await,
        Command::Wait(a) => wait::run(&ctx, a).await,
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(&ctx, a).await,
        Command::Test(a) => test::run(&ctx, a).await,
        Command::Check => check::run(&ctx).await,
        Command::Events(a) => events::run(&ctx, a).await,
        Command::Schema => schema::run(),
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => man::run(a),
    }
}

/// Runs `names` (all when empty) to the head, concurrently, with one progress bar each.
/// With `stop`, each projection stops after its current batch when it turns true (a signal).
pub async fn catch_up_with_bars(
    engine: Arc<CliEngine>,
    names: &[String],
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<Vec<WorkerReport>> {
    let names: Vec<String> = if names.is_empty() {
        engine.projections().iter().map(|p| p.name().to_owned()).collect()
    } else {
        for n in names {
            engine.projection(n)?;
        }
        names.to_vec()
    };
    let multi = output::multi();
    let mut set = tokio::task::JoinSet::new();
    for name in names {
        let bar = output::replay_bar(&multi, &name);
        let engine = engine.clone();
        let mut options = projectionist::CatchUp::only([name.clone()]).progress(progress_to(bar.clone()));
        if let Some(stop) = &stop {
            options = options.until(stop.clone());
        }
        set.spawn(async move {
            let report = engine.catch_up_with(options).await;
            bar.finish();
            report
        });
    }
    let mut reports = Vec::new();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(r)) => reports.extend(r),
            Ok(Err(e)) => {
                first_error.get_or_insert(anyhow::Error::new(e));
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a projection task failed: {e}"));
            }
        }
    }
    let _ = multi.clear();
    if let Some(e) = first_error {
        return Err(e);
    }
    reports.sort_by(|a, b| a.projection.cmp(&b.projection));
    Ok(reports)
}

/// A progress callback that moves `bar`.
pub fn progress_to(bar: indicatif::ProgressBar) -> ProgressFn {
    Arc::new(move |p: Progress| {
        bar.set_length(p.target.saturating_sub(p.start).max(0) as u64);
        bar.set_position(p.position.saturating_sub(p.start).max(0) as u64);
    })
}

/// A line per worker report.
pub fn report_lines(reports: &[WorkerReport]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.projection.clone(),
                r.state.to_string(),
                r.checkpoint.to_string(),
                output::thousands(r.events),
                format!("{:.2}", r.seconds),
                output::rate(r.events, r.seconds),
            ]
        })
        .collect();
    output::table(
        &[
            "PROJECTION",
            "STATE",
            "CHECKPOINT",
            "EVENTS",
            "SECONDS",
            "EVENTS/S",
        ],
        &rows,
    )
}
