//! `projectionist man`: the man page (roff), from the command line's own definition
//! (clap_mangen): projectionist(1) on standard output, or with `--dir` one page per command
//! (projectionist-test(1), …) written into a folder.

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::{Cli, ManArgs};
use crate::output;

pub fn run(a: ManArgs) -> Result<()> {
    if let Some(dir) = &a.dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        clap_mangen::generate_to(Cli::command(), dir)
            .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
        return Ok(());
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .context("cannot render the man page")?;
    output::write_stdout(&page).context("cannot write the man page")
}
