//! Shared by the tests of `projectionist test`, `check` and `schema`: folders with the example
//! projections (and their example tests), and the binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use tempfile::TempDir;

/// The example projections (what `quickstart` writes as projectionist.toml).
pub const CONFIG: &str = include_str!("../../../examples/projectionist.toml");
/// Their example tests (what `quickstart` writes as projectionist.test.toml).
pub const TESTS: &str = include_str!("../../../examples/projectionist.test.toml");

/// The binary, to run in `dir`, with a two-minute timeout.
pub fn bin(dir: &Path) -> Command {
    let mut c = Command::from_std(projectionist_testkit::binary!().command(dir));
    c.timeout(Duration::from_secs(120));
    c
}

/// Standard output and standard error, as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A temporary folder with the example projections and their example tests.
pub fn example_dir() -> TempDir {
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("write config");
    std::fs::write(dir.path().join("projectionist.test.toml"), TESTS).expect("write tests");
    dir
}
