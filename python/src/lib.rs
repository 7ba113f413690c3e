//! `projectionist._projectionist`: Projectionist's engine for Python. Projections are written
//! as Python handlers that get `(tx, event)` and run inside the batch's transaction, with the
//! engine's guarantees. The typed Python layer is the `projectionist` package around it.

mod body;
mod engine;
mod errors;
mod event;
mod projection;
mod runtime;
mod store;
mod tx;
mod values;

use pyo3::prelude::*;

#[pymodule]
fn _projectionist(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<store::Store>()?;
    m.add_class::<store::Token>()?;
    m.add_class::<engine::Engine>()?;
    m.add_class::<event::Event>()?;
    m.add_class::<tx::Tx>()?;
    errors::register(m)?;
    Ok(())
}
