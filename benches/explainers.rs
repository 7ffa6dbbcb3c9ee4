//! Explainer cost against its floor, the classifier's own forward passes, on one real
//! radiograph with the shipped models: Grad-CAM vs one forward; LIME-1000 vs 1000 forwards in
//! batches of 100; and every registered explainer at its defaults.
//! Run with `cargo bench -p cxr-benches --bench explainers` (or `scripts/bench-explainers.sh`,
//! which also times the Python reference implementations in the same run).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use cxr_benches::{repo, sample};
use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::pipeline::Pipeline;
use cxr_core::tch::{Device, Tensor};

fn explainers(c: &mut Criterion) {
    cxr_explainers::link();
    let pipeline = Pipeline::load(&repo().join("models"), Device::Cpu).expect("shipped models");
    let analysis = pipeline
        .analyze_file(&sample("hannover_e1446fe8.png"))
        .expect("analyses");
    let input = analysis.input.to_tensor(Device::Cpu);
    let model = pipeline.classifier.as_ref();
    let explain_input = ExplainInput {
        input: &input,
        lung_mask: &analysis.input.mask,
        target: 0,
        progress: None,
    };
    let batch_of_100 = input.repeat([100, 1, 1, 1]);

    let mut floor = c.benchmark_group("floor");
    floor.sample_size(30);
    floor.bench_function("forward_1", |b| {
        b.iter(|| tch_no_grad_logits(model, black_box(&input)));
    });
    floor.sample_size(10);
    floor.bench_function("forward_1000_batched_100", |b| {
        b.iter(|| {
            for _ in 0..10 {
                let _ = black_box(tch_no_grad_logits(model, black_box(&batch_of_100)));
            }
        });
    });
    floor.finish();

    let mut group = c.benchmark_group("explainer");
    for entry in registry::all().expect("registry") {
        let explainer = entry.build(&ExplainerConfig::default()).expect("builds");
        let cheap = !["lime", "rise", "occlusion"].contains(&entry.name);
        group.sample_size(if cheap { 30 } else { 10 });
        group.bench_function(entry.name, |b| {
            b.iter(|| {
                explainer
                    .explain(model, black_box(&explain_input))
                    .expect("explains")
            });
        });
    }
    group.finish();
}

fn tch_no_grad_logits(model: &dyn cxr_core::models::Classifier, x: &Tensor) -> Tensor {
    cxr_core::tch::no_grad(|| model.logits(x)).expect("forward")
}

criterion_group!(benches, explainers);
criterion_main!(benches);
