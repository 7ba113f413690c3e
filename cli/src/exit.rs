//! Exit codes: 0 success (and a long command stopped by one SIGINT or SIGTERM), 1 runtime
//! failure, 2 usage or configuration error, 3 `wait` timed out, 130 a second signal.

use std::fmt;

use projectionist::declarative::ConfigError;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
/// A second SIGINT or SIGTERM: the command exited at once (see `signals`).
pub const INTERRUPTED: u8 = 130;

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
/// unsupported database URL, a setting the database or broker cannot honour), 1 for
/// everything else.
pub fn code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Usage>() || cause.is::<ConfigError>() {
            return USAGE;
        }
        if let Some(e) = cause.downcast_ref::<projectionist::Error>() {
            if is_usage(e) {
                return USAGE;
            }
        }
    }
    FAILURE
}

/// Whether the library's error is the user's to fix in the command line or the config.
fn is_usage(e: &projectionist::Error) -> bool {
    use projectionist::Error;
    match e {
        Error::UnknownProjection { .. }
        | Error::InvalidInput(_)
        | Error::Config(_)
        | Error::Unsupported(_) => true,
        // The config's setup SQL (or a handler statement checked at setup) is wrong.
        Error::Lifecycle { step, .. } => *step == "setup",
        _ => false,
    }
}

/// The error and its causes, one `: ` apart.
pub fn render(err: &anyhow::Error) -> String {
    format!("{err:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use projectionist::Error;

    #[test]
    fn the_library_errors_that_are_the_users_to_fix_exit_2() {
        let code = |e: Error| code_of(&anyhow::Error::new(e).context("cannot open the database x"));
        assert_eq!(
            code(Error::InvalidInput("stream_id must not be empty".into())),
            USAGE
        );
        assert_eq!(
            code(Error::Config("invalid PostgreSQL schema name".into())),
            USAGE
        );
        assert_eq!(
            code(Error::Unsupported("partitions need PostgreSQL".into())),
            USAGE
        );
        assert_eq!(
            code(Error::UnknownProjection {
                name: "x".into(),
                known: Vec::new()
            }),
            USAGE
        );
        let lifecycle = |step| Error::Lifecycle {
            projection: "p".into(),
            step,
            message: "m".into(),
        };
        assert_eq!(code(lifecycle("setup")), USAGE);
        assert_eq!(code(lifecycle("reset")), FAILURE);
        assert_eq!(
            code(Error::Database {
                op: "connecting",
                message: "refused".into(),
                retryable: true,
                cause: None
            }),
            FAILURE
        );
        assert_eq!(
            code(Error::Broker {
                broker: "NATS JetStream",
                message: "cannot connect".into(),
                retryable: true
            }),
            FAILURE
        );
        assert_eq!(code(Error::Internal("a task panicked".into())), FAILURE);
        assert_eq!(code(Error::UnknownDeadLetter(9)), FAILURE);
    }
}
