//! Models save and reload to the same outputs; the shipped models load and behave; training and
//! prediction see the same preprocessed input.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::data::{LabelledImage, Manifest};
use cxr_core::models::resnet::ResNetConfig;
use cxr_core::models::unet::UNetConfig;
use cxr_core::models::{Classifier, ModelFiles, ResNetClassifier, Segmenter, UNetSegmenter};
use cxr_core::pipeline::{CLASSIFIER_NAME, Pipeline, SEGMENTER_NAME};
use cxr_core::tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn a_trained_classifier_reloads_to_identical_outputs() {
    cxr_core::tch::manual_seed(7);
    let classes = vec!["covid".to_owned(), "normal".to_owned()];
    let model = ResNetClassifier::new(
        ResNetConfig::resnet18_quarter(),
        classes.clone(),
        Device::Cpu,
    );
    let x = Tensor::randn([3, 1, 224, 224], (Kind::Float, Device::Cpu));
    // A few training steps move batch-norm statistics away from their defaults, so the test
    // also covers the running buffers, not just the weights.
    for _ in 0..3 {
        let _ = model.forward_t(&x, true);
    }
    let dir = tempfile::tempdir().unwrap();
    let files = ModelFiles::new(dir.path(), "c");
    model.save(&files).unwrap();
    let loaded = ResNetClassifier::load(&files, Device::Cpu).unwrap();
    let (a, b) = (model.logits(&x).unwrap(), loaded.logits(&x).unwrap());
    assert!(max_abs_diff(&a, &b) < 1e-6);
    let fresh = ResNetClassifier::new(ResNetConfig::resnet18_quarter(), classes, Device::Cpu);
    assert!(
        max_abs_diff(&a, &fresh.logits(&x).unwrap()) > 1e-3,
        "reload must matter"
    );
}

#[test]
fn a_trained_segmenter_reloads_to_identical_outputs() {
    cxr_core::tch::manual_seed(11);
    let model = UNetSegmenter::new(
        UNetConfig {
            in_channels: 1,
            base: 4,
            depth: 2,
        },
        64,
        Device::Cpu,
    );
    let x = Tensor::randn([2, 1, 64, 64], (Kind::Float, Device::Cpu));
    let _ = model.forward_t(&x, true);
    let dir = tempfile::tempdir().unwrap();
    let files = ModelFiles::new(dir.path(), "s");
    model.save(&files).unwrap();
    let loaded = UNetSegmenter::load(&files, Device::Cpu).unwrap();
    let diff = max_abs_diff(&model.forward_t(&x, false), &loaded.forward_t(&x, false));
    assert!(diff < 1e-6, "{diff}");
}

#[test]
fn missing_or_broken_models_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Pipeline::load(dir.path(), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("segmenter.json") && err.contains("cannot load model"),
        "{err}"
    );
    // Metadata present, weights missing.
    let files = ModelFiles::new(dir.path(), "x");
    std::fs::copy(repo().join("models/classifier.json"), &files.meta).unwrap();
    let err = ResNetClassifier::load(&files, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.safetensors") && err.contains("No such file"),
        "{err}"
    );
    // Weights of the wrong network.
    std::fs::copy(repo().join("models/segmenter.safetensors"), &files.weights).unwrap();
    let err = ResNetClassifier::load(&files, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("x.safetensors"), "{err}");
    // Corrupt weights.
    std::fs::write(&files.weights, b"not safetensors").unwrap();
    assert!(ResNetClassifier::load(&files, Device::Cpu).is_err());
}

fn samples() -> Vec<LabelledImage> {
    Manifest::read(&repo().join("samples/manifest.csv"))
        .unwrap()
        .labels
}

#[test]
fn training_and_prediction_preprocess_identically() {
    let models = repo().join("models");
    let pipeline = Pipeline::load(&models, Device::Cpu).unwrap();
    let segmenter =
        UNetSegmenter::load(&ModelFiles::new(&models, SEGMENTER_NAME), Device::Cpu).unwrap();
    let rows = samples();
    let style = pipeline.classifier.input_style();
    let trained_on = cxr_core::train::classifier::prepare(&rows, &segmenter, style).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let predicted_on = pipeline
            .analyse_file(&row.path)
            .unwrap()
            .input
            .to_tensor(Device::Cpu);
        assert_eq!(
            max_abs_diff(&trained_on.get(i as i64).unsqueeze(0), &predicted_on),
            0.0
        );
    }
}

#[test]
fn shipped_models_classify_the_samples() {
    let pipeline = Pipeline::load(&repo().join("models"), Device::Cpu).unwrap();
    let mut correct = 0;
    for row in samples() {
        let a = pipeline.analyse_file(&row.path).unwrap();
        let total: f32 = a.prediction.probabilities.values().sum();
        assert!((total - 1.0).abs() < 1e-5);
        // Lungs cover a plausible share of a chest radiograph.
        let lungs = cxr_core::mask::coverage(&a.mask);
        assert!(
            (0.1..0.6).contains(&lungs),
            "{}: lungs {lungs}",
            row.path.display()
        );
        correct += usize::from(a.prediction.label == row.label);
    }
    assert!(correct >= 5, "{correct}/6 samples right");
}

#[test]
#[ignore = "needs the shared data beside the clone (../shared/data/lungseg); scripts/test.sh runs it when present"]
fn shipped_segmenter_matches_reference_masks() {
    let manifest = repo().join("../shared/data/lungseg/manifest.csv");
    let rows = Manifest::read(&manifest).unwrap().masks;
    let segmenter = UNetSegmenter::load(
        &ModelFiles::new(&repo().join("models"), SEGMENTER_NAME),
        Device::Cpu,
    )
    .unwrap();
    let test_rows = rows.iter().filter(|r| {
        cxr_core::data::Split::of(
            &r.patient,
            cxr_core::data::DEFAULT_SEED,
            cxr_core::data::SplitShares::SEGMENTER,
        ) == cxr_core::data::Split::Test
    });
    let m = cxr_core::train::segmenter::evaluate(&segmenter as &dyn Segmenter, test_rows).unwrap();
    assert!(m.images >= 10);
    assert!(m.dice_mean > 0.9, "test Dice {}", m.dice_mean);
}

#[test]
#[ignore = "needs the project's .venv with torch (scripts/env.sh makes it); scripts/test.sh runs it"]
fn classifier_loads_in_pytorch_to_the_same_logits() {
    let python = repo().join(".venv/bin/python");
    let models = repo().join("models");
    let classifier =
        ResNetClassifier::load(&ModelFiles::new(&models, CLASSIFIER_NAME), Device::Cpu).unwrap();
    cxr_core::tch::manual_seed(3);
    let input = Tensor::randn([2, 1, 224, 224], (Kind::Float, Device::Cpu));
    let logits = classifier.logits(&input).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case.safetensors");
    Tensor::write_safetensors(&[("input", &input), ("logits", &logits)], &case).unwrap();
    let out = std::process::Command::new(python)
        .arg(repo().join("python/check_classifier.py"))
        .arg(&models)
        .arg(&case)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("max |logit difference|"), "{text}");
}

/// The documents quote the shipped classifier's decision threshold: a model card's own check,
/// so that retraining is not done until the README and the watch-folder guide say what the new
/// model does.
#[test]
fn the_docs_quote_the_shipped_threshold() {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            repo()
                .join("models")
                .join(format!("{CLASSIFIER_NAME}.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let threshold = meta["threshold"].as_f64().expect("a threshold");
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for quoted in [
        format!("threshold of {threshold:.2}"),
        format!("at threshold {threshold:.3}"),
    ] {
        assert!(readme.contains(&quoted), "README.md should say {quoted:?}");
    }
    let guide = std::fs::read_to_string(repo().join("docs/watch-folder.md")).unwrap();
    let exact = format!("\"threshold\": {}", threshold as f32);
    assert!(
        guide.contains(&exact),
        "docs/watch-folder.md should show {exact}"
    );
}
