//! SQL lexing: enough of SQL to find parameters and statement ends, split scripts into
//! statements, and name the tables a script creates.

use super::PARAMETER_NAMES;

/// What is wrong with a piece of SQL in the config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("unterminated {what} starting at character {offset}")]
    Unterminated { what: &'static str, offset: usize },
    #[error("unknown parameter `:{name}`; known parameters: {}", PARAMETER_NAMES.join(", "))]
    UnknownParameter { name: String },
    #[error("the statement is empty")]
    Empty,
    #[error(
        "holds more than one statement (a second one starts at character {offset}); \
         write a list of statements instead: [\"…\", \"…\"]"
    )]
    MultipleStatements { offset: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Plain SQL.
    Code,
    /// A string literal, quoted identifier or dollar-quoted string.
    Quoted,
    Comment,
    /// A named parameter, colon included.
    Param,
    /// A `;`.
    Semi,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Seg {
    pub(super) kind: Kind,
    pub(super) start: usize,
    pub(super) end: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The end (exclusive) of a quoted run starting at `start` with quote `q`. Doubled quotes
/// escape; with `backslash`, so does a backslash (PostgreSQL's `E'…'`).
fn quoted_end(b: &[u8], start: usize, q: u8, backslash: bool, what: &'static str) -> Result<usize, SqlError> {
    let mut j = start + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if j + 1 < b.len() && b[j + 1] == q {
                j += 2;
                continue;
            }
            return Ok(j + 1);
        }
        j += 1;
    }
    Err(SqlError::Unterminated { what, offset: start })
}

/// A PostgreSQL dollar-quote tag (`$$` or `$tag$`) at `i`, if there is one: its length.
fn dollar_tag(b: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'$') {
        return None;
    }
    let mut j = i + 1;
    if j < b.len() && b[j] == b'$' {
        return Some(2);
    }
    if j >= b.len() || !is_ident_start(b[j]) {
        return None;
    }
    while j < b.len() && is_ident(b[j]) {
        j += 1;
    }
    (j < b.len() && b[j] == b'$').then_some(j + 1 - i)
}

/// Splits SQL into code, quoted runs, comments, parameters and semicolons.
pub(super) fn lex(sql: &str) -> Result<Vec<Seg>, SqlError> {
    let b = sql.as_bytes();
    let mut segs = Vec::new();
    let mut code_start = 0;
    let mut i = 0;
    let push = |segs: &mut Vec<Seg>, code_start: &mut usize, kind: Kind, start: usize, end: usize| {
        if *code_start < start {
            segs.push(Seg {
                kind: Kind::Code,
                start: *code_start,
                end: start,
            });
        }
        segs.push(Seg { kind, start, end });
        *code_start = end;
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        match c {
            b'\'' => {
                let e_prefix = i > 0 && matches!(b[i - 1], b'E' | b'e') && (i < 2 || !is_ident(b[i - 2]));
                let end = quoted_end(b, i, b'\'', e_prefix, "string literal")?;
                push(&mut segs, &mut code_start, Kind::Quoted, i, end);
                i = end;
            }
            b'"' | b'`' => {
                let end = quoted_end(b, i, c, false, "quoted identifier")?;
                push(&mut segs, &mut code_start, Kind::Quoted, i, end);
                i = end;
            }
            b'-' if next == Some(b'-') => {
                let end = b[i..].iter().position(|&x| x == b'\n').map_or(b.len(), |p| i + p);
                push(&mut segs, &mut code_start, Kind::Comment, i, end);
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let end = b[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map(|p| i + 2 + p + 2)
                    .ok_or(SqlError::Unterminated {
                        what: "block comment",
                        offset: i,
                    })?;
                push(&mut segs, &mut code_start, Kind::Comment, i, end);
                i = end;
            }
            b'$' => match dollar_tag(b, i) {
                Some(len) => {
                    let tag = &b[i..i + len];
                    let end = b[i + len..]
                        .windows(len)
                        .position(|w| w == tag)
                        .map(|p| i + len + p + len)
                        .ok_or(SqlError::Unterminated {
                            what: "dollar-quoted string",
                            offset: i,
                        })?;
                    push(&mut segs, &mut code_start, Kind::Quoted, i, end);
                    i = end;
                }
                None => i += 1,
            },
            b':' if next == Some(b':') => i += 2,
            b':' if next.is_some_and(is_ident_start) => {
                let mut j = i + 1;
                while j < b.len() && is_ident(b[j]) {
                    j += 1;
                }
                while j + 1 < b.len() && b[j] == b'.' && is_ident(b[j + 1]) {
                    j += 1;
                    while j < b.len() && is_ident(b[j]) {
                        j += 1;
                    }
                }
                push(&mut segs, &mut code_start, Kind::Param, i, j);
                i = j;
            }
            b';' => {
                push(&mut segs, &mut code_start, Kind::Semi, i, i + 1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    if code_start < b.len() {
        segs.push(Seg {
            kind: Kind::Code,
            start: code_start,
            end: b.len(),
        });
    }
    Ok(segs)
}

/// One statement with positional placeholders (`$1`, `$2`, …), as PostgreSQL's extended
/// protocol takes it, lexed for the PostgreSQL store's batch functions.
#[cfg(feature = "postgres")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Positional {
    /// The statement's words outside quotes and comments, lower-cased, in order.
    pub words: Vec<String>,
    /// The text with each placeholder `$n` replaced by the caller's expression, without a
    /// trailing `;`.
    pub text: String,
}

/// Lexes `sql`, one statement with `$n` placeholders, and replaces each placeholder with
/// `placeholder(n)`. `None` when the text does not lex, holds more than one statement or a
/// dollar-quoted string (whose body this lexer does not look into), or has no words.
#[cfg(feature = "postgres")]
pub(crate) fn replace_positional(sql: &str, placeholder: impl Fn(usize) -> String) -> Option<Positional> {
    let segs = lex(sql).ok()?;
    let b = sql.as_bytes();
    let mut text = String::with_capacity(sql.len() + 32);
    let mut words = Vec::new();
    let mut ended = false;
    for s in &segs {
        let piece = &sql[s.start..s.end];
        match s.kind {
            Kind::Semi => ended = true,
            Kind::Comment => text.push_str(piece),
            Kind::Quoted => {
                if ended || piece.starts_with(['$', '`']) {
                    return None;
                }
                text.push_str(piece);
            }
            Kind::Code | Kind::Param => {
                if ended {
                    if piece.trim().is_empty() {
                        continue;
                    }
                    return None;
                }
                let mut i = s.start;
                let mut word = String::new();
                while i < s.end {
                    let c = b[i];
                    let after_ident = i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'$');
                    if c == b'$' && !after_ident && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        let mut j = i + 1;
                        while j < s.end && b[j].is_ascii_digit() {
                            j += 1;
                        }
                        let n: usize = sql[i + 1..j].parse().ok()?;
                        if n == 0 {
                            return None;
                        }
                        text.push_str(&placeholder(n));
                        if !word.is_empty() {
                            words.push(std::mem::take(&mut word));
                        }
                        i = j;
                        continue;
                    }
                    if is_ident(c) || c == b'$' {
                        word.push(c.to_ascii_lowercase() as char);
                    } else if !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    // Copy whole characters: non-ASCII bytes are never `$` or digits.
                    let len = sql[i..].chars().next().map_or(1, char::len_utf8);
                    text.push_str(&sql[i..i + len]);
                    i += len;
                }
                if !word.is_empty() {
                    words.push(word);
                }
            }
        }
    }
    (!words.is_empty()).then(|| Positional {
        words,
        text: text.trim_end().to_owned(),
    })
}

/// Whether a run of segments holds anything but whitespace and comments.
pub(super) fn has_content(sql: &str, segs: &[Seg]) -> bool {
    segs.iter().any(|s| match s.kind {
        Kind::Comment | Kind::Semi => false,
        Kind::Code => !sql[s.start..s.end].trim().is_empty(),
        Kind::Quoted | Kind::Param => true,
    })
}

/// The words and quoted names of a statement's code, in order (for keyword checks), plus `.`
/// and `(` as words of their own.
fn words(sql: &str, segs: &[Seg]) -> Vec<String> {
    let mut out = Vec::new();
    for s in segs {
        match s.kind {
            Kind::Code => {
                let text = &sql[s.start..s.end];
                let mut word = String::new();
                for ch in text.chars() {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        word.push(ch);
                    } else {
                        if !word.is_empty() {
                            out.push(std::mem::take(&mut word));
                        }
                        if ch == '.' || ch == '(' {
                            out.push(ch.to_string());
                        }
                    }
                }
                if !word.is_empty() {
                    out.push(word);
                }
            }
            Kind::Quoted | Kind::Param => out.push(sql[s.start..s.end].to_owned()),
            Kind::Comment | Kind::Semi => {}
        }
    }
    out
}

/// Splits a script into statements at the semicolons that end them, keeping semicolons inside
/// string literals, quoted identifiers, comments, dollar-quoted strings and SQLite trigger
/// bodies (`CREATE TRIGGER … BEGIN …; …; END`). Empty statements are dropped.
pub fn split_statements(sql: &str) -> Result<Vec<String>, SqlError> {
    let segs = lex(sql)?;
    let mut out = Vec::new();
    let mut first = 0;
    let mut i = 0;
    while i <= segs.len() {
        let at_end = i == segs.len();
        if at_end || segs[i].kind == Kind::Semi {
            let stmt = &segs[first..i];
            if !at_end && in_trigger_body(sql, stmt) {
                i += 1;
                continue;
            }
            if has_content(sql, stmt) {
                let start = stmt.first().map_or(0, |s| s.start);
                let end = stmt.last().map_or(0, |s| s.end);
                out.push(sql[start..end].trim().to_owned());
            }
            first = i + 1;
        }
        i += 1;
    }
    Ok(out)
}

/// Whether `stmt` is a `CREATE TRIGGER` whose `BEGIN … END` body is still open.
fn in_trigger_body(sql: &str, stmt: &[Seg]) -> bool {
    let w: Vec<String> = words(sql, stmt).iter().map(|x| x.to_ascii_uppercase()).collect();
    let mut it = w.iter().map(String::as_str);
    if it.next() != Some("CREATE") {
        return false;
    }
    let mut second = it.next();
    if matches!(second, Some("TEMP" | "TEMPORARY")) {
        second = it.next();
    }
    if second != Some("TRIGGER") {
        return false;
    }
    let mut depth = 0i32;
    let mut opened = false;
    for word in w.iter() {
        match word.as_str() {
            "BEGIN" | "CASE" => {
                depth += 1;
                opened = true;
            }
            "END" => depth -= 1,
            _ => {}
        }
    }
    opened && depth > 0
}

/// The tables a script creates (`CREATE [TEMP] [VIRTUAL] TABLE [IF NOT EXISTS] name`), in
/// order, as written (quoted and schema-qualified names kept).
pub fn created_tables(statements: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for stmt in statements {
        let Ok(segs) = lex(stmt) else { continue };
        let w = words(stmt, &segs);
        let mut i = 0;
        let mut take = |word: &str| {
            if w.get(i).is_some_and(|x| x.eq_ignore_ascii_case(word)) {
                i += 1;
                true
            } else {
                false
            }
        };
        if !take("CREATE") {
            continue;
        }
        let _ = take("TEMP") || take("TEMPORARY");
        let _ = take("VIRTUAL") || take("UNLOGGED");
        if !take("TABLE") {
            continue;
        }
        if take("IF") && !(take("NOT") && take("EXISTS")) {
            continue;
        }
        let Some(name) = w.get(i) else { continue };
        let mut full = name.clone();
        if w.get(i + 1).is_some_and(|x| x == ".") {
            if let Some(second) = w.get(i + 2) {
                full = format!("{name}.{second}");
            }
        }
        out.push(full);
    }
    out
}
