//! Declarative SQL projections: projections written as SQL in a TOML file, so that no Rust is
//! needed.
//!
//! This module is backend-neutral. It parses the config (with errors that name the file, the
//! projection, the key and what was expected), splits `setup` and `reset` SQL into statements,
//! and turns each handler statement's named parameters (`:stream_id`, `:data.customer.name`, …)
//! into positional placeholders plus an ordered list of [`ParamSource`]s. Values are always
//! bound, never spliced into the SQL text. Each backend renders the placeholders its own way
//! (`?N` for SQLite, `$N` for PostgreSQL) and binds the extracted [`ParamValue`]s; the one body
//! ([`SqlBody`]) runs on any store through [`SqlTx`](crate::core::sql::SqlTx).
//!
//! The format is documented in `docs/config.md`.

mod body;

pub use body::{projection, HandlerStatements, SqlBody};

mod config;
mod lex;
mod params;
mod statement;

pub use config::{
    describe as describe_value, Config, ConfigError, ProjectionDef, RawTable, DEFAULT_BATCH_SIZE,
    DEFAULT_ERROR_POLICY, DEFAULT_MAX_RETRIES, MAX_BATCH_SIZE,
};
#[cfg(feature = "postgres")]
pub(crate) use lex::replace_positional;
pub use lex::{created_tables, split_statements, SqlError};
pub use params::{Decoded, ParamSource, ParamValue, PARAMETER_NAMES};
pub use statement::Statement;

#[cfg(test)]
mod tests;
