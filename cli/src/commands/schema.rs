//! `projectionist schema`: the JSON Schema of projectionist.toml (schema/projectionist.schema.json
//! in the repository), for editors whose TOML language server completes and checks keys.

use anyhow::{Context, Result};

use crate::output;

/// The JSON Schema of the projections file.
pub const SCHEMA: &str = include_str!("../../../schema/projectionist.schema.json");

pub fn run() -> Result<()> {
    output::write_stdout(SCHEMA.as_bytes()).context("cannot write the schema")
}
