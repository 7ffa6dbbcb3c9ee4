//! The ONNX Runtime backend on the shipped models and their committed exports: the same
//! numbers as libtorch (within 1e-4), `auto` choosing it only when it can, and exports that do
//! not belong to the weights refused.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::compute::{Backend, Compute};
use cxr_core::models::onnx::OnnxSegmenter;
use cxr_core::models::{ModelFiles, UNetSegmenter};
use cxr_core::pipeline::{CLASSIFIER_NAME, Pipeline, SEGMENTER_NAME};
use cxr_core::preprocess::{self, SEGMENTER_SIDE};
use cxr_core::tch::{self, Device, Tensor};
use cxr_core::xray::Xray;

const TOLERANCE: f64 = 1e-4;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> PathBuf {
    repo().join("models")
}

fn samples() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    files
}

fn load(dir: &Path, backend: Backend) -> cxr_core::Result<Pipeline> {
    Pipeline::load_with(dir, &Compute::on(Device::Cpu).with_backend(backend))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

/// A copy of the shipped models' files, without the ONNX exports unless `with_onnx`.
fn copy_of_models(with_onnx: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(models()).unwrap() {
        let path = entry.unwrap().path();
        if with_onnx || path.extension().is_none_or(|e| e != "onnx") {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn the_unet_gives_the_same_logits_on_both_backends() {
    let files = ModelFiles::new(&models(), SEGMENTER_NAME);
    let torch = UNetSegmenter::load(&files, Device::Cpu).unwrap();
    let onnx = OnnxSegmenter::load(&files, 1).unwrap();
    let side = i64::from(SEGMENTER_SIDE);
    let mut worst = 0.0f64;
    for path in samples() {
        let xray = Xray::open(&path).unwrap();
        let input =
            Tensor::from_slice(&preprocess::segmenter_input(&xray.gray)).view([1, 1, side, side]);
        let expected = tch::no_grad(|| torch.forward_t(&input, false));
        worst = worst.max(max_diff(&expected, &onnx.logits(&input).unwrap()));
    }
    assert!(worst < TOLERANCE, "U-Net logits differ by {worst:e}");
}

#[test]
fn classification_is_the_same_on_both_backends() {
    let torch = load(&models(), Backend::Torch).unwrap();
    let onnx = load(&models(), Backend::Onnx).unwrap();
    assert_eq!(
        (torch.compute.backend, onnx.compute.backend),
        (Backend::Torch, Backend::Onnx)
    );
    for path in samples() {
        let (a, b) = (
            torch.analyze_file(&path).unwrap(),
            onnx.analyze_file(&path).unwrap(),
        );
        let name = path.display();
        // The masks may differ only where a probability sits within 1e-4 of the threshold.
        let differing = a
            .mask
            .as_raw()
            .iter()
            .zip(b.mask.as_raw())
            .filter(|(x, y)| x != y)
            .count();
        assert!(
            differing * 10_000 <= a.mask.as_raw().len(),
            "{name}: {differing} mask pixels differ"
        );
        assert_eq!(a.prediction.label, b.prediction.label, "{name}");
        for (class, p) in &a.prediction.probabilities {
            let q = b.prediction.probabilities[class];
            assert!(
                f64::from((p - q).abs()) < TOLERANCE,
                "{name} {class}: {p} vs {q}"
            );
        }
        let (fa, fb) = (a.features.unwrap(), b.features.unwrap());
        let worst = fa
            .iter()
            .zip(&fb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            f64::from(worst) < TOLERANCE,
            "{name}: pooled features differ by {worst:e}"
        );
        let (ta, tb) = (
            a.prediction.trust.familiarity.unwrap(),
            b.prediction.trust.familiarity.unwrap(),
        );
        assert!((ta - tb).abs() < 1e-3, "{name}: familiarity {ta} vs {tb}");
        assert_eq!(a.prediction.trust.flags, b.prediction.trust.flags, "{name}");
    }
}

#[test]
fn gradients_still_flow_through_libtorch_on_the_onnx_backend() {
    let onnx = load(&models(), Backend::Onnx).unwrap();
    let x = Tensor::rand([1, 1, 224, 224], (tch::Kind::Float, Device::Cpu)).set_requires_grad(true);
    let logits = onnx.classifier.logits(&x).unwrap();
    logits.get(0).get(0).backward();
    let grad = x.grad();
    assert!(grad.defined() && f64::try_from(grad.abs().sum(tch::Kind::Float)).unwrap() > 0.0);
    // And without gradients the same logits come from ONNX Runtime.
    let plain = tch::no_grad(|| onnx.classifier.logits(&x.detach())).unwrap();
    assert!(max_diff(&plain, &logits.detach()) < TOLERANCE);
}

#[test]
fn auto_uses_onnx_runtime_only_when_the_exports_are_there() {
    assert_eq!(
        load(&models(), Backend::Auto).unwrap().compute.backend,
        Backend::Onnx
    );
    let without = copy_of_models(false);
    assert_eq!(
        load(without.path(), Backend::Auto).unwrap().compute.backend,
        Backend::Torch
    );
    let e = load(without.path(), Backend::Onnx)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("segmenter.onnx") && e.contains("export_onnx.py"),
        "{e}"
    );
}

#[test]
fn an_export_of_other_weights_is_refused() {
    let dir = copy_of_models(true);
    // The segmenter's export posing as the classifier's: made from other weights.
    std::fs::copy(
        models().join("segmenter.onnx"),
        dir.path().join(format!("{CLASSIFIER_NAME}.onnx")),
    )
    .unwrap();
    let e = load(dir.path(), Backend::Onnx).err().unwrap().to_string();
    assert!(
        e.contains("classifier.onnx") && e.contains("other weights"),
        "{e}"
    );
    // `auto` refuses it too (issue 20): it falls back to libtorch for a missing export only,
    // since an export of other weights means the folder is not what it claims to be.
    let e = load(dir.path(), Backend::Auto).err().unwrap().to_string();
    assert!(
        e.contains("classifier.onnx") && e.contains("other weights"),
        "{e}"
    );
}

#[test]
fn the_fingerprint_tells_the_backends_apart() {
    let (torch, onnx) = (
        load(&models(), Backend::Torch).unwrap(),
        load(&models(), Backend::Onnx).unwrap(),
    );
    assert_ne!(torch.fingerprint, onnx.fingerprint);
}
