//! `Engine`: a store and the Python projections registered on it, with the engine's
//! operations. Every call that waits on the database releases the GIL.

use std::sync::Arc;
use std::time::Duration;

use projectionist::backend::{AnyEngine, Store as _};
use projectionist::{CatchUp, Progress, ProgressFn, WorkerReport};
use pyo3::exceptions::PyKeyboardInterrupt;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tokio::sync::watch;

use crate::errors::{to_py, InternalError};
use crate::event::Event;
use crate::runtime::{runtime, wait};
use crate::store::{new_events, stream_appends, token_of, AppendTuple, Store, Token};
use crate::values::from_json;

/// A store's projections, run by the engine.
#[pyclass(frozen, module = "projectionist._projectionist")]
pub struct Engine {
    engine: Arc<AnyEngine>,
    stop: watch::Sender<bool>,
}

fn report<'py>(py: Python<'py>, r: &WorkerReport) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("projection", &r.projection)?;
    d.set_item("partition", r.partition)?;
    d.set_item("checkpoint", r.checkpoint.to_string())?;
    d.set_item("position", r.checkpoint.position)?;
    d.set_item("state", r.state.as_str())?;
    d.set_item("events", r.events)?;
    d.set_item("seconds", r.seconds)?;
    Ok(d)
}

fn reports<'py>(py: Python<'py>, rs: &[WorkerReport]) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for r in rs {
        out.append(report(py, r)?)?;
    }
    Ok(out)
}

/// A progress callback: `callback(progress)` with `projection`, `partition`, `events`,
/// `position`, `start` and `target`, after each commit. Its exceptions are reported as
/// unraisable and do not stop the run.
fn progress_fn(callback: Option<PyObject>) -> Option<ProgressFn> {
    let callback = callback?;
    Some(Arc::new(move |p: Progress| {
        Python::with_gil(|py| {
            let called = (|| -> PyResult<()> {
                let d = PyDict::new(py);
                d.set_item("projection", &*p.projection)?;
                d.set_item("partition", p.partition)?;
                d.set_item("events", p.events)?;
                d.set_item("position", p.position)?;
                d.set_item("start", p.start)?;
                d.set_item("target", p.target)?;
                callback.call1(py, (d,))?;
                Ok(())
            })();
            if let Err(e) = called {
                e.write_unraisable(py, Some(callback.bind(py)));
            }
        });
    }))
}

#[pymethods]
impl Engine {
    /// An engine on `store` with `projections` (`projectionist.Projection`s). Registering
    /// checks names and options; setup runs when the engine first runs a projection.
    #[new]
    fn new(store: &Store, projections: Vec<Bound<'_, PyAny>>) -> PyResult<Engine> {
        let (source, st) = crate::store::parts(store);
        let settings = st.runner_settings();
        let mut engine = AnyEngine::new(source, st).settings(settings);
        for spec in &projections {
            engine
                .register(crate::projection::from_spec(spec)?)
                .map_err(to_py)?;
        }
        let (stop, _) = watch::channel(false);
        Ok(Engine {
            engine: Arc::new(engine),
            stop,
        })
    }

    /// Runs every projection up to the head, then returns a report per projection (and
    /// partition).
    #[pyo3(signature = (progress = None))]
    fn catch_up<'py>(&self, py: Python<'py>, progress: Option<PyObject>) -> PyResult<Bound<'py, PyList>> {
        let mut options = CatchUp::all();
        if let Some(p) = progress_fn(progress) {
            options = options.progress(p);
        }
        let engine = self.engine.clone();
        let rs = wait(py, async move { engine.catch_up_with(options).await })?;
        reports(py, &rs)
    }

    /// Follows the log live until `stop()` is called or the process gets SIGINT (Ctrl-C) or
    /// SIGTERM (when run on the main thread); each batch is committed whole or not at all.
    fn run<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let rt = runtime()?;
        self.stop.send_replace(false);
        let stopped = self.stop.subscribe();
        let engine = self.engine.clone();
        let mut handle = rt.spawn(async move { engine.run_until(projectionist::when_true(stopped)).await });
        let mut interrupted: Option<PyErr> = None;
        let joined = loop {
            let polled = py.allow_threads(|| {
                rt.block_on(async { tokio::time::timeout(Duration::from_millis(100), &mut handle).await })
            });
            if let Ok(joined) = polled {
                break joined;
            }
            if interrupted.is_none() {
                if let Err(e) = py.check_signals() {
                    self.stop.send_replace(true);
                    interrupted = Some(e);
                }
            }
        };
        let rs = joined
            .map_err(|e| InternalError::new_err(format!("the engine's run task failed: {e}")))?
            .map_err(to_py)?;
        match interrupted {
            Some(e) if !e.is_instance_of::<PyKeyboardInterrupt>(py) => Err(e),
            _ => reports(py, &rs),
        }
    }

    /// Makes a `run()` in another thread (or an asyncio task) stop after its current batches.
    fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Rebuilds a projection: reset, replay from the start, committing per batch; resumes an
    /// interrupted rebuild. With `blue_green=True` the new version is built in a shadow while
    /// the current one serves, then swapped in.
    #[pyo3(signature = (name, progress = None, blue_green = false))]
    fn rebuild<'py>(
        &self,
        py: Python<'py>,
        name: String,
        progress: Option<PyObject>,
        blue_green: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let progress = progress_fn(progress);
        let engine = self.engine.clone();
        if blue_green {
            let r = wait(
                py,
                async move { engine.rebuild_blue_green(&name, progress).await },
            )?;
            let d = PyDict::new(py);
            d.set_item("projection", &r.projection)?;
            d.set_item("events", r.events)?;
            d.set_item("checkpoint", r.checkpoint.to_string())?;
            d.set_item("position", r.checkpoint.position)?;
            d.set_item("seconds", r.seconds)?;
            return Ok(d);
        }
        let r = wait(py, async move { engine.rebuild_with(&name, progress).await })?;
        report(py, &r)
    }

    /// Waits until projection `name` has applied `token` (from an append, in any process).
    /// Returns the seconds waited; raises `WaitTimeoutError` after `timeout` seconds.
    #[pyo3(signature = (name, token, timeout = 5.0))]
    fn wait_for(
        &self,
        py: Python<'_>,
        name: String,
        token: &Bound<'_, PyAny>,
        timeout: f64,
    ) -> PyResult<f64> {
        let token = token_of(token)?;
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0))
            .map_err(|e| crate::errors::InvalidInputError::new_err(format!("timeout: {e}")))?;
        let engine = self.engine.clone();
        Ok(wait(py, async move { engine.wait_for(&name, token, timeout).await })?.as_secs_f64())
    }

    /// The status of every projection (and partition), as dicts.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let engine = self.engine.clone();
        let all = wait(py, async move { engine.status().await })?;
        let out = PyList::empty(py);
        for s in &all {
            let v = serde_json::to_value(s).map_err(|e| InternalError::new_err(e.to_string()))?;
            out.append(from_json(py, &v)?)?;
        }
        Ok(out)
    }

    /// Pauses a projection: its runners stop after their current batch, in any process.
    fn pause(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let engine = self.engine.clone();
        wait(py, async move { engine.pause(&name).await })
    }

    /// Resumes a paused or stopped projection.
    fn resume(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let engine = self.engine.clone();
        wait(py, async move { engine.resume(&name).await })
    }

    /// Open dead letters (of one projection, or all), as dicts with `id`, `projection`,
    /// `partition`, `event`, `error` (the Python traceback), `attempts`, `first_failed_at` and
    /// `last_failed_at`.
    #[pyo3(signature = (projection = None))]
    fn dead_letters<'py>(&self, py: Python<'py>, projection: Option<String>) -> PyResult<Bound<'py, PyList>> {
        let engine = self.engine.clone();
        let all = wait(
            py,
            async move { engine.dead_letters(projection.as_deref()).await },
        )?;
        let out = PyList::empty(py);
        for dl in &all {
            let d = PyDict::new(py);
            d.set_item("id", dl.id)?;
            d.set_item("projection", &dl.projection)?;
            d.set_item("partition", dl.partition)?;
            d.set_item("event", Bound::new(py, Event::new(&dl.event))?)?;
            d.set_item("error", &dl.error)?;
            d.set_item("attempts", dl.attempts)?;
            d.set_item("first_failed_at", dl.first_failed_at.to_rfc3339())?;
            d.set_item("last_failed_at", dl.last_failed_at.to_rfc3339())?;
            out.append(d)?;
        }
        Ok(out)
    }

    /// Applies a dead letter's event again; on success it is gone. Raises `RetryFailedError`
    /// when the handler fails again.
    fn retry_dead_letter(&self, py: Python<'_>, id: i64) -> PyResult<()> {
        let engine = self.engine.clone();
        wait(py, async move { engine.retry_dead_letter(id).await })
    }

    /// Deletes a dead letter without applying it.
    fn discard_dead_letter(&self, py: Python<'_>, id: i64) -> PyResult<()> {
        let engine = self.engine.clone();
        wait(py, async move { engine.discard_dead_letter(id).await })
    }

    /// Appends to one stream and applies the inline projections in the same transaction.
    #[pyo3(signature = (stream_id, events, expected_version = None))]
    fn append(
        &self,
        py: Python<'_>,
        stream_id: String,
        events: Vec<(String, String, Option<String>, Option<String>)>,
        expected_version: Option<i64>,
    ) -> PyResult<Token> {
        let events = new_events(events)?;
        let expected = projectionist::ExpectedVersion::from_option(expected_version);
        let engine = self.engine.clone();
        Ok(wait(
            py,
            async move { engine.append(stream_id, expected, events).await },
        )?
        .into())
    }

    /// Appends to several streams, with the inline projections, in one transaction.
    fn append_many(&self, py: Python<'_>, appends: Vec<AppendTuple>) -> PyResult<Vec<Token>> {
        let appends = stream_appends(appends)?;
        let engine = self.engine.clone();
        let out = wait(py, async move { engine.append_many(appends).await })?;
        Ok(out.into_iter().map(Token::from).collect())
    }
}
