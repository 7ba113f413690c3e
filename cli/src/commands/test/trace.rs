//! The event that led there: on a row mismatch, the test's events are applied again one at a
//! time in a second throwaway database, with the query after each, to name the event after
//! which each wrong row appeared (or each missing row went away).

use std::fmt::Write;

use projectionist::backend::{SqlStore, TextRows};
use projectionist::declarative::Config;

use super::compare::{self, Line};
use super::run_case::{append, show_given};
use super::spec::TestCase;
use crate::backend::{DatabaseUrl, StoreBackend};

/// Tests with more events are not traced (each event costs a catch-up and a query).
const MAX_TRACED: usize = 200;

/// The query's result after each event of `case` (`results[k]`: after `given[k]`).
async fn results_after_each(
    backend: &dyn StoreBackend,
    url: &DatabaseUrl,
    config: &Config,
    case: &TestCase,
    query: &str,
) -> anyhow::Result<Vec<TextRows>> {
    let scratch = backend.scratch(url).await?;
    let db = scratch.db.clone();
    let run = async {
        let engine = crate::backend::engine(&db, db.events.clone(), Some(config))?;
        let mut out = Vec::with_capacity(case.given.len());
        for event in &case.given {
            append(&db, std::slice::from_ref(event)).await?;
            engine.catch_up().await?;
            out.push(db.store.query_text(query).await?);
        }
        anyhow::Ok(out)
    };
    let out = run.await;
    scratch.close().await?;
    out
}

/// Names, for each wrong or missing row, the event after which it appeared or went away.
pub async fn explain(
    backend: &dyn StoreBackend,
    url: &DatabaseUrl,
    config: &Config,
    case: &TestCase,
    query: &str,
    expected: &[Vec<toml::Value>],
    actual: &TextRows,
) -> String {
    if case.given.is_empty() {
        return String::new();
    }
    if case.given.len() > MAX_TRACED {
        return format!("  (not traced to an event: more than {MAX_TRACED} given events)\n");
    }
    let after = match results_after_each(backend, url, config, case, query).await {
        Ok(r) => r,
        Err(e) => return format!("  (not traced to an event: {e:#})\n"),
    };
    let has = |k: usize, row: &dyn Fn(&[String]) -> bool| after[k].rows.iter().any(|r| row(r));
    let mut out = String::new();
    for line in compare::diff(expected, &actual.rows) {
        match line {
            Line::Same(..) => {}
            Line::Unexpected(j) => {
                let row = &actual.rows[j];
                let is = |r: &[String]| r == row.as_slice();
                let last = after.len() - 1;
                if !has(last, &is) {
                    continue;
                }
                // The first event from which the row stays in the result.
                let mut k = last;
                while k > 0 && has(k - 1, &is) {
                    k -= 1;
                }
                let _ = writeln!(
                    out,
                    "  {} appeared after given[{k}]: {}",
                    compare::show_actual(row),
                    show_given(&case.given[k])
                );
            }
            Line::Missing(i) => {
                let row = &expected[i];
                let is = |r: &[String]| {
                    r.len() == row.len() && row.iter().zip(r).all(|(e, a)| compare::cell_matches(e, a))
                };
                match (0..after.len()).rev().find(|k| has(*k, &is)) {
                    Some(k) if k + 1 < after.len() => {
                        let _ = writeln!(
                            out,
                            "  {} was there until given[{}] changed it: {}",
                            compare::show_expected(row),
                            k + 1,
                            show_given(&case.given[k + 1])
                        );
                    }
                    _ => {
                        let _ = writeln!(out, "  {} was never in the result", compare::show_expected(row));
                    }
                }
            }
        }
    }
    out
}
