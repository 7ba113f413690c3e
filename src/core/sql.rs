//! The backend-neutral SQL transaction that projection bodies write and read through.
//!
//! Every SQL store hands its bodies a context that implements [`SqlTx`]: statements run, and
//! queries return rows, **inside the batch's transaction**, the one that also moves the
//! checkpoint. A body written against `SqlTx` (the declarative SQL body, Python handlers, your
//! own) runs unchanged on SQLite and on PostgreSQL:
//!
//! - on SQLite a statement runs at once on the connection that holds the transaction;
//! - on PostgreSQL statements are queued and pipelined; a [`query`](SqlTx::query) first sends
//!   the statements queued before it, in the same transaction, so a handler reads what it (or an
//!   earlier event of the batch) wrote.
//!
//! Values are always bound as parameters, never spliced into SQL text. Placeholders follow the
//! store's [`Dialect`]: `?1, ?2, …` on SQLite, `$1, $2, …` on PostgreSQL;
//! [`Dialect::placeholder`] writes one for a value, with the cast PostgreSQL needs to type it.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;

use serde_json::Value;

use super::document::Row;
use super::error::{HandlerError, Result};
use super::projection::Apply;
use super::store::Store;

/// A value bound to a statement parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Text(Cow<'a, str>),
    /// JSON text (an object, an array, a whole payload): `jsonb` on PostgreSQL, text on SQLite.
    Json(Cow<'a, str>),
}

impl<'a> SqlValue<'a> {
    /// The bound form of a JSON value: numbers as integer or real, strings as text, booleans as
    /// booleans, objects and arrays as JSON text.
    pub fn from_json(v: &'a Value) -> Self {
        match v {
            Value::Null => SqlValue::Null,
            Value::Bool(b) => SqlValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => SqlValue::Int(i),
                None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => SqlValue::Text(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => SqlValue::Json(Cow::Owned(v.to_string())),
        }
    }

    /// The same value, owning its text.
    pub fn into_owned(self) -> SqlValue<'static> {
        match self {
            SqlValue::Null => SqlValue::Null,
            SqlValue::Bool(b) => SqlValue::Bool(b),
            SqlValue::Int(i) => SqlValue::Int(i),
            SqlValue::Real(x) => SqlValue::Real(x),
            SqlValue::Text(s) => SqlValue::Text(Cow::Owned(s.into_owned())),
            SqlValue::Json(s) => SqlValue::Json(Cow::Owned(s.into_owned())),
        }
    }

    /// The value in PostgreSQL's text input format (`None`: NULL).
    pub fn to_text(&self) -> Option<String> {
        match self {
            SqlValue::Null => None,
            SqlValue::Bool(b) => Some(b.to_string()),
            SqlValue::Int(i) => Some(i.to_string()),
            SqlValue::Real(x) if x.is_nan() => Some("NaN".to_owned()),
            SqlValue::Real(x) if x.is_infinite() => {
                Some(if *x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned())
            }
            SqlValue::Real(x) => Some(x.to_string()),
            SqlValue::Text(s) | SqlValue::Json(s) => Some(s.to_string()),
        }
    }
}

impl From<i64> for SqlValue<'_> {
    fn from(v: i64) -> Self {
        SqlValue::Int(v)
    }
}

impl From<i32> for SqlValue<'_> {
    fn from(v: i32) -> Self {
        SqlValue::Int(i64::from(v))
    }
}

impl From<f64> for SqlValue<'_> {
    fn from(v: f64) -> Self {
        SqlValue::Real(v)
    }
}

impl From<bool> for SqlValue<'_> {
    fn from(v: bool) -> Self {
        SqlValue::Bool(v)
    }
}

impl<'a> From<&'a str> for SqlValue<'a> {
    fn from(v: &'a str) -> Self {
        SqlValue::Text(Cow::Borrowed(v))
    }
}

impl From<String> for SqlValue<'_> {
    fn from(v: String) -> Self {
        SqlValue::Text(Cow::Owned(v))
    }
}

impl<'a, T: Into<SqlValue<'a>>> From<Option<T>> for SqlValue<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(SqlValue::Null, Into::into)
    }
}

/// The SQL dialect of a store: how placeholders are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `?1`, `?2`, …
    Sqlite,
    /// `$1`, `$2`, …, with a cast chosen from the value's kind.
    Postgres,
}

impl Dialect {
    /// The placeholder for parameter `n` (1-based) when it binds `value`.
    ///
    /// PostgreSQL types each parameter when it prepares a statement, so a placeholder carries a
    /// cast chosen from the value's kind: integers `::bigint`, other numbers
    /// `::double precision`, booleans `::boolean`, JSON `::jsonb`. Text and NULL are left to
    /// their context, so that a string fills a `timestamptz` or `uuid` column. Values are sent
    /// in PostgreSQL's text format, which the server parses as the placeholder's type.
    pub fn placeholder(self, n: usize, value: &SqlValue<'_>) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}{}", Self::postgres_cast(value)),
        }
    }

    /// The placeholder for parameter `n` in a statement prepared at setup, before any value:
    /// with the cast of `value` when the parameter always binds that kind (an event's position
    /// is always an integer), else `::numeric` where its use is arithmetic (`:data.quantity *
    /// :data.unit_price`: two untyped parameters there make the operator ambiguous, which
    /// PostgreSQL rejects and logs), else none (its context types it, as at run time).
    pub fn check_placeholder(self, n: usize, value: Option<&SqlValue<'_>>, arithmetic: bool) -> String {
        match (self, value) {
            (Dialect::Postgres, None) if arithmetic => format!("${n}::numeric"),
            (_, Some(v)) => self.placeholder(n, v),
            (_, None) => self.plain_placeholder(n),
        }
    }

    /// The plain placeholder for parameter `n` (no cast).
    pub fn plain_placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    fn postgres_cast(value: &SqlValue<'_>) -> &'static str {
        match value {
            SqlValue::Null | SqlValue::Text(_) => "",
            SqlValue::Int(_) => "::bigint",
            SqlValue::Real(_) => "::double precision",
            SqlValue::Bool(_) => "::boolean",
            SqlValue::Json(_) => "::jsonb",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        })
    }
}

/// A SQL transaction that projection bodies execute statements and query rows in: the batch's
/// transaction, which also moves the checkpoint. See the [module docs](self).
///
/// Errors are [`HandlerError`]s: a failing statement is the failure of the event being applied,
/// and goes through the projection's error policy.
pub trait SqlTx {
    /// How placeholders are written on this store.
    fn dialect(&self) -> Dialect;

    /// Runs one statement with bound parameters. `label` names it in error messages (for
    /// example `"OrderCreated handler, statement 2 of 3"`; empty for none).
    ///
    /// On PostgreSQL the statement is queued and runs, in order, before the next query or at
    /// the end of the batch; its error is then the failure of the event that queued it.
    fn execute_labeled(&self, sql: &str, params: &[SqlValue<'_>], label: &str) -> Result<(), HandlerError>;

    /// Runs one statement with bound parameters.
    fn execute(&self, sql: &str, params: &[SqlValue<'_>]) -> Result<(), HandlerError> {
        self.execute_labeled(sql, params, "")
    }

    /// Runs one statement that returns rows and returns them, as column name → JSON value.
    /// Everything executed before it in this transaction is visible to it.
    fn query(&self, sql: &str, params: &[SqlValue<'_>]) -> Result<Vec<Row>, HandlerError>;

    /// The first row of [`query`](SqlTx::query), if any.
    fn query_opt(&self, sql: &str, params: &[SqlValue<'_>]) -> Result<Option<Row>, HandlerError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs SQL text without parameters, possibly several statements (DDL in setup and reset).
    fn execute_script_labeled(&self, sql: &str, label: &str) -> Result<(), HandlerError>;

    /// Checks at setup that `sql` prepares and takes exactly `params` parameters, without
    /// running it, so that a statement the database rejects shows before any event. `label`
    /// names it in the error.
    fn check_statement(&self, sql: &str, params: usize, label: &str) -> Result<(), HandlerError>;

    /// [`check_statement`](Self::check_statement) of `typed`, a statement whose placeholders
    /// carry casts inferred from their use ([`Dialect::check_placeholder`]); where the database
    /// rejects it (the casts may not fit), `untyped` (the same with plain placeholders) is
    /// checked instead, and has the last word. Default: `untyped` only.
    fn check_typed_statement(
        &self,
        typed: &str,
        untyped: &str,
        params: usize,
        label: &str,
    ) -> Result<(), HandlerError> {
        let _ = typed;
        self.check_statement(untyped, params, label)
    }

    /// A hint that bodies on this context will prepare about `statements` distinct statements
    /// (a store may size its statement cache). Default: nothing.
    fn reserve_statements(&self, statements: usize) {
        let _ = statements;
    }
}

/// A store of SQL read models: its projection bodies get a [`SqlTx`] context (`Tx`), so that a
/// body written over `SqlTx` runs on it, and its read models can be queried outside any batch.
pub trait SqlStore: Store<Body = dyn Apply<<Self as SqlStore>::Tx>> {
    /// The context bodies run in: the connection or batch that holds the transaction.
    type Tx: SqlTx + ?Sized + 'static;

    /// Runs one read-only statement on the read models, outside any batch, and returns its
    /// columns and rows as the database shows them (NULL as an empty string).
    fn query_text(&self, sql: &str) -> impl Future<Output = Result<TextRows>> + Send;
}

/// A query's result as display text: the columns, in order, and each row's values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextRows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Converts a `query` row's column to a Rust value.
///
/// ```
/// # use projectionist::sql::column;
/// let row = serde_json::json!({"n": 3, "name": "x"}).as_object().cloned().unwrap_or_default();
/// let n: i64 = column(&row, "n").unwrap_or_default();
/// assert_eq!(n, 3);
/// ```
pub fn column<T: serde::de::DeserializeOwned>(row: &Row, name: &str) -> Result<T, HandlerError> {
    let v = row.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| HandlerError::msg(format!("column {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_dialect_and_the_value() {
        assert_eq!(Dialect::Sqlite.placeholder(2, &SqlValue::Int(1)), "?2");
        assert_eq!(Dialect::Postgres.placeholder(2, &SqlValue::Int(1)), "$2::bigint");
        assert_eq!(
            Dialect::Postgres.placeholder(1, &SqlValue::Real(1.5)),
            "$1::double precision"
        );
        assert_eq!(
            Dialect::Postgres.placeholder(1, &SqlValue::Bool(true)),
            "$1::boolean"
        );
        assert_eq!(
            Dialect::Postgres.placeholder(1, &SqlValue::Json("{}".into())),
            "$1::jsonb"
        );
        assert_eq!(
            Dialect::Postgres.placeholder(3, &SqlValue::Text("x".into())),
            "$3"
        );
        assert_eq!(Dialect::Postgres.placeholder(3, &SqlValue::Null), "$3");
    }

    #[test]
    fn text_format_covers_special_floats() {
        assert_eq!(SqlValue::Real(f64::NAN).to_text().as_deref(), Some("NaN"));
        assert_eq!(
            SqlValue::Real(f64::INFINITY).to_text().as_deref(),
            Some("Infinity")
        );
        assert_eq!(
            SqlValue::Real(f64::NEG_INFINITY).to_text().as_deref(),
            Some("-Infinity")
        );
        assert_eq!(SqlValue::Null.to_text(), None);
        assert_eq!(SqlValue::from(Some(3_i64)), SqlValue::Int(3));
        assert_eq!(SqlValue::from(None::<i64>), SqlValue::Null);
    }

    #[test]
    fn json_values_bind_by_kind() {
        let v = serde_json::json!({"a": [1, 2], "b": 1.5, "c": "x", "d": true, "e": null, "f": 7});
        assert_eq!(SqlValue::from_json(&v["a"]), SqlValue::Json("[1,2]".into()));
        assert_eq!(SqlValue::from_json(&v["b"]), SqlValue::Real(1.5));
        assert_eq!(SqlValue::from_json(&v["c"]), SqlValue::Text("x".into()));
        assert_eq!(SqlValue::from_json(&v["d"]), SqlValue::Bool(true));
        assert_eq!(SqlValue::from_json(&v["e"]), SqlValue::Null);
        assert_eq!(SqlValue::from_json(&v["f"]), SqlValue::Int(7));
    }
}
