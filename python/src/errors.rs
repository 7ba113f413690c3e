//! The exception hierarchy: one Python exception class per kind of `projectionist::Error`,
//! all under `ProjectionistError`, each carrying the fields a caller acts on.

use projectionist::Error;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::BoundObject;

create_exception!(
    projectionist,
    ProjectionistError,
    PyException,
    "Every error of projectionist."
);
create_exception!(
    projectionist,
    ConflictError,
    ProjectionistError,
    "An optimistic-concurrency conflict on append: `stream`, `expected` and `actual` say where."
);
create_exception!(
    projectionist,
    DuplicateEventError,
    ProjectionistError,
    "An event with this id is already stored (`event_id`)."
);
create_exception!(
    projectionist,
    UnknownProjectionError,
    ProjectionistError,
    "No projection with that name is registered."
);
create_exception!(
    projectionist,
    UnknownDeadLetterError,
    ProjectionistError,
    "No dead letter with that id."
);
create_exception!(
    projectionist,
    LifecycleError,
    ProjectionistError,
    "A projection's setup or reset failed."
);
create_exception!(
    projectionist,
    RebuildFailedError,
    ProjectionistError,
    "A rebuild met a failing event and stopped; run it again to resume."
);
create_exception!(
    projectionist,
    InlineProjectionError,
    ProjectionistError,
    "An inline projection failed inside an append: nothing of the append was written."
);
create_exception!(
    projectionist,
    RetryFailedError,
    ProjectionistError,
    "A dead letter's retry failed again; it stays a dead letter."
);
create_exception!(
    projectionist,
    WaitTimeoutError,
    ProjectionistError,
    "`wait_for` ran out of time: the projection is `lag_events` behind."
);
create_exception!(
    projectionist,
    InvalidInputError,
    ProjectionistError,
    "A value passed to the call is not valid; fix the call."
);
create_exception!(
    projectionist,
    ConfigError,
    ProjectionistError,
    "The configuration is wrong (a URL, a setting, an option that does not match what is stored)."
);
create_exception!(
    projectionist,
    UnsupportedError,
    ProjectionistError,
    "The store or source cannot do what was asked."
);
create_exception!(projectionist, DatabaseError, ProjectionistError, "The database failed; `retryable` says whether trying again later may help, `sqlstate` / `sqlite_code` carry its code.");
create_exception!(
    projectionist,
    BrokerError,
    ProjectionistError,
    "A message broker failed."
);
create_exception!(projectionist, IoError, ProjectionistError, "An I/O error.");
create_exception!(
    projectionist,
    InternalError,
    ProjectionistError,
    "An invariant of projectionist broke (or a handler panicked); report it."
);
create_exception!(
    projectionist,
    ShutdownError,
    ProjectionistError,
    "The engine is shutting down."
);
create_exception!(
    projectionist,
    StatementError,
    ProjectionistError,
    "A statement run through `tx` failed (inside a handler, it is the failure of the event)."
);
create_exception!(
    projectionist,
    TxClosedError,
    ProjectionistError,
    "A `tx` was used after its handler call returned, or from another thread."
);
create_exception!(
    projectionist,
    DecodeError,
    ProjectionistError,
    "An event's payload did not decode into the handler's class; it goes through the error policy."
);

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ProjectionistError", py.get_type::<ProjectionistError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("DuplicateEventError", py.get_type::<DuplicateEventError>())?;
    m.add("UnknownProjectionError", py.get_type::<UnknownProjectionError>())?;
    m.add("UnknownDeadLetterError", py.get_type::<UnknownDeadLetterError>())?;
    m.add("LifecycleError", py.get_type::<LifecycleError>())?;
    m.add("RebuildFailedError", py.get_type::<RebuildFailedError>())?;
    m.add("InlineProjectionError", py.get_type::<InlineProjectionError>())?;
    m.add("RetryFailedError", py.get_type::<RetryFailedError>())?;
    m.add("WaitTimeoutError", py.get_type::<WaitTimeoutError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("DatabaseError", py.get_type::<DatabaseError>())?;
    m.add("BrokerError", py.get_type::<BrokerError>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add("ShutdownError", py.get_type::<ShutdownError>())?;
    m.add("StatementError", py.get_type::<StatementError>())?;
    m.add("TxClosedError", py.get_type::<TxClosedError>())?;
    m.add("DecodeError", py.get_type::<DecodeError>())?;
    Ok(())
}

/// The Python exception for an engine error, with its fields as attributes.
pub fn to_py(err: Error) -> PyErr {
    Python::with_gil(|py| {
        let message = err.to_string();
        let (exc, attrs): (PyErr, Vec<(&str, PyObject)>) = match &err {
            Error::Conflict {
                stream,
                expected,
                actual,
            } => {
                let expected = match expected {
                    projectionist::ExpectedVersion::Any => py.None(),
                    projectionist::ExpectedVersion::NoStream => obj(py, 0i64),
                    projectionist::ExpectedVersion::Exact(n) => obj(py, *n),
                };
                (
                    ConflictError::new_err(message),
                    vec![
                        ("stream", obj(py, stream.as_str())),
                        ("expected", expected),
                        ("actual", obj(py, *actual)),
                    ],
                )
            }
            Error::DuplicateEvent { event_id } => (
                DuplicateEventError::new_err(message),
                vec![("event_id", obj(py, event_id.to_string()))],
            ),
            Error::UnknownProjection { name, .. } => (
                UnknownProjectionError::new_err(message),
                vec![("name", obj(py, name.as_str()))],
            ),
            Error::UnknownDeadLetter(id) => (
                UnknownDeadLetterError::new_err(message),
                vec![("id", obj(py, *id))],
            ),
            Error::Lifecycle { projection, step, .. } => (
                LifecycleError::new_err(message),
                vec![
                    ("projection", obj(py, projection.as_str())),
                    ("step", obj(py, *step)),
                ],
            ),
            Error::RebuildFailed {
                projection, position, ..
            } => (
                RebuildFailedError::new_err(message),
                vec![
                    ("projection", obj(py, projection.as_str())),
                    ("position", obj(py, *position)),
                ],
            ),
            Error::InlineProjection {
                projection, position, ..
            } => (
                InlineProjectionError::new_err(message),
                vec![
                    ("projection", obj(py, projection.as_str())),
                    ("position", obj(py, *position)),
                ],
            ),
            Error::RetryFailed { id, projection, .. } => (
                RetryFailedError::new_err(message),
                vec![("id", obj(py, *id)), ("projection", obj(py, projection.as_str()))],
            ),
            Error::Timeout {
                projection,
                lag_events,
                checkpoint,
                ..
            } => (
                WaitTimeoutError::new_err(message),
                vec![
                    ("projection", obj(py, projection.as_str())),
                    ("lag_events", obj(py, *lag_events)),
                    ("checkpoint", obj(py, checkpoint.to_string())),
                ],
            ),
            Error::InvalidInput(_) => (InvalidInputError::new_err(message), vec![]),
            Error::Config(_) => (ConfigError::new_err(message), vec![]),
            Error::Unsupported(_) => (UnsupportedError::new_err(message), vec![]),
            Error::Database { retryable, .. } => {
                let sqlstate = err.sqlstate().map_or_else(|| py.None(), |s| obj(py, s));
                let code = err.sqlite_code().map_or_else(|| py.None(), |c| obj(py, c));
                (
                    DatabaseError::new_err(message),
                    vec![
                        ("retryable", obj(py, *retryable)),
                        ("sqlstate", sqlstate),
                        ("sqlite_code", code),
                    ],
                )
            }
            Error::Broker { retryable, .. } => (
                BrokerError::new_err(message),
                vec![("retryable", obj(py, *retryable))],
            ),
            Error::Io(_) => (IoError::new_err(message), vec![]),
            Error::Shutdown => (ShutdownError::new_err(message), vec![]),
            _ => (InternalError::new_err(message), vec![]),
        };
        let value = exc.value(py);
        for (name, v) in attrs {
            // Setting an attribute on a fresh exception instance cannot fail in practice; if
            // it did, the exception still carries its message.
            let _ = value.setattr(name, v);
        }
        exc
    })
}

fn obj<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> PyObject {
    match v.into_pyobject(py) {
        Ok(o) => o.into_any().unbind(),
        Err(_) => py.None(),
    }
}
