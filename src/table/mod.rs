//! Table sources: events read from a table a team already has, where it lies, in PostgreSQL or
//! SQLite, configured by a mapping of its columns ([`TableMapping`]); and a preset for Python
//! `eventsourcing`'s stored-event tables. Projectionist never writes to the table.
//!
//! On PostgreSQL, a writer can take a position and commit after a writer that took a later one.
//! Readers never pass such a gap while it may still fill: the gap guard ([`gaps`]) waits until
//! every transaction that was running when the gap was seen has ended, which needs positions
//! from a sequence with `CACHE 1` (checked at open). SQLite serializes writers, so its
//! positions commit in order.
//!
//! See docs/config.md ("Table sources") and docs/eventsourcing.md.

//!
//! The mapping (and its URL schemes) is part of every build; reading needs the sqlite or
//! postgres feature.

#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod decode;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod eventsourcing;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod gaps;
mod mapping;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use decode::MAX_PAYLOAD_BYTES;
pub use mapping::{Compression, EventsourcingPreset, TableDatabase, TableMapping, SCHEMES};
#[cfg(feature = "postgres")]
pub use postgres::PgTableSource;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteTableSource;

#[cfg(any(feature = "sqlite", feature = "postgres"))]
use crate::core::erased::AnySource;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use crate::core::error::{Error, Result};

/// The metric counting rows whose payload could not be decoded (passed over, each logged at
/// WARN), labelled by table.
pub const METRIC_UNDECODABLE: &str = "projectionist_table_undecodable_total";

/// Opens the table source of `url` (see [`TableMapping::from_url`]), checked against the
/// table.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub async fn open(url: &str) -> Result<AnySource> {
    let mapping = TableMapping::from_url(url)?;
    match mapping.database {
        #[cfg(feature = "postgres")]
        TableDatabase::Postgres => Ok(AnySource::new(PgTableSource::open(mapping).await?)),
        #[cfg(feature = "sqlite")]
        TableDatabase::Sqlite => Ok(AnySource::new(SqliteTableSource::open(mapping).await?)),
        #[allow(unreachable_patterns)]
        other => Err(Error::Unsupported(format!(
            "this build has no {other:?} support: build projectionist with its feature"
        ))),
    }
}
