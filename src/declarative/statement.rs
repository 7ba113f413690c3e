//! Handler statements: named parameters turned into positional placeholders, rendered per
//! backend.

use super::lex::{has_content, lex, Kind};
use super::{ParamSource, SqlError};

/// One statement, with its named parameters turned into positional slots. `P` is what a
/// parameter names: an event field ([`ParamSource`], the declarative handlers) or any name
/// (`String`, bound from a map of values: [`Statement::parse_named`]).
///
/// `pieces` interleave with the parameter occurrences: piece 0, slot 0, piece 1, slot 1, …,
/// last piece. `slots[k]` is an index into `params`, which lists each distinct parameter once,
/// in order of first appearance; placeholders are numbered from 1 in that order.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement<P = ParamSource> {
    text: String,
    pieces: Vec<String>,
    slots: Vec<usize>,
    params: Vec<P>,
}

impl Statement {
    /// Parses one declarative handler statement: its parameters must be event fields
    /// (`:stream_id`, `:data.x`, …). Colons in `::` casts, string literals, quoted identifiers
    /// and comments are not parameters. A trailing semicolon is allowed; a second statement is
    /// not.
    pub fn parse(sql: &str) -> Result<Self, SqlError> {
        Statement::parse_with(sql, |name| {
            ParamSource::parse(name).ok_or_else(|| SqlError::UnknownParameter {
                name: name.to_owned(),
            })
        })
    }
}

impl Statement<String> {
    /// Parses one statement whose `:name` parameters may be any name (letters, digits, `_`
    /// and `.`), as a handler binds them from a map of values. The same lexing as
    /// [`Statement::parse`].
    pub fn parse_named(sql: &str) -> Result<Self, SqlError> {
        Statement::parse_with(sql, |name| Ok(name.to_owned()))
    }
}

impl<P: PartialEq> Statement<P> {
    fn parse_with(sql: &str, resolve: impl Fn(&str) -> Result<P, SqlError>) -> Result<Self, SqlError> {
        let segs = lex(sql)?;
        if !has_content(sql, &segs) {
            return Err(SqlError::Empty);
        }
        if let Some(semi) = segs.iter().position(|s| s.kind == Kind::Semi) {
            if has_content(sql, &segs[semi + 1..]) {
                let offset = segs[semi + 1..]
                    .iter()
                    .find(|s| has_content(sql, std::slice::from_ref(s)))
                    .map_or(segs[semi].end, |s| s.start);
                return Err(SqlError::MultipleStatements { offset });
            }
        }
        let mut pieces = Vec::new();
        let mut slots = Vec::new();
        let mut params: Vec<P> = Vec::new();
        let mut current = String::new();
        for s in &segs {
            let text = &sql[s.start..s.end];
            if s.kind != Kind::Param {
                current.push_str(text);
                continue;
            }
            let p = resolve(&text[1..])?;
            let slot = match params.iter().position(|q| *q == p) {
                Some(k) => k,
                None => {
                    params.push(p);
                    params.len() - 1
                }
            };
            pieces.push(std::mem::take(&mut current));
            slots.push(slot);
        }
        pieces.push(current);
        Ok(Statement {
            text: sql.to_owned(),
            pieces,
            slots,
            params,
        })
    }

    /// The statement as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The distinct parameters, in placeholder order (the first is placeholder 1).
    pub fn params(&self) -> &[P] {
        &self.params
    }

    /// Renders the SQL with `placeholder(n)` (1-based) in place of each parameter.
    pub fn render(&self, placeholder: impl Fn(usize) -> String) -> String {
        let mut out = String::with_capacity(self.text.len() + 8 * self.slots.len());
        for (k, piece) in self.pieces.iter().enumerate() {
            out.push_str(piece);
            if let Some(slot) = self.slots.get(k) {
                out.push_str(&placeholder(slot + 1));
            }
        }
        out
    }

    /// For each distinct parameter (in placeholder order), whether one of its occurrences is
    /// an operand of an arithmetic operator (`+ - * / % ^` right before or after it, not a
    /// `->` or a comment), so that its placeholder needs a numeric type to prepare.
    pub fn arithmetic(&self) -> Vec<bool> {
        const OPERATORS: &[char] = &['+', '-', '*', '/', '%', '^'];
        let mut out = vec![false; self.params.len()];
        for (k, slot) in self.slots.iter().enumerate() {
            let before = self.pieces.get(k).map_or("", |p| p.trim_end());
            let after = self.pieces.get(k + 1).map_or("", |p| p.trim_start());
            let left = before.ends_with(OPERATORS) && !before.ends_with("*/");
            let right =
                after.starts_with(OPERATORS) && !["->", "--", "/*"].iter().any(|t| after.starts_with(t));
            if left || right {
                if let Some(a) = out.get_mut(*slot) {
                    *a = true;
                }
            }
        }
        out
    }

    /// SQLite placeholders: `?1`, `?2`, …
    pub fn render_sqlite(&self) -> String {
        self.render(|n| format!("?{n}"))
    }

    /// PostgreSQL placeholders: `$1`, `$2`, …
    pub fn render_postgres(&self) -> String {
        self.render(|n| format!("${n}"))
    }
}

impl Statement {
    /// Whether any parameter needs the decoded payload.
    pub fn needs_data(&self) -> bool {
        self.params.iter().any(ParamSource::needs_data)
    }

    /// Whether any parameter needs the decoded metadata.
    pub fn needs_metadata(&self) -> bool {
        self.params.iter().any(ParamSource::needs_metadata)
    }
}
