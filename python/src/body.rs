//! The body of a projection whose handlers are Python callables: `Apply<dyn SqlTx>`, like the
//! declarative `SqlBody`. It takes the GIL once per batch, lends the batch's transaction to
//! Python as a `tx`, and calls each handler of each event with `(tx, event)`.

use std::collections::HashMap;
use std::sync::Arc;

use projectionist::{Applied, Apply, BatchFailure, HandlerError, SqlTx};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::errors::DecodeError;
use crate::event::Event;
use crate::tx::{Lent, Statements};

/// A projection's Python handlers.
pub struct PyBody {
    pub handlers: HashMap<String, Vec<PyObject>>,
    pub setup: Vec<PyObject>,
    pub reset: Vec<PyObject>,
    pub statements: Arc<Statements>,
}

/// A Python exception as a handler failure: its type, message and traceback, so that dead
/// letters and logs show where it was raised.
/// A `DecodeError` raised for `event` is a decode failure (the payload did not fit the
/// handler's class).
pub fn handler_error(py: Python<'_>, err: &PyErr, event: Option<&projectionist::Event>) -> HandlerError {
    let text = traceback(py, err);
    match event {
        Some(event) if err.is_instance_of::<DecodeError>(py) => HandlerError::decode(event, Traceback(text)),
        _ => HandlerError::msg(text),
    }
}

/// A Python traceback, as the cause of a decode failure.
#[derive(Debug)]
struct Traceback(String);

impl std::fmt::Display for Traceback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Traceback {}

/// `traceback.format_exception` of `err`, joined; its one-line form if that fails.
pub fn traceback(py: Python<'_>, err: &PyErr) -> String {
    let formatted = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (err.get_type(py), err.value(py), err.traceback(py)),
        )?;
        let text: String = "".into_pyobject(py)?.call_method1("join", (lines,))?.extract()?;
        Ok(text.trim_end().to_owned())
    })();
    formatted.unwrap_or_else(|_| err.to_string())
}

impl PyBody {
    fn lifecycle(&self, cx: &dyn SqlTx, calls: &[PyObject]) -> Result<(), HandlerError> {
        Python::with_gil(|py| {
            let lent = Lent::new(py, cx, self.statements.clone()).map_err(|e| handler_error(py, &e, None))?;
            for f in calls {
                f.call1(py, (lent.tx(),))
                    .map_err(|e| handler_error(py, &e, None))?;
            }
            Ok(())
        })
    }
}

impl Apply<dyn SqlTx> for PyBody {
    fn event_types(&self) -> Option<Vec<String>> {
        let mut types: Vec<String> = self.handlers.keys().cloned().collect();
        types.sort();
        Some(types)
    }

    fn setup(&self, cx: &dyn SqlTx) -> Result<(), HandlerError> {
        self.lifecycle(cx, &self.setup)
    }

    fn reset(&self, cx: &dyn SqlTx) -> Result<(), HandlerError> {
        if self.reset.is_empty() {
            return Err(HandlerError::msg(
                "this projection has no reset function, so a rebuild cannot empty its read model; \
                 register one with @projection.reset",
            ));
        }
        self.lifecycle(cx, &self.reset)
    }

    /// The store may call `apply` once per event on a blocking thread (PostgreSQL's reading
    /// bodies). Taking the GIL on a thread that has no interpreter thread state makes one and
    /// drops it again at every call; here the batch's thread takes it once, keeps its thread
    /// state, and releases the GIL at once, so that each `apply` only re-acquires it (and
    /// other Python threads run meanwhile).
    fn around(&self, run: &mut dyn FnMut()) {
        struct SameThread<'a>(&'a mut dyn FnMut());
        // SAFETY: `allow_threads` runs its closure synchronously on this very thread, so the
        // closure never crosses to another thread; it only needs the `Send` bound to prove
        // that it holds no GIL-bound value, and `run` holds none (it calls `apply`, which
        // takes the GIL itself).
        unsafe impl Send for SameThread<'_> {}
        let same = SameThread(run);
        Python::with_gil(move |py| {
            py.allow_threads(move || {
                let same = same;
                (same.0)()
            })
        })
    }

    fn apply(&self, cx: &dyn SqlTx, events: &[projectionist::Event]) -> Result<Applied, BatchFailure> {
        // Handlers' statements are only known once they run: keep room for them in the
        // store's prepared-statement cache (SQLite's is 16 statements by default).
        cx.reserve_statements(self.statements.count());
        Python::with_gil(|py| {
            let lent = Lent::new(py, cx, self.statements.clone()).map_err(|e| BatchFailure {
                index: 0,
                error: handler_error(py, &e, None),
            })?;
            let mut applied = Applied::default();
            for (index, event) in events.iter().enumerate() {
                let Some(handlers) = self.handlers.get(&event.event_type) else {
                    applied.ignored += 1;
                    continue;
                };
                let fail = |e: PyErr| BatchFailure {
                    index,
                    error: handler_error(py, &e, Some(event)),
                };
                let ev = Bound::new(py, Event::new(event)).map_err(fail)?;
                let args = PyTuple::new(py, [lent.tx().as_any(), ev.as_any()]).map_err(fail)?;
                for h in handlers {
                    h.call1(py, &args).map_err(fail)?;
                }
                applied.handled += 1;
            }
            Ok(applied)
        })
    }
}
