//! Every registered explainer gives the same heatmap whichever backend runs the classifier's
//! forward passes: perturbation explainers go through ONNX Runtime on the `onnx` backend,
//! gradient explainers through libtorch on both (within 1e-4, on a real radiograph).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

mod support;

use cxr_core::compute::{Backend, Compute};
use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::pipeline::Pipeline;
use cxr_core::tch::Device;
use support::repo;

#[test]
fn every_explainer_draws_the_same_heatmap_on_both_backends() {
    cxr_explainers::link();
    let load = |backend| {
        Pipeline::load_with(
            &repo().join("models"),
            &Compute::on(Device::Cpu).with_backend(backend),
        )
        .unwrap()
    };
    let (torch, onnx) = (load(Backend::Torch), load(Backend::Onnx));
    assert_eq!(onnx.compute.backend, Backend::Onnx);
    let (analysis, target) = support::with_evidence(&torch);
    let tensor = analysis.input.to_tensor(Device::Cpu);
    let input = ExplainInput {
        input: &tensor,
        lung_mask: &analysis.input.mask,
        target,
        progress: None,
    };
    for entry in registry::all().unwrap() {
        let explainer = entry.build(&ExplainerConfig::default()).unwrap();
        let a = explainer
            .explain(torch.classifier.as_ref(), &input)
            .unwrap();
        let b = explainer.explain(onnx.classifier.as_ref(), &input).unwrap();
        let worst = a
            .heatmap
            .values
            .iter()
            .zip(&b.heatmap.values)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{}: heatmaps differ by {worst:e}", entry.name);
        assert!(
            a.heatmap.values.iter().any(|&v| v > 0.0),
            "{}: an empty heatmap proves nothing",
            entry.name
        );
    }
}
