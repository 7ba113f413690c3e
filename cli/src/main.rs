//! `projectionist`: the daemon and command-line tool.
//!
//! The binary stays thin: argument parsing, output, progress bars, signals and exit codes.
//! The work happens in the `projectionist` library; `backend/` is the one place that turns
//! a `--database` URL into a backend.

// A build without a store (neither `sqlite` nor `postgres`) compiles, and each command that
// needs a database says the build has none: what only stores use is dead there.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

mod args;
mod backend;
mod bench;
mod commands;
mod exit;
mod http;
mod jsonl;
mod memory;
mod output;
mod signals;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command, LogFormat};

fn init_logging(cli: &Cli) {
    // The daemon logs what it does; one-shot commands only warn.
    let default = match cli.command {
        Command::Run(_) => "info".to_owned(),
        // Dead letters and errors are what tests expect: the report shows them.
        Command::Test(_) => "error".to_owned(),
        _ => format!("warn,{}=info", signals::TARGET),
    };
    let filter = EnvFilter::try_from_env("PROJECTIONIST_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a terminal: a log file or a journal gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}

/// A reader that stops early (`projectionist status | head -1`) closes the pipe; printing to it
/// then panics in the standard library. Like other Unix tools, end quietly instead.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    memory::configure();
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = exit::code_of(&err);
            eprintln!("error: {}", exit::render(&err));
            ExitCode::from(code)
        }
    }
}
