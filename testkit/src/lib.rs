//! The test kit of projectionist's own tests, used by every test file that needs a service, a
//! browser or the `projectionist` binary:
//!
//! - the service URLs: [`postgres_url`], [`nats_url`], [`amqp_url`] (each from its
//!   `PROJECTIONIST_TEST_*_URL` variable, else the local default);
//! - the CI-or-skip rule: [`require_service`] and [`require`] hand a test what it needs, or
//!   tell it to return after a loud `SKIP` line. Under `CI=true`, and when the test script runs
//!   the tests (`PROJECTIONIST_TEST_NO_SKIP=1`), nothing may be skipped: a missing service
//!   fails the test;
//! - fresh PostgreSQL schemas and databases: [`postgres`]; throwaway clusters of a test's own
//!   (started late, stopped, their server log read): [`pg_cluster`];
//! - the binary runner: [`binary!`] and [`Binary`], the one way a test finds and starts the
//!   `projectionist` binary.
//!
//! A test skipped here prints its SKIP line but still counts as passed for the test runner, so
//! `scripts/test` checks what is available first and filters out (reported as skipped, and
//! listed under "not run") the tests that cannot run; inside that run a skip is a failure.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;

pub mod pg_cluster;
pub mod postgres;

/// The variable that turns skipping off outside CI (the test script sets it).
pub const NO_SKIP_ENV: &str = "PROJECTIONIST_TEST_NO_SKIP";

/// A service some tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Postgres,
    /// NATS with JetStream.
    Nats,
    RabbitMq,
    /// A Kafka-protocol broker (tansu, Kafka, Redpanda).
    Kafka,
}

impl Service {
    /// The service's name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Service::Postgres => "PostgreSQL",
            Service::Nats => "NATS (with JetStream)",
            Service::RabbitMq => "RabbitMQ",
            Service::Kafka => "a Kafka broker",
        }
    }

    /// The variable that holds the service's URL.
    pub fn url_env(self) -> &'static str {
        match self {
            Service::Postgres => "PROJECTIONIST_TEST_POSTGRES_URL",
            Service::Nats => "PROJECTIONIST_TEST_NATS_URL",
            Service::RabbitMq => "PROJECTIONIST_TEST_AMQP_URL",
            Service::Kafka => "PROJECTIONIST_TEST_KAFKA_URL",
        }
    }

    /// The URL of the local service, when the variable is not set.
    pub fn default_url(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Service::Nats => "nats://127.0.0.1:4222",
            Service::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Service::Kafka => "kafka://127.0.0.1:9092",
        }
    }

    /// The URL the tests use: the variable's value, else the default.
    pub fn url(self) -> String {
        std::env::var(self.url_env()).unwrap_or_else(|_| self.default_url().to_owned())
    }
}

/// The PostgreSQL URL (`PROJECTIONIST_TEST_POSTGRES_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`).
pub fn postgres_url() -> String {
    Service::Postgres.url()
}

/// The NATS URL (`PROJECTIONIST_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).
pub fn nats_url() -> String {
    Service::Nats.url()
}

/// The RabbitMQ URL (`PROJECTIONIST_TEST_AMQP_URL`, default
/// `amqp://guest:guest@127.0.0.1:5672/%2f`).
pub fn amqp_url() -> String {
    Service::RabbitMq.url()
}

/// The Kafka URL, without a topic (`PROJECTIONIST_TEST_KAFKA_URL`, default
/// `kafka://127.0.0.1:9092`).
pub fn kafka_url() -> String {
    Service::Kafka.url()
}

/// `base` with the query parameters `params` (`a=1&b=2`) added.
pub fn with_params(base: &str, params: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{params}")
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "true" || v == "1")
}

/// Whether this is CI (`CI=true` or `CI=1`).
pub fn ci() -> bool {
    flag("CI")
}

/// Whether a test may skip itself when what it needs is missing: not under CI, and not in a
/// run of the test script (which checks first and filters out what cannot run).
pub fn skipping_allowed() -> bool {
    !ci() && !flag(NO_SKIP_ENV)
}

/// The CI-or-skip rule for `service`: the value when `found` is `Ok`. Otherwise, when skipping
/// is not allowed ([`skipping_allowed`]) the test fails; else it prints a loud SKIP line for
/// `test` and returns `None`, and the test returns.
#[track_caller]
pub fn require_service<T, E: Display>(test: &str, service: Service, found: Result<T, E>) -> Option<T> {
    require(
        test,
        &format!("{} is not reachable at {}", service.name(), service.url_env()),
        &format!(
            "set {} (default {}), or run scripts/test, which starts it",
            service.url_env(),
            service.default_url()
        ),
        found,
    )
}

/// The CI-or-skip rule for anything a test needs (a program, a folder): the value when `found`
/// is `Ok`; else a failure where skipping is not allowed, or a loud SKIP line for `test` and
/// `None`. `missing` says what is missing, `hint` how to get it.
#[track_caller]
pub fn require<T, E: Display>(test: &str, missing: &str, hint: &str, found: Result<T, E>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(e) => {
            if !skipping_allowed() {
                let why = if ci() { "CI=true" } else { "scripts/test" };
                panic!("{test} cannot run, and {why} allows no skipping: {missing} ({e}); {hint}");
            }
            eprintln!("\n!!!!!!!! SKIP {test}: {missing} ({e}); {hint} !!!!!!!!\n");
            None
        }
    }
}

/// The `projectionist` binary that Cargo built for the calling test crate (a test of
/// `projectionist-cli`): `env!("CARGO_BIN_EXE_projectionist")`, read where the macro is used.
#[macro_export]
macro_rules! binary {
    () => {
        $crate::Binary::new(env!("CARGO_BIN_EXE_projectionist"))
    };
}

/// The `projectionist` binary: see [`binary!`].
#[derive(Clone, Debug)]
pub struct Binary {
    path: PathBuf,
}

impl Binary {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Binary { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The binary, to run in `dir`, with no setting inherited from the environment: every
    /// `PROJECTIONIST_*` variable (but the kit's own `PROJECTIONIST_TEST_*`) and `RUST_LOG`
    /// removed, so that a test sets what it means.
    pub fn command(&self, dir: &Path) -> Command {
        let mut c = Command::new(&self.path);
        c.current_dir(dir).env_remove("RUST_LOG");
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("PROJECTIONIST_") && !name.starts_with("PROJECTIONIST_TEST_") {
                c.env_remove(&*name);
            }
        }
        c
    }
}

/// The workspace's root folder.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test kit lives in the workspace")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_added_to_the_query() {
        assert_eq!(
            with_params("postgres://h/db", "schema=s"),
            "postgres://h/db?schema=s"
        );
        assert_eq!(
            with_params("postgres://h/db?sslmode=disable", "schema=s"),
            "postgres://h/db?sslmode=disable&schema=s"
        );
    }

    #[test]
    fn found_is_handed_over() {
        assert_eq!(
            require_service("t", Service::Postgres, Ok::<_, String>(7)),
            Some(7)
        );
    }

    #[test]
    fn the_command_inherits_no_setting() {
        let c = Binary::new("/bin/true").command(Path::new("."));
        let removed: Vec<_> = c
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert!(removed.contains(&"RUST_LOG".to_owned()), "{removed:?}");
        assert!(
            removed.iter().all(|k| !k.starts_with("PROJECTIONIST_TEST_")),
            "{removed:?}"
        );
    }
}
