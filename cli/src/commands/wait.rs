//! `projectionist wait NAME --position TOKEN [--timeout 2s]`: read-your-writes for an async
//! projection, from any process. Exit 0 once the projection has applied TOKEN; exit 3 (with the
//! lag) when the timeout passes first.

use std::time::Duration;

use anyhow::Result;
use projectionist::Checkpoint;

use super::Ctx;
use crate::args::WaitArgs;
use crate::backend::CliEngine;
use crate::exit::usage;

/// The exit code of a wait that timed out.
pub const TIMEOUT: i32 = 3;

pub async fn run(ctx: &Ctx, a: WaitArgs) -> Result<()> {
    let token = Checkpoint::parse(&a.position).ok_or_else(|| {
        usage(format!(
            "--position {:?} is not a token; give what `projectionist append` printed: POSITION or TXID:POSITION",
            a.position
        ))
    })?;
    let timeout = parse_duration(&a.timeout).ok_or_else(|| {
        usage(format!(
            "--timeout {:?}: expected a duration such as 500ms, 2s or 1m",
            a.timeout
        ))
    })?;
    let config = ctx.config_required()?;
    ctx.require_database()?;
    let db = ctx.database().await?;
    let events = ctx.events(&db, Some(&config)).await?;
    let engine = ctx.engine(&db, &events, Some(&config))?;
    wait(&engine, &a.name, token, timeout).await
}

async fn wait(engine: &CliEngine, name: &str, token: Checkpoint, timeout: Duration) -> Result<()> {
    match engine.wait_for(name, token, timeout).await {
        Ok(took) => {
            println!("{name} reached {token} after {} ms", took.as_millis());
            Ok(())
        }
        Err(projectionist::Error::Timeout {
            checkpoint,
            lag_events,
            ..
        }) => {
            eprintln!(
                "timeout: {name} did not reach {token} within {timeout:?}; it is at {checkpoint}, \
                 {lag_events} event(s) behind"
            );
            std::process::exit(TIMEOUT);
        }
        Err(e) => Err(e.into()),
    }
}

/// `500ms`, `2s`, `1.5s`, `1m`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = number.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("2d"), None);
    }
}
