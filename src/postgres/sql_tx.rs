//! [`SqlTx`] on PostgreSQL: statements are queued in the [`PgBatch`] and pipelined; a query
//! first sends the statements queued before it, in the same transaction, then runs.
//!
//! Values are sent in PostgreSQL's text format ([`TextParam`]), which the server parses as the
//! type it inferred for the placeholder, or as the placeholder's cast
//! ([`Dialect::placeholder`](crate::core::sql::Dialect::placeholder)).
//!
//! A query's rows come back as JSON objects: the statement runs as
//! `WITH q AS (<statement>) SELECT to_jsonb(q) FROM q`, so any column type converts the way
//! PostgreSQL's `to_jsonb` converts it (numbers as numbers, `numeric` exactly, timestamps as
//! ISO 8601 text, `jsonb` as JSON), and `INSERT … RETURNING` works too.

use std::error::Error as StdError;

use bytes::BytesMut;
use postgres_types::{Format, IsNull, ToSql, Type};

use super::batch::{PgBatch, PgParam};
use crate::core::document::Row;
use crate::core::error::HandlerError;
use crate::core::sql::{Dialect, SqlTx, SqlValue};

/// A parameter's value in PostgreSQL's text format (`None`: NULL). It accepts any parameter
/// type: the server parses the text as the type it inferred or the placeholder's cast names.
#[derive(Clone, Debug, PartialEq)]
pub struct TextParam(pub Option<String>);

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    postgres_types::to_sql_checked!();
}

fn owned(params: &[SqlValue<'_>]) -> Vec<PgParam> {
    params
        .iter()
        .map(|v| Box::new(TextParam(v.to_text())) as PgParam)
        .collect()
}

fn label_of(label: &str) -> String {
    label.to_owned()
}

/// The statement wrapped so that each row comes back as one `jsonb` object.
fn as_json_rows(sql: &str) -> String {
    let body = sql.trim().trim_end_matches(';').trim_end();
    format!("WITH q AS ({body}\n) SELECT to_jsonb(q) FROM q")
}

impl SqlTx for PgBatch {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute_labeled(&self, sql: &str, params: &[SqlValue<'_>], label: &str) -> Result<(), HandlerError> {
        self.queue_labeled(sql.to_owned(), owned(params), label_of(label));
        Ok(())
    }

    fn query(&self, sql: &str, params: &[SqlValue<'_>]) -> Result<Vec<Row>, HandlerError> {
        self.read_raw(as_json_rows(sql), owned(params))
    }

    fn execute_script_labeled(&self, sql: &str, label: &str) -> Result<(), HandlerError> {
        self.queue_script_labeled(sql.to_owned(), label_of(label));
        Ok(())
    }

    fn check_statement(&self, sql: &str, params: usize, label: &str) -> Result<(), HandlerError> {
        self.check(sql.to_owned(), None, params, label.to_owned());
        Ok(())
    }

    fn check_typed_statement(
        &self,
        typed: &str,
        untyped: &str,
        params: usize,
        label: &str,
    ) -> Result<(), HandlerError> {
        let untyped = (typed != untyped).then(|| untyped.to_owned());
        self.check(typed.to_owned(), untyped, params, label.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_wrapped_to_return_json_rows() {
        assert_eq!(
            as_json_rows("SELECT a FROM t WHERE k = $1; \n"),
            "WITH q AS (SELECT a FROM t WHERE k = $1\n) SELECT to_jsonb(q) FROM q"
        );
    }

    #[test]
    fn values_bind_in_text_format() {
        let ps = [SqlValue::Int(7), SqlValue::Null, SqlValue::Real(f64::INFINITY)];
        let texts: Vec<Option<String>> = ps.iter().map(SqlValue::to_text).collect();
        assert_eq!(texts, vec![Some("7".into()), None, Some("Infinity".into())]);
        assert_eq!(owned(&ps).len(), 3);
    }
}
