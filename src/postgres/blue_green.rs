//! Blue/green rebuilds on PostgreSQL: build the new version of a read model in a shadow schema
//! while the current one keeps serving (and its live runner keeps running), then swap the two
//! in one short transaction.
//!
//! The shadow store's connections use `search_path = <shadow>, <schema>, public`, so the
//! projection's unqualified table names resolve to (and are created in) the shadow, while its
//! events are read from the live schema. The swap transaction:
//!
//! 1. locks the events table against writes (`LOCK … IN EXCLUSIVE MODE`: appends wait, reads
//!    do not) and the projection's checkpoint row (`FOR UPDATE`: the live runner's next
//!    compare-and-set waits, and then finds the checkpoint moved and re-reads);
//! 2. lets the shadow catch up to the head, which no append can move now;
//! 3. moves the live tables out (`ALTER TABLE … SET SCHEMA <shadow>_old`) and the shadow's in
//!    (`ALTER TABLE … SET SCHEMA <schema>`; indexes, constraints and owned sequences move
//!    with them), and copies the checkpoint, counters and dead letters over;
//! 4. commits. The old version is dropped afterwards, outside the locks.
//!
//! Readers never see an empty or partial read model: a query resolves `order_summary` to the
//! old table before the commit and to the new one after it (`ALTER TABLE` waits for running
//! queries, and queries wait for it, for the few milliseconds it holds its lock). A crash
//! before the swap leaves the current version untouched; running the blue/green rebuild again
//! resumes the shadow from its checkpoint, and [`PgEngine::abandon_blue_green`] drops it.

use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::error::db_err;
use super::listen::bump;
use super::{quote, PgEngine, PgStore};
use crate::core::error::{Error, Result};
use crate::core::runner::{Mode, ProgressFn};
pub use crate::core::shadow::BlueGreenReport;
use crate::core::shadow::{build_shadow, shadow_catch_up};
use crate::core::source::Source;
use crate::core::store::{RunState, Store};

/// FNV-1a: a stable hash, so that another process finds the same shadow.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shadow schema of `projection` in `schema`, and the one its old version moves to.
fn shadow_schemas(schema: &str, projection: &str) -> (String, String) {
    let prefix: String = schema.chars().take(20).collect();
    let h = fnv(&format!("{schema}/{projection}")) & 0xffff_ffff_ffff;
    let shadow = format!("{prefix}_bg_{h:012x}");
    (shadow.clone(), format!("{shadow}_old"))
}

impl PgEngine {
    /// The shadow store of `name`, built from the live store's connection settings.
    async fn shadow_store(&self, shadow: &str) -> Result<PgStore> {
        let live = self.store();
        let mut builder = PgStore::builder_from_config(live.inner.base_config.clone())
            .schema(shadow)
            .application_name(format!("{}-blue-green", live.inner.application_name))
            .events(false)
            .listen(false)
            .pool_size(4)
            .document_write(live.inner.document_write);
        builder.also_search = Some(live.schema().to_owned());
        builder.connect().await
    }

    /// Rebuilds `name` blue/green: the new version is built in a shadow schema while the
    /// current one keeps serving, then the two are swapped in one transaction and the old
    /// version is dropped. Resumes an interrupted shadow build. Fails fast on the first failing
    /// event (the current version stays untouched).
    pub async fn rebuild_blue_green(
        &self,
        name: &str,
        progress: Option<ProgressFn>,
    ) -> Result<BlueGreenReport> {
        let started = Instant::now();
        let projection = self.projection(name)?.clone();
        if projection.is_partitioned() {
            return Err(Error::Unsupported(format!(
                "projection {name} is partitioned; blue/green rebuilds do not support partitions yet: \
                 use `projectionist rebuild {name}` (in place)"
            )));
        }
        let live = self.store().clone();
        let (shadow_name, old_name) = shadow_schemas(live.schema(), name);
        let resuming = self.blue_green_in_progress(name).await?;
        {
            let client = live.client().await?;
            client
                // Created here, not in the swap transaction: DDL there would give it a
                // transaction id before it takes its lock, and an inline append waiting for
                // older transactions would then wait for it while it waits for the append.
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}",
                    quote(&old_name)
                ))
                .await
                .map_err(db_err("preparing a blue/green rebuild"))?;
        }
        let shadow = Arc::new(self.shadow_store(&shadow_name).await?);
        let record = shadow.prepare(name, 0, projection.body().clone()).await?;
        if resuming && record.state == RunState::Rebuilding {
            info!(projection = name, checkpoint = %record.checkpoint, shadow = %shadow_name, "resuming a blue/green shadow build");
        } else {
            info!(projection = name, shadow = %shadow_name, "starting a blue/green shadow build");
            shadow.reset(name, projection.body().clone()).await?;
        }

        let source = self.source().clone();
        let settings = self.runner_settings();
        let (mut events, _) = build_shadow(&source, &shadow, &projection, settings, progress.clone()).await?;

        // The swap.
        let (s_live, s_shadow, s_old) = (quote(live.schema()), quote(&shadow_name), quote(&old_name));
        let err = db_err("swapping in the rebuilt read model");
        let mut client = live.client().await?;
        let tx = client.transaction().await.map_err(&err)?;
        tx.batch_execute(&format!("LOCK TABLE {s_live}.events IN EXCLUSIVE MODE"))
            .await
            .map_err(&err)?;
        let locked_at = Instant::now();
        tx.execute(
            &format!(
                "INSERT INTO {s_live}.projection_checkpoints (projection, partition) VALUES ($1, 0) \
                 ON CONFLICT DO NOTHING"
            ),
            &[&name],
        )
        .await
        .map_err(&err)?;
        tx.query(
            &format!("SELECT 1 FROM {s_live}.projection_checkpoints WHERE projection = $1 FOR UPDATE"),
            &[&name],
        )
        .await
        .map_err(&err)?;
        // Final catch-up: no append can commit now, so the head is fixed.
        let target = source.head().await?;
        let mode = Mode::ToHead {
            target,
            progress: progress.clone(),
        };
        let report = shadow_catch_up(&source, &shadow, &projection, settings, mode).await?;
        events += report.events;
        let checkpoint = report.checkpoint;
        let tables: Vec<String> = tx
            .query(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1 \
                 AND tablename NOT IN ('projection_checkpoints', 'projection_dead_letters', 'events', \
                   'projection_leases', 'projection_nodes', 'projection_seen_events') \
                 ORDER BY tablename",
                &[&shadow_name],
            )
            .await
            .map_err(&err)?
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<_, _>>()
            .map_err(&err)?;
        for t in &tables {
            let qt = quote(t);
            tx.batch_execute(&format!(
                "ALTER TABLE IF EXISTS {s_live}.{qt} SET SCHEMA {s_old}; \
                 ALTER TABLE {s_shadow}.{qt} SET SCHEMA {s_live};"
            ))
            .await
            .map_err(&err)?;
        }
        tx.execute(
            &format!(
                "UPDATE {s_live}.projection_checkpoints AS m SET txid = s.txid, position = s.position, \
                 applied = s.applied, ignored = s.ignored, errors = s.errors, last_error = s.last_error, \
                 events_per_second = 0, state = 'running', reason = NULL, updated_at = now() \
                 FROM {s_shadow}.projection_checkpoints AS s \
                 WHERE m.projection = $1 AND s.projection = $1 AND m.partition = s.partition"
            ),
            &[&name],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            &format!("DELETE FROM {s_live}.projection_dead_letters WHERE projection = $1"),
            &[&name],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            &format!(
                "INSERT INTO {s_live}.projection_dead_letters (projection, partition, position, txid, stream_id, \
                 stream_version, event_type, event_id, data, metadata, recorded_at, error, attempts, \
                 first_failed_at, last_failed_at) \
                 SELECT projection, partition, position, txid, stream_id, stream_version, event_type, event_id, \
                 data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at \
                 FROM {s_shadow}.projection_dead_letters WHERE projection = $1"
            ),
            &[&name],
        )
        .await
        .map_err(&err)?;
        // A crash after this commit must not let a later run "resume" an emptied shadow.
        tx.execute(
            &format!("DELETE FROM {s_shadow}.projection_checkpoints WHERE projection = $1"),
            &[&name],
        )
        .await
        .map_err(&err)?;
        tx.execute("SELECT pg_notify($1, '')", &[&live.inner.sql.checkpoints_channel])
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        let swap_lock = locked_at.elapsed();
        drop(shadow);
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {s_old} CASCADE; DROP SCHEMA IF EXISTS {s_shadow} CASCADE"
            ))
            .await
            .map_err(db_err("dropping the old read model"))?;
        bump(&live.inner.checkpoints);
        info!(projection = name, ?swap_lock, ?tables, "blue/green swap done");
        Ok(BlueGreenReport {
            projection: name.to_owned(),
            events,
            checkpoint,
            seconds: started.elapsed().as_secs_f64(),
            swap_lock,
            tables,
        })
    }

    /// Drops an interrupted blue/green shadow build of `name`. Returns whether there was one.
    /// The current version was never touched.
    pub async fn abandon_blue_green(&self, name: &str) -> Result<bool> {
        self.projection(name)?;
        let existed = self.blue_green_in_progress(name).await?;
        let (shadow, old) = shadow_schemas(self.store().schema(), name);
        let client = self.store().client().await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE",
                quote(&shadow),
                quote(&old)
            ))
            .await
            .map_err(db_err("abandoning a blue/green rebuild"))?;
        Ok(existed)
    }

    /// Whether a blue/green shadow build of `name` exists (an interrupted or running one).
    pub async fn blue_green_in_progress(&self, name: &str) -> Result<bool> {
        let (shadow, _) = shadow_schemas(self.store().schema(), name);
        let client = self.store().client().await?;
        let err = db_err("looking for a blue/green rebuild");
        let exists: bool = client
            .query_one(
                "SELECT to_regclass(quote_ident($1) || '.projection_checkpoints') IS NOT NULL",
                &[&shadow],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&err)?;
        if !exists {
            return Ok(false);
        }
        let n: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.projection_checkpoints WHERE projection = $1",
                    quote(&shadow)
                ),
                &[&name],
            )
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&err)?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::shadow_schemas;

    #[test]
    fn shadow_names_are_stable_and_valid() {
        let (a, old) = shadow_schemas("public", "order_summary");
        assert_eq!(a, shadow_schemas("public", "order_summary").0);
        assert_ne!(a, shadow_schemas("public", "orders_by_customer").0);
        assert!(super::super::connect::valid_schema(&a), "{a}");
        assert!(old.len() <= 48 && old.starts_with(&a));
    }
}
