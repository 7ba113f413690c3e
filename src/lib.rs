//! # Projectionist
//!
//! An event projection engine for CQRS and event-sourced systems. It reads domain events from
//! an event store or a broker, routes them to projections, keeps their read models current,
//! and records progress in the same transaction as the read model, so that it resumes exactly
//! where it stopped.
//!
//! The crate root holds what applications write: the [`Engine`], [`Projection`]s with
//! [`Handlers`] or [`Documents`], error policies, events and appends. The core knows no
//! database; each backend is a module behind a cargo feature: [`sqlite`] (default), `postgres`,
//! `nats`, `rabbitmq`. Handlers read and write through [`SqlTx`] ([`sql`]), the same on every SQL
//! store. Store and source implementers find their traits in [`backend`].
//!
//! See the README for a quickstart and the guarantees.

#![forbid(unsafe_code)]

/// The README's examples compile as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[doc(hidden)]
pub mod core;
pub mod declarative;
pub mod workload;

#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "postgres")]
pub mod postgres;

#[cfg(feature = "nats")]
pub mod nats;

#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;

pub mod table;

/// What store and source implementers need: the traits a backend implements and the types
/// that cross them. Applications use the crate root.
pub mod backend {
    pub use crate::core::document::{quote_ident, DocumentStorage, Row};
    pub use crate::core::erased::{AnyBody, AnyEngine, AnyProjection, AnySource, AnyStore, BoxFuture};
    pub use crate::core::inline::InlineAppend;
    pub use crate::core::lease::{Fence, Lease, LeaseInfo, Member, Membership};
    pub use crate::core::shadow::{ShadowStore, Swapped};
    pub use crate::core::source::{Batch, Filter, Lag, PartitionAssignment, PartitionSlice, Source};
    pub use crate::core::sql::{SqlStore, TextRows};
    pub use crate::core::store::{Commit, CommitError, CommitStats, NewDeadLetter, ProjectionRecord, Store};
}

/// The backend-neutral SQL transaction that projection bodies execute and query through.
pub mod sql {
    pub use crate::core::sql::{column, Dialect, SqlTx, SqlValue};
}

pub use crate::core::document::{Document, Documents};
pub use crate::core::engine::{when_true, CatchUp, Engine, Status};
pub use crate::core::error::{BatchFailure, Error, HandlerError, HandlerErrorKind, Result};
pub use crate::core::event::{
    Appended, Checkpoint, Event, ExpectedVersion, ImportProgress, NewEvent, StreamAppend, Upcasters,
    MAX_JSON_DEPTH,
};
pub use crate::core::lease::LeaseSettings;
pub use crate::core::log::EventLog;
pub use crate::core::partition::{partition_of, stream_hash, MAX_PARTITIONS};
pub use crate::core::policy::{Backoff, Decision, ErrorHandler, ErrorPolicy, Failure, Policy};
pub use crate::core::projection::{
    Applied, Apply, Handlers, Prefetch, Projection, ProjectionOptions, DEFAULT_BATCH_SIZE,
    DEFAULT_BATCH_WIDE_SIZE,
};
pub use crate::core::runner::{Progress, ProgressFn, RunnerSettings, WorkerReport};
pub use crate::core::shadow::BlueGreenReport;
pub use crate::core::sql::{Dialect, SqlTx, SqlValue};
pub use crate::core::store::{DeadLetter, RunState};
