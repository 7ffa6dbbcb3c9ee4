//! The one analysis service: a radiograph's bytes in; its classification, and per explainer the
//! report (heatmap summary, quality measures) and the overlay PNG out, each looked up in the
//! result cache first and stored there after. Every surface (`cxr explain`, the watch folder,
//! `cxr worker`, the viewer, `cxr serve`) goes through it and only presents what it returns, so
//! there is one way to explain, render and cache, and one way to build cache keys ([`keys`]).
//!
//! An [`Image`] decodes and analyses (segment, classify) lazily and at most once: a request
//! answered wholly from the cache runs no model at all.

use std::cell::{OnceCell, RefCell};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::compute::Compute;
use crate::explain::report::{self, MethodReport, QualityChecks};
use crate::explain::{Method, Progress};
use crate::input::Gate;
use crate::models::class_index;
use crate::pipeline::{Analysis, ClassifyReport, Pipeline};
use crate::render::{self, OverlayStyle};
use crate::xray::Xray;
use crate::{CoreError, Result};

/// Which class an explanation is for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Target {
    /// The class the classifier predicted for this image.
    #[default]
    Predicted,
    /// A class by name (one of the classifier's classes).
    Class(String),
}

impl Target {
    /// `predicted`, or a class name.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        if text == "predicted" {
            Self::Predicted
        } else {
            Self::Class(text.to_owned())
        }
    }

    fn name(&self) -> &str {
        match self {
            Self::Predicted => "predicted",
            Self::Class(name) => name,
        }
    }
}

/// How explanations are made and drawn: everything besides the image, the models and the
/// explainer that shapes a result (and so is part of its cache key).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub target: Target,
    pub checks: QualityChecks,
    pub style: OverlayStyle,
    /// Draw the lung outline on the overlay.
    pub outline: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            target: Target::Predicted,
            checks: QualityChecks {
                faithfulness: true,
                sanity: false,
            },
            style: OverlayStyle::default(),
            outline: true,
        }
    }
}

/// The cache keys of the service's results; nothing else builds keys.
pub mod keys {
    use super::Settings;
    use crate::cache::CacheKey;

    /// An image's classification report.
    #[must_use]
    pub fn classification(sha256: &str, fingerprint: &str) -> CacheKey {
        CacheKey::new(sha256, fingerprint, "classify", "report")
    }

    /// The keys of one explainer's result (`params`: its canonical parameters).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MethodKeys {
        /// Its report: depends on the image, models, method, parameters, target and checks.
        pub report: CacheKey,
        /// Its overlay: the same, drawn in one style.
        pub overlay: CacheKey,
        /// The explanation itself (heatmap, superpixels), kept only when raw arrays were
        /// asked for ([`super::Service::arrays`]).
        pub arrays: CacheKey,
    }

    #[must_use]
    pub fn method(
        sha256: &str,
        fingerprint: &str,
        method: &str,
        params: &str,
        settings: &Settings,
    ) -> MethodKeys {
        let shaped_by = explanation_params(params, settings);
        let style = &settings.style;
        let drawn = format!(
            "{shaped_by};colormap={};opacity={:.3};legend={};outline={}",
            style.colormap.name(),
            style.opacity,
            style.legend,
            settings.outline
        );
        MethodKeys {
            report: CacheKey::new(
                sha256,
                fingerprint,
                &format!("explain:{method}"),
                &shaped_by,
            ),
            overlay: CacheKey::new(sha256, fingerprint, &format!("overlay:{method}"), &drawn),
            arrays: CacheKey::new(sha256, fingerprint, &format!("arrays:{method}"), &shaped_by),
        }
    }

    fn explanation_params(params: &str, settings: &Settings) -> String {
        format!(
            "params={params};target={};faithfulness={};sanity={}",
            settings.target.name(),
            settings.checks.faithfulness,
            settings.checks.sanity
        )
    }
}

/// One radiograph to analyse: its bytes (read through the input gate) and, once needed, its
/// decoded pixels and analysis. Not shared between threads: each request makes its own.
pub struct Image {
    path: PathBuf,
    bytes: Vec<u8>,
    sha256: String,
    gate: Gate,
    /// Decoded ahead of the analysis by a caller that had to look at the pixels first.
    decoded: RefCell<Option<Xray>>,
    analysis: OnceCell<Analysis>,
}

impl Image {
    /// Reads `path` through `gate` (bounded, regular files only; see [`crate::input`]).
    pub fn read(path: &Path, gate: Gate) -> Result<Self> {
        let bytes = gate.read(path)?;
        Ok(Self::from_bytes(bytes, path, gate))
    }

    /// Bytes already read (an upload, an opened handle); `path` names them in errors.
    #[must_use]
    pub fn from_bytes(bytes: Vec<u8>, path: &Path, gate: Gate) -> Self {
        let sha256 = crate::files::sha256_hex(&bytes);
        Self {
            path: path.to_path_buf(),
            bytes,
            sha256,
            gate,
            decoded: RefCell::new(None),
            analysis: OnceCell::new(),
        }
    }

    /// Bytes whose pixels the caller already decoded (through the same gate).
    #[must_use]
    pub fn with_decoded(bytes: Vec<u8>, xray: Xray, gate: Gate) -> Self {
        let image = Self::from_bytes(bytes, &xray.path.clone(), gate);
        *image.decoded.borrow_mut() = Some(xray);
        image
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// SHA-256 of the bytes, 64 hex digits: the image's part of every cache key.
    #[must_use]
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The decoded radiograph, decoded at most once: what this decodes is kept for the analysis
    /// (the viewer shows the picture first, then asks for the analysis).
    pub fn decode(&self) -> Result<Xray> {
        if let Some(analysis) = self.analysis.get() {
            return Ok(analysis.xray.clone());
        }
        let mut decoded = self.decoded.borrow_mut();
        if let Some(xray) = decoded.as_ref() {
            return Ok(xray.clone());
        }
        let xray = self.gate.decode(&self.bytes, &self.path)?;
        *decoded = Some(xray.clone());
        Ok(xray)
    }

    /// The analysis, if it was already made.
    #[must_use]
    pub fn analysed(&self) -> Option<&Analysis> {
        self.analysis.get()
    }
}

/// An image's classification.
#[derive(Debug, Clone)]
pub struct Classified {
    pub report: ClassifyReport,
    /// Served from the cache (no model ran).
    pub cached: bool,
}

/// One explainer's result on one image.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub report: MethodReport,
    /// The overlay drawn on the radiograph at its own size, PNG-encoded.
    pub overlay_png: Vec<u8>,
    /// The explanation itself (heatmap on the classifier's grid, superpixels) when it was
    /// computed now; `None` when the report came from the cache.
    pub explanation: Option<crate::explain::Explanation>,
    /// Report and overlay both served from the cache.
    pub cached: bool,
}

/// An explainer that failed on an image: the others still ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodFailure {
    pub method: String,
    pub error: String,
}

/// Hears `(method, done, total)` model evaluations while an explainer runs.
pub type MethodProgress<'a> = &'a dyn Fn(&str, usize, usize);

/// Everything [`Service::report`] makes of one image.
#[derive(Debug, Clone)]
pub struct Report {
    pub classification: Classified,
    /// One per requested method, in order.
    pub methods: Vec<std::result::Result<Rendered, MethodFailure>>,
}

/// The analysis service over one set of loaded models and a result cache. Models are not
/// `Sync` (libtorch modules): each thread owns its service ([`crate::pool::ModelPool`] keeps
/// one per worker thread).
pub struct Service {
    pipeline: Pipeline,
    cache: Cache,
}

impl Service {
    #[must_use]
    pub fn new(pipeline: Pipeline, cache: Cache) -> Self {
        Self { pipeline, cache }
    }

    /// The models in `models` loaded for `compute` (see [`Pipeline::load_with`]), answering
    /// from and into `cache`: how every surface starts one.
    pub fn load(models: &Path, compute: &Compute, cache: Cache) -> Result<Self> {
        Ok(Self::new(Pipeline::load_with(models, compute)?, cache))
    }

    /// `target` is one this model can explain: `predicted` or one of its classes.
    pub fn check_target(&self, target: &Target) -> Result<()> {
        let classes = self.pipeline.classifier.classes();
        match target {
            Target::Class(name) if !classes.contains(name) => Err(CoreError::Invalid(format!(
                "target {name}: expected predicted or one of {}",
                classes.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    #[must_use]
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    #[must_use]
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The models' fingerprint (part of every cache key).
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.pipeline.fingerprint
    }

    /// Decodes (unless done) and analyses `image`, once; later calls return the same analysis.
    pub fn analysis<'i>(&self, image: &'i Image) -> Result<&'i Analysis> {
        if let Some(analysis) = image.analysis.get() {
            return Ok(analysis);
        }
        let start = std::time::Instant::now();
        let xray = match image.decoded.borrow_mut().take() {
            Some(xray) => xray,
            None => image.gate.decode(&image.bytes, &image.path)?,
        };
        let decode_ms = start.elapsed().as_secs_f64() * 1000.0;
        let mut analysis = self.pipeline.analyse(xray)?;
        analysis.timings.decode_ms = decode_ms;
        analysis.timings.total_ms += decode_ms;
        Ok(image.analysis.get_or_init(|| analysis))
    }

    /// The classification, from the cache when there (no decoding, no model), else computed
    /// and stored. The report names `image`'s path and carries no DICOM identifiers.
    pub fn classify(&self, image: &Image) -> Result<Classified> {
        if image.analysis.get().is_none()
            && let Some(mut report) =
                cached_classification(&self.cache, &image.sha256, self.fingerprint())
        {
            report.file.clone_from(&image.path);
            return Ok(Classified {
                report,
                cached: true,
            });
        }
        let report = self.analysis(image)?.report();
        let key = keys::classification(&image.sha256, self.fingerprint());
        store(self.cache.put_json(&key, &report));
        Ok(Classified {
            report,
            cached: false,
        })
    }

    /// [`Service::classify`], with the DICOM patient and study identifiers when `identifiers`
    /// is set and the image has them: from the analysis when one was made, else (the cache
    /// never keeps them) from the file decoded again.
    pub fn classify_with_identifiers(
        &self,
        image: &Image,
        identifiers: bool,
    ) -> Result<Classified> {
        let mut classified = self.classify(image)?;
        if identifiers && crate::dicom::is_dicom(image.bytes()) {
            classified.report.identifiers = match image.analysed() {
                Some(analysis) => analysis.xray.identifiers.clone(),
                None => image.decode()?.identifiers,
            };
        }
        Ok(classified)
    }

    /// `method`'s explanation of `image` in `settings`: the report and the overlay, from the
    /// cache when both are there, else computed (the analysis at most once per image) and
    /// stored.
    pub fn explain(&self, image: &Image, method: &Method, settings: &Settings) -> Result<Rendered> {
        self.explain_reporting(image, method, settings, None)
    }

    /// [`Service::explain`], telling `progress` `(done, total)` model evaluations while a long
    /// explainer (LIME, RISE, occlusion, IG) runs; not called when served from the cache.
    pub fn explain_reporting(
        &self,
        image: &Image,
        method: &Method,
        settings: &Settings,
        progress: Option<Progress<'_>>,
    ) -> Result<Rendered> {
        let keys::MethodKeys {
            report: report_key,
            overlay: overlay_key,
            ..
        } = self.keys(image, method.entry.name, &method.params, settings);
        if let Some(report) = self.cache.get_json::<MethodReport>(&report_key)
            && let Some(png) = self.cache.get(&overlay_key)
        {
            return Ok(Rendered {
                report,
                overlay_png: png,
                explanation: None,
                cached: true,
            });
        }
        let (explanation, report) = self.explanation(image, method, settings, progress)?;
        store(self.cache.put_json(&report_key, &report));
        let analysis = self.analysis(image)?;
        let overlay_png = self.draw(analysis, &explanation, &report, settings, &overlay_key)?;
        Ok(Rendered {
            report,
            overlay_png,
            explanation: Some(explanation),
            cached: false,
        })
    }

    /// `method`'s report on `image` in `settings` without drawing an overlay (evaluations and
    /// audits that only measure): from the cache when there, else computed and stored.
    pub fn explain_report(
        &self,
        image: &Image,
        method: &Method,
        settings: &Settings,
    ) -> Result<MethodReport> {
        let key = self
            .keys(image, method.entry.name, &method.params, settings)
            .report;
        if let Some(report) = self.cache.get_json::<MethodReport>(&key) {
            return Ok(report);
        }
        let (_, report) = self.explanation(image, method, settings, None)?;
        store(self.cache.put_json(&key, &report));
        Ok(report)
    }

    /// The explanation behind `rendered` (`method`'s result on `image` in `settings`), for raw
    /// outputs: the one at hand when it was just computed, else the one kept in the cache, else
    /// computed again (the explainers are seeded: the same map). Kept in the cache for next
    /// time either way: a report served from the cache has no arrays in memory.
    pub fn arrays(
        &self,
        image: &Image,
        method: &Method,
        settings: &Settings,
        rendered: &Rendered,
    ) -> Result<crate::explain::Explanation> {
        let key = self
            .keys(image, method.entry.name, &method.params, settings)
            .arrays;
        let explanation = match &rendered.explanation {
            Some(explanation) => explanation.clone(),
            None => match self.cache.get_json(&key) {
                Some(kept) => return Ok(kept),
                None => self.explanation(image, method, settings, None)?.0,
            },
        };
        if self.cache.is_enabled() {
            store(self.cache.put_json(&key, &explanation));
        }
        Ok(explanation)
    }

    /// The cache keys of `method`'s result on `image` with these models.
    fn keys(
        &self,
        image: &Image,
        method: &str,
        params: &str,
        settings: &Settings,
    ) -> keys::MethodKeys {
        keys::method(&image.sha256, self.fingerprint(), method, params, settings)
    }

    /// The explanation and its report, computed (the analysis at most once per image).
    fn explanation(
        &self,
        image: &Image,
        method: &Method,
        settings: &Settings,
        progress: Option<Progress<'_>>,
    ) -> Result<(crate::explain::Explanation, MethodReport)> {
        self.check_target(&settings.target)?;
        let analysis = self.analysis(image)?;
        let classes = self.pipeline.classifier.classes();
        let target = match &settings.target {
            Target::Predicted => analysis.prediction.label_index(classes),
            Target::Class(name) => class_index(classes, name),
        };
        report::explain_reporting(
            self.pipeline.classifier.as_ref(),
            analysis,
            method.entry,
            method.explainer.as_ref(),
            &method.params,
            target,
            settings.checks,
            progress,
        )
    }

    /// An explanation already at hand (the viewer keeps them) drawn again in another style:
    /// from the cache when drawn before, else drawn and stored.
    pub fn redraw(
        &self,
        image: &Image,
        method: &str,
        params: &str,
        explanation: &crate::explain::Explanation,
        report: &MethodReport,
        settings: &Settings,
    ) -> Result<Vec<u8>> {
        let key = self.keys(image, method, params, settings).overlay;
        if let Some(png) = self.cache.get(&key) {
            return Ok(png);
        }
        self.draw(self.analysis(image)?, explanation, report, settings, &key)
    }

    /// The classification and every method's explanation; a method that fails is reported
    /// as failed and the others still run. Fails only when the image cannot be analysed.
    /// `progress`, when given, hears `(method, done, total)` while each explainer runs.
    pub fn report(
        &self,
        image: &Image,
        methods: &[Method],
        settings: &Settings,
        progress: Option<MethodProgress<'_>>,
    ) -> Result<Report> {
        let classification = self.classify(image)?;
        let methods = methods
            .iter()
            .map(|method| {
                let name = method.entry.name;
                let samples = progress.map(|p| {
                    move |done, total| {
                        p(name, done, total);
                        ControlFlow::Continue(())
                    }
                });
                let samples = samples.as_ref().map(|f| f as Progress<'_>);
                self.explain_reporting(image, method, settings, samples)
                    .map_err(|e| MethodFailure {
                        method: method.entry.name.to_owned(),
                        error: e.to_string(),
                    })
            })
            .collect();
        Ok(Report {
            classification,
            methods,
        })
    }

    fn draw(
        &self,
        analysis: &Analysis,
        explanation: &crate::explain::Explanation,
        report: &MethodReport,
        settings: &Settings,
        key: &crate::cache::CacheKey,
    ) -> Result<Vec<u8>> {
        let picture = report::overlay(
            analysis,
            explanation,
            report,
            &settings.style,
            settings.outline,
        );
        let png = render::encode_png(&picture)
            .map_err(|e| CoreError::internal("encoding the overlay", e))?;
        store(self.cache.put(key, &png));
        Ok(png)
    }
}

/// The classification of the image with content `sha256` by the models of `fingerprint`, when
/// a service stored it in `cache`: for a thread without models (the viewer's scan of a folder).
#[must_use]
pub fn cached_classification(
    cache: &Cache,
    sha256: &str,
    fingerprint: &str,
) -> Option<ClassifyReport> {
    cache.get_json(&keys::classification(sha256, fingerprint))
}

/// A result that cannot be cached (disk full, read-only folder) is still returned.
fn store(stored: Result<()>) {
    if let Err(e) = stored {
        tracing::warn!("cache: {e}");
    }
}
