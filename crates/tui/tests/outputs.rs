//! What `cxr explain --raw` writes, read back by an independent reader (numpy, in the project's
//! .venv) and checked against the JSON report.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

mod support;

use std::path::Path;
use std::process::Command;

use support::{repo, sample};

/// The project's virtualenv's Python (scripts/env.sh installs numpy there).
fn python() -> std::path::PathBuf {
    repo().join(".venv/bin/python")
}

fn explain_raw(out: &Path, methods: &str) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["explain", "--device", "cpu", "-m", methods])
        .args(["-p", "lime:samples=200", "--no-faithfulness", "--out"])
        .arg(out)
        .arg("--raw")
        .arg(out.join("raw"))
        .arg(sample("hannover_2c35005f.png"))
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn raw_arrays_read_back_in_numpy_match_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = explain_raw(dir.path(), "grad-cam,lime");
    let index = report["raw"].as_str().unwrap();
    assert!(index.ends_with("raw/hannover_2c35005f.raw.json"), "{index}");
    let written = dir.path().join("hannover_2c35005f.json");
    let checked = Command::new(python())
        .arg(repo().join("crates/tui/tests/support/check_raw.py"))
        .arg(&written)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    let measured: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert_eq!(
        measured["grad-cam"]["full_shape"],
        serde_json::json!([report["height"], report["width"]])
    );
    assert!(measured["lime"]["superpixels"].as_u64().unwrap() > 10);
}
