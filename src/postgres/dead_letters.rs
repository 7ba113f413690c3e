//! Dead letters: listing, discarding and retrying them.

use std::sync::Arc;

use super::apply::{self, Flusher};
use super::batch::{Origin, PipelineError};
use super::error::{self, db, db_err};
use super::listen::bump;
use super::rows::dead_letter_from_row;
use super::{PgBody, PgParam, PgStore};
use crate::core::error::{Error, HandlerError, Result};
use crate::core::event::Event;
use crate::core::store::DeadLetter;

impl PgStore {
    /// The dead letters of one projection or all (`Store::dead_letters`).
    pub(super) async fn list_dead_letters(&self, projection: Option<&str>) -> Result<Vec<DeadLetter>> {
        let client = self.client_for("listing dead letters").await?;
        let err = db_err("listing dead letters");
        let st = client
            .prepare_cached(&self.inner.sql.dead_letters)
            .await
            .map_err(&err)?;
        let rows = client.query(&st, &[&projection]).await.map_err(&err)?;
        rows.iter()
            .map(|r| dead_letter_from_row(r).map_err(&err))
            .collect()
    }

    /// Deletes one dead letter (`Store::discard_dead_letter`).
    pub(super) async fn discard_one_dead_letter(&self, id: i64) -> Result<()> {
        let client = self.client_for("discarding a dead letter").await?;
        let err = db_err("discarding a dead letter");
        let st = client
            .prepare_cached(&self.inner.sql.delete_dead_letter)
            .await
            .map_err(&err)?;
        let n = client.execute(&st, &[&id]).await.map_err(&err)?;
        if n == 0 {
            return Err(Error::UnknownDeadLetter(id));
        }
        Ok(())
    }

    /// Applies one dead letter again; on success it is deleted, on failure its attempt is
    /// counted (`Store::retry_dead_letter`).
    pub(super) async fn retry_one_dead_letter(
        &self,
        id: i64,
        body: Arc<PgBody>,
    ) -> Result<Result<(), HandlerError>> {
        let sql = &self.inner.sql;
        let err = db_err("retrying a dead letter");
        let mut client = self.client_for("retrying a dead letter").await?;
        let failure = {
            let tx = client.transaction().await.map_err(&err)?;
            let st = tx.prepare_cached(&sql.dead_letter).await.map_err(&err)?;
            let dl = match tx.query_opt(&st, &[&id]).await.map_err(&err)? {
                Some(r) => dead_letter_from_row(&r).map_err(&err)?,
                None => return Err(Error::UnknownDeadLetter(id)),
            };
            let batch = Arc::new(self.new_batch());
            let mut flusher = Flusher::new(&tx);
            let partition = i32::try_from(dl.partition).unwrap_or(i32::MAX);
            let projection = dl.projection.clone();
            let events: Arc<[Event]> = Arc::from(vec![dl.event]);
            match apply::any_body(&mut flusher, &batch, body, events, 0..1).await? {
                Err(f) => Some(f.error),
                Ok(applied) => {
                    batch.store(sql.delete_dead_letter.clone(), params![id]);
                    batch.store(
                        sql.retry_counters.clone(),
                        params![
                            projection,
                            partition,
                            applied.handled as i64,
                            applied.ignored as i64
                        ],
                    );
                    batch.store(
                        "SELECT pg_notify($1, '')",
                        params![sql.checkpoints_channel.clone()],
                    );
                    match flusher.finish(&batch).await {
                        Ok(_) => {
                            tx.commit().await.map_err(db_err("committing a retry"))?;
                            None
                        }
                        Err(
                            f @ PipelineError {
                                origin: Origin::Event(_),
                                ..
                            },
                        ) if !error::retryable(&f.error) => Some(HandlerError::msg(f.message())),
                        Err(f) => return Err(db("retrying a dead letter", f.error)),
                    }
                }
            }
        };
        match failure {
            None => {
                bump(&self.inner.checkpoints);
                Ok(Ok(()))
            }
            Some(error) => {
                let st = client
                    .prepare_cached(&sql.dead_letter_attempt)
                    .await
                    .map_err(&err)?;
                client
                    .execute(&st, &[&id, &error.to_string()])
                    .await
                    .map_err(&err)?;
                Ok(Err(error))
            }
        }
    }
}
