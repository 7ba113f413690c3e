//! Values across the boundary: Python objects to bound SQL values and JSON text, and JSON
//! (query rows, payloads) to Python objects.

use std::borrow::Cow;

use projectionist::SqlValue;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use serde_json::Value;

use crate::errors::InvalidInputError;

static JSON_DUMPS: GILOnceCell<PyObject> = GILOnceCell::new();
static JSON_LOADS: GILOnceCell<PyObject> = GILOnceCell::new();

fn json_fn<'py>(
    py: Python<'py>,
    cell: &'static GILOnceCell<PyObject>,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    let f = cell.get_or_try_init(py, || -> PyResult<PyObject> {
        Ok(py.import("json")?.getattr(name)?.unbind())
    })?;
    Ok(f.bind(py))
}

/// `json.dumps(obj)`, compact. Dataclasses and pydantic models are turned into dicts by the
/// Python layer before they get here.
pub fn dumps(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = obj.py();
    let dumps = json_fn(py, &JSON_DUMPS, "dumps")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("separators", (",", ":"))?;
    kwargs.set_item("ensure_ascii", false)?;
    dumps.call((obj,), Some(&kwargs))?.extract()
}

/// `json.loads(text)`.
pub fn loads<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    json_fn(py, &JSON_LOADS, "loads")?.call1((text,))
}

/// A Python value as a bound SQL parameter: `None`, `bool`, `int`, `float`, `str`; a `dict`
/// or `list` binds as JSON.
pub fn to_sql(v: &Bound<'_, PyAny>) -> PyResult<SqlValue<'static>> {
    if v.is_none() {
        Ok(SqlValue::Null)
    } else if let Ok(b) = v.downcast::<PyBool>() {
        Ok(SqlValue::Bool(b.is_true()))
    } else if v.is_instance_of::<PyInt>() {
        let i: i64 = v.extract()?;
        Ok(SqlValue::Int(i))
    } else if let Ok(x) = v.downcast::<PyFloat>() {
        Ok(SqlValue::Real(x.value()))
    } else if let Ok(s) = v.downcast::<PyString>() {
        Ok(SqlValue::Text(Cow::Owned(s.to_cow()?.into_owned())))
    } else if v.is_instance_of::<PyDict>() || v.is_instance_of::<PyList>() {
        Ok(SqlValue::Json(Cow::Owned(dumps(v)?)))
    } else {
        Err(InvalidInputError::new_err(format!(
            "cannot bind a value of type {} as a SQL parameter: pass None, bool, int, float, str, dict or list \
             (convert dates and decimals to str)",
            v.get_type().name()?
        )))
    }
}

/// A JSON value as a Python object.
pub fn from_json<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => i.into_pyobject(py)?.into_any(),
            None => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(from_json(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, from_json(py, item)?)?;
            }
            dict.into_any()
        }
    })
}
