//! The core: events, projections, the runner and its policies. It knows no database.

pub(crate) mod assignment;
pub(crate) mod coordinator;
pub mod document;
pub mod engine;
pub mod envelope;
pub mod erased;
pub mod error;
pub mod event;
pub mod inline;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod partition;
pub mod policy;
pub mod projection;
pub mod runner;
pub mod scheduler;
pub mod shadow;
pub mod source;
pub mod sql;
pub mod store;
