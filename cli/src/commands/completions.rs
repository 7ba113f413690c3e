//! `projectionist completions SHELL`: the shell's completion script, from the command line's
//! own definition (clap_complete).

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::args::{Cli, CompletionsArgs};
use crate::output;

pub fn run(a: CompletionsArgs) -> Result<()> {
    let mut command = Cli::command();
    let name = command.get_name().to_owned();
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut command, name, &mut script);
    output::write_stdout(&script).context("cannot write the completion script")
}
