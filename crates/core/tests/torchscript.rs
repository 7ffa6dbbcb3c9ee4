//! The TorchScript backend, on the tiny committed fixtures (`python/make_torchscript_fixture.py`):
//! the JSON's `format` picks it, the capability query follows the exported methods, and a model
//! that does not fit cxr's input is refused when loaded, with the reason.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::models::{self, Classifier, Format, Gradients, ModelFiles};
use cxr_core::tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torchscript")
}

/// A folder holding fixture `from` as model `to` (its JSON edited by `edit`).
fn model_folder(
    from: &str,
    to: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join(format!("{from}.json"))).unwrap())
            .unwrap();
    edit(&mut meta);
    std::fs::write(dir.path().join(format!("{to}.json")), meta.to_string()).unwrap();
    std::fs::copy(
        fixtures().join(format!("{from}.pt")),
        dir.path().join(format!("{to}.pt")),
    )
    .unwrap();
    dir
}

fn classifier(dir: &Path) -> cxr_core::Result<Box<dyn Classifier>> {
    models::load_classifier(&ModelFiles::new(dir, "classifier"), Device::Cpu)
}

/// The error of a load that must fail.
fn refused<T>(loaded: cxr_core::Result<T>) -> String {
    match loaded {
        Ok(_) => panic!("loaded a model that should be refused"),
        Err(e) => e.to_string(),
    }
}

fn input() -> Tensor {
    Tensor::rand([1, 1, 224, 224], (Kind::Float, Device::Cpu))
}

#[test]
fn a_model_with_features_and_head_offers_its_feature_map() {
    let dir = model_folder("tiny-split", "classifier", |_| {});
    let files = ModelFiles::new(dir.path(), "classifier");
    assert_eq!(files.format().unwrap(), Format::TorchScript);
    let model = classifier(dir.path()).unwrap();
    assert_eq!(model.gradients(), Gradients::FeatureMap);
    assert_eq!(model.classes(), ["covid", "normal"]);
    let x = input();
    let logits = model.logits(&x).unwrap();
    assert_eq!(logits.size(), [1, 2]);
    let (features, split) = model.features_and_logits(&x).unwrap().unwrap();
    assert_eq!(features.size(), [1, 8, 28, 28]);
    let diff = f64::try_from((&split - &logits).abs().max()).unwrap();
    assert!(diff < 1e-6, "head(features(x)) = forward(x), diff {diff}");
    // Autograd reaches the feature map through the scripted head.
    let score = split.select(1, 0).sum(Kind::Float);
    let grads = Tensor::run_backward(&[&score], &[&features], false, false);
    assert_eq!(grads[0].size(), features.size());
    // The bias written by the fixture script: covid ahead on a uniform image.
    let p = model
        .predict(&Tensor::full(
            [1, 1, 224, 224],
            0.5,
            (Kind::Float, Device::Cpu),
        ))
        .unwrap();
    assert_eq!(p.label, "covid");
    assert!((p.probabilities["covid"] - 0.718).abs() < 0.01, "{p:?}");
}

#[test]
fn a_model_with_logits_only_offers_input_gradients_only() {
    let dir = model_folder("tiny-logits", "classifier", |_| {});
    let model = classifier(dir.path()).unwrap();
    assert_eq!(model.gradients(), Gradients::Input);
    assert!(model.features_and_logits(&input()).is_none());
    let x = input().set_requires_grad(true);
    let score = model.logits(&x).unwrap().select(1, 0).sum(Kind::Float);
    let grads = Tensor::run_backward(&[&score], &[&x], false, false);
    assert_eq!(grads[0].size(), [1, 1, 224, 224]);
    assert!(f64::try_from(grads[0].abs().sum(Kind::Float)).unwrap() > 0.0);
}

#[test]
fn models_that_do_not_fit_are_refused_when_loaded() {
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: [(&str, &str, Edit, &str); 5] = [
        (
            "tiny-split",
            "classifier",
            Box::new(|m| m["input_side"] = 256.into()),
            "input_side is 256",
        ),
        (
            "tiny-split",
            "classifier",
            Box::new(|m| m["architecture"] = serde_json::json!({ "features": "features" })),
            "only one of `features` and `head`",
        ),
        (
            "tiny-split",
            "classifier",
            Box::new(|m| {
                m["architecture"] = serde_json::json!({ "features": "nope", "head": "head" });
            }),
            "features/head on a blank input",
        ),
        (
            "tiny-split",
            "classifier",
            Box::new(|m| m["classes"] = serde_json::json!(["a"])),
            "two classes or more",
        ),
        (
            "tiny-split",
            "classifier",
            Box::new(|m| m["classes"] = serde_json::json!(["a", "b", "c"])),
            "expected [1, 3] logits, one per class",
        ),
    ];
    for (from, to, edit, expected) in cases {
        let dir = model_folder(from, to, edit);
        let err = refused(classifier(dir.path()));
        assert!(err.contains(expected), "{expected:?} not in {err:?}");
        assert!(err.contains("classifier."), "names the file: {err}");
    }
    // A classifier offered as a segmenter returns the wrong shape.
    let dir = model_folder("tiny-logits", "segmenter", |m| m["input_side"] = 256.into());
    let err = refused(models::load_segmenter(
        &ModelFiles::new(dir.path(), "segmenter"),
        Device::Cpu,
    ));
    assert!(err.contains("expected [1, 1, 256, 256]"), "{err}");
    // Missing weights name the file the format implies.
    let dir = model_folder("tiny-split", "classifier", |_| {});
    std::fs::remove_file(dir.path().join("classifier.pt")).unwrap();
    let err = refused(classifier(dir.path()));
    assert!(
        err.contains("classifier.pt") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn native_models_check_their_input_side_too() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let dir = tempfile::tempdir().unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("segmenter.json")).unwrap()).unwrap();
    // Beyond the 64-512 px a segmenter may take (and a multiple of 16 the U-Net needs).
    meta["input_side"] = 1000.into();
    std::fs::write(dir.path().join("segmenter.json"), meta.to_string()).unwrap();
    std::fs::copy(
        root.join("segmenter.safetensors"),
        dir.path().join("segmenter.safetensors"),
    )
    .unwrap();
    let err = refused(models::load_segmenter(
        &ModelFiles::new(dir.path(), "segmenter"),
        Device::Cpu,
    ));
    assert!(err.contains("input_side is 1000"), "{err}");
}
