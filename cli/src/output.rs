//! Tables, numbers and progress bars.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Prints a table with a header row; columns whose cells are all numeric align right.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(n) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..n)
        .map(|i| {
            rows.iter().all(|r| {
                r.get(i).is_none_or(|c| {
                    !c.is_empty()
                        && c.chars()
                            .all(|ch| ch.is_ascii_digit() || matches!(ch, '.' | ',' | '-' | '$' | '%'))
                })
            }) && !rows.is_empty()
        })
        .collect();
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut parts = Vec::with_capacity(n);
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                parts.push(format!("{}{cell}", " ".repeat(pad)));
            } else if i + 1 == n {
                parts.push((*cell).to_owned());
            } else {
                parts.push(format!("{cell}{}", " ".repeat(pad)));
            }
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A rate such as `238,000`.
pub fn rate(events: u64, seconds: f64) -> String {
    if seconds <= 0.0 {
        return "-".into();
    }
    thousands((events as f64 / seconds).round() as u64)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(style(template));
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// The style of event-replay bars.
pub const EVENTS_BAR: &str =
    "{prefix:>22} [{bar:36}] {human_pos:>9}/{human_len:9} events  {per_sec:>12}  eta {eta}";

/// Bars for several projections at once.
pub fn multi() -> MultiProgress {
    MultiProgress::with_draw_target(ProgressDrawTarget::stderr())
}

/// Adds a replay bar named `prefix` to `multi`.
pub fn replay_bar(multi: &MultiProgress, prefix: &str) -> ProgressBar {
    let pb = multi.add(ProgressBar::new(0));
    pb.set_style(style(EVENTS_BAR));
    pb.set_prefix(prefix.to_owned());
    pb
}

/// Writes `bytes` to standard output; a reader that stops early (`… | head`) closing the pipe
/// is not an error.
pub fn write_stdout(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
