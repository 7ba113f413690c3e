//! `projectionist import FILE|-`: JSON lines in, all or nothing.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Result};
use projectionist::backend::AnyStore;
use projectionist::{EventLog, StreamAppend};

use super::Ctx;
use crate::args::ImportArgs;
use crate::jsonl::{ImportState, Lines};
use crate::output;
use crate::signals::Stop;

pub async fn run(ctx: &Ctx, a: ImportArgs) -> Result<()> {
    let (reader, len, label): (Box<dyn BufRead + Send>, Option<u64>, String) = if a.file == "-" {
        (
            Box::new(BufReader::with_capacity(1 << 16, std::io::stdin())),
            None,
            "standard input".to_owned(),
        )
    } else {
        let file = File::open(&a.file).map_err(|e| anyhow!("cannot open {}: {e}", a.file))?;
        let len = file.metadata().map(|m| m.len()).ok();
        (
            Box::new(BufReader::with_capacity(1 << 16, file)),
            len,
            a.file.clone(),
        )
    };
    let stop = Stop::install("rolling the import back")?;
    let db = ctx.database().await?;
    let Some((n, seconds)) = import_lines(&db.store, reader, len, &label, Some(&stop)).await? else {
        println!("import from {label} stopped by a signal; nothing of it was written (run it again)");
        stop.log_stopped("the import was rolled back");
        return Ok(());
    };
    println!(
        "imported {} events from {label} into {} in {seconds:.2} s ({} events/s)",
        output::thousands(n),
        ctx.url,
        output::rate(n, seconds)
    );
    Ok(())
}

/// Imports JSON lines from `reader` with a progress bar. On failure nothing is written, and the
/// error names the line (and, for a malformed line, the column and the reason). A signal
/// (`stop`) rolls the import back: `Ok(None)`.
pub async fn import_lines(
    store: &AnyStore,
    reader: Box<dyn BufRead + Send>,
    len: Option<u64>,
    label: &str,
    stop: Option<&Stop>,
) -> Result<Option<(u64, f64)>> {
    let state = Arc::new(ImportState::default());
    if let Some(stop) = stop {
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            stop.wait().await;
            state.stopped.store(true, Ordering::Relaxed);
        });
    }
    let bar = match len {
        Some(n) => output::bar(
            n,
            "{spinner} importing [{bar:36}] {bytes}/{total_bytes}  {msg}  eta {eta}",
        ),
        None => output::bar(0, "{spinner} importing {bytes}  {msg}"),
    };
    let progress: Arc<dyn Fn(u64) + Send + Sync> = {
        let state = state.clone();
        let bar = bar.clone();
        Arc::new(move |n: u64| {
            bar.set_position(state.bytes.load(Ordering::Relaxed));
            bar.set_message(format!("{} events", output::thousands(n)));
        })
    };
    let started = Instant::now();
    let appends = Lines::new(reader, state.clone()).map(|item| {
        item.map(|e| StreamAppend {
            stream_id: e.stream_id,
            expected: e.expected,
            events: vec![e.event],
        })
    });
    let result = store.import(appends, Some(progress)).await;
    bar.finish_and_clear();
    match result {
        Ok(n) => Ok(Some((n, started.elapsed().as_secs_f64()))),
        Err(_) if state.stopped.load(Ordering::Relaxed) => Ok(None),
        Err(e) => {
            if let Some(le) = state.line_error() {
                return Err(anyhow!("{label}: {le}; nothing of this import was written"));
            }
            let line = state.line.load(Ordering::Relaxed);
            Err(anyhow!(
                "{label}: line {line}: {e}; nothing of this import was written"
            ))
        }
    }
}
