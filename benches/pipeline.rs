//! One radiograph end to end, and each stage on its own: decode, segment, preprocess, classify,
//! the trust checks and the lung-shape check.
//! Run with `cargo bench -p cxr-benches --bench pipeline`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use cxr_benches::{load_pipeline, repo, sample};
use cxr_core::preprocess::classifier_input;
use cxr_core::tch::Device;
use cxr_core::trust::ImageChecks;
use cxr_core::xray::Xray;

fn pipeline(c: &mut Criterion) {
    let pipeline = load_pipeline(&repo().join("models"));
    let path = sample("nih_00001299_000.png");
    let bytes = std::fs::read(&path).expect("sample");
    let xray = Xray::decode(&bytes, &path).expect("decodes");
    let mask = pipeline.segmenter.segment(&xray.gray).expect("segments");
    let input = classifier_input(&xray.gray, &mask, pipeline.classifier.input_style())
        .to_tensor(Device::Cpu);

    let mut group = c.benchmark_group("pipeline_512px");
    group.sample_size(30);
    group.bench_function("decode", |b| {
        b.iter(|| Xray::decode(black_box(&bytes), &path));
    });
    group.bench_function("segment", |b| {
        b.iter(|| pipeline.segmenter.segment(black_box(&xray.gray)));
    });
    group.bench_function("preprocess", |b| {
        b.iter(|| {
            classifier_input(
                black_box(&xray.gray),
                &mask,
                pipeline.classifier.input_style(),
            )
        });
    });
    group.bench_function("classify", |b| {
        b.iter(|| pipeline.classifier.predict(black_box(&input)));
    });
    // The checks every prediction also pays for: the whole-image trust measures (colour,
    // layout, fine structure) and the segmenter's lung-shape verdict on the mask.
    group.bench_function("trust_checks", |b| {
        b.iter(|| ImageChecks::of(black_box(&xray)));
    });
    if let Some(shape) = pipeline.segmenter.shape() {
        group.bench_function("shape_check", |b| {
            b.iter(|| shape.judge(black_box(&mask)));
        });
    }
    group.bench_function("end_to_end", |b| {
        b.iter(|| {
            let xray = Xray::decode(black_box(&bytes), &path).expect("decodes");
            pipeline.analyse(xray).expect("analyses")
        });
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
