//! The analysis service: one path for classify, explain, draw and cache. A second request for
//! the same image, models, method and settings is served from the cache without running the
//! models or the explainer; anything that changes the result changes the key.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use cxr_core::cache::Cache;
use cxr_core::explain::{
    ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Method, MethodSpec, Param,
};
use cxr_core::input::Gate;
use cxr_core::models::Classifier;
use cxr_core::pipeline::Pipeline;
use cxr_core::service::{Image, Service, Settings, Target, keys};
use cxr_core::tch::Device;

/// How many times the counting explainer ran.
static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Relevance equal to the input's brightness; counts its runs.
struct Counting;

impl Explainer for Counting {
    fn explain(
        &self,
        _model: &dyn Classifier,
        input: &ExplainInput<'_>,
    ) -> cxr_core::Result<Explanation> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        let size = input.input.size();
        let values = Vec::<f32>::try_from(input.input.view([-1]))?;
        Ok(Explanation {
            heatmap: Heatmap::from_relevance(values, size[3] as usize, size[2] as usize),
            details: serde_json::Map::new(),
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "test-counting",
    summary: "Relevance equal to brightness, counting its runs (test plugin)",
    needs: cxr_core::models::Gradients::None,
    params: &[Param { name: "gain", default: "1", help: "unused" }],
    ctor: counting,
}

#[allow(clippy::unnecessary_wraps)] // the registry's constructor signature
fn counting(_config: &ExplainerConfig) -> cxr_core::Result<Box<dyn Explainer>> {
    Ok(Box::new(Counting))
}

/// The same relevance, uncounted: for tests that run beside the counting ones.
struct Brightness;

impl Explainer for Brightness {
    fn explain(
        &self,
        _model: &dyn Classifier,
        input: &ExplainInput<'_>,
    ) -> cxr_core::Result<Explanation> {
        let size = input.input.size();
        let values = Vec::<f32>::try_from(input.input.view([-1]))?;
        Ok(Explanation {
            heatmap: Heatmap::from_relevance(values, size[3] as usize, size[2] as usize),
            details: serde_json::Map::new(),
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "test-brightness",
    summary: "Relevance equal to brightness (test plugin)",
    needs: cxr_core::models::Gradients::None,
    params: &[],
    ctor: brightness,
}

#[allow(clippy::unnecessary_wraps)] // the registry's constructor signature
fn brightness(_config: &ExplainerConfig) -> cxr_core::Result<Box<dyn Explainer>> {
    Ok(Box::new(Brightness))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn service(cache: &Path) -> Service {
    let pipeline = Pipeline::load(&root().join("models"), Device::Cpu).unwrap();
    Service::new(pipeline, Cache::new(cache))
}

/// A registered explainer with its default parameters.
fn method(name: &str) -> Method {
    MethodSpec {
        name: name.into(),
        params: String::new(),
    }
    .build()
    .unwrap()
}

fn quick() -> Settings {
    let mut settings = Settings::default();
    settings.checks.faithfulness = false;
    settings
}

#[test]
fn a_second_request_is_served_from_the_cache_without_running_anything() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let sample = root().join("samples/nih_00001299_000.png");
    let method = method("test-counting");
    let settings = quick();

    let first = Image::read(&sample, Gate::TRUSTED).unwrap();
    let classified = service.classify(&first).unwrap();
    assert!(!classified.cached);
    let runs = RUNS.load(Ordering::SeqCst);
    let rendered = service.explain(&first, &method, &settings).unwrap();
    assert!(!rendered.cached && rendered.explanation.is_some());
    assert_eq!(RUNS.load(Ordering::SeqCst), runs + 1);
    assert!(rendered.overlay_png.starts_with(b"\x89PNG"));

    // A new image of the same bytes: nothing decoded, analysed or explained.
    let again = Image::read(&sample, Gate::TRUSTED).unwrap();
    let hit = service.classify(&again).unwrap();
    assert!(hit.cached);
    assert_eq!(hit.report.probabilities, classified.report.probabilities);
    assert_eq!(hit.report.trust, classified.report.trust);
    let cached = service.explain(&again, &method, &settings).unwrap();
    assert!(cached.cached && cached.explanation.is_none());
    assert_eq!(cached.overlay_png, rendered.overlay_png);
    assert_eq!(RUNS.load(Ordering::SeqCst), runs + 1, "explainer not run");
    assert!(again.analysed().is_none(), "models not run");

    // Another style: the report is cached, the overlay is drawn anew from a fresh explanation,
    // or redrawn from one at hand without running the explainer.
    let mut faint = settings.clone();
    faint.style.opacity = 0.2;
    let redrawn = service
        .redraw(
            &again,
            "test-counting",
            &method.params,
            rendered.explanation.as_ref().unwrap(),
            &rendered.report,
            &faint,
        )
        .unwrap();
    assert_ne!(redrawn, rendered.overlay_png);
    assert_eq!(RUNS.load(Ordering::SeqCst), runs + 1);
    let served = service.explain(&again, &method, &faint).unwrap();
    assert!(served.cached, "the redrawn overlay was stored");
    assert_eq!(served.overlay_png, redrawn);
}

#[test]
fn every_setting_that_shapes_a_result_is_part_of_its_key() {
    let base = quick();
    let key = |s: &Settings| keys::method("sha", "model", "lime", "samples=1000", s).report;
    let overlay = |s: &Settings| keys::method("sha", "model", "lime", "samples=1000", s).overlay;
    let mut target = base.clone();
    target.target = Target::Class("normal".into());
    let mut checks = base.clone();
    checks.checks.sanity = true;
    let mut opacity = base.clone();
    opacity.style.opacity = 0.3;
    let mut outline = base.clone();
    outline.outline = false;
    assert_ne!(key(&base), key(&target));
    assert_ne!(key(&base), key(&checks));
    assert_eq!(
        key(&base),
        key(&opacity),
        "the report does not depend on the style"
    );
    assert_ne!(overlay(&base), overlay(&opacity));
    assert_ne!(overlay(&base), overlay(&outline));
    assert_ne!(
        key(&base),
        keys::method("sha", "model", "lime", "samples=500", &base).report
    );
    assert_ne!(
        key(&base),
        keys::method("sha", "other model", "lime", "samples=1000", &base).report
    );
    assert_ne!(
        keys::classification("a", "m"),
        keys::classification("b", "m")
    );
}

#[test]
fn a_target_that_is_no_class_is_an_error_naming_the_classes() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let image = Image::read(&root().join("samples/nih_00001299_000.png"), Gate::TRUSTED).unwrap();
    let method = method("test-counting");
    let mut settings = quick();
    settings.target = Target::Class("nromal".into());
    let err = service
        .explain(&image, &method, &settings)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nromal") && err.contains("normal"), "{err}");
}

#[test]
fn raw_arrays_come_from_memory_the_cache_or_a_second_run_alike() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    let sample = root().join("samples/hannover_b343e657.png");
    let method = method("test-brightness");
    let settings = quick();

    // Computed now: the explanation at hand, kept in the cache for later.
    let first = Image::read(&sample, Gate::TRUSTED).unwrap();
    let rendered = service.explain(&first, &method, &settings).unwrap();
    let fresh = service
        .arrays(&first, &method, &settings, &rendered)
        .unwrap();
    assert_eq!(Some(&fresh), rendered.explanation.as_ref());
    assert_eq!(fresh.heatmap.summary(), rendered.report.heatmap);

    // Served from the cache: no explanation in memory, the kept one comes back unanalysed.
    let again = Image::read(&sample, Gate::TRUSTED).unwrap();
    let cached = service.explain(&again, &method, &settings).unwrap();
    assert!(cached.cached && cached.explanation.is_none());
    let kept = service.arrays(&again, &method, &settings, &cached).unwrap();
    assert_eq!(kept, fresh);
    assert!(
        again.analysed().is_none(),
        "read from the cache, not computed"
    );

    // A cache with the report and overlay but not the arrays (another surface explained the
    // image): the explainer runs again, to the same map.
    let other = tempfile::tempdir().unwrap();
    let service = self::service(other.path());
    let third = Image::read(&sample, Gate::TRUSTED).unwrap();
    service.explain(&third, &method, &settings).unwrap();
    let fourth = Image::read(&sample, Gate::TRUSTED).unwrap();
    let cached = service.explain(&fourth, &method, &settings).unwrap();
    assert!(cached.cached && cached.explanation.is_none());
    let recomputed = service
        .arrays(&fourth, &method, &settings, &cached)
        .unwrap();
    assert!(fourth.analysed().is_some(), "computed again");
    assert_eq!(recomputed, fresh);
}
