//! Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.

use std::fmt;

use projectionist::declarative::ConfigError;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;

/// A usage or configuration error (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error, as an `anyhow::Error`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// The exit code for an error: 2 for usage and configuration errors (bad arguments, a bad
/// config file or SQL in it that the database rejects at setup, an unknown projection, an
/// unsupported database URL), 1 for everything else.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Usage>() || cause.is::<ConfigError>() {
            return USAGE;
        }
        match cause.downcast_ref::<projectionist::Error>() {
            Some(projectionist::Error::UnknownProjection { .. }) => return USAGE,
            // The config's setup SQL (or a handler statement checked at setup) is wrong.
            Some(projectionist::Error::Lifecycle { step: "setup", .. }) => return USAGE,
            _ => {}
        }
    }
    FAILURE
}

/// The error and its causes, one `: ` apart.
pub fn render(err: &anyhow::Error) -> String {
    format!("{err:#}")
}
