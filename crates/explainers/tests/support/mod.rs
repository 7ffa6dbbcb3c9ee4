//! What the explainer tests explain: a sample and a class on which the model has evidence.

use std::path::{Path, PathBuf};

use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::pipeline::{Analysis, Pipeline};
use cxr_core::tch::Device;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first sample (`hannover_e1446fe8.png`, then the others by name) and class whose
/// Grad-CAM map is not empty, and the sample's analysis. A test of an explainer's properties
/// needs a map with something in it; which image and class give one depends on the model
/// (the shipped one: that sample's COVID-19 map; a model trained with another seed had no
/// COVID-19 Grad-CAM on any sample), so the tests do not depend on what a model says.
pub fn with_evidence(pipeline: &Pipeline) -> (Analysis, usize) {
    cxr_explainers::link();
    let grad_cam = registry::find("grad-cam")
        .unwrap()
        .build(&ExplainerConfig::default())
        .unwrap();
    let first = repo().join("samples/hannover_e1446fe8.png");
    let mut others: Vec<PathBuf> = std::fs::read_dir(repo().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png") && *p != first)
        .collect();
    others.sort();
    for sample in std::iter::once(first).chain(others) {
        let analysis = pipeline.analyse_file(&sample).unwrap();
        let input = analysis.input.to_tensor(Device::Cpu);
        for target in 0..pipeline.classifier.classes().len() {
            let input = ExplainInput {
                input: &input,
                lung_mask: &analysis.input.mask,
                target,
                progress: None,
            };
            let map = grad_cam
                .explain(pipeline.classifier.as_ref(), &input)
                .unwrap()
                .heatmap;
            if map.values.iter().any(|&v| v > 0.0) {
                return (analysis, target);
            }
        }
    }
    panic!("no sample has Grad-CAM evidence for any class: the model explains nothing");
}
