//! Document projections (fold by key): the fast path for rebuilds.
//!
//! A batch is grouped by key (by default the stream id); the current documents of those keys
//! are loaded with one query, the events are folded into them in memory, and the touched
//! documents are written back with one bulk upsert — all in the batch's transaction, with the
//! checkpoint.
//!
//! A document is a serde type whose fields are the columns of its table: `order_summary` with
//! columns `order_id, customer_name, status, …` is folded as a struct with those fields.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{BatchFailure, HandlerError};
use super::event::{Event, Upcasters};
use super::projection::{Applied, Apply, Prefetch};

/// A document: a row of the read model, as a serde type. `Default` is the state of a key
/// before its first event.
pub trait Document: Serialize + DeserializeOwned + Default + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Default + Send + Sync + 'static> Document for T {}

/// One row as a JSON object: column name → value.
pub type Row = Map<String, Value>;

/// What a store must offer to run document projections: load rows by key and upsert rows,
/// each with one statement, inside the batch's transaction.
pub trait DocumentStorage {
    /// The rows of `table` whose `key_column` is one of `keys`.
    fn load_rows(&self, table: &str, key_column: &str, keys: &[&str]) -> Result<Vec<Row>, HandlerError>;

    /// Inserts or replaces `rows` (all with the same columns) by `key_column`.
    fn upsert_rows(&self, table: &str, key_column: &str, rows: &[Row]) -> Result<(), HandlerError>;

    /// Deletes every row of `table` (the default reset).
    fn clear_table(&self, table: &str) -> Result<(), HandlerError>;

    /// Runs `sql` (for setup).
    fn execute_script(&self, sql: &str) -> Result<(), HandlerError>;
}

type FoldFn<D> = dyn Fn(&mut D, &Event, &Upcasters) -> Result<(), HandlerError> + Send + Sync;
type KeyFn = dyn Fn(&Event) -> Option<String> + Send + Sync;

/// A fold-by-key projection of documents `D` into `table`, keyed by `key_column`.
pub struct Documents<D: Document> {
    table: String,
    key_column: String,
    setup: Option<String>,
    key: Box<KeyFn>,
    folds: HashMap<String, Box<FoldFn<D>>>,
    upcasters: Upcasters,
    _doc: PhantomData<fn() -> D>,
}

impl<D: Document> fmt::Debug for Documents<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.folds.keys().collect();
        types.sort();
        f.debug_struct("Documents")
            .field("table", &self.table)
            .field("key_column", &self.key_column)
            .field("types", &types)
            .finish()
    }
}

impl<D: Document> Documents<D> {
    /// Documents in `table`, keyed by `key_column`, one per stream (the key is the stream id).
    pub fn new(table: impl Into<String>, key_column: impl Into<String>) -> Self {
        Documents {
            table: table.into(),
            key_column: key_column.into(),
            setup: None,
            key: Box::new(|e: &Event| Some(e.stream_id.clone())),
            folds: HashMap::new(),
            upcasters: Upcasters::default(),
            _doc: PhantomData,
        }
    }

    /// SQL that creates the table (idempotently), run at setup.
    pub fn setup_sql(mut self, sql: impl Into<String>) -> Self {
        self.setup = Some(sql.into());
        self
    }

    /// Keys documents by something other than the stream id. Events for which `key` returns
    /// `None` are ignored.
    pub fn key_by<F>(mut self, key: F) -> Self
    where
        F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
    {
        self.key = Box::new(key);
        self
    }

    /// Folds events of `event_type`, decoded as `T`, into the document of their key.
    pub fn on<T, F>(mut self, event_type: impl Into<String>, fold: F) -> Self
    where
        T: DeserializeOwned + 'static,
        F: Fn(&mut D, &Event, T) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.folds.insert(
            event_type.into(),
            Box::new(move |doc: &mut D, ev: &Event, up: &Upcasters| {
                let payload: T = up.decode(ev)?;
                fold(doc, ev, payload)
            }),
        );
        self
    }

    /// Transforms the raw payload of `event_type` before decoding.
    pub fn upcast<F>(mut self, event_type: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    {
        self.upcasters.add(event_type, f);
        self
    }

    /// Delivers events recorded as `old` to the fold of `new`.
    pub fn rename(mut self, old: impl Into<String>, new: impl Into<String>) -> Self {
        self.upcasters.rename(old, new);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn key_column(&self) -> &str {
        &self.key_column
    }

    fn to_row(&self, key: &str, doc: &D) -> Result<Row, HandlerError> {
        match serde_json::to_value(doc)? {
            Value::Object(mut row) => {
                row.insert(self.key_column.clone(), Value::String(key.to_owned()));
                Ok(row)
            }
            other => Err(HandlerError::msg(format!(
                "a document of {} must serialize to an object with its columns, not {other}",
                self.table
            ))),
        }
    }
}

impl<D: Document, C: DocumentStorage + ?Sized + 'static> Apply<C> for Documents<D> {
    fn event_types(&self) -> Option<Vec<String>> {
        let mut types: Vec<String> = self
            .folds
            .keys()
            .flat_map(|t| self.upcasters.aliases_of(t).map(str::to_owned))
            .collect();
        types.sort();
        types.dedup();
        Some(types)
    }

    fn setup(&self, cx: &C) -> Result<(), HandlerError> {
        match &self.setup {
            Some(sql) => cx.execute_script(sql),
            None => Ok(()),
        }
    }

    fn reset(&self, cx: &C) -> Result<(), HandlerError> {
        cx.clear_table(&self.table)
    }

    fn prefetch(&self, events: &[Event]) -> Vec<Prefetch> {
        let mut keys: Vec<String> = events
            .iter()
            .filter(|ev| self.folds.contains_key(self.upcasters.resolve(&ev.event_type)))
            .filter_map(|ev| (self.key)(ev))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        vec![Prefetch {
            table: self.table.clone(),
            key_column: self.key_column.clone(),
            keys,
        }]
    }

    fn batch_wide(&self) -> bool {
        true
    }

    /// Documents read only what they prefetch.
    fn reads(&self) -> bool {
        false
    }

    fn apply(&self, cx: &C, events: &[Event]) -> Result<Applied, BatchFailure> {
        let at_batch = |error: HandlerError| BatchFailure { index: 0, error };
        // 1. Group by key, keeping the batch order within each key.
        let mut keyed: Vec<(usize, String)> = Vec::with_capacity(events.len());
        let mut applied = Applied::default();
        for (i, ev) in events.iter().enumerate() {
            let handled = self.folds.contains_key(self.upcasters.resolve(&ev.event_type));
            match (handled, (self.key)(ev)) {
                (true, Some(k)) => keyed.push((i, k)),
                _ => applied.ignored += 1,
            }
        }
        if keyed.is_empty() {
            return Ok(applied);
        }
        // 2. Load the current documents with one query.
        let mut order: Vec<&str> = Vec::new();
        let mut docs: HashMap<&str, D> = HashMap::new();
        for (_, k) in &keyed {
            if !docs.contains_key(k.as_str()) {
                docs.insert(k.as_str(), D::default());
                order.push(k.as_str());
            }
        }
        for row in cx
            .load_rows(&self.table, &self.key_column, &order)
            .map_err(at_batch)?
        {
            let Some(Value::String(key)) = row.get(&self.key_column).cloned() else {
                continue;
            };
            if let Some(slot) = docs.get_mut(key.as_str()) {
                *slot = serde_json::from_value(Value::Object(row)).map_err(|e| {
                    at_batch(HandlerError::msg(format!(
                        "stored document {key} of {} does not decode: {e}",
                        self.table
                    )))
                })?;
            }
        }
        // 3. Fold in memory, in batch order.
        for (i, key) in &keyed {
            let ev = &events[*i];
            let fold = self.folds.get(self.upcasters.resolve(&ev.event_type));
            if let (Some(fold), Some(doc)) = (fold, docs.get_mut(key.as_str())) {
                fold(doc, ev, &self.upcasters).map_err(|error| BatchFailure { index: *i, error })?;
                applied.handled += 1;
            }
        }
        // 4. Write back with one bulk upsert.
        let rows = order
            .iter()
            .filter_map(|k| docs.get(k).map(|d| self.to_row(k, d)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at_batch)?;
        cx.upsert_rows(&self.table, &self.key_column, &rows)
            .map_err(at_batch)?;
        Ok(applied)
    }
}

/// Quotes an SQL identifier (table or column name) for SQLite and PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
