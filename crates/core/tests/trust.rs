//! The shipped classifier knows when not to be trusted: pictures that are no radiograph are
//! refused, the sample radiographs are not, and every prediction carries a familiarity score.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::CoreError;
use cxr_core::pipeline::Pipeline;
use cxr_core::tch::Device;
use cxr_core::trust::Flag;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pipeline() -> Pipeline {
    Pipeline::load(&repo().join("models"), Device::Cpu).unwrap()
}

#[test]
fn the_shipped_classifier_has_a_trust_model() {
    let p = pipeline();
    let trust = p
        .classifier
        .trust()
        .expect("trained with a familiarity model");
    let d = trust.feature_mean.len();
    assert_eq!(trust.precision.len(), d * d);
    assert!(trust.unfamiliar_above > 0.0 && trust.refuse_above > trust.unfamiliar_above);
    assert!(trust.lung_fraction[0] < trust.lung_fraction[1]);
}

#[test]
fn a_photograph_and_a_drawing_are_refused() {
    let p = pipeline();
    for name in ["picture.png", "gradient.png"] {
        let path = repo().join("crates/core/tests/fixtures").join(name);
        match p.analyse_file(&path) {
            Err(CoreError::NotARadiograph { reason, .. }) => {
                assert!(!reason.is_empty());
            }
            Err(e) => panic!("{name}: another error: {e}"),
            Ok(a) => panic!(
                "{name}: classified as {} ({:?})",
                a.prediction.label, a.prediction.trust
            ),
        }
    }
}

#[test]
fn sample_radiographs_are_familiar_enough_to_classify() {
    let p = pipeline();
    for entry in std::fs::read_dir(repo().join("samples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "png") {
            continue;
        }
        let a = p.analyse_file(&path).unwrap();
        let trust = &a.prediction.trust;
        let distance = trust.familiarity.unwrap();
        assert!(distance.is_finite() && distance > 0.0, "{}", path.display());
        assert!(
            !trust.has(Flag::NotAChestRadiograph),
            "{}: {trust:?}",
            path.display()
        );
        assert_eq!(trust.flags.len(), trust.reasons.len());
    }
}
