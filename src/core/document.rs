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

/// One row as JSON text: its key, and the text of one JSON object of its columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonRow {
    pub key: String,
    pub json: String,
}

/// Rows to upsert as JSON text: one JSON array of objects, each with the columns of the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonRows {
    /// The first row's column names (the key column among them).
    pub columns: Vec<String>,
    /// `[{…}, {…}, …]`: one object per row.
    pub array: String,
}

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

    /// Whether rows go in and out as JSON text ([`load_json`](Self::load_json),
    /// [`upsert_json`](Self::upsert_json)) rather than as maps: a store whose database reads
    /// and writes JSON itself (PostgreSQL's `jsonb`) then spares a map per row each way, and
    /// documents are decoded from, and encoded to, that text directly. Default: `false`.
    fn speaks_json(&self) -> bool {
        false
    }

    /// [`load_rows`](Self::load_rows), each row as its key and JSON text. Default: through
    /// `load_rows` (rows whose key is not a string are left out, as documents do).
    fn load_json(&self, table: &str, key_column: &str, keys: &[&str]) -> Result<Vec<JsonRow>, HandlerError> {
        Ok(self
            .load_rows(table, key_column, keys)?
            .into_iter()
            .filter_map(|row| {
                let key = row.get(key_column)?.as_str()?.to_owned();
                Some(JsonRow {
                    key,
                    json: Value::Object(row).to_string(),
                })
            })
            .collect())
    }

    /// [`upsert_rows`](Self::upsert_rows) with the rows as JSON text. Default: parses them
    /// and calls `upsert_rows`.
    fn upsert_json(&self, table: &str, key_column: &str, rows: JsonRows) -> Result<(), HandlerError> {
        let parsed: Vec<Row> = serde_json::from_str(&rows.array)?;
        self.upsert_rows(table, key_column, &parsed)
    }
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

    fn not_an_object(&self, what: impl fmt::Display) -> HandlerError {
        HandlerError::msg(format!(
            "a document of {} must serialize to an object with its columns, not {what}",
            self.table
        ))
    }

    /// The documents of `order` as one JSON array of objects, each written straight from its
    /// document (no map) with the key column set to its key (added last: in PostgreSQL's
    /// `jsonb`, as in serde_json, the last of two equal keys wins).
    fn to_json_rows(&self, order: &[&str], docs: &HashMap<&str, D>) -> Result<JsonRows, HandlerError> {
        let mut member = Vec::with_capacity(self.key_column.len() + 3);
        serde_json::to_writer(&mut member, &self.key_column)?;
        member.push(b':');
        let mut columns: Vec<String> = Vec::new();
        let mut array: Vec<u8> = Vec::with_capacity(order.len() * 192 + 2);
        array.push(b'[');
        for key in order {
            let Some(doc) = docs.get(key) else { continue };
            if columns.is_empty() {
                columns = match serde_json::to_value(doc)? {
                    Value::Object(m) => m.keys().cloned().collect(),
                    other => return Err(self.not_an_object(other)),
                };
                if !columns.contains(&self.key_column) {
                    columns.push(self.key_column.clone());
                }
            }
            if array.len() > 1 {
                array.push(b',');
            }
            let start = array.len();
            serde_json::to_writer(&mut array, doc)?;
            if array.get(start) != Some(&b'{') || array.last() != Some(&b'}') {
                let text = String::from_utf8_lossy(array.get(start..).unwrap_or_default()).into_owned();
                return Err(self.not_an_object(text));
            }
            array.pop();
            if array.len() > start + 1 {
                array.push(b',');
            }
            array.extend_from_slice(&member);
            serde_json::to_writer(&mut array, key)?;
            array.push(b'}');
        }
        array.push(b']');
        let array = String::from_utf8(array)
            .map_err(|e| HandlerError::msg(format!("a document of {} is not UTF-8: {e}", self.table)))?;
        Ok(JsonRows { columns, array })
    }

    fn to_row(&self, key: &str, doc: &D) -> Result<Row, HandlerError> {
        match serde_json::to_value(doc)? {
            Value::Object(mut row) => {
                row.insert(self.key_column.clone(), Value::String(key.to_owned()));
                Ok(row)
            }
            other => Err(self.not_an_object(other)),
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
        let json = cx.speaks_json();
        let undecodable = |key: &str, e: serde_json::Error| {
            at_batch(HandlerError::msg(format!(
                "stored document {key} of {} does not decode: {e}",
                self.table
            )))
        };
        if json {
            // Straight from each row's JSON text into its document.
            for row in cx
                .load_json(&self.table, &self.key_column, &order)
                .map_err(at_batch)?
            {
                if let Some(slot) = docs.get_mut(row.key.as_str()) {
                    *slot = serde_json::from_str(&row.json).map_err(|e| undecodable(&row.key, e))?;
                }
            }
        } else {
            for row in cx
                .load_rows(&self.table, &self.key_column, &order)
                .map_err(at_batch)?
            {
                let Some(Value::String(key)) = row.get(&self.key_column).cloned() else {
                    continue;
                };
                if let Some(slot) = docs.get_mut(key.as_str()) {
                    *slot = serde_json::from_value(Value::Object(row)).map_err(|e| undecodable(&key, e))?;
                }
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
        if json {
            let rows = self.to_json_rows(&order, &docs).map_err(at_batch)?;
            cx.upsert_json(&self.table, &self.key_column, rows)
                .map_err(at_batch)?;
            return Ok(applied);
        }
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

/// The quoted `columns`, comma-separated (SQLite and PostgreSQL).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn column_list<S: AsRef<str>>(columns: &[S]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(c.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The action of an upsert by `key_column` of rows with `columns` (SQLite and PostgreSQL):
/// `DO UPDATE SET c = excluded.c, …` for every column but the key, or `DO NOTHING`.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn on_conflict_update<S: AsRef<str>>(key_column: &str, columns: &[S]) -> String {
    let updates = columns
        .iter()
        .map(AsRef::as_ref)
        .filter(|c| *c != key_column)
        .map(|c| format!("{0} = excluded.{0}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    if updates.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        format!("DO UPDATE SET {updates}")
    }
}

/// Quotes an SQL identifier (table or column name) for SQLite and PostgreSQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::{Deserialize, Serialize};
    use serde_json::{json, Value};

    use super::Documents;

    #[derive(Default, Serialize, Deserialize)]
    struct WithKey {
        id: String,
        n: i64,
    }

    #[derive(Default, Serialize, Deserialize)]
    struct Empty {}

    #[test]
    fn json_rows_set_the_key_column_last_so_that_it_wins() {
        let docs = Documents::<WithKey>::new("t", "id");
        let stale = WithKey {
            id: "stale".into(),
            n: 2,
        };
        let fresh = WithKey::default();
        let map: HashMap<&str, WithKey> = [("a", stale), ("b\"q", fresh)].into_iter().collect();
        let rows = docs.to_json_rows(&["a", "b\"q"], &map).unwrap();
        assert_eq!(rows.columns, vec!["id".to_owned(), "n".to_owned()]);
        assert_eq!(
            rows.array,
            r#"[{"id":"stale","n":2,"id":"a"},{"id":"","n":0,"id":"b\"q"}]"#
        );
        // serde_json keeps the last of two equal keys, as PostgreSQL's json functions do.
        let parsed: Value = serde_json::from_str(&rows.array).unwrap();
        assert_eq!(parsed, json!([{"id": "a", "n": 2}, {"id": "b\"q", "n": 0}]));
    }

    #[test]
    fn json_rows_of_an_empty_document_hold_only_the_key() {
        let docs = Documents::<Empty>::new("t", "k");
        let map: HashMap<&str, Empty> = [("x", Empty {})].into_iter().collect();
        let rows = docs.to_json_rows(&["x"], &map).unwrap();
        assert_eq!(rows.columns, vec!["k".to_owned()]);
        assert_eq!(rows.array, r#"[{"k":"x"}]"#);
    }

    #[test]
    fn a_document_that_is_not_an_object_is_refused_with_its_table() {
        let docs = Documents::<i64>::new("totals", "k");
        let map: HashMap<&str, i64> = [("x", 3)].into_iter().collect();
        let e = docs.to_json_rows(&["x"], &map).unwrap_err();
        assert!(
            e.to_string()
                .contains("a document of totals must serialize to an object with its columns, not 3"),
            "{e}"
        );
    }
}
