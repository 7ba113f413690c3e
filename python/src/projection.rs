//! An engine projection from the Python layer's `Projection`: its handlers, lifecycle
//! functions and options (error policy, retries, batch size, priority, partitions, inline).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use projectionist::backend::AnyProjection;
use projectionist::{Backoff, Decision, ErrorPolicy, Failure};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::body::PyBody;
use crate::errors::ConfigError;
use crate::event::Event;
use crate::tx::Statements;

/// The projection `spec` describes (a `projectionist.Projection`).
pub fn from_spec(spec: &Bound<'_, PyAny>) -> PyResult<AnyProjection> {
    let name: String = spec.getattr("name")?.extract()?;
    let handlers: HashMap<String, Vec<PyObject>> = spec.getattr("handlers")?.extract()?;
    let body = PyBody {
        handlers,
        setup: spec.getattr("setup_functions")?.extract()?,
        reset: spec.getattr("reset_functions")?.extract()?,
        statements: Arc::new(Statements::default()),
    };
    let mut p = AnyProjection::new(name.clone(), body);
    if let Some(n) = spec.getattr("batch_size")?.extract::<Option<usize>>()? {
        p = p.batch_size(n);
    }
    p = p
        .priority(spec.getattr("priority")?.extract()?)
        .inline(spec.getattr("inline")?.extract()?)
        .rebuild_fail_fast(spec.getattr("rebuild_fail_fast")?.extract()?);
    let partitions: u32 = spec.getattr("partitions")?.extract()?;
    if partitions > 1 {
        p = p.partitions(partitions);
    }
    let max_retries: u32 = spec.getattr("max_retries")?.extract()?;
    let policy = spec.getattr("error_policy")?;
    if policy.is_callable() {
        let decide = PyDecide {
            projection: name,
            callable: policy.unbind(),
        };
        p = p.error_handler(move |f: &Failure<'_>| decide.decide(f));
    } else {
        let policy_name: String = policy.extract()?;
        let policy =
            ErrorPolicy::from_name(&policy_name, max_retries, Backoff::default()).ok_or_else(|| {
                ConfigError::new_err(format!(
                    "projection {name}: unknown error policy {policy_name:?}; use skip, retry, dead_letter, \
                 retry_then_dead_letter, stop, or a callable"
                ))
            })?;
        p = p.error_policy(policy);
    }
    Ok(p)
}

/// A Python callable deciding per failure.
struct PyDecide {
    projection: String,
    callable: PyObject,
}

impl PyDecide {
    /// Calls `callable(failure)`, where `failure` has `projection`, `event`, `error` and
    /// `attempt`; it returns `"skip"`, `"dead_letter"`, `"stop"`, `"retry"` or
    /// `("retry", seconds)`. A callable that raises, or returns anything else, stops the
    /// projection (its error is logged).
    fn decide(&self, f: &Failure<'_>) -> Decision {
        Python::with_gil(|py| {
            let decided = (|| -> PyResult<Decision> {
                let failure = PyDict::new(py);
                failure.set_item("projection", f.projection)?;
                failure.set_item("event", Bound::new(py, Event::new(f.event))?)?;
                failure.set_item("error", f.error.to_string())?;
                failure.set_item("attempt", f.attempt)?;
                let out = self.callable.call1(py, (failure,))?;
                let out = out.bind(py);
                let (what, seconds): (String, Option<f64>) = match out.extract::<String>() {
                    Ok(s) => (s, None),
                    Err(_) => {
                        let (s, d): (String, f64) = out.extract()?;
                        (s, Some(d))
                    }
                };
                Ok(match what.as_str() {
                    "skip" => Decision::Skip,
                    "dead_letter" => Decision::DeadLetter,
                    "stop" => Decision::Stop,
                    "retry" => Decision::Retry(match seconds {
                        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s),
                        _ => Backoff::default().delay(f.attempt),
                    }),
                    other => {
                        return Err(ConfigError::new_err(format!(
                            "the error policy of projection {} returned {other:?}; return \"skip\", \
                             \"dead_letter\", \"stop\", \"retry\" or (\"retry\", seconds)",
                            self.projection
                        )))
                    }
                })
            })();
            decided.unwrap_or_else(|e| {
                tracing::error!(projection = %self.projection, error = %crate::body::traceback(py, &e),
                    "the error policy failed; stopping the projection");
                Decision::Stop
            })
        })
    }
}
