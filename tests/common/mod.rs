//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `diffstream` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diffstream"))
}

/// Runs the binary, panicking with its stderr when it fails.
pub fn diffstream(args: &[&str]) -> Output {
    let out = Command::new(bin()).args(args).output().expect("the diffstream binary runs");
    assert!(
        out.status.success(),
        "diffstream {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every `*.jsonl` file in `dir` (not the change files), by output name, as lines.
pub fn snapshots(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if let Some(output) = name.strip_suffix(".jsonl").filter(|n| !n.ends_with(".changes")) {
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(output.to_string(), text.lines().map(String::from).collect());
        }
    }
    out
}
