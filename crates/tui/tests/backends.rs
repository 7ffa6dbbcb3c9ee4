//! `--backend` and `--threads` as a user meets them: both backends classify alike, a missing
//! ONNX Runtime is a clear error for `--backend onnx` and no problem for `auto`.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `cxr classify --device cpu ARGS... SAMPLES` with `env` set.
fn classify(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["classify", "--device", "cpu", "--models"])
        .arg(repo().join("models"))
        .args(args)
        .args(
            ["hannover_e1446fe8.png", "nih_00001299_000.png"]
                .map(|f| repo().join("samples").join(f)),
        )
        .envs(env.iter().copied())
        .env_remove("CXR_BACKEND")
        .env_remove("CXR_THREADS")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn probabilities(out: &Output) -> Vec<(String, f64)> {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["label"].as_str().unwrap().to_owned(),
                v["probabilities"]["covid"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn both_backends_classify_alike_with_any_thread_count() {
    let torch = probabilities(&classify(&["--backend", "torch", "--threads", "1"], &[]));
    let onnx = probabilities(&classify(&["--backend", "onnx"], &[]));
    let threads = probabilities(&classify(&["--backend", "onnx"], &[("CXR_THREADS", "2")]));
    assert_eq!(torch.len(), 2);
    for ((a, b), c) in torch.iter().zip(&onnx).zip(&threads) {
        assert_eq!((&a.0, &a.0), (&b.0, &c.0));
        assert!(
            (a.1 - b.1).abs() < 1e-4 && (b.1 - c.1).abs() < 1e-4,
            "{a:?} {b:?} {c:?}"
        );
    }
}

#[test]
fn without_onnx_runtime_onnx_is_an_error_and_auto_falls_back() {
    let missing = [("CXR_ONNXRUNTIME", "/nonexistent/libonnxruntime.so")];
    let out = classify(&["--backend", "onnx"], &missing);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ONNX Runtime is not available")
            && stderr(&out).contains("/nonexistent/libonnxruntime.so"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        probabilities(&classify(&["--backend", "auto"], &missing)).len(),
        2
    );
}

#[test]
fn nonsense_backends_and_thread_counts_exit_2() {
    for args in [["--backend", "tensorrt"], ["--threads", "0"]] {
        let out = classify(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(args[0]), "{}", stderr(&out));
    }
}
