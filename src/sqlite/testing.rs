//! A test bed for one projection: events given to it on an in-memory SQLite store, run to the
//! head deterministically (the call returns once every given event is applied or dead-lettered),
//! then its read model queried. For the unit tests of Rust projections; declarative (TOML)
//! projections have `projectionist test` (docs/testing.md).
//!
//! ```
//! use projectionist::sqlite::testing::TestBed;
//! use projectionist::sqlite::{SqliteHandlers, SqliteProjection};
//! use projectionist::NewEvent;
//! use serde::Deserialize;
//! use serde_json::json;
//!
//! #[derive(Deserialize)]
//! struct Deposited { amount: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> projectionist::Result<()> {
//! let balances = SqliteHandlers::new()
//!     .setup(|db| { db.execute_batch("CREATE TABLE IF NOT EXISTS balances (account TEXT PRIMARY KEY, total INTEGER)")?; Ok(()) })
//!     .on("Deposited", |db, event, e: Deposited| {
//!         db.execute(
//!             "INSERT INTO balances VALUES (?1, ?2) ON CONFLICT (account) DO UPDATE SET total = total + excluded.total",
//!             (&event.stream_id, e.amount),
//!         )?;
//!         Ok(())
//!     });
//! let bed = TestBed::new(SqliteProjection::new("balances", balances))?;
//! bed.given("ACC-1", [
//!     NewEvent::new("Deposited", json!({"amount": 50})),
//!     NewEvent::new("Deposited", json!({"amount": 25})),
//! ]).await?;
//! bed.given("ACC-2", [NewEvent::new("Deposited", json!({"oops": true}))]).await?;
//! bed.run_to_head().await?;
//!
//! let total: i64 = bed
//!     .read(|db| db.query_row("SELECT total FROM balances WHERE account = 'ACC-1'", [], |r| r.get(0)))
//!     .await?;
//! assert_eq!(total, 75);
//! // The undecodable event went through the error policy (here the default, retry then
//! // dead letter) like in production.
//! let dead = bed.dead_letters().await?;
//! assert_eq!(dead.len(), 1);
//! assert_eq!(dead[0].event.stream_id, "ACC-2");
//! # Ok(())
//! # }
//! ```

use rusqlite::Connection;

use super::{SqliteEngine, SqliteProjection, SqliteStore};
use crate::core::engine::Status;
use crate::core::error::{Error, Result};
use crate::core::event::{Appended, ExpectedVersion, NewEvent};
use crate::core::log::EventLog;
use crate::core::policy::{Backoff, ErrorPolicy, Policy};
use crate::core::projection::ProjectionOptions;
use crate::core::runner::WorkerReport;
use crate::core::store::DeadLetter;

/// `options` with retries that do not wait between attempts.
fn without_waits(mut options: ProjectionOptions) -> ProjectionOptions {
    let none = Backoff {
        initial: std::time::Duration::ZERO,
        max: std::time::Duration::ZERO,
    };
    if let Policy::Builtin(
        ErrorPolicy::Retry { backoff, .. } | ErrorPolicy::RetryThenDeadLetter { backoff, .. },
    ) = &mut options.policy
    {
        *backoff = none;
    }
    options
}

/// One projection on a private in-memory SQLite store: give it events, run it to the head,
/// query what it built.
pub struct TestBed {
    store: SqliteStore,
    engine: SqliteEngine,
    name: String,
}

impl TestBed {
    /// A fresh in-memory store with `projection` alone registered. Retries of its error policy
    /// wait no time, so that a test of a failing event is fast (the attempts are the same).
    pub fn new(projection: SqliteProjection) -> Result<Self> {
        let store = SqliteStore::in_memory()?;
        let name = projection.name().to_owned();
        let options = without_waits(projection.options().clone());
        let projection = projection.with_options(options);
        let engine = store.engine().with(projection)?;
        Ok(TestBed { store, engine, name })
    }

    /// Appends `events` to `stream` (whatever its version), in order.
    pub async fn given(&self, stream: &str, events: impl IntoIterator<Item = NewEvent>) -> Result<Appended> {
        let events: Vec<NewEvent> = events.into_iter().collect();
        if events.is_empty() {
            return Err(Error::InvalidInput(format!(
                "TestBed::given({stream:?}) without events: give at least one"
            )));
        }
        self.store.append(stream, ExpectedVersion::Any, events).await
    }

    /// Applies every event given so far (through the projection's error policy), then returns
    /// its report: deterministic, with no polling or sleeping in the test.
    pub async fn run_to_head(&self) -> Result<WorkerReport> {
        let reports = self.engine.catch_up_only([self.name.as_str()]).await?;
        reports
            .into_iter()
            .next()
            .ok_or_else(|| Error::Internal(format!("no report for projection {}", self.name)))
    }

    /// Runs `f` on a connection to the store, to query the read model.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        self.store.read(f).await
    }

    /// The projection's dead letters, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let mut out = self.engine.dead_letters(Some(&self.name)).await?;
        out.sort_by_key(|d| d.event.position);
        Ok(out)
    }

    /// The projection's status (state, checkpoint, errors, last error).
    pub async fn status(&self) -> Result<Status> {
        self.engine
            .status()
            .await?
            .into_iter()
            .find(|s| s.name == self.name)
            .ok_or_else(|| Error::Internal(format!("no status for projection {}", self.name)))
    }

    /// The store, for what the test bed does not cover (appends with an expected version,
    /// inline appends).
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// The engine, for what the test bed does not cover (rebuilds, pauses).
    pub fn engine(&self) -> &SqliteEngine {
        &self.engine
    }
}
