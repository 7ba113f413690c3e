//! `projectionist generate`: the orders workload as JSON lines.

use std::io::{BufWriter, ErrorKind, Write};

use anyhow::Result;
use projectionist::workload::{order_001_story, Orders};

use crate::args::GenerateArgs;

pub fn run(a: GenerateArgs) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let story = if a.with_story {
        order_001_story()
    } else {
        Vec::new()
    };
    for e in story.into_iter().chain(Orders::new(a.seed, a.events)) {
        if let Err(err) = writeln!(out, "{}", e.to_json_line()) {
            if err.kind() == ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(err.into());
        }
    }
    match out.flush() {
        Err(err) if err.kind() != ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}
