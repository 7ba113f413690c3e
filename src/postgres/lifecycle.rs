//! A projection's lifecycle on the store: prepare (setup and checkpoint row), reset, run
//! state, and reading checkpoint records.

use std::sync::Arc;

use deadpool_postgres::GenericClient;

use super::apply::Flusher;
use super::batch::{self, Origin};
use super::error::{self, db, db_err};
use super::listen::bump;
use super::rows::record_from_row;
use super::{partition_i32, PgBatch, PgBody, PgParam, PgStore};
use crate::core::error::{Error, HandlerError, Result};
use crate::core::store::{ProjectionRecord, RunState};

impl PgStore {
    pub(super) async fn load_record(
        &self,
        client: &impl GenericClient,
        name: &str,
        partition: i32,
    ) -> Result<Option<ProjectionRecord>> {
        let err = db_err("reading the checkpoint");
        let st = client
            .prepare_cached(&self.inner.sql.record)
            .await
            .map_err(&err)?;
        let row = client.query_opt(&st, &[&name, &partition]).await.map_err(&err)?;
        row.as_ref()
            .map(|r| record_from_row(r, "reading the checkpoint"))
            .transpose()
    }

    /// Every checkpoint record (`Store::records`).
    pub(super) async fn load_records(&self) -> Result<Vec<ProjectionRecord>> {
        let client = self.client_for("reading checkpoints").await?;
        let err = db_err("reading checkpoints");
        let st = client
            .prepare_cached(&self.inner.sql.records)
            .await
            .map_err(&err)?;
        let rows = client.query(&st, &[]).await.map_err(&err)?;
        rows.iter()
            .map(|r| record_from_row(r, "reading checkpoints"))
            .collect()
    }

    /// Runs the body's `setup` and makes sure the checkpoint row exists (`Store::prepare`).
    pub(super) async fn prepare_projection(
        &self,
        name: &str,
        partition: u32,
        body: Arc<PgBody>,
    ) -> Result<ProjectionRecord> {
        let p = partition_i32(partition)?;
        let sql = &self.inner.sql;
        let client = self
            .lifecycle_tx(
                name,
                "setup",
                move |b| body.setup(b),
                |b| {
                    b.store(sql.ensure_checkpoint.clone(), params![name.to_owned(), p]);
                },
            )
            .await?;
        self.load_record(&client, name, p)
            .await?
            .ok_or_else(|| Error::Internal(format!("checkpoint of {name} vanished during setup")))
    }

    /// Runs the body's `setup` and checks its statements, then rolls back (`Store::check_setup`).
    pub(super) async fn check_projection_setup(&self, name: &str, body: Arc<PgBody>) -> Result<()> {
        self.lifecycle_tx_then(name, "setup", move |b| body.setup(b), |_| {}, false)
            .await
            .map(drop)
    }

    /// Runs the body's `reset` and rewinds the checkpoint (`Store::reset`).
    pub(super) async fn reset_projection(&self, name: &str, body: Arc<PgBody>) -> Result<()> {
        let sql = &self.inner.sql;
        let _client = self
            .lifecycle_tx(
                name,
                "reset",
                move |b| body.reset(b),
                |b| {
                    b.store(sql.reset.clone(), params![name.to_owned()]);
                    b.store(sql.delete_dead_letters.clone(), params![name.to_owned()]);
                    b.store(sql.delete_seen.clone(), params![name.to_owned()]);
                    b.store(
                        "SELECT pg_notify($1, '')",
                        params![sql.checkpoints_channel.clone()],
                    );
                },
            )
            .await?;
        bump(&self.inner.checkpoints);
        Ok(())
    }

    /// Sets the run state of one partition or all (`Store::set_state`).
    pub(super) async fn set_run_state(
        &self,
        name: &str,
        partition: Option<u32>,
        state: RunState,
        reason: Option<String>,
    ) -> Result<()> {
        let sql = &self.inner.sql;
        let p = partition.map(partition_i32).transpose()?;
        let batch = PgBatch::new(&self.inner.schema);
        batch.store(
            sql.ensure_checkpoint.clone(),
            params![name.to_owned(), p.unwrap_or(0)],
        );
        batch.store(
            sql.set_state.clone(),
            params![name.to_owned(), state.as_str(), reason, p],
        );
        batch.store(
            "SELECT pg_notify($1, '')",
            params![sql.checkpoints_channel.clone()],
        );
        let queued = batch.take();
        let mut client = self.client_for("changing the projection state").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_err("changing the projection state"))?;
        batch::run(&tx, &queued)
            .await
            .map_err(|f| db("changing the projection state", f.error))?;
        tx.commit().await.map_err(db_err("committing a state change"))?;
        bump(&self.inner.checkpoints);
        Ok(())
    }

    /// Runs a body's lifecycle step (`setup`, `reset`) plus the store's own statements in one
    /// transaction, serialized per projection with an advisory lock.
    async fn lifecycle_tx(
        &self,
        name: &str,
        step: &'static str,
        run_body: impl FnOnce(&PgBatch) -> Result<(), HandlerError> + Send + 'static,
        store_statements: impl FnOnce(&PgBatch),
    ) -> Result<deadpool_postgres::Object> {
        self.lifecycle_tx_then(name, step, run_body, store_statements, true)
            .await
    }

    /// [`lifecycle_tx`](Self::lifecycle_tx), committed when `commit`, else rolled back.
    async fn lifecycle_tx_then(
        &self,
        name: &str,
        step: &'static str,
        run_body: impl FnOnce(&PgBatch) -> Result<(), HandlerError> + Send + 'static,
        store_statements: impl FnOnce(&PgBatch),
        commit: bool,
    ) -> Result<deadpool_postgres::Object> {
        let batch = Arc::new(PgBatch::new(&self.inner.schema));
        batch.store(
            "SELECT pg_advisory_xact_lock(1886547822, hashtext($1))",
            params![format!("{}/{name}", self.inner.schema)],
        );
        let mut client = self.client_for("changing a projection").await?;
        let tx = client
            .transaction()
            .await
            .map_err(db_err("changing a projection"))?;
        let mut flusher = Flusher::new(&tx);
        flusher
            .apply(&batch, move |b| {
                b.set_origin(Origin::Body);
                run_body(b)
            })
            .await?
            .map_err(|e| Error::Lifecycle {
                projection: name.to_owned(),
                step,
                message: e.to_string(),
            })?;
        store_statements(&batch);
        if let Err(f) = flusher.finish(&batch).await {
            drop(tx);
            return Err(match f.origin {
                Origin::Body if !error::retryable(&f.error) => Error::Lifecycle {
                    projection: name.to_owned(),
                    step,
                    message: f.message(),
                },
                _ => db("changing a projection", f.error),
            });
        }
        // Statements the body asked to check (declarative handlers): prepare each, inside a
        // savepoint so that a rejected one does not abort the transaction. Placeholders carry
        // the casts inferred from their use, so that none is ambiguous (which the server would
        // log); where the typed statement fails, the untyped one is checked instead, and an
        // ambiguous type there (SQLSTATE 42725, 42P18) is not an error: values are typed when
        // bound.
        for check in batch.take_checks() {
            let candidates = std::iter::once(&check.sql).chain(check.untyped.as_ref());
            for (k, sql) in candidates.enumerate() {
                let last = k > 0 || check.untyped.is_none();
                match self.check_one(&tx, sql).await? {
                    Ok(params) if params != check.params => {
                        return Err(Error::Lifecycle {
                            projection: name.to_owned(),
                            step,
                            message: format!(
                                "{}: it uses a parameter that is not a named event parameter (such as $1)",
                                check.label
                            ),
                        });
                    }
                    Ok(_) => break,
                    // The inferred casts may be what the server rejects: the untyped
                    // statement has the last word.
                    Err(_) if !last => continue,
                    Err(e) if is_ambiguous(&e) => break,
                    Err(e) => {
                        return Err(Error::Lifecycle {
                            projection: name.to_owned(),
                            step,
                            message: format!("{}: {}", check.label, error::describe(&e)),
                        });
                    }
                }
            }
        }
        if commit {
            tx.commit()
                .await
                .map_err(db_err("committing a projection change"))?;
        } else {
            tx.rollback()
                .await
                .map_err(db_err("rolling back a checked setup"))?;
        }
        Ok(client)
    }

    /// Prepares `sql` inside a savepoint (released, or rolled back when the server rejects
    /// it): its parameter count, or the server's error.
    async fn check_one(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        sql: &str,
    ) -> Result<Result<usize, tokio_postgres::Error>> {
        let err = db_err("checking a projection's statements");
        tx.batch_execute("SAVEPOINT projectionist_check")
            .await
            .map_err(&err)?;
        match tx.prepare(sql).await {
            Ok(st) => {
                tx.batch_execute("RELEASE SAVEPOINT projectionist_check")
                    .await
                    .map_err(&err)?;
                Ok(Ok(st.params().len()))
            }
            Err(e) if error::retryable(&e) => Err(db("checking a projection's statements", e)),
            Err(e) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT projectionist_check")
                    .await
                    .map_err(&err)?;
                Ok(Err(e))
            }
        }
    }
}

/// An ambiguous type: a function or operator with several candidates (42725), or a parameter
/// whose type cannot be told (42P18).
fn is_ambiguous(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code() == "42725" || c.code() == "42P18")
}
