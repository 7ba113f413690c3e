//! Read-model queries outside any batch: the [`SqlStore`] side of [`SqliteStore`].

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::SqliteStore;
use crate::core::error::Result;
use crate::core::sql::{SqlStore, TextRows};

impl SqlStore for SqliteStore {
    type Tx = Connection;

    /// Runs on the read connection. Integers and reals show as Rust prints them, blobs as
    /// their size.
    async fn query_text(&self, sql: &str) -> Result<TextRows> {
        let sql = sql.to_owned();
        self.read(move |conn| {
            let mut st = conn.prepare(&sql)?;
            let columns: Vec<String> = st.column_names().into_iter().map(str::to_owned).collect();
            let n = columns.len();
            let rows = st
                .query_map([], |row| (0..n).map(|i| Ok(text(row.get_ref(i)?))).collect())?
                .collect::<rusqlite::Result<Vec<Vec<String>>>>()?;
            Ok(TextRows { columns, rows })
        })
        .await
    }
}

fn text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => String::new(),
        ValueRef::Integer(v) => v.to_string(),
        ValueRef::Real(v) => v.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
    }
}
