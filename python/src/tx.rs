//! `tx`: the batch's transaction as a handler sees it. It executes statements and queries rows
//! through the store's `SqlTx`, with `:name` parameters bound from a dict (the same style as
//! the declarative projections). It is valid only during the call that received it: afterwards,
//! or from another thread, every method raises `TxClosedError`.

use std::collections::HashMap;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use projectionist::declarative::Statement;
use projectionist::{Dialect, HandlerError, SqlTx, SqlValue};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{InvalidInputError, StatementError, TxClosedError};
use crate::values::{from_json, to_sql};

/// A parsed statement, with its SQLite rendering (PostgreSQL's placeholders carry a cast
/// chosen from each value, so they are rendered per call).
pub struct Parsed {
    statement: Statement<String>,
    sqlite: String,
}

/// Parsed statements by SQL text, shared by a projection's calls: a handler's SQL is parsed
/// once.
#[derive(Default)]
pub struct Statements(Mutex<HashMap<String, Arc<Parsed>>>);

impl Statements {
    /// How many distinct statements handlers have run so far.
    pub fn count(&self) -> usize {
        self.0.lock().map_or(0, |c| c.len())
    }

    fn get(&self, sql: &str) -> PyResult<Arc<Parsed>> {
        let mut cache = self
            .0
            .lock()
            .map_err(|_| crate::errors::InternalError::new_err("the statement cache's lock is poisoned"))?;
        if let Some(p) = cache.get(sql) {
            return Ok(p.clone());
        }
        let statement = Statement::parse_named(sql)
            .map_err(|e| InvalidInputError::new_err(format!("invalid SQL: {e}\n    {}", sql.trim())))?;
        let parsed = Arc::new(Parsed {
            sqlite: statement.render_sqlite(),
            statement,
        });
        cache.insert(sql.to_owned(), parsed.clone());
        Ok(parsed)
    }
}

/// The context lent to a `tx`, and the thread that lent it.
struct Lending {
    cx: NonNull<dyn SqlTx>,
    thread: ThreadId,
}

// SAFETY: the pointer is dereferenced only on `thread`, the thread that lent it, checked before
// each use (`Tx::with_cx`); other threads only see that it is there, or clear it.
unsafe impl Send for Lending {}
// SAFETY: as above.
unsafe impl Sync for Lending {}

/// The transaction of the current call. See the module docs.
#[pyclass(frozen, module = "projectionist._projectionist")]
pub struct Tx {
    /// The context, while the call that received this `tx` runs; `None` afterwards.
    lent: Mutex<Option<Lending>>,
    statements: Arc<Statements>,
    dialect: Dialect,
}

/// Clears a [`Tx`] when dropped, so that it is unusable once the call that lent it returns,
/// by any path (a Python exception, a panic).
pub struct Lent<'py, 'cx> {
    tx: Bound<'py, Tx>,
    _cx: std::marker::PhantomData<&'cx dyn SqlTx>,
}

impl<'py, 'cx> Lent<'py, 'cx> {
    /// Lends `cx` to Python as a `tx`, for as long as the returned guard lives.
    ///
    /// The `tx` holds a pointer to `cx` with its lifetime erased. It is sound because: the
    /// guard borrows `cx` for its own lifetime, so `cx` outlives every use made while the
    /// guard lives; the guard clears the pointer when dropped (under the lock that every use
    /// holds), and every method checks it first; and every method checks that it runs on the
    /// thread that lent it, so the pointer is only dereferenced there, during the lending call,
    /// as `SqlTx` contexts (a `rusqlite::Connection`, PostgreSQL's batch) require.
    pub fn new(py: Python<'py>, cx: &'cx dyn SqlTx, statements: Arc<Statements>) -> PyResult<Self> {
        let ptr: NonNull<dyn SqlTx + 'cx> = NonNull::from(cx);
        // SAFETY: only the lifetime changes (same pointee type and metadata); see above for
        // why the pointer is never used after `'cx` ends.
        let ptr: NonNull<dyn SqlTx + 'static> = unsafe { std::mem::transmute(ptr) };
        let tx = Bound::new(
            py,
            Tx {
                lent: Mutex::new(Some(Lending {
                    cx: ptr,
                    thread: std::thread::current().id(),
                })),
                statements,
                dialect: cx.dialect(),
            },
        )?;
        Ok(Lent {
            tx,
            _cx: std::marker::PhantomData,
        })
    }

    pub fn tx(&self) -> &Bound<'py, Tx> {
        &self.tx
    }
}

impl Drop for Lent<'_, '_> {
    fn drop(&mut self) {
        let mut lent = match self.tx.get().lent.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        *lent = None;
    }
}

impl Tx {
    fn with_cx<T>(&self, f: impl FnOnce(&dyn SqlTx) -> PyResult<T>) -> PyResult<T> {
        let lent = self
            .lent
            .lock()
            .map_err(|_| TxClosedError::new_err("this tx is unusable: a call through it panicked"))?;
        match &*lent {
            // SAFETY: set only while the lending call runs, and used only on its thread
            // (see `Lent::new`); the lock keeps the guard from clearing it meanwhile.
            Some(l) if l.thread == std::thread::current().id() => f(unsafe { l.cx.as_ref() }),
            Some(_) => Err(TxClosedError::new_err(
                "a tx can only be used on the thread that runs the handler it was given to",
            )),
            None => Err(TxClosedError::new_err(
                "this tx belongs to a handler call that has returned: a tx is valid only during the call \
                 that received it (keep no reference to it)",
            )),
        }
    }

    /// The SQL for this store, and its values in placeholder order.
    fn bind(
        &self,
        sql: &str,
        params: Option<&Bound<'_, PyDict>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<(String, Vec<SqlValue<'static>>)> {
        let parsed = self.statements.get(sql)?;
        let names = parsed.statement.params();
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            let v = match params.map(|p| p.get_item(name)).transpose()?.flatten() {
                Some(v) => v,
                None => kwargs
                    .map(|k| k.get_item(name))
                    .transpose()?
                    .flatten()
                    .ok_or_else(|| {
                        InvalidInputError::new_err(format!(
                            "the statement uses :{name} but no value named {name:?} was given\n    {}",
                            sql.trim()
                        ))
                    })?,
            };
            values.push(to_sql(&v)?);
        }
        let sql = match self.dialect {
            Dialect::Sqlite => parsed.sqlite.clone(),
            Dialect::Postgres => parsed.statement.render(|n| {
                values.get(n - 1).map_or_else(
                    || self.dialect.plain_placeholder(n),
                    |v| self.dialect.placeholder(n, v),
                )
            }),
        };
        Ok((sql, values))
    }
}

fn statement_error(e: HandlerError) -> PyErr {
    StatementError::new_err(e.to_string())
}

#[pymethods]
impl Tx {
    /// `"sqlite"` or `"postgres"`.
    #[getter]
    fn dialect(&self) -> String {
        self.dialect.to_string()
    }

    /// Runs one statement, with `:name` parameters bound from `params` (and keyword arguments).
    /// On PostgreSQL it is queued and runs before the next query or at the end of the batch.
    #[pyo3(signature = (sql, params = None, **kwargs))]
    fn execute(
        &self,
        sql: &str,
        params: Option<&Bound<'_, PyDict>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let (sql, values) = self.bind(sql, params, kwargs)?;
        self.with_cx(|cx| cx.execute(&sql, &values).map_err(statement_error))
    }

    /// Runs one statement that returns rows, and returns them as dicts (column -> value).
    /// Everything executed before it in this transaction is visible to it.
    #[pyo3(signature = (sql, params = None, **kwargs))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        sql: &str,
        params: Option<&Bound<'py, PyDict>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let (sql, values) = self.bind(sql, params, kwargs)?;
        let rows = self.with_cx(|cx| cx.query(&sql, &values).map_err(statement_error))?;
        let out = PyList::empty(py);
        for row in rows {
            let dict = PyDict::new(py);
            for (k, v) in &row {
                dict.set_item(k, from_json(py, v)?)?;
            }
            out.append(dict)?;
        }
        Ok(out)
    }

    /// The first row of `query`, or `None`.
    #[pyo3(signature = (sql, params = None, **kwargs))]
    fn query_one<'py>(
        &self,
        py: Python<'py>,
        sql: &str,
        params: Option<&Bound<'py, PyDict>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let rows = self.query(py, sql, params, kwargs)?;
        rows.iter().next().map(Ok).transpose()
    }

    /// Runs SQL text without parameters, possibly several statements (DDL in setup and reset).
    fn execute_script(&self, sql: &str) -> PyResult<()> {
        self.with_cx(|cx| cx.execute_script_labeled(sql, "").map_err(statement_error))
    }
}
