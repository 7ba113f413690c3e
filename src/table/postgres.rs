//! A foreign PostgreSQL table as the event source, read gap-free without an `xid` column (see
//! [`super::gaps`] for the argument).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use super::decode::{check_sample, Decoder, Raw, RawRow};
use super::gaps::Gaps;
use super::mapping::{quote, TableMapping};
use crate::core::error::{Error, Result};
use crate::core::event::Checkpoint;
use crate::core::source::{Batch, Filter, Lag, PartitionSlice, Source};
use crate::postgres::error::db_err;
use crate::postgres::PgStore;

/// How many rows `lag` counts before it estimates from positions instead.
const LAG_COUNT_CAP: i64 = 100_000;

/// Column types each role accepts, by PostgreSQL type name.
const INTEGERS: &[&str] = &["int2", "int4", "int8"];
const TEXTS: &[&str] = &["text", "varchar", "bpchar", "name"];
const PAYLOADS: &[&str] = &["jsonb", "json", "text", "varchar", "bytea"];

/// A foreign PostgreSQL table of events. Cheap to clone.
#[derive(Clone)]
pub struct PgTableSource {
    inner: Arc<Inner>,
}

struct Inner {
    db: PgStore,
    mapping: TableMapping,
    decoder: Decoder,
    sql: Queries,
    gaps: Gaps,
    undecodable: AtomicU64,
    changes: watch::Sender<u64>,
}

struct Queries {
    read: String,
    head: String,
    lag: String,
    lag_partition: String,
    oldest: Option<String>,
    in_flight: &'static str,
    still_running: &'static str,
}

/// The transactions running now (their virtual transaction ids) and the prepared ones: the
/// candidates of a gap just seen.
const IN_FLIGHT: &str = "SELECT coalesce(array_agg(c), '{}') FROM ( \
    SELECT virtualxid::text AS c FROM pg_locks \
     WHERE locktype = 'virtualxid' AND granted AND pid IS DISTINCT FROM pg_backend_pid() \
    UNION ALL SELECT '2pc:' || gid || '@' || prepared::text FROM pg_prepared_xacts) t";

/// Which of the candidates `$1` still run.
const STILL_RUNNING: &str = "SELECT coalesce(array_agg(c), '{}') FROM ( \
    SELECT virtualxid::text AS c FROM pg_locks \
     WHERE locktype = 'virtualxid' AND virtualxid::text = ANY($1::text[]) \
    UNION ALL SELECT '2pc:' || gid || '@' || prepared::text FROM pg_prepared_xacts \
     WHERE '2pc:' || gid || '@' || prepared::text = ANY($1::text[])) t";

impl PgTableSource {
    /// Connects to the table's database, checks the mapping against the table (columns, their
    /// types, the position sequence, a sample event) and returns the source. Every problem is
    /// a [`Error::Config`] (or [`Error::Unsupported`]) naming the column.
    pub async fn open(mapping: TableMapping) -> Result<PgTableSource> {
        let db = PgStore::builder(&mapping.connect)?
            .events(false)
            .read_models(false)
            .listen(false)
            .pool_size(4)
            .application_name("projectionist-table-source")
            .connect()
            .await?;
        let types = column_types(&db, &mapping).await?;
        let expr = |role: &str, column: &str| -> String {
            let c = quote(column);
            match (role, types.get(column).map(String::as_str)) {
                ("data" | "metadata", Some("bytea")) => c,
                ("recorded_at", Some("timestamp")) => format!("({c} AT TIME ZONE 'UTC')"),
                ("recorded_at", _) => c,
                ("position" | "stream_version", _) => format!("{c}::bigint"),
                _ => format!("{c}::text"),
            }
        };
        let m = &mapping;
        let table = quote(&m.table);
        let pos = quote(&m.position);
        let opt = |role: &str, column: &Option<String>, null: &str| {
            column.as_ref().map_or_else(|| null.to_owned(), |c| expr(role, c))
        };
        let hash = format!(
            "(('x' || left(md5({}), 8))::bit(32)::bigint)",
            expr("stream_id", &m.stream_id)
        );
        // Rows of other partitions come without their payload: the guard needs every position,
        // the projection only its own rows.
        let read = format!(
            "SELECT q.p, q.s, q.v, q.t, CASE WHEN q.a THEN q.d END, CASE WHEN q.a THEN q.m END, q.e, q.r, q.a \
             FROM (SELECT {p} AS p, {s} AS s, {v} AS v, {t} AS t, {d} AS d, {md} AS m, {e} AS e, {r} AS r, \
                          ($3::bigint IS NULL OR {hash} % $3 = $4) AS a \
                   FROM {table} WHERE {pos} > $1 ORDER BY {pos} LIMIT $2) q ORDER BY q.p",
            p = expr("position", &m.position),
            s = expr("stream_id", &m.stream_id),
            v = expr("stream_version", &m.stream_version),
            t = expr("event_type", &m.event_type),
            d = expr("data", &m.data),
            md = opt("metadata", &m.metadata, "NULL::text"),
            e = opt("event_id", &m.event_id, "NULL::text"),
            r = opt("recorded_at", &m.recorded_at, "NULL::timestamptz"),
        );
        let sql = Queries {
            read,
            head: format!("SELECT max({pos})::bigint FROM {table}"),
            lag: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {pos} > $1 LIMIT {LAG_COUNT_CAP}) c"
            ),
            lag_partition: format!(
                "SELECT count(*) FROM (SELECT 1 FROM {table} WHERE {pos} > $1 AND {hash} % $2 = $3 LIMIT {LAG_COUNT_CAP}) c"
            ),
            oldest: m.recorded_at.as_ref().map(|r| {
                format!(
                    "SELECT {} FROM {table} WHERE {pos} > $1 ORDER BY {pos} LIMIT 1",
                    expr("recorded_at", r)
                )
            }),
            in_flight: IN_FLIGHT,
            still_running: STILL_RUNNING,
        };
        let decoder = Decoder::new(&mapping)?;
        let source = PgTableSource {
            inner: Arc::new(Inner {
                db,
                decoder,
                sql,
                gaps: Gaps::default(),
                undecodable: AtomicU64::new(0),
                changes: watch::channel(0).0,
                mapping,
            }),
        };
        source.check_sequence().await?;
        source.check_sample().await?;
        Ok(source)
    }

    /// The mapping this source reads with.
    pub fn mapping(&self) -> &TableMapping {
        &self.inner.mapping
    }

    /// Rows whose payload could not be decoded, passed over (each logged at WARN).
    pub fn undecodable(&self) -> u64 {
        self.inner.undecodable.load(Ordering::Relaxed)
    }

    /// Positions the gap guard passed as holes for ever (rolled back, or never used).
    pub fn holes(&self) -> u64 {
        self.inner.gaps.holes()
    }

    /// The guard's argument needs positions handed out one at a time, in real time order.
    async fn check_sequence(&self) -> Result<()> {
        let m = &self.inner.mapping;
        if !m.gap_guard {
            tracing::warn!(
                table = %m.table,
                "the gap guard is off: a reader may pass an event whose transaction commits after a later one's"
            );
            return Ok(());
        }
        let client = self.inner.db.client().await?;
        let err = db_err("checking the position sequence");
        let row = client
            .query_opt(
                "SELECT s.seqrelid::regclass::text, s.seqcache FROM pg_sequence s \
                 WHERE s.seqrelid = pg_get_serial_sequence($1, $2)::regclass",
                &[&m.table, &m.position],
            )
            .await
            .map_err(&err)?;
        let Some(row) = row else {
            return Err(Error::Config(format!(
                "{}.{} is not filled by a sequence of its own (serial or identity): the gap guard needs \
                 positions from a sequence with CACHE 1 to prove that no event is skipped. Map a serial \
                 or identity column as `position`, or, only if every writer commits in position order \
                 (a single writer, or a table lock), set gap_guard=off",
                m.table, m.position
            )));
        };
        let sequence: String = row.try_get(0).map_err(&err)?;
        let cache: i64 = row.try_get(1).map_err(&err)?;
        if cache > 1 {
            return Err(Error::Unsupported(format!(
                "the sequence {sequence} behind {}.{} has CACHE {cache}: each session takes blocks of \
                 {cache} positions, so a transaction that starts later can commit a lower one and the gap \
                 guard cannot prove that no event is skipped. Run `ALTER SEQUENCE {sequence} CACHE 1`",
                m.table, m.position
            )));
        }
        Ok(())
    }

    /// The first event must decode: a wrong data column or a missing compression setting is a
    /// setup error, not a log full of skipped events.
    async fn check_sample(&self) -> Result<()> {
        let client = self.inner.db.client().await?;
        let rows = client
            .query(
                &self.inner.sql.read,
                &[&i64::MIN, &1i64, &None::<i64>, &None::<i64>],
            )
            .await
            .map_err(db_err("reading a sample event"))?;
        if let Some(row) = rows.first() {
            let raw = raw_row(row).map_err(db_err("reading a sample event"))?;
            check_sample(&self.inner.decoder, &self.inner.mapping, raw)?;
        }
        Ok(())
    }

    /// Checks the gaps under watch: which have every candidate ended.
    async fn settle(&self, client: &tokio_postgres::Client, after: i64) -> Result<()> {
        let pending = self.inner.gaps.pending(after);
        if pending.is_empty() {
            return Ok(());
        }
        let candidates: Vec<String> = pending.into_iter().flat_map(|w| w.candidates).collect();
        let running: Vec<String> = client
            .query_one(self.inner.sql.still_running, &[&candidates])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_err("checking the transactions of a position gap"))?;
        self.inner.gaps.checked(&running);
        Ok(())
    }
}

/// The types of the table's columns, with each mapped column checked.
async fn column_types(db: &PgStore, m: &TableMapping) -> Result<std::collections::HashMap<String, String>> {
    let client = db.client().await?;
    let err = db_err("checking the mapped table");
    let exists: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&m.table])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(&err)?;
    if exists.is_none() {
        return Err(Error::Config(format!(
            "table {} does not exist in {} (or this user cannot see it): check `table` (schema.table)",
            m.table,
            m.describe()
        )));
    }
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[&m.table],
        )
        .await
        .map_err(&err)?;
    let mut types = std::collections::HashMap::new();
    for r in rows {
        types.insert(
            r.try_get::<_, String>(0).map_err(&err)?,
            r.try_get::<_, String>(1).map_err(&err)?,
        );
    }
    for (role, column) in m.columns() {
        let Some(ty) = types.get(column) else {
            let mut names: Vec<&String> = types.keys().collect();
            names.sort();
            return Err(Error::Config(format!(
                "{}: no column `{column}` (mapped as {role}); its columns are {}",
                m.table,
                names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        };
        let allowed: Vec<&str> = match role {
            "position" | "stream_version" => INTEGERS.to_vec(),
            "stream_id" => [TEXTS, INTEGERS, &["uuid"]].concat(),
            "event_type" => TEXTS.to_vec(),
            "data" | "metadata" => PAYLOADS.to_vec(),
            "event_id" => [TEXTS, &["uuid"]].concat(),
            _ => vec!["timestamptz", "timestamp"],
        };
        if !allowed.contains(&ty.as_str()) {
            return Err(Error::Config(format!(
                "{}.{column} (mapped as {role}) has type {ty}; {role} needs one of: {}",
                m.table,
                allowed.join(", ")
            )));
        }
    }
    Ok(types)
}

fn raw(row: &Row, i: usize) -> std::result::Result<Raw, tokio_postgres::Error> {
    Ok(if row.columns()[i].type_() == &Type::BYTEA {
        row.try_get::<_, Option<Vec<u8>>>(i)?
            .map_or(Raw::Null, Raw::Bytes)
    } else {
        row.try_get::<_, Option<String>>(i)?.map_or(Raw::Null, Raw::Text)
    })
}

fn raw_row(row: &Row) -> std::result::Result<RawRow, tokio_postgres::Error> {
    Ok(RawRow {
        position: row.try_get(0)?,
        stream_id: row.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        stream_version: row.try_get::<_, Option<i64>>(2)?.unwrap_or_default(),
        event_type: row.try_get::<_, Option<String>>(3)?.unwrap_or_default(),
        data: raw(row, 4)?,
        metadata: raw(row, 5)?,
        event_id: row.try_get(6)?,
        recorded_at: row.try_get(7)?,
    })
}

impl Source for PgTableSource {
    async fn read(&self, after: Checkpoint, limit: usize, filter: &Filter) -> Result<Batch> {
        let inner = &self.inner;
        let guard = inner.mapping.gap_guard;
        let client = inner.db.client().await?;
        let err = db_err("reading the events table");
        if guard {
            self.settle(&client, after.position).await?;
        }
        // Verdicts reached before this point hold for the snapshot of the read below.
        let epoch = inner.gaps.epoch();
        let (count, index) = match filter.partition {
            Some(PartitionSlice { index, count }) => (Some(i64::from(count)), Some(i64::from(index))),
            None => (None, None),
        };
        let st = client.prepare_cached(&inner.sql.read).await.map_err(&err)?;
        let rows = client
            .query(&st, &[&after.position, &(limit.max(1) as i64), &count, &index])
            .await
            .map_err(&err)?;
        let mut batch = Batch {
            events: Vec::with_capacity(rows.len()),
            scanned_to: after,
            ignored: 0,
            deduplicate: false,
        };
        let mut expected = after.position.saturating_add(1);
        for row in &rows {
            let position: i64 = row.try_get(0).map_err(&err)?;
            if guard && position > expected {
                let (start, end) = (expected, position - 1);
                if !inner.gaps.settled(start, end, epoch) {
                    if !inner.gaps.watched(start, end) {
                        let candidates: Vec<String> = client
                            .query_one(inner.sql.in_flight, &[])
                            .await
                            .and_then(|r| r.try_get(0))
                            .map_err(db_err("listing the transactions of a position gap"))?;
                        inner.gaps.watch(start, end, candidates);
                    }
                    // Runners poll again; the gap settles once its transactions end.
                    break;
                }
                inner.gaps.passed((end - start + 1) as u64);
            }
            expected = position.saturating_add(1);
            batch.scanned_to = Checkpoint::at(position);
            let partition_admits: bool = row.try_get(8).map_err(&err)?;
            let event_type: Option<String> = row.try_get(3).map_err(&err)?;
            let admitted = partition_admits
                && filter.admits(&inner.decoder.event_type(event_type.as_deref().unwrap_or("")));
            if !admitted {
                batch.ignored += 1;
                continue;
            }
            let raw = raw_row(row).map_err(&err)?;
            inner
                .decoder
                .push(&mut batch, raw, &inner.mapping.table, &inner.undecodable);
        }
        Ok(batch)
    }

    async fn head(&self) -> Result<Checkpoint> {
        let client = self.inner.db.client().await?;
        let st = client
            .prepare_cached(&self.inner.sql.head)
            .await
            .map_err(db_err("reading the head"))?;
        let head: Option<i64> = client
            .query_one(&st, &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db_err("reading the head"))?;
        Ok(head.map_or(Checkpoint::START, Checkpoint::at))
    }

    async fn lag(&self, after: Checkpoint) -> Result<Lag> {
        self.count_lag(after, &self.inner.sql.lag, &[]).await
    }

    async fn partition_lag(&self, after: Checkpoint, filter: &Filter) -> Result<Lag> {
        let Some(partition) = filter.partition else {
            return self.lag(after).await;
        };
        let (count, index) = (i64::from(partition.count), i64::from(partition.index));
        self.count_lag(after, &self.inner.sql.lag_partition, &[&count, &index])
            .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        // No trigger is put on a foreign table: runners find new events by polling.
        self.inner.changes.subscribe()
    }

    fn supports_partitions(&self) -> bool {
        true
    }

    fn reads_beside(&self) -> bool {
        true
    }
}

impl PgTableSource {
    async fn count_lag(
        &self,
        after: Checkpoint,
        sql: &str,
        more: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Lag> {
        let client = self.inner.db.client().await?;
        let err = db_err("measuring lag");
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&after.position];
        params.extend_from_slice(more);
        let counted: i64 = client
            .query_one(sql, &params)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(&err)?;
        let events = if counted >= LAG_COUNT_CAP {
            let head = Source::head(self).await?.position;
            counted.max(head - after.position)
        } else {
            counted
        };
        let oldest: Option<DateTime<Utc>> = match &self.inner.sql.oldest {
            Some(q) => client
                .query_opt(q, &[&after.position])
                .await
                .map_err(&err)?
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(&err)?,
            None => None,
        };
        Ok(Lag {
            events: events.max(0) as u64,
            oldest,
        })
    }
}
