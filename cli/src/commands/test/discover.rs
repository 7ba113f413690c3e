//! Which files `projectionist test` runs: the files given, and the `*.test.toml` files under
//! the folders given (the current folder when none is).

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::exit::usage;

/// What a test file's name ends with.
pub const SUFFIX: &str = ".test.toml";

/// Folders never searched: hidden ones, build output and dependencies.
fn skipped(name: &str) -> bool {
    name.starts_with('.') || name == "target" || name == "node_modules"
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| usage(format!("cannot read the folder {}: {e}", dir.display())))?;
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| usage(format!("cannot read the folder {}: {e}", dir.display())))?;
        found.push(entry.path());
    }
    found.sort();
    for path in found {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if !skipped(name) {
                walk(&path, out)?;
            }
        } else if name.ends_with(SUFFIX) {
            out.push(path.strip_prefix(".").map(Path::to_path_buf).unwrap_or(path));
        }
    }
    Ok(())
}

/// The test files of `paths` (files as given, folders searched for `*.test.toml`), in order.
pub fn test_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let default = [PathBuf::from(".")];
    let paths = if paths.is_empty() { &default[..] } else { paths };
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(usage(format!("{}: no such test file or folder", p.display())));
        }
    }
    if out.is_empty() {
        return Err(usage(format!(
            "no test files (*{SUFFIX}) in {}; see docs/testing.md, or run `projectionist quickstart` for an example",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(out)
}
