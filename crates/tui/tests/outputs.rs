//! What `cxr explain --raw` writes, read back by an independent reader (numpy, in the project's
//! .venv) and checked against the JSON report.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

mod support;

use std::path::Path;
use std::process::Command;

use support::{repo, sample};

/// Runs `crates/tui/tests/support/SCRIPT ARGS` with the project's virtualenv's Python
/// (scripts/env.sh installs numpy, Pillow and jsonschema there): its stdout when it succeeds,
/// else its stdout and stderr.
fn support_script<S: AsRef<std::ffi::OsStr>>(script: &str, args: &[S]) -> Result<String, String> {
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("crates/tui/tests/support").join(script))
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
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
    let checked = support_script("check_raw.py", &[&written]).unwrap_or_else(|e| panic!("{e}"));
    let measured: serde_json::Value = serde_json::from_str(&checked).unwrap();
    assert_eq!(
        measured["grad-cam"]["full_shape"],
        serde_json::json!([report["height"], report["width"]])
    );
    assert!(measured["lime"]["superpixels"].as_u64().unwrap() > 10);
}

/// Validates `documents` against `docs/schema/SCHEMA` with Python's `jsonschema` (in the
/// project's .venv, installed by scripts/env.sh); the validator's output when they fail.
fn validate(schema: &str, documents: &[&Path]) -> Result<(), String> {
    let schemas = repo().join("docs/schema");
    let mut args = vec![schemas.as_os_str(), schema.as_ref()];
    args.extend(documents.iter().map(|d| d.as_os_str()));
    support_script("validate_json.py", &args).map(|_| ())
}

#[test]
fn real_reports_follow_the_documented_json_schemas() {
    let dir = tempfile::tempdir().unwrap();
    explain_raw(dir.path(), "grad-cam,lime");
    let report = dir.path().join("hannover_2c35005f.json");
    let index = dir.path().join("raw/hannover_2c35005f.raw.json");
    validate("explain-report.schema.json", &[&report]).unwrap();
    validate("raw-index.schema.json", &[&index]).unwrap();

    let classified = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["classify", "--device", "cpu"])
        .arg(sample("hannover_2c35005f.png"))
        .arg(sample("nih_00001299_000.png"))
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert_eq!(classified.status.code(), Some(0));
    let lines = dir.path().join("classify.jsonl");
    std::fs::write(&lines, &classified.stdout).unwrap();
    validate("classify-report.schema.json", &[&lines]).unwrap();

    // The schemas are strict: a report with a field missing, or one they do not document,
    // fails, and so does a classification read as an explanation report.
    let mut value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    value.as_object_mut().unwrap().remove("label");
    value["undocumented"] = 1.into();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, value.to_string()).unwrap();
    let errors = validate("explain-report.schema.json", &[&broken]).unwrap_err();
    assert!(
        errors.contains("'label' is a required property"),
        "{errors}"
    );
    assert!(errors.contains("undocumented"), "{errors}");
    let errors = validate("explain-report.schema.json", &[&lines]).unwrap_err();
    assert!(
        errors.contains("'explanations' is a required property"),
        "{errors}"
    );
}

#[test]
fn eval_plots_are_drawn_linked_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let plots = dir.path().join("plots");
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["eval", "--device", "cpu"])
        .arg(repo().join("samples/manifest.csv"))
        .arg("--plots")
        .arg(&plots)
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Linked from the Markdown output and listed in the JSON.
    let roc = plots.join("roc.svg");
    assert!(
        stderr.contains(&format!(
            "- roc: [SVG]({}) [PNG]({})",
            roc.display(),
            plots.join("roc.png").display()
        )),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["plots"].as_array().unwrap().len(), 4);
    // Parsed by Python's XML parser and Pillow: elements, words and the PNGs' size.
    let read = support_script("plot_structure.py", &[&plots]).unwrap_or_else(|e| panic!("{e}"));
    insta::assert_snapshot!(read);
}
