//! The core: events, projections, the runner and its policies. It knows no database.

pub(crate) mod coordinator;
pub mod document;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod event;
pub mod lease;
pub mod metrics;
pub mod partition;
pub mod policy;
pub mod projection;
pub mod runner;
pub mod scheduler;
// Blue/green rebuilds are built by the stores; a build without one leaves them unused.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub mod shadow;
pub mod source;
pub mod sql;
pub mod store;
