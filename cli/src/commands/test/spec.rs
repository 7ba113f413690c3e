//! The test file format: `[[test]]` entries, each with a projection, `given` events (inline or
//! a JSON-lines `given_file`) and `[[test.expect]]` results. See docs/testing.md.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::exit::usage;
use crate::jsonl::{parse_line_with, ImportEvent};

/// One test file, parsed.
#[derive(Debug)]
pub struct TestFile {
    pub path: PathBuf,
    /// The projections file named by the test file's `config` key, relative to it.
    pub config: Option<PathBuf>,
    pub tests: Vec<TestCase>,
}

/// One `[[test]]` entry.
#[derive(Debug)]
pub struct TestCase {
    /// Its index among the file's `[[test]]` entries (for `--update`).
    pub index: usize,
    pub name: String,
    pub projection: String,
    pub given: Vec<ImportEvent>,
    pub expect: Vec<Expect>,
}

/// One expected result.
#[derive(Debug)]
pub enum Expect {
    /// A query and its rows, in order (`None`: not recorded yet; `--update` writes them).
    Rows {
        /// Its index among the test's `[[test.expect]]` entries (for `--update`).
        index: usize,
        query: String,
        rows: Option<Vec<Vec<toml::Value>>>,
    },
    /// A dead letter of the projection; `None` fields match anything.
    DeadLetter(DeadLetterExpect),
    /// The projection stops (or the run fails) with an error that contains this text.
    Error(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterExpect {
    pub stream_id: Option<String>,
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Text the dead letter's error contains.
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    config: Option<String>,
    #[serde(default, rename = "test")]
    tests: Vec<RawTest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    name: String,
    projection: String,
    #[serde(default)]
    given: Vec<toml::Value>,
    given_file: Option<String>,
    #[serde(default)]
    expect: Vec<RawExpect>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    query: Option<String>,
    rows: Option<Vec<Vec<toml::Value>>>,
    dead_letter: Option<DeadLetterExpect>,
    error: Option<String>,
}

/// Reads and checks the test file at `path`. Every problem is a usage error that names the
/// file, the test and the key.
pub fn load(path: &Path) -> Result<TestFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the test file {}", path.display()))?;
    let shown = path.display().to_string();
    let raw: RawFile = toml::from_str(&text).map_err(|e| {
        usage(format!(
            "{shown}: not a valid test file: {}",
            e.to_string().trim_end()
        ))
    })?;
    if raw.tests.is_empty() {
        return Err(usage(format!(
            "{shown}: no [[test]] entries; see docs/testing.md for the format"
        )));
    }
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut tests = Vec::with_capacity(raw.tests.len());
    for (index, t) in raw.tests.into_iter().enumerate() {
        let fail =
            |key: &str, message: String| usage(format!("{shown}: test {:?}: key `{key}`: {message}", t.name));
        if t.name.trim().is_empty() {
            return Err(usage(format!(
                "{shown}: test #{}: key `name` must not be empty",
                index + 1
            )));
        }
        let mut given = Vec::new();
        let mut new_id = uuid::Uuid::new_v4;
        for (k, event) in t.given.iter().enumerate() {
            let line =
                serde_json::to_string(event).map_err(|e| fail(&format!("given[{k}]"), e.to_string()))?;
            match parse_line_with(1, line.as_bytes(), &mut new_id) {
                Ok(Some(e)) => given.push(e),
                Ok(None) => {}
                Err(e) => return Err(fail(&format!("given[{k}]"), e.reason)),
            }
        }
        if let Some(file) = &t.given_file {
            let events_path = dir.join(file);
            let text = std::fs::read_to_string(&events_path).map_err(|e| {
                fail(
                    "given_file",
                    format!("cannot read {}: {e}", events_path.display()),
                )
            })?;
            for (k, line) in text.lines().enumerate() {
                match parse_line_with(k as u64 + 1, line.as_bytes(), &mut new_id) {
                    Ok(Some(e)) => given.push(e),
                    Ok(None) => {}
                    Err(e) => return Err(fail("given_file", format!("{}: {e}", events_path.display()))),
                }
            }
        }
        let mut expect = Vec::new();
        for (k, e) in t.expect.into_iter().enumerate() {
            let key = format!("expect[{k}]");
            if [e.query.is_some(), e.dead_letter.is_some(), e.error.is_some()]
                .iter()
                .filter(|x| **x)
                .count()
                > 1
            {
                return Err(fail(
                    &key,
                    "give one of `query` (with `rows`), `dead_letter` or `error` per entry".into(),
                ));
            }
            if e.rows.is_some() && e.query.is_none() {
                return Err(fail(&key, "`rows` needs a `query`".into()));
            }
            let item = if let Some(query) = e.query {
                Expect::Rows {
                    index: k,
                    query,
                    rows: e.rows,
                }
            } else if let Some(d) = e.dead_letter {
                Expect::DeadLetter(d)
            } else if let Some(text) = e.error {
                Expect::Error(text)
            } else {
                return Err(fail(
                    &key,
                    "give one of `query` (with `rows`), `dead_letter` or `error`".into(),
                ));
            };
            expect.push(item);
        }
        if expect.is_empty() {
            return Err(fail(
                "expect",
                "no [[test.expect]] entries; add a `query` (run with --update to record its rows)".into(),
            ));
        }
        tests.push(TestCase {
            index,
            name: t.name,
            projection: t.projection,
            given,
            expect,
        });
    }
    Ok(TestFile {
        path: path.to_path_buf(),
        config: raw.config.map(|c| dir.join(c)),
        tests,
    })
}
