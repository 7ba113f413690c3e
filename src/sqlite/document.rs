//! Document storage on SQLite: loads by key with one statement, upserts with cached
//! prepared statements (in-process, a prepared statement per row beats one large statement).

use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::Connection;
use serde_json::{Number, Value};

use crate::core::document::{column_list, on_conflict_update, quote_ident, DocumentStorage, Row};
use crate::core::error::HandlerError;

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
    }
}

impl DocumentStorage for Connection {
    fn load_rows(&self, table: &str, key_column: &str, keys: &[&str]) -> Result<Vec<Row>, HandlerError> {
        let sql = format!(
            "SELECT * FROM {} WHERE {} IN (SELECT value FROM json_each(?1))",
            quote_ident(table),
            quote_ident(key_column)
        );
        let mut st = self.prepare_cached(&sql)?;
        let names: Vec<String> = st.column_names().into_iter().map(str::to_owned).collect();
        let keys = serde_json::to_string(keys)?;
        let mut rows = st.query([keys])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut row = Row::new();
            for (i, name) in names.iter().enumerate() {
                row.insert(name.clone(), to_json(r.get_ref(i)?));
            }
            out.push(row);
        }
        Ok(out)
    }

    fn upsert_rows(&self, table: &str, key_column: &str, rows: &[Row]) -> Result<(), HandlerError> {
        let Some(first) = rows.first() else { return Ok(()) };
        let columns: Vec<&String> = first.keys().collect();
        let cols = column_list(&columns);
        let params = (1..=columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let conflict = on_conflict_update(key_column, &columns);
        let sql = format!(
            "INSERT INTO {} ({cols}) VALUES ({params}) ON CONFLICT ({}) {conflict}",
            quote_ident(table),
            quote_ident(key_column)
        );
        let mut st = self.prepare_cached(&sql)?;
        let mut values: Vec<SqlValue> = Vec::with_capacity(columns.len());
        for row in rows {
            values.clear();
            for c in &columns {
                values.push(row.get(c.as_str()).map_or(SqlValue::Null, to_sql));
            }
            st.execute(rusqlite::params_from_iter(values.iter()))?;
        }
        Ok(())
    }

    fn clear_table(&self, table: &str) -> Result<(), HandlerError> {
        self.execute(&format!("DELETE FROM {}", quote_ident(table)), [])?;
        Ok(())
    }

    fn execute_script(&self, sql: &str) -> Result<(), HandlerError> {
        self.execute_batch(sql)?;
        Ok(())
    }
}
