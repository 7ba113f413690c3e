//! Expected rows against actual rows: exact comparison, and a readable diff.

use projectionist::backend::TextRows;

/// Whether an actual cell (as the database shows it; NULL as an empty string) is the expected
/// value. Strings compare exactly; numbers compare as numbers (so `25` matches `25.0`);
/// booleans match `true`/`false`, `t`/`f` and `1`/`0`.
pub fn cell_matches(expected: &toml::Value, actual: &str) -> bool {
    match expected {
        toml::Value::String(s) => s == actual,
        toml::Value::Integer(i) => actual
            .parse::<f64>()
            .is_ok_and(|a| a == *i as f64 && actual.parse::<i64>().map_or(true, |a| a == *i)),
        toml::Value::Float(x) => actual
            .parse::<f64>()
            .is_ok_and(|a| a == *x || (a - x).abs() <= 1e-9 * a.abs().max(x.abs())),
        toml::Value::Boolean(b) => match actual {
            "true" | "t" | "1" => *b,
            "false" | "f" | "0" => !*b,
            _ => false,
        },
        other => other.to_string() == actual,
    }
}

fn row_matches(expected: &[toml::Value], actual: &[String]) -> bool {
    expected.len() == actual.len() && expected.iter().zip(actual).all(|(e, a)| cell_matches(e, a))
}

/// Whether `actual` is exactly `expected`: the same rows, in the same order.
pub fn rows_match(expected: &[Vec<toml::Value>], actual: &TextRows) -> bool {
    expected.len() == actual.rows.len() && expected.iter().zip(&actual.rows).all(|(e, a)| row_matches(e, a))
}

/// The TOML value a snapshot records for an actual cell: an integer or a float when the text
/// is one (and reads back the same), else the text.
pub fn snapshot_value(cell: &str) -> toml::Value {
    if let Ok(i) = cell.parse::<i64>() {
        if i.to_string() == cell {
            return toml::Value::Integer(i);
        }
    }
    if let Ok(x) = cell.parse::<f64>() {
        if x.is_finite() && cell.contains('.') && !cell.starts_with(['.', '+']) {
            return toml::Value::Float(x);
        }
    }
    toml::Value::String(cell.to_owned())
}

/// A row as TOML writes it: `["ORDER-1", "created", 2]`.
pub fn show_expected(row: &[toml::Value]) -> String {
    let cells: Vec<String> = row.iter().map(ToString::to_string).collect();
    format!("[{}]", cells.join(", "))
}

/// An actual row in the same form, as a snapshot would record it.
pub fn show_actual(row: &[String]) -> String {
    let cells: Vec<toml::Value> = row.iter().map(|c| snapshot_value(c)).collect();
    show_expected(&cells)
}

/// One line of a diff.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// In both.
    Same(usize, usize),
    /// Expected, not in the actual rows.
    Missing(usize),
    /// In the actual rows, not expected.
    Unexpected(usize),
}

/// The rows in common (longest common subsequence) and the rest, in order.
pub fn diff(expected: &[Vec<toml::Value>], actual: &[Vec<String>]) -> Vec<Line> {
    let (n, m) = (expected.len(), actual.len());
    // lcs[i][j]: the longest common subsequence of expected[i..] and actual[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if row_matches(&expected[i], &actual[j]) {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < n || j < m {
        if i < n && j < m && row_matches(&expected[i], &actual[j]) {
            out.push(Line::Same(i, j));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(Line::Unexpected(j));
            j += 1;
        } else {
            out.push(Line::Missing(i));
            i += 1;
        }
    }
    out
}

/// The diff as text: `- expected row` (missing), `+ actual row` (unexpected), `  row` (both).
pub fn render(expected: &[Vec<toml::Value>], actual: &TextRows) -> String {
    let mut out = format!("columns: {}\n", actual.columns.join(", "));
    for line in diff(expected, &actual.rows) {
        let text = match line {
            Line::Same(_, j) => format!("  {}", show_actual(&actual.rows[j])),
            Line::Missing(i) => format!("- {}   (expected, missing)", show_expected(&expected[i])),
            Line::Unexpected(j) => format!("+ {}   (actual, not expected)", show_actual(&actual.rows[j])),
        };
        out.push_str(&text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> toml::Value {
        toml::Value::String(x.into())
    }

    #[test]
    fn cells_compare_by_kind() {
        assert!(cell_matches(&s("a"), "a"));
        assert!(!cell_matches(&s("1"), "1.0"));
        assert!(cell_matches(&toml::Value::Integer(25), "25"));
        assert!(cell_matches(&toml::Value::Integer(25), "25.0"));
        assert!(!cell_matches(&toml::Value::Integer(25), "26"));
        assert!(cell_matches(&toml::Value::Float(12.5), "12.5"));
        assert!(!cell_matches(&toml::Value::Float(12.5), "12.50001"));
        assert!(cell_matches(&toml::Value::Boolean(true), "t"));
        assert!(!cell_matches(&toml::Value::Boolean(true), "0"));
    }

    #[test]
    fn the_diff_marks_missing_and_unexpected_rows() {
        let expected = vec![vec![s("a"), s("1")], vec![s("b"), s("2")]];
        let actual = vec![
            vec!["a".to_owned(), "1".to_owned()],
            vec!["b".to_owned(), "3".to_owned()],
        ];
        assert_eq!(
            diff(&expected, &actual),
            vec![Line::Same(0, 0), Line::Unexpected(1), Line::Missing(1)]
        );
        assert_eq!(snapshot_value("007"), s("007"));
        assert_eq!(snapshot_value("7"), toml::Value::Integer(7));
        assert_eq!(snapshot_value("7.5"), toml::Value::Float(7.5));
    }
}
