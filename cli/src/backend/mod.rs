//! The one place that turns a `--database` URL into a backend.
//!
//! Command logic is written against `projectionist::Engine<S, St>` for any `Source` and
//! `Store`; the [`with_engine!`] macro builds the engine over whichever source (`--source`, or
//! the database's events table) and store (`--database`) are in force, and registers the
//! configured declarative projections on it. Each store backend (SQLite, PostgreSQL) is one
//! variant of [`Location`] and [`Backend`] and one arm in each `match` below; each event
//! source is one variant of [`EventSource`], one arm in [`EventSource::open`] and one arm in
//! [`with_engine!`].

mod source;
mod store;
mod url;

pub use source::EventSource;
#[cfg(feature = "postgres")]
pub use store::pg_engine;
pub use store::{engine, sqlite_engine, Backend, Rows};
pub use url::{redact, DatabaseUrl, Location};

/// Binds `$store` to the store of `$backend` and evaluates `$body` once per backend type.
macro_rules! with_store {
    ($backend:expr, |$store:ident| $body:expr) => {
        match $backend {
            $crate::backend::Backend::Sqlite($store) => $body,
            #[cfg(feature = "postgres")]
            $crate::backend::Backend::Postgres($store) => $body,
        }
    };
}
pub(crate) use with_store;

/// Builds the engine that reads `$source` (an `&EventSource`) and keeps the read models of
/// `$config` (an `Option<&Config>`) in `$backend`'s store, binds it to `$engine`, and
/// evaluates `$body`. The body is compiled once per (source, store) pair, so command logic is
/// written once against `Engine<S, St>`. A new source is one arm here.
macro_rules! with_engine {
    ($backend:expr, $source:expr, $config:expr, |$engine:ident| $body:expr) => {
        $crate::backend::with_store!($backend, |store| match $source {
            $crate::backend::EventSource::Database => {
                #[allow(unused_mut)]
                let mut $engine =
                    $crate::backend::engine(std::sync::Arc::new(store.clone()), store, $config)?;
                $body
            }
            #[cfg(feature = "nats")]
            $crate::backend::EventSource::Nats(source) => {
                #[allow(unused_mut)]
                let mut $engine = $crate::backend::engine(source.clone(), store, $config)?;
                $body
            }
            #[cfg(feature = "rabbitmq")]
            $crate::backend::EventSource::Rabbit(source) => {
                #[allow(unused_mut)]
                let mut $engine = $crate::backend::engine(source.clone(), store, $config)?;
                $body
            }
        })
    };
}
pub(crate) use with_engine;
