//! A reader that stops early (`projectionist status | head -1`) does not make a command panic.

use std::process::Stdio;

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let bin = projectionist_testkit::binary!();
    std::fs::write(
        dir.path().join("projectionist.toml"),
        include_str!("../../examples/projectionist.toml"),
    )
    .unwrap();
    let init = bin.command(dir.path()).arg("init").output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    for args in [
        vec!["status", "--json"],
        vec!["--help"],
        vec!["generate", "--events", "100000"],
    ] {
        let mut child = bin
            .command(dir.path())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.status.success(), "{args:?}: {stderr}");
    }
}
