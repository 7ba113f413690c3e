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
//! resumes the shadow from its checkpoint, and `abandon_blue_green` drops it. The build itself is the
//! core's ([`ShadowStore`]).

use std::future::Future;
use std::time::Instant;

use super::error::db_err;
use super::listen::bump;
use super::{quote, PgStore};
use crate::core::error::Result;
use crate::core::shadow::{ShadowStore, Swapped};

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

impl ShadowStore for PgStore {
    /// A store on the shadow schema, built from this store's connection settings; the schema
    /// the old version moves to is created empty first.
    async fn open_shadow(&self, projection: &str) -> Result<(Self, bool)> {
        let (shadow, old) = shadow_schemas(self.schema(), projection);
        let existed = self.shadow_exists(projection).await?;
        self.client()
            .await?
            // Created here, not in the swap transaction: DDL there would give it a transaction
            // id before it takes its lock, and an inline append waiting for older transactions
            // would then wait for it while it waits for the append.
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0}",
                quote(&old)
            ))
            .await
            .map_err(db_err("preparing a blue/green rebuild"))?;
        let mut builder = PgStore::builder_from_config(self.inner.base_config.clone())
            .schema(&shadow)
            .application_name(format!("{}-blue-green", self.inner.application_name))
            .events(false)
            .listen(false)
            .pool_size(4)
            .document_write(self.inner.document_write)
            .server_batches(self.inner.server_batches);
        builder.also_search = Some(self.schema().to_owned());
        Ok((builder.connect().await?, existed))
    }

    async fn swap_in<T, F>(&self, projection: &str, catch_up: F) -> Result<(T, Swapped)>
    where
        T: Send,
        F: Future<Output = Result<T>> + Send,
    {
        let (shadow_name, old_name) = shadow_schemas(self.schema(), projection);
        let (s_live, s_shadow, s_old) = (quote(self.schema()), quote(&shadow_name), quote(&old_name));
        let err = db_err("swapping in the rebuilt read model");
        let mut client = self.client().await?;
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
            &[&projection],
        )
        .await
        .map_err(&err)?;
        tx.query(
            &format!("SELECT 1 FROM {s_live}.projection_checkpoints WHERE projection = $1 FOR UPDATE"),
            &[&projection],
        )
        .await
        .map_err(&err)?;
        // Final catch-up: no append can commit now, so the head is fixed.
        let caught_up = catch_up.await?;
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
            &[&projection],
        )
        .await
        .map_err(&err)?;
        tx.execute(
            &format!("DELETE FROM {s_live}.projection_dead_letters WHERE projection = $1"),
            &[&projection],
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
            &[&projection],
        )
        .await
        .map_err(&err)?;
        // A crash after this commit must not let a later run "resume" an emptied shadow.
        tx.execute(
            &format!("DELETE FROM {s_shadow}.projection_checkpoints WHERE projection = $1"),
            &[&projection],
        )
        .await
        .map_err(&err)?;
        tx.execute("SELECT pg_notify($1, '')", &[&self.inner.sql.checkpoints_channel])
            .await
            .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        let swap_lock = locked_at.elapsed();
        bump(&self.inner.checkpoints);
        Ok((caught_up, Swapped { swap_lock, tables }))
    }

    /// Drops the shadow schema and the one the old version moved to.
    async fn drop_shadow(&self, projection: &str) -> Result<bool> {
        let existed = self.shadow_exists(projection).await?;
        let (shadow, old) = shadow_schemas(self.schema(), projection);
        self.client()
            .await?
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE",
                quote(&old),
                quote(&shadow)
            ))
            .await
            .map_err(db_err("dropping a blue/green shadow"))?;
        Ok(existed)
    }

    /// Whether the shadow schema holds the projection's checkpoint.
    async fn shadow_exists(&self, projection: &str) -> Result<bool> {
        let (shadow, _) = shadow_schemas(self.schema(), projection);
        let client = self.client().await?;
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
                &[&projection],
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
