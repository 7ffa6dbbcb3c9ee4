//! Explainer cost against its floor, the classifier's own forward passes, on one real
//! radiograph with the shipped models: Grad-CAM vs one forward; LIME-1000 vs 1000 forwards in
//! batches of 100; every registered explainer at its defaults; and LIME's local model alone.
//! Run with `cargo bench -p cxr-benches --bench explainers` (or `scripts/bench-explainers.sh`,
//! which also times the Python reference implementations in the same run).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use cxr_benches::{load_pipeline, repo, sample};
use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::tch::{Device, Tensor};
use cxr_explainers::lime::weighted_ridge;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn explainers(c: &mut Criterion) {
    cxr_explainers::link();
    let pipeline = load_pipeline(&repo().join("models"));
    let analysis = pipeline
        .analyse_file(&sample("hannover_e1446fe8.png"))
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

/// LIME's weighted ridge regression at LIME's real size: 1000 perturbations (random on/off
/// superpixels) of 100 superpixels, kernel weights in its range, its penalty.
fn lime_ridge(c: &mut Criterion) {
    let (samples, features) = (1000, 100);
    let mut rng = StdRng::seed_from_u64(0);
    let x: Vec<Vec<f32>> = (0..samples)
        .map(|_| {
            (0..features)
                .map(|_| f32::from(u8::from(rng.random_bool(0.5))))
                .collect()
        })
        .collect();
    let y: Vec<f64> = (0..samples).map(|_| rng.random()).collect();
    let k: Vec<f64> = (0..samples).map(|_| rng.random_range(0.3..1.0)).collect();
    let mut group = c.benchmark_group("lime_ridge");
    group.bench_function("1000x100", |b| {
        b.iter(|| weighted_ridge(black_box(&x), black_box(&y), black_box(&k), 1.0).expect("fits"));
    });
    group.finish();
}

criterion_group!(benches, explainers, lime_ridge);
criterion_main!(benches);
