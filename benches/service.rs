//! The analysis service against the path it replaced, in one process on one radiograph with
//! the shipped models: classify + Grad-CAM + overlay PNG through `Service::report` (cache
//! off), the same steps called directly (decode, analyse, explain, draw, encode: what
//! `cxr explain`, the watch folder, the worker and the viewer each did on their own before),
//! and the service answering from a warm cache.
//! Run with `cargo bench -p cxr-benches --bench service`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use cxr_benches::{load_pipeline, repo, sample};
use cxr_core::cache::Cache;
use cxr_core::explain::MethodSpec;
use cxr_core::explain::report;
use cxr_core::input::Gate;
use cxr_core::render;
use cxr_core::service::{Image, Service, Settings};

fn service(c: &mut Criterion) {
    cxr_explainers::link();
    let models = repo().join("models");
    let path = sample("nih_00001299_000.png");
    let bytes = std::fs::read(&path).expect("sample");
    let method = MethodSpec {
        name: "grad-cam".into(),
        params: String::new(),
    }
    .build()
    .expect("grad-cam");
    let methods = [method];
    let settings = Settings::default();

    let direct = load_pipeline(&models);
    let uncached = Service::new(load_pipeline(&models), Cache::disabled());
    let cache_dir = tempfile_dir();
    let cached = Service::new(load_pipeline(&models), Cache::new(&cache_dir));
    let warm = Image::from_bytes(bytes.clone(), &path, Gate::TRUSTED);
    cached
        .report(&warm, &methods, &settings, None)
        .expect("analyses");

    let mut group = c.benchmark_group("analysis_512px_grad_cam");
    group.sample_size(20);
    group.bench_function("direct_calls", |b| {
        b.iter(|| {
            let xray = Gate::TRUSTED
                .decode(black_box(&bytes), &path)
                .expect("decodes");
            let analysis = direct.analyse(xray).expect("analyses");
            let m = &methods[0];
            let target = analysis.prediction.label_index(direct.classifier.classes());
            let (explanation, method_report) = report::explain(
                direct.classifier.as_ref(),
                &analysis,
                m.entry,
                m.explainer.as_ref(),
                &m.params,
                target,
                settings.checks,
            )
            .expect("explains");
            let picture = report::overlay(
                &analysis,
                &explanation,
                &method_report,
                &settings.style,
                settings.outline,
            );
            (
                analysis.report(),
                render::encode_png(&picture).expect("png"),
            )
        });
    });
    group.bench_function("service_uncached", |b| {
        b.iter(|| {
            let image = Image::from_bytes(black_box(bytes.clone()), &path, Gate::TRUSTED);
            uncached
                .report(&image, &methods, &settings, None)
                .expect("analyses")
        });
    });
    group.bench_function("service_warm_cache", |b| {
        b.iter(|| {
            let image = Image::from_bytes(black_box(bytes.clone()), &path, Gate::TRUSTED);
            cached
                .report(&image, &methods, &settings, None)
                .expect("analyses")
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&cache_dir);
}

/// A fresh private folder for the warm cache (removed at the end).
fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cxr-bench-service-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

criterion_group!(benches, service);
criterion_main!(benches);
