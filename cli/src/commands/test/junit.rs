//! `--junit FILE`: the results as JUnit XML, the report format CI systems read.

use std::fmt::Write;

/// One test's result, for the report.
pub struct CaseResult {
    pub file: String,
    pub name: String,
    pub seconds: f64,
    /// The failure text, if it failed.
    pub failure: Option<String>,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML of `results`: one `<testsuite>` per test file, in order of first appearance.
pub fn render(results: &[CaseResult]) -> String {
    let mut files: Vec<&str> = Vec::new();
    for r in results {
        if !files.contains(&r.file.as_str()) {
            files.push(&r.file);
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let total: f64 = results.iter().map(|r| r.seconds).sum();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"projectionist test\" tests=\"{}\" failures=\"{failed}\" time=\"{total:.3}\">",
        results.len()
    );
    for file in files {
        let cases: Vec<&CaseResult> = results.iter().filter(|r| r.file == file).collect();
        let failures = cases.iter().filter(|r| r.failure.is_some()).count();
        let time: f64 = cases.iter().map(|r| r.seconds).sum();
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{time:.3}\">",
            escape(file),
            cases.len()
        );
        for c in cases {
            let head = format!(
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\"",
                escape(&c.name),
                escape(file),
                c.seconds
            );
            match &c.failure {
                None => {
                    let _ = writeln!(out, "{head}/>");
                }
                Some(text) => {
                    let first = text.lines().next().unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{head}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                        escape(first),
                        escape(text)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}
