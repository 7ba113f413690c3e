//! [`SqlTx`] on SQLite: statements and queries run at once on the connection that holds the
//! batch's transaction.

use rusqlite::types::{ToSqlOutput, Value as Sqlite, ValueRef};
use rusqlite::{Connection, ToSql};
use serde_json::{Map, Number, Value};

use crate::core::document::Row;
use crate::core::error::HandlerError;
use crate::core::sql::{Dialect, SqlTx, SqlValue};

/// Room in the connection's prepared-statement cache for the engine's own statements.
const CACHE_HEADROOM: usize = 64;
/// The smallest cache asked for, so that several projections sharing the connection keep their
/// statements prepared.
const CACHE_MIN: usize = 256;

/// A bound value.
struct Bind<'v, 'a>(&'v SqlValue<'a>);

impl ToSql for Bind<'_, '_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self.0 {
            SqlValue::Null => ToSqlOutput::Owned(Sqlite::Null),
            SqlValue::Int(i) => ToSqlOutput::Owned(Sqlite::Integer(*i)),
            SqlValue::Real(x) => ToSqlOutput::Owned(Sqlite::Real(*x)),
            SqlValue::Bool(b) => ToSqlOutput::Owned(Sqlite::Integer(i64::from(*b))),
            SqlValue::Text(s) | SqlValue::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn labeled(e: rusqlite::Error, label: &str) -> HandlerError {
    let e = HandlerError::from(e);
    if label.is_empty() {
        e
    } else {
        e.context(label)
    }
}

fn prepare<'c>(
    cx: &'c Connection,
    sql: &str,
    params: &[SqlValue<'_>],
    label: &str,
) -> Result<rusqlite::CachedStatement<'c>, HandlerError> {
    let mut stmt = cx.prepare_cached(sql).map_err(|e| labeled(e, label))?;
    for (i, p) in params.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, Bind(p))
            .map_err(|e| labeled(e, label))?;
    }
    Ok(stmt)
}

fn json_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Number(i.into()),
        ValueRef::Real(x) => Number::from_f64(x).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Array(b.iter().map(|x| Value::Number((*x).into())).collect()),
    }
}

impl SqlTx for Connection {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute_labeled(&self, sql: &str, params: &[SqlValue<'_>], label: &str) -> Result<(), HandlerError> {
        let mut stmt = prepare(self, sql, params, label)?;
        stmt.raw_execute().map_err(|e| labeled(e, label))?;
        Ok(())
    }

    fn query(&self, sql: &str, params: &[SqlValue<'_>]) -> Result<Vec<Row>, HandlerError> {
        let mut stmt = prepare(self, sql, params, "")?;
        let names: Vec<String> = stmt.column_names().into_iter().map(str::to_owned).collect();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Map::new();
            for (i, name) in names.iter().enumerate() {
                row.insert(name.clone(), json_of(r.get_ref(i)?));
            }
            out.push(row);
        }
        Ok(out)
    }

    fn execute_script_labeled(&self, sql: &str, label: &str) -> Result<(), HandlerError> {
        self.execute_batch(sql).map_err(|e| labeled(e, label))
    }

    fn check_statement(&self, sql: &str, params: usize, label: &str) -> Result<(), HandlerError> {
        let stmt = self.prepare_cached(sql).map_err(|e| labeled(e, label))?;
        if stmt.parameter_count() != params {
            return Err(HandlerError::msg(format!(
                "{label}: it uses a parameter that is not a named event parameter (such as ?, ?1, $x or @x)"
            )));
        }
        Ok(())
    }

    fn reserve_statements(&self, statements: usize) {
        self.set_prepared_statement_cache_capacity(CACHE_MIN.max(statements + CACHE_HEADROOM));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executes_and_queries_in_the_same_connection() -> Result<(), HandlerError> {
        let db = Connection::open_in_memory()?;
        db.execute_script_labeled(
            "CREATE TABLE t (k TEXT PRIMARY KEY, n INTEGER, x REAL, j TEXT)",
            "setup",
        )?;
        SqlTx::execute(
            &db,
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4)",
            &[
                SqlValue::from("a"),
                SqlValue::Int(2),
                SqlValue::Real(1.5),
                SqlValue::Json("{\"a\":1}".into()),
            ],
        )?;
        let rows = SqlTx::query(
            &db,
            "SELECT k, n, x, j, NULL AS z FROM t WHERE k = ?1",
            &[SqlValue::from("a")],
        )?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["k"], "a");
        assert_eq!(rows[0]["n"], 2);
        assert_eq!(rows[0]["x"], 1.5);
        assert_eq!(rows[0]["j"], "{\"a\":1}");
        assert_eq!(rows[0]["z"], Value::Null);
        assert!(db
            .query_opt("SELECT k FROM t WHERE k = ?1", &[SqlValue::from("b")])?
            .is_none());
        Ok(())
    }

    #[test]
    fn errors_carry_the_label_and_checks_count_parameters() -> Result<(), HandlerError> {
        let db = Connection::open_in_memory()?;
        let e = db
            .execute_labeled("INSERT INTO missing VALUES (1)", &[], "X handler")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("X handler: "), "{e}");
        db.execute_script_labeled("CREATE TABLE t (a INTEGER)", "")?;
        assert!(db.check_statement("INSERT INTO t VALUES (?1)", 1, "ok").is_ok());
        let e = db
            .check_statement("INSERT INTO t VALUES (?1)", 0, "bad")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not a named event parameter"), "{e}");
        Ok(())
    }
}
