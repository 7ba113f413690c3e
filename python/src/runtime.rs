//! The one tokio runtime of the module, and how Python waits on it: with the GIL released, so
//! that handlers (which take the GIL on the engine's threads) and other Python threads run.

use std::future::Future;
use std::sync::OnceLock;

use pyo3::prelude::*;

use crate::errors::InternalError;

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// The runtime, built on first use.
pub fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("projectionist")
        .build()
        .map_err(|e| InternalError::new_err(format!("cannot start the engine's runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

/// Runs `fut` to completion with the GIL released, and turns its error into the Python
/// exception of its kind.
pub fn wait<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = projectionist::Result<T>> + Send,
    T: Send,
{
    let rt = runtime()?;
    py.allow_threads(|| rt.block_on(fut))
        .map_err(crate::errors::to_py)
}
