//! `projectionist test [FILE|DIR]...`: projection tests written in TOML, each run through the
//! real engine in a throwaway database (a temporary SQLite file, or a fresh PostgreSQL schema
//! with `--database postgres://…`). One line per test, a summary line, exit code 1 on failure,
//! `--junit FILE` for CI systems, and `--update` to record rows (snapshot style).
//! The format is documented in docs/testing.md.

mod compare;
mod discover;
mod junit;
mod run_case;
mod spec;
mod trace;
mod update;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use projectionist::declarative::Config;

use super::{Ctx, DEFAULT_CONFIG};
use crate::args::TestArgs;
use crate::exit::usage;
use junit::CaseResult;
use run_case::indent;
pub use run_case::only_projection;
use spec::TestFile;
use update::Recording;

/// The test file's projections file: its `config` key, else `--config`, else
/// projectionist.toml beside the test file, else projectionist.toml here.
fn config_of(ctx: &Ctx, file: &TestFile) -> Result<Config> {
    let beside = file.path.parent().unwrap_or(Path::new("")).join(DEFAULT_CONFIG);
    let path: PathBuf = match (&file.config, &ctx.config_flag) {
        (Some(c), _) => c.clone(),
        (None, Some(flag)) => flag.clone(),
        (None, None) if beside.exists() => beside,
        (None, None) => PathBuf::from(DEFAULT_CONFIG),
    };
    if !path.exists() {
        return Err(usage(format!(
            "{}: its projections file {} does not exist; set `config = \"PATH\"` in the test file or pass --config",
            file.path.display(),
            path.display()
        )));
    }
    Ok(Config::load(&path)?)
}

pub async fn run(ctx: &Ctx, a: TestArgs) -> Result<()> {
    let started = Instant::now();
    let paths = discover::test_files(&a.paths)?;
    let mut files = Vec::with_capacity(paths.len());
    for path in &paths {
        let file = spec::load(path)?;
        let config = config_of(ctx, &file)?;
        files.push((file, config));
    }
    let backend = ctx.url.backend()?;
    let mut results: Vec<CaseResult> = Vec::new();
    let mut updated = 0;
    for (file, config) in &files {
        let shown = file.path.display().to_string();
        let mut recordings = Vec::new();
        for case in &file.tests {
            let outcome = run_case::run(backend, &ctx.url, config, case, a.update)
                .await
                .with_context(|| format!("{shown}: test {:?}", case.name))?;
            let failure = (!outcome.failures.is_empty()).then(|| outcome.failures.join("\n"));
            let status = match (&failure, outcome.recorded.is_empty()) {
                (Some(_), _) => "FAIL",
                (None, false) => "updated",
                (None, true) => "ok",
            };
            println!("{status:<7} {shown}: {} ({:.2} s)", case.name, outcome.seconds);
            if let Some(text) = &failure {
                print!("{}", indent(text));
            }
            for (expect, rows) in outcome.recorded {
                println!(
                    "        wrote {} row(s) into expect[{expect}] (`rows`) of {shown}; review them",
                    rows.rows.len()
                );
                recordings.push(Recording {
                    test: case.index,
                    expect,
                    rows,
                });
                updated += 1;
            }
            results.push(CaseResult {
                file: shown.clone(),
                name: case.name.clone(),
                seconds: outcome.seconds,
                failure,
            });
        }
        if !recordings.is_empty() {
            update::write(&file.path, &recordings)?;
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let passed = results.len() - failed;
    let mut summary = format!("{passed} passed, {failed} failed");
    if updated > 0 {
        summary.push_str(&format!(", {updated} expectation(s) recorded by --update"));
    }
    println!(
        "{summary} ({:.2} s, {})",
        started.elapsed().as_secs_f64(),
        ctx.url.backend_name()
    );
    if let Some(path) = &a.junit {
        std::fs::write(path, junit::render(&results))
            .with_context(|| format!("cannot write the JUnit report {}", path.display()))?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} test(s) failed", results.len());
    }
    Ok(())
}
