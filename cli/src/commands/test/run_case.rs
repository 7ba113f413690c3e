//! Runs one test: its events through the real engine (setup, error policy, dead letters) in a
//! throwaway database, then its expectations compared exactly.

use std::time::Instant;

use anyhow::Result;
use projectionist::backend::{SqlStore, TextRows};
use projectionist::declarative::{Config, RawTable};
use projectionist::{DeadLetter, Event, EventLog, RunState, StreamAppend};

use super::compare;
use super::spec::{DeadLetterExpect, Expect, TestCase};
use super::trace;
use crate::backend::{Database, DatabaseUrl, StoreBackend};
use crate::jsonl::ImportEvent;

/// What a test found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Each failed expectation, as readable text.
    pub failures: Vec<String>,
    /// `--update`: the rows to record, per `[[test.expect]]` index.
    pub recorded: Vec<(usize, TextRows)>,
    pub seconds: f64,
}

/// What the engine left after the events.
struct Applied {
    /// The run's error, or the error the projection stopped with, and the event it stopped at.
    error: Option<(String, Option<usize>)>,
    dead_letters: Vec<DeadLetter>,
    /// Per expectation of rows: its result, or the query's error.
    results: Vec<Result<TextRows, String>>,
}

/// The config with only `case`'s projection, or a failure naming the ones there are.
pub fn only_projection(config: &Config, name: &str) -> std::result::Result<Config, String> {
    let def = config.projection(name).ok_or_else(|| {
        let known: Vec<&str> = config.projections.iter().map(|p| p.name.as_str()).collect();
        format!(
            "{} has no projection {name:?}; it has: {}",
            config.file,
            known.join(", ")
        )
    })?;
    Ok(Config {
        file: config.file.clone(),
        projections: vec![def.clone()],
        http: RawTable::default(),
        source: None,
    })
}

/// Appends `given` (one append per event, in order) and returns each event's position.
pub async fn append(db: &Database, given: &[ImportEvent]) -> Result<Vec<i64>> {
    if given.is_empty() {
        return Ok(Vec::new());
    }
    let appends = given
        .iter()
        .map(|e| StreamAppend::new(e.stream_id.clone(), e.expected, vec![e.event.clone()]))
        .collect();
    let appended = db.store.append_many(appends).await?;
    Ok(appended.iter().map(|a| a.first_position).collect())
}

/// Runs `case` on a throwaway database of `backend`.
pub async fn run(
    backend: &dyn StoreBackend,
    url: &DatabaseUrl,
    config: &Config,
    case: &TestCase,
    update: bool,
) -> Result<Outcome> {
    let started = Instant::now();
    let mut out = Outcome::default();
    let only = match only_projection(config, &case.projection) {
        Ok(c) => c,
        Err(message) => {
            out.failures.push(message);
            return Ok(out);
        }
    };
    let queries: Vec<&str> = case
        .expect
        .iter()
        .filter_map(|e| match e {
            Expect::Rows { query, .. } => Some(query.as_str()),
            _ => None,
        })
        .collect();
    let scratch = backend.scratch(url).await?;
    let applied = apply(&scratch.db, &only, case, &queries).await;
    scratch.close().await?;
    let applied = applied?;

    check_error(case, &applied, &mut out.failures);
    check_dead_letters(case, &applied.dead_letters, &mut out.failures);
    let mut results = applied.results.into_iter();
    for e in &case.expect {
        let Expect::Rows { index, query, rows } = e else {
            continue;
        };
        let actual = match results.next() {
            Some(Ok(actual)) => actual,
            Some(Err(message)) => {
                out.failures.push(format!("query failed: {message}\n  {query}"));
                continue;
            }
            None => continue,
        };
        match rows {
            Some(expected) if compare::rows_match(expected, &actual) => {}
            _ if update => out.recorded.push((*index, actual)),
            None => out.failures.push(format!(
                "no expected rows for\n  {query}\nrun with --update to record these {} row(s):\n{}",
                actual.rows.len(),
                indent(&compare::render(&[], &actual))
            )),
            Some(expected) => {
                let mut text = format!(
                    "rows differ for\n  {query}\n{}",
                    indent(&compare::render(expected, &actual))
                );
                text.push_str(&trace::explain(backend, url, &only, case, query, expected, &actual).await);
                out.failures.push(text);
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

async fn apply(db: &Database, config: &Config, case: &TestCase, queries: &[&str]) -> Result<Applied> {
    let engine = crate::backend::engine(db, db.events.clone(), Some(config))?;
    let positions = append(db, &case.given).await?;
    let at = |checkpoint: i64| positions.iter().position(|p| *p > checkpoint);
    let mut error = None;
    match engine.catch_up().await {
        Err(e) => error = Some((e.to_string(), None)),
        Ok(_) => {
            for s in engine.status().await? {
                if s.name == case.projection && s.state == RunState::Stopped {
                    let why = s.last_error.or(s.reason).unwrap_or_else(|| "stopped".into());
                    error = Some((why, at(s.checkpoint)));
                }
            }
        }
    }
    let mut dead_letters = engine.dead_letters(Some(&case.projection)).await?;
    dead_letters.sort_by_key(|d| d.event.position);
    let mut results = Vec::with_capacity(queries.len());
    for q in queries {
        results.push(db.store.query_text(q).await.map_err(|e| e.to_string()));
    }
    Ok(Applied {
        error,
        dead_letters,
        results,
    })
}

fn check_error(case: &TestCase, applied: &Applied, failures: &mut Vec<String>) {
    let expected: Vec<&String> = case
        .expect
        .iter()
        .filter_map(|e| match e {
            Expect::Error(text) => Some(text),
            _ => None,
        })
        .collect();
    let event = |k: Option<usize>| {
        k.and_then(|k| {
            case.given
                .get(k)
                .map(|e| format!("\n  at given[{k}]: {}", show_given(e)))
        })
        .unwrap_or_default()
    };
    match (&applied.error, expected.is_empty()) {
        (None, true) => {}
        (Some((actual, k)), true) => failures.push(format!(
            "the projection stopped with an error (expect it with `error = \"...\"`):\n  {actual}{}",
            event(*k)
        )),
        (None, false) => failures.push(format!(
            "expected the projection to stop with an error containing {:?}; it applied every event",
            expected[0]
        )),
        (Some((actual, k)), false) => {
            for text in expected {
                if !actual.contains(text.as_str()) {
                    failures.push(format!(
                        "expected an error containing {text:?}, got:\n  {actual}{}",
                        event(*k)
                    ));
                }
            }
        }
    }
}

fn matches(e: &DeadLetterExpect, d: &DeadLetter) -> bool {
    e.stream_id.as_ref().is_none_or(|s| *s == d.event.stream_id)
        && e.event_type.as_ref().is_none_or(|t| *t == d.event.event_type)
        && e.error.as_ref().is_none_or(|t| d.error.contains(t.as_str()))
}

fn check_dead_letters(case: &TestCase, actual: &[DeadLetter], failures: &mut Vec<String>) {
    let expected: Vec<&DeadLetterExpect> = case
        .expect
        .iter()
        .filter_map(|e| match e {
            Expect::DeadLetter(d) => Some(d),
            _ => None,
        })
        .collect();
    let same = expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, d)| matches(e, d));
    if same {
        return;
    }
    let mut text = format!(
        "dead letters differ: expected {}, got {}\n",
        expected.len(),
        actual.len()
    );
    for e in &expected {
        text.push_str(&format!(
            "  expected: stream_id {}, type {}, error containing {}\n",
            e.stream_id.as_deref().unwrap_or("(any)"),
            e.event_type.as_deref().unwrap_or("(any)"),
            e.error
                .as_deref()
                .map_or("(any)".to_owned(), |t| format!("{t:?}"))
        ));
    }
    for d in actual {
        text.push_str(&format!(
            "  got: {}\n    error: {}\n",
            show_event(&d.event),
            d.error.replace('\n', "\n    ")
        ));
    }
    failures.push(text.trim_end().to_owned());
}

/// An event of the log, in one line.
pub fn show_event(e: &Event) -> String {
    format!(
        "{} on {} (version {}, position {}) data {}",
        e.event_type, e.stream_id, e.stream_version, e.position, e.data
    )
}

/// A given event, in one line.
pub fn show_given(e: &ImportEvent) -> String {
    format!(
        "{} on {} data {}",
        e.event.event_type,
        e.stream_id,
        e.event.data_json()
    )
}

/// `text` indented by two spaces.
pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
