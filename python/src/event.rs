//! `Event`: a recorded event as a handler sees it. `data` and `metadata` are parsed from their
//! JSON text on first access, so an event whose handler never reads them costs no parsing.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;

use crate::values::loads;

/// A recorded event: `position`, `stream_id`, `stream_version`, `event_type`, `event_id`,
/// `data`, `metadata` and `recorded_at`.
#[pyclass(frozen, module = "projectionist._projectionist")]
pub struct Event {
    #[pyo3(get)]
    position: i64,
    #[pyo3(get)]
    txid: i64,
    #[pyo3(get)]
    stream_id: String,
    #[pyo3(get)]
    stream_version: i64,
    #[pyo3(get)]
    event_type: String,
    inner: Arc<projectionist::Event>,
    data: GILOnceCell<PyObject>,
    metadata: GILOnceCell<PyObject>,
}

impl Event {
    pub fn new(event: &projectionist::Event) -> Self {
        Event {
            position: event.position,
            txid: event.txid,
            stream_id: event.stream_id.clone(),
            stream_version: event.stream_version,
            event_type: event.event_type.clone(),
            inner: Arc::new(event.clone()),
            data: GILOnceCell::new(),
            metadata: GILOnceCell::new(),
        }
    }
}

#[pymethods]
impl Event {
    /// The event's id, as a string (a UUID).
    #[getter]
    fn event_id(&self) -> String {
        self.inner.event_id.to_string()
    }

    /// The payload, parsed from JSON (or, for a handler registered with a class, the instance
    /// it decoded into).
    #[getter]
    fn data(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v = self.data.get_or_try_init(py, || -> PyResult<PyObject> {
            Ok(loads(py, &self.inner.data)?.unbind())
        })?;
        Ok(v.clone_ref(py))
    }

    /// The metadata, parsed from JSON (`{}` when there is none).
    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<PyObject> {
        let v = self.metadata.get_or_try_init(py, || -> PyResult<PyObject> {
            Ok(loads(py, &self.inner.metadata)?.unbind())
        })?;
        Ok(v.clone_ref(py))
    }

    /// The payload as JSON text, as it was stored.
    #[getter]
    fn data_json(&self) -> &str {
        &self.inner.data
    }

    /// When the event was recorded (a timezone-aware `datetime` in UTC).
    #[getter]
    fn recorded_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = self
            .inner
            .recorded_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
        py.import("datetime")?
            .getattr("datetime")?
            .call_method1("fromisoformat", (text,))
    }

    /// The same event with `data` replaced (what a handler registered with a class gets).
    fn with_data(&self, py: Python<'_>, data: PyObject) -> Event {
        let data_cell = GILOnceCell::new();
        let _ = data_cell.set(py, data);
        let metadata = GILOnceCell::new();
        if let Some(m) = self.metadata.get(py) {
            let _ = metadata.set(py, m.clone_ref(py));
        }
        Event {
            position: self.position,
            txid: self.txid,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            event_type: self.event_type.clone(),
            inner: self.inner.clone(),
            data: data_cell,
            metadata,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Event(position={}, stream_id={:?}, stream_version={}, event_type={:?})",
            self.position, self.stream_id, self.stream_version, self.event_type
        )
    }
}
