//! Appending events (the [`EventLog`]): optimistic concurrency per stream, retries of `Any`
//! appends that raced, inline projections in the append's transaction, and the bulk import.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::error::{db, db_err};
use super::listen::bump;
use super::{PgProjection, PgStore};
use crate::core::error::{Error, Result};
use crate::core::event::{
    Appended, Checkpoint, ExpectedVersion, ImportProgress, StreamAppend, IMPORT_KNOWN_STREAMS,
};
use crate::core::log::EventLog;

/// Appends per statement during an import.
const IMPORT_CHUNK: usize = 2_000;

impl EventLog for PgStore {
    /// Appends that expect [`ExpectedVersion::Any`] are retried when a concurrent append takes
    /// their version.
    async fn append_many(&self, appends: Vec<StreamAppend>) -> Result<Vec<Appended>> {
        self.append_with_inline(appends, &[]).await
    }

    /// Concurrent appends wait until the import commits (it locks the events table against
    /// writes, not reads).
    async fn import<I>(&self, items: I, progress: Option<ImportProgress>) -> Result<u64>
    where
        I: Iterator<Item = Result<StreamAppend>> + Send + 'static,
    {
        let sql = &self.inner.sql;
        let mut client = self.client_for("importing events").await?;
        let err = db_err("importing events");
        let tx = client.transaction().await.map_err(&err)?;
        tx.batch_execute(&sql.lock_events).await.map_err(&err)?;
        let insert = tx.prepare_cached(&sql.insert).await.map_err(&err)?;
        let mut versions: HashMap<String, i64> = HashMap::new();
        let mut iter = Some(items);
        let mut n = 0u64;
        loop {
            let Some(mut it) = iter.take() else { break };
            let (it, chunk) = tokio::task::spawn_blocking(move || {
                let chunk: Vec<Result<StreamAppend>> = it.by_ref().take(IMPORT_CHUNK).collect();
                (it, chunk)
            })
            .await
            .map_err(|e| Error::task("reading the import", e))?;
            if chunk.is_empty() {
                break;
            }
            iter = Some(it);
            let chunk: Vec<StreamAppend> = chunk.into_iter().collect::<Result<_>>()?;
            for a in &chunk {
                validate(a)?;
            }
            if versions.len() >= IMPORT_KNOWN_STREAMS {
                // Read again from the table (which holds this transaction's rows) when met.
                versions.clear();
            }
            let unknown: HashSet<&str> = chunk
                .iter()
                .map(|a| a.stream_id.as_str())
                .filter(|s| !versions.contains_key(*s))
                .collect();
            load_versions(&tx, &sql.versions, unknown.into_iter(), &mut versions).await?;
            let rows = Rows::build(&chunk, &mut versions).map_err(AppendError::into_error)?;
            tx.execute(&insert, &rows.params()).await.map_err(|e| {
                match e.as_db_error().and_then(|d| d.constraint()) {
                    Some("events_event_id_key") => Error::DuplicateEvent {
                        event_id: e
                            .as_db_error()
                            .and_then(|d| d.detail())
                            .and_then(|d| d.split("=(").nth(1))
                            .and_then(|d| d.split(')').next())
                            .and_then(|id| Uuid::parse_str(id).ok())
                            .unwrap_or_default(),
                    },
                    _ => db("importing events", e),
                }
            })?;
            n += rows.len() as u64;
            if let Some(p) = &progress {
                p(n);
            }
        }
        tx.commit().await.map_err(db_err("committing an import"))?;
        bump(&self.inner.changes);
        Ok(n)
    }
}

impl PgStore {
    /// Appends with the inline projections `inline` applied in the same transaction (see
    /// the `inline` module for why the checkpoint stays gap-free).
    pub(crate) async fn append_with_inline(
        &self,
        appends: Vec<StreamAppend>,
        inline: &[PgProjection],
    ) -> Result<Vec<Appended>> {
        for a in &appends {
            validate(a)?;
        }
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_append(&appends, inline).await {
                Err(AppendError::Race) if attempt < 20 => {
                    tokio::time::sleep(Duration::from_millis(attempt as u64)).await;
                }
                Err(AppendError::Race) => {
                    return Err(Error::Database {
                        op: "appending events",
                        message: "concurrent appends kept taking the same stream versions; try again".into(),
                        retryable: true,
                        cause: None,
                    })
                }
                Err(AppendError::Fail(e)) => return Err(e),
                Ok(out) => {
                    bump(&self.inner.changes);
                    if !inline.is_empty() {
                        bump(&self.inner.checkpoints);
                    }
                    return Ok(out);
                }
            }
        }
    }

    async fn try_append(
        &self,
        appends: &[StreamAppend],
        inline: &[PgProjection],
    ) -> Result<Vec<Appended>, AppendError> {
        let sql = &self.inner.sql;
        let mut client = self.client_for("appending events").await?;
        let err = db_err("appending events");
        let tx = client.transaction().await.map_err(&err)?;
        // Read every stream's version before the first insert, so that this transaction's id
        // (assigned at its first write) is newer than that of any append it has seen: stream
        // order then agrees with (xid, position) order.
        let mut versions = HashMap::new();
        load_versions(
            &tx,
            &sql.versions,
            appends.iter().map(|a| a.stream_id.as_str()),
            &mut versions,
        )
        .await?;
        let read_versions = versions.clone();
        let rows = Rows::build(appends, &mut versions)?;
        let st = tx.prepare_cached(&sql.insert_returning).await.map_err(&err)?;
        let inserted = match tx.query(&st, &rows.params()).await {
            Ok(r) => r,
            Err(e) => {
                drop(tx);
                return Err(self.append_failure(&client, e, appends, &read_versions).await);
            }
        };
        let mut positions: HashMap<(String, i64), (i64, i64)> = HashMap::with_capacity(inserted.len());
        for r in &inserted {
            let stream: String = r.try_get(0).map_err(&err)?;
            let version: i64 = r.try_get(1).map_err(&err)?;
            positions.insert(
                (stream, version),
                (r.try_get(2).map_err(&err)?, r.try_get(3).map_err(&err)?),
            );
        }
        if !inline.is_empty() {
            let xid = positions.values().map(|(_, x)| *x).max().unwrap_or(0);
            self.apply_inline(&tx, xid, inline).await?;
        }
        tx.commit().await.map_err(db_err("committing an append"))?;
        let mut out = Vec::with_capacity(appends.len());
        let mut next: HashMap<&str, i64> = read_versions.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        for a in appends {
            let start = next.get(a.stream_id.as_str()).copied().unwrap_or(0);
            let (mut first, mut last, mut txid) = (i64::MAX, 0, 0);
            for v in start + 1..=start + a.events.len() as i64 {
                if let Some((pos, xid)) = positions.get(&(a.stream_id.clone(), v)) {
                    first = first.min(*pos);
                    last = last.max(*pos);
                    txid = *xid;
                }
            }
            let version = start + a.events.len() as i64;
            next.insert(a.stream_id.as_str(), version);
            out.push(Appended {
                first_position: if first == i64::MAX { last } else { first },
                last_position: last,
                stream_version: version,
                token: Checkpoint { txid, position: last },
            });
        }
        Ok(out)
    }

    /// Turns a failed insert into a conflict (naming the stream), a duplicate id, a race to
    /// retry, or a database error.
    async fn append_failure(
        &self,
        client: &deadpool_postgres::Object,
        e: tokio_postgres::Error,
        appends: &[StreamAppend],
        read: &HashMap<String, i64>,
    ) -> AppendError {
        let Some(dbe) = e.as_db_error() else {
            return AppendError::Fail(db("appending events", e));
        };
        if dbe.code() != &tokio_postgres::error::SqlState::UNIQUE_VIOLATION {
            return AppendError::Fail(db("appending events", e));
        }
        if dbe.constraint() == Some("events_event_id_key") {
            let event_id = dbe
                .detail()
                .and_then(|d| d.split("=(").nth(1))
                .and_then(|d| d.split(')').next())
                .and_then(|id| Uuid::parse_str(id).ok())
                .or_else(|| {
                    appends
                        .iter()
                        .flat_map(|a| a.events.first())
                        .map(|e| e.event_id)
                        .next()
                })
                .unwrap_or_default();
            return AppendError::Fail(Error::DuplicateEvent { event_id });
        }
        // A concurrent append took a version: find which stream moved.
        let mut now = HashMap::new();
        if let Err(e) = load_versions(
            client,
            &self.inner.sql.versions,
            appends.iter().map(|a| a.stream_id.as_str()),
            &mut now,
        )
        .await
        {
            return AppendError::Fail(e);
        }
        for a in appends {
            let before = read.get(&a.stream_id).copied().unwrap_or(0);
            let after = now.get(&a.stream_id).copied().unwrap_or(0);
            if before != after && a.expected != ExpectedVersion::Any {
                return AppendError::Fail(Error::Conflict {
                    stream: a.stream_id.clone(),
                    expected: a.expected,
                    actual: after,
                });
            }
        }
        AppendError::Race
    }
}

enum AppendError {
    /// A concurrent append took a version that an `Any` append wanted: retry.
    Race,
    Fail(Error),
}

impl From<Error> for AppendError {
    fn from(e: Error) -> Self {
        AppendError::Fail(e)
    }
}

impl AppendError {
    fn into_error(self) -> Error {
        match self {
            AppendError::Fail(e) => e,
            AppendError::Race => Error::Internal(
                "a concurrent append took a stream version while the import held the events table's lock"
                    .into(),
            ),
        }
    }
}

fn validate(a: &StreamAppend) -> Result<()> {
    if a.stream_id.is_empty() {
        return Err(Error::InvalidInput("stream_id must not be empty".into()));
    }
    crate::core::event::check_nesting(a)?;
    if a.events.is_empty() {
        return Err(Error::InvalidInput(format!(
            "nothing to append to stream {}",
            a.stream_id
        )));
    }
    Ok(())
}

async fn load_versions<'a>(
    client: &impl GenericClient,
    sql: &str,
    streams: impl Iterator<Item = &'a str>,
    versions: &mut HashMap<String, i64>,
) -> Result<()> {
    let streams: Vec<&str> = streams.collect();
    if streams.is_empty() {
        return Ok(());
    }
    let err = db_err("reading stream versions");
    let st = client.prepare_cached(sql).await.map_err(&err)?;
    for s in &streams {
        versions.entry((*s).to_owned()).or_insert(0);
    }
    for r in client.query(&st, &[&streams]).await.map_err(&err)? {
        let s: String = r.try_get(0).map_err(&err)?;
        let v: Option<i64> = r.try_get(1).map_err(&err)?;
        versions.insert(s, v.unwrap_or(0));
    }
    Ok(())
}

/// The columns of a multi-row insert, as arrays for `unnest`.
#[derive(Default)]
struct Rows {
    stream_ids: Vec<String>,
    versions: Vec<i64>,
    types: Vec<String>,
    ids: Vec<Uuid>,
    data: Vec<String>,
    metadata: Vec<String>,
}

impl Rows {
    /// Checks each append's expected version against `versions` (advancing it) and lays out
    /// the rows.
    fn build(appends: &[StreamAppend], versions: &mut HashMap<String, i64>) -> Result<Rows, AppendError> {
        let mut rows = Rows::default();
        for a in appends {
            let current = versions.get(&a.stream_id).copied().unwrap_or(0);
            if !a.expected.admits(current) {
                return Err(AppendError::Fail(Error::Conflict {
                    stream: a.stream_id.clone(),
                    expected: a.expected,
                    actual: current,
                }));
            }
            let mut v = current;
            for e in &a.events {
                v += 1;
                rows.stream_ids.push(a.stream_id.clone());
                rows.versions.push(v);
                rows.types.push(e.event_type.clone());
                rows.ids.push(e.event_id);
                rows.data.push(e.data_json().to_owned());
                rows.metadata.push(e.metadata_json().to_owned());
            }
            versions.insert(a.stream_id.clone(), v);
        }
        Ok(rows)
    }

    fn len(&self) -> usize {
        self.versions.len()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.stream_ids,
            &self.versions,
            &self.types,
            &self.ids,
            &self.data,
            &self.metadata,
        ]
    }
}
