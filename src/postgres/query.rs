//! Read-model queries outside any batch: the [`SqlStore`] side of [`PgStore`].

use tokio_postgres::SimpleQueryMessage;

use super::error::db_err;
use super::{PgBatch, PgStore};
use crate::core::error::Result;
use crate::core::sql::{SqlStore, TextRows};

impl SqlStore for PgStore {
    type Tx = PgBatch;

    /// Runs on a pooled connection with the simple protocol, which returns every value as
    /// PostgreSQL's text.
    async fn query_text(&self, sql: &str) -> Result<TextRows> {
        let client = self.client().await?;
        let messages = client
            .simple_query(sql)
            .await
            .map_err(db_err("querying the read models"))?;
        let mut out = TextRows::default();
        for m in messages {
            match m {
                SimpleQueryMessage::RowDescription(cols) => {
                    out.columns = cols.iter().map(|c| c.name().to_owned()).collect();
                }
                SimpleQueryMessage::Row(r) => {
                    if out.columns.is_empty() {
                        out.columns = r.columns().iter().map(|c| c.name().to_owned()).collect();
                    }
                    out.rows.push(
                        (0..r.len())
                            .map(|i| r.get(i).unwrap_or_default().to_owned())
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
