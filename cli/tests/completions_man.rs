//! `projectionist completions SHELL` and `projectionist man`: generated from the command line's
//! own definition, so every command (the new ones too) is in them.

mod examples_support;

use examples_support::{bin, text};
use tempfile::TempDir;

fn output(args: &[&str]) -> String {
    let dir = TempDir::new().expect("tempdir");
    let out = bin(dir.path()).args(args).output().expect("run");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
}

#[test]
fn bash_completes_commands_and_options_when_sourced() {
    let script = output(&["completions", "bash"]);
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path().join("projectionist.bash");
    std::fs::write(&path, script).expect("write the script");
    // Bash itself runs the completion function, as it does on TAB.
    let complete = |words: &str| {
        let program = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _projectionist projectionist \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = std::process::Command::new("bash")
            .args(["--norc", "-c", &program])
            .output()
            .expect("bash runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let commands = complete("projectionist e");
    assert_eq!(commands.lines().collect::<Vec<_>>(), vec!["events"], "{commands}");
    let options = complete("projectionist test --j");
    assert_eq!(options.lines().collect::<Vec<_>>(), vec!["--junit"], "{options}");
    let shells = complete("projectionist completions f");
    assert_eq!(shells.lines().collect::<Vec<_>>(), vec!["fish"], "{shells}");
}

#[test]
fn zsh_and_fish_scripts_name_every_command() {
    let zsh = output(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef projectionist\n"), "{zsh}");
    let fish = output(&["completions", "fish"]);
    for command in [
        "test",
        "check",
        "events",
        "schema",
        "completions",
        "man",
        "run",
        "status",
    ] {
        assert!(zsh.contains(&format!("'{command}:")), "zsh lacks {command}");
        assert!(
            fish.contains(&format!("-a \"{command}\"")),
            "fish lacks {command}"
        );
    }
    let dir = TempDir::new().expect("tempdir");
    let out = bin(dir.path())
        .args(["completions", "tcsh"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_man_page_documents_the_commands_and_one_page_per_command_goes_into_a_folder() {
    let page = output(&["man"]);
    assert!(page.contains(".TH projectionist 1"), "{page}");
    for command in ["test", "check", "events", "completions"] {
        assert!(
            page.contains(&format!("projectionist\\-{command}(1)")),
            "{command}: {page}"
        );
    }
    let dir = TempDir::new().expect("tempdir");
    let out = bin(dir.path())
        .args(["man", "--dir", "pages"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out).1);
    let test_page =
        std::fs::read_to_string(dir.path().join("pages/projectionist-test.1")).expect("the test page");
    assert!(test_page.contains(".TH projectionist-test 1"), "{test_page}");
    assert!(test_page.contains("\\-\\-junit"), "{test_page}");
    assert!(test_page.contains("\\-\\-update"), "{test_page}");
}
