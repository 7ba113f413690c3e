//! One engine type for every backend: a type-erased source ([`AnySource`]) and store
//! ([`AnyStore`]), for programs that choose their backend at run time (the `projectionist`
//! CLI) and bodies written once over [`SqlTx`] (declarative SQL projections, handlers in other
//! languages).
//!
//! [`AnySource::new`] takes any [`Source`](super::source::Source); [`AnyStore::new`] takes any
//! [`SqlStore`] that is also an [`EventLog`](super::log::EventLog), an
//! [`InlineAppend`](super::inline::InlineAppend) on its own events and a
//! [`ShadowStore`](super::shadow::ShadowStore). Their projections' bodies are [`AnyBody`]:
//! `dyn Apply<dyn SqlTx>`. An [`AnyEngine`] then runs, rebuilds (also blue/green), appends
//! (with inline projections) and imports on whichever backend it was given.
//!
//! The cost is a boxed future per call into the source or the store (per batch, not per
//! event), an adapter body allocated per commit, and a virtual call per statement a body runs.

mod body;
mod source;
mod store;

#[cfg(all(test, feature = "sqlite"))]
mod tests;

use std::future::Future;
use std::pin::Pin;

pub use source::AnySource;
pub use store::AnyStore;

use super::engine::Engine;
use super::projection::{Apply, Projection};
#[cfg(doc)]
use super::sql::SqlStore;
use super::sql::SqlTx;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A projection body written over any SQL store's context.
pub type AnyBody = dyn Apply<dyn SqlTx>;

/// A projection whose body is an [`AnyBody`].
pub type AnyProjection = Projection<AnyBody>;

/// An engine over a type-erased source and store.
pub type AnyEngine = Engine<AnySource, AnyStore>;
