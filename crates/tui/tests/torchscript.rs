//! A model brought by the user, as TorchScript: the committed tiny fixture classifier (see
//! `python/make_torchscript_fixture.py`) beside the shipped segmenter runs through `cxr classify`
//! and `cxr explain` (Grad-CAM through its features/head split, LIME through forwards), and the
//! same weights exported with logits only get every explainer but those needing a feature map.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A models folder: the shipped segmenter and fixture `classifier` (`tiny-split` or
/// `tiny-logits`) as the classifier.
fn models(classifier: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["json", "safetensors"] {
        std::fs::copy(
            repo().join(format!("models/segmenter.{ext}")),
            dir.path().join(format!("segmenter.{ext}")),
        )
        .unwrap();
    }
    let fixtures = repo().join("crates/core/tests/fixtures/torchscript");
    for ext in ["json", "pt"] {
        std::fs::copy(
            fixtures.join(format!("{classifier}.{ext}")),
            dir.path().join(format!("classifier.{ext}")),
        )
        .unwrap();
    }
    dir
}

fn cxr(models: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(args)
        .env("CXR_MODELS", models)
        .output()
        .unwrap()
}

fn sample() -> String {
    repo()
        .join("samples/nih_00001299_000.png")
        .display()
        .to_string()
}

/// `cxr explain` of the sample with Grad-CAM and LIME (200 perturbations), overlays into `out`.
fn explain_grad_cam_and_lime(models: &Path, out: &Path) -> Output {
    let (sample, out) = (sample(), out.display().to_string());
    let method = ["--method", "grad-cam,lime", "--param", "lime:samples=200"];
    cxr(
        models,
        &[&["explain", &sample][..], &method, &["--out", &out]].concat(),
    )
}

#[test]
fn a_torchscript_classifier_classifies_and_explains_with_grad_cam_and_lime() {
    let models = models("tiny-split");
    let out = cxr(models.path(), &["classify", &sample()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &line["probabilities"];
    let total = p["covid"].as_f64().unwrap() + p["normal"].as_f64().unwrap();
    assert!((total - 1.0).abs() < 1e-5, "{line}");

    let dir = tempfile::tempdir().unwrap();
    let out = explain_grad_cam_and_lime(models.path(), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let explanations = report["explanations"].as_array().unwrap();
    assert_eq!(explanations.len(), 2);
    for (e, method) in explanations.iter().zip(["grad-cam", "lime"]) {
        assert_eq!(e["method"], method, "{e}");
        let overlay = PathBuf::from(e["overlay"].as_str().unwrap());
        assert!(std::fs::read(&overlay).unwrap().starts_with(b"\x89PNG"));
        assert!(e["heatmap"]["max"].as_f64().unwrap() > 0.0, "{e}");
    }
}

#[test]
fn a_logits_only_model_refuses_grad_cam_by_name_and_still_runs_lime() {
    let models = models("tiny-logits");
    let dir = tempfile::tempdir().unwrap();
    let out = explain_grad_cam_and_lime(models.path(), dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "one method failed: {stderr}");
    assert!(
        stderr.contains("grad-cam needs the last feature map and its gradients")
            && stderr.contains("features/head"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let explanations = report["explanations"].as_array().unwrap();
    assert!(explanations[0]["error"].is_string(), "{report}");
    assert_eq!(explanations[1]["method"], "lime");
    assert!(explanations[1]["overlay"].is_string(), "{report}");
}
