//! The ONNX Runtime backend on the shipped models and their committed exports: the same
//! numbers as libtorch (within 1e-4), `auto` choosing it only when it can, and exports that do
//! not belong to the weights refused.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::compute::{Backend, Compute, Precision};
use cxr_core::models::onnx::OnnxSegmenter;
use cxr_core::models::{ModelFiles, UNetSegmenter};
use cxr_core::pipeline::{CLASSIFIER_NAME, Pipeline, SEGMENTER_NAME};
use cxr_core::preprocess;
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
        // Files only: the leave-one-source-out models' folder is not a part of these models.
        if path.is_file() && (with_onnx || path.extension().is_none_or(|e| e != "onnx")) {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

#[test]
fn the_unet_gives_the_same_logits_on_both_backends() {
    let files = ModelFiles::new(&models(), SEGMENTER_NAME);
    let torch = UNetSegmenter::load(&files, Device::Cpu).unwrap();
    let onnx = OnnxSegmenter::load(&files, 1, Precision::Fp32).unwrap();
    let side = torch.meta.input_side;
    let mut worst = 0.0f64;
    for path in samples() {
        let xray = Xray::open(&path).unwrap();
        let input = Tensor::from_slice(&preprocess::segmenter_input(&xray.gray, side)).view([
            1,
            1,
            i64::from(side),
            i64::from(side),
        ]);
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
            torch.analyse_file(&path).unwrap(),
            onnx.analyse_file(&path).unwrap(),
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

fn load_at(dir: &Path, precision: Precision) -> cxr_core::Result<Pipeline> {
    let compute = Compute::on(Device::Cpu).with_backend(Backend::Onnx);
    Pipeline::load_with(dir, &compute.with_precision(precision))
}

/// Dice of two lung masks.
fn dice(a: &cxr_core::mask::LungMask, b: &cxr_core::mask::LungMask) -> f64 {
    let (mut both, mut total) = (0usize, 0usize);
    for (p, q) in a.as_raw().iter().zip(b.as_raw()) {
        both += usize::from(*p >= 128 && *q >= 128);
        total += usize::from(*p >= 128) + usize::from(*q >= 128);
    }
    2.0 * both as f64 / total.max(1) as f64
}

/// `onnx` with one more metadata entry: an ONNX file is a protobuf `ModelProto`, whose field
/// 14 (`metadata_props`, repeated key/value entries) may be appended at the end.
fn with_metadata(onnx: &[u8], key: &str, value: &str) -> Vec<u8> {
    fn varint(mut n: usize, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    let mut entry = Vec::new();
    for (tag, text) in [(0x0a, key), (0x12, value)] {
        entry.push(tag);
        varint(text.len(), &mut entry);
        entry.extend_from_slice(text.as_bytes());
    }
    let mut out = onnx.to_vec();
    out.push(0x72); // field 14, length-delimited
    varint(entry.len(), &mut out);
    out.extend(entry);
    out
}

#[test]
fn auto_runs_an_int8_export_whose_check_passed() {
    let dir = copy_of_models(true);
    // A stand-in INT8 file (the FP32 graph, so it agrees) recording a passed check, as
    // python/quantise_onnx.py stamps the files it keeps.
    let fp32 = std::fs::read(models().join("segmenter.onnx")).unwrap();
    let stamped = with_metadata(&fp32, "cxr.precision_check", "passed (test)");
    std::fs::write(dir.path().join("segmenter.int8.onnx"), stamped).unwrap();
    let files = ModelFiles::new(dir.path(), SEGMENTER_NAME);
    let auto = OnnxSegmenter::load(&files, 1, Precision::Auto).unwrap();
    assert_eq!(
        (auto.precision, auto.file),
        (Precision::Int8, files.onnx_int8())
    );
    let fp32 = OnnxSegmenter::load(&files, 1, Precision::Fp32).unwrap();
    assert_eq!((fp32.precision, fp32.file), (Precision::Fp32, files.onnx()));
    let (a, b) = (
        load_at(dir.path(), Precision::Auto).unwrap(),
        load_at(dir.path(), Precision::Fp32).unwrap(),
    );
    assert_ne!(
        a.fingerprint, b.fingerprint,
        "cached results never mix precisions"
    );
    let path = &samples()[0];
    let (m, n) = (a.analyse_file(path).unwrap(), b.analyse_file(path).unwrap());
    assert!(dice(&m.mask, &n.mask) > 0.9999);
}

#[test]
fn an_int8_file_without_a_passed_check_runs_only_when_asked_for() {
    let dir = copy_of_models(true);
    // The FP32 export under the INT8 name: from the right weights, but no check recorded.
    std::fs::copy(
        models().join("segmenter.onnx"),
        dir.path().join("segmenter.int8.onnx"),
    )
    .unwrap();
    let files = ModelFiles::new(dir.path(), SEGMENTER_NAME);
    let auto = OnnxSegmenter::load(&files, 1, Precision::Auto).unwrap();
    assert_eq!((auto.precision, auto.file), (Precision::Fp32, files.onnx()));
    let asked = OnnxSegmenter::load(&files, 1, Precision::Int8).unwrap();
    assert_eq!(
        (asked.precision, asked.file),
        (Precision::Int8, files.onnx_int8())
    );
}

#[test]
fn int8_is_refused_on_libtorch_and_where_no_model_has_an_int8_export() {
    let compute = Compute::on(Device::Cpu).with_precision(Precision::Int8);
    let e = Pipeline::load_with(&models(), &compute.with_backend(Backend::Torch))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("runs on ONNX Runtime"), "{e}");
    // The shipped models have none: python/quantise_onnx.py refused both (see the README).
    let dir = copy_of_models(true);
    let e = load_at(dir.path(), Precision::Int8)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("int8.onnx") && e.contains("quantise_onnx.py"),
        "{e}"
    );
    // Without INT8 files `auto` is plain FP32.
    assert_eq!(
        load_at(dir.path(), Precision::Auto).unwrap().fingerprint,
        load_at(dir.path(), Precision::Fp32).unwrap().fingerprint
    );
}

/// Loading reads each model file once, on either backend: the JSON that chose the backend is
/// the one parsed, the weights an export is checked against are the ones loaded, and the
/// fingerprint hashes the same bytes. (Before: the classifier's JSON was read five times and
/// its weights three, on ONNX Runtime.)
#[test]
fn loading_reads_each_model_file_once() {
    let dir = models();
    let name = |stem: &str| dir.join(stem);
    for (backend, expected) in [
        (
            Backend::Onnx,
            vec![
                name("segmenter.json"),
                name("segmenter.onnx"),
                name("segmenter.safetensors"),
                name("classifier.json"),
                name("classifier.safetensors"),
                name("classifier.onnx"),
            ],
        ),
        (
            Backend::Torch,
            vec![
                name("segmenter.json"),
                name("segmenter.safetensors"),
                name("classifier.json"),
                name("classifier.safetensors"),
            ],
        ),
    ] {
        let pipeline = load(&dir, backend).unwrap();
        assert_eq!(pipeline.files, expected, "{backend:?}");
    }
}
