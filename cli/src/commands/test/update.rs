//! `--update`: writes actual rows into the test file as `rows` (snapshot style), keeping the
//! rest of the file (comments, layout) as it is.

use std::path::Path;

use anyhow::{Context, Result};
use projectionist::backend::TextRows;
use toml_edit::{Array, DocumentMut, Item, TableLike, Value};

use super::compare::snapshot_value;
use crate::exit::usage;

/// One recording: the `[[test]]` index, the `[[test.expect]]` index, and the rows.
pub struct Recording {
    pub test: usize,
    pub expect: usize,
    pub rows: TextRows,
}

fn as_edit_value(v: toml::Value) -> Value {
    match v {
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(x) => Value::from(x),
        toml::Value::Boolean(b) => Value::from(b),
        other => Value::from(other.to_string().trim_matches('"').to_owned()),
    }
}

/// The rows as a TOML array, one row per line.
fn rows_array(rows: &TextRows) -> Array {
    let mut out = Array::new();
    for row in &rows.rows {
        let mut cells = Array::new();
        for cell in row {
            cells.push(match snapshot_value(cell) {
                toml::Value::String(s) => Value::from(s),
                other => as_edit_value(other),
            });
        }
        out.push(cells);
    }
    for v in out.iter_mut() {
        v.decor_mut().set_prefix("\n    ");
    }
    out.set_trailing_comma(true);
    out.set_trailing("\n");
    out
}

fn entry(item: &mut Item, index: usize) -> Option<&mut dyn TableLike> {
    if item.is_array_of_tables() {
        return item
            .as_array_of_tables_mut()?
            .get_mut(index)
            .map(|t| t as &mut dyn TableLike);
    }
    item.as_array_mut()?
        .get_mut(index)?
        .as_inline_table_mut()
        .map(|t| t as &mut dyn TableLike)
}

/// Writes each recording's rows into the file at `path`.
pub fn write(path: &Path, recordings: &[Recording]) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut doc: DocumentMut = text
        .parse()
        .with_context(|| format!("cannot parse {} to update it", path.display()))?;
    for r in recordings {
        let expect = doc
            .get_mut("test")
            .and_then(|t| entry(t, r.test))
            .and_then(|t| t.get_mut("expect"))
            .and_then(|e| entry(e, r.expect))
            .ok_or_else(|| {
                usage(format!(
                    "{}: cannot find test #{} expect #{} to update; write tests as [[test]] and [[test.expect]] tables",
                    path.display(),
                    r.test + 1,
                    r.expect + 1
                ))
            })?;
        expect.insert("rows", Item::Value(Value::Array(rows_array(&r.rows))));
    }
    std::fs::write(path, doc.to_string()).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
