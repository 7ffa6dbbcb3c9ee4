//! Background work: one inference thread owns the models (libtorch blocks, and its tensors are
//! not `Sync`), one encoder thread turns pictures into terminal protocols. Each has a single
//! slot holding only the newest request, so scrolling through a hundred images never queues a
//! hundred explanations: whatever was waiting is replaced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;
use cxr_core::cache::{Cache, CacheKey};
use cxr_core::explain::report::{self, MethodReport, QualityChecks};
use cxr_core::explain::{Explainer, ExplainerConfig, Explanation, registry};
use cxr_core::models::{Classifier, Prediction};
use cxr_core::pipeline::{Analysis, Pipeline, Timings};
use cxr_core::queue::Queue;
use cxr_core::render::{Colormap, OverlayStyle};
use cxr_core::tch::{Device, Tensor};
use image::DynamicImage;
use ratatui::layout::Size;
use ratatui_image::picker::Picker;
use ratatui_image::protocol::Protocol;
use ratatui_image::{FilterType, Resize};

use super::event::{AppEvent, Encoded, Pane, Stage, WorkerEvent};

/// A slot that keeps only the newest request. Closing it (the viewer is going down) drops what
/// waits, refuses new requests and wakes the thread waiting on it.
pub struct Latest<T> {
    slot: Mutex<Slot<T>>,
    ready: Condvar,
}

struct Slot<T> {
    value: Option<T>,
    closed: bool,
}

impl<T> Latest<T> {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(Slot {
                value: None,
                closed: false,
            }),
            ready: Condvar::new(),
        })
    }

    /// Replaces whatever was waiting; ignored once the slot is closed.
    pub fn put(&self, value: T) {
        if let Ok(mut slot) = self.slot.lock()
            && !slot.closed
        {
            slot.value = Some(value);
            self.ready.notify_one();
        }
    }

    /// Drops the waiting request and makes every `take`, now and later, return `None`.
    pub fn close(&self) {
        if let Ok(mut slot) = self.slot.lock() {
            slot.closed = true;
            slot.value = None;
        }
        self.ready.notify_all();
    }

    /// The waiting request, if any, without blocking.
    #[cfg(test)]
    pub fn try_take(&self) -> Option<T> {
        self.slot.lock().ok()?.value.take()
    }

    /// Waits for a request; `None` once the slot is closed (or its lock poisoned).
    pub fn take(&self) -> Option<T> {
        let mut slot = self.slot.lock().ok()?;
        loop {
            if slot.closed {
                return None;
            }
            if let Some(value) = slot.value.take() {
                return Some(value);
            }
            slot = self.ready.wait(slot).ok()?;
        }
    }
}

/// The viewer's background threads. `shutdown` (also run on drop, so an early return or a
/// panic unwinding through the viewer does it too) raises the stop flag, closes the job slots
/// and joins every thread. The inference thread owns libtorch objects: they must be finished
/// and dropped before `main` returns, or libtorch's static destructors run under a forward
/// pass still in flight (a segfault at exit).
#[derive(Default)]
pub struct Workers {
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    slots: Mutex<Vec<Box<dyn Fn() + Send>>>,
}

impl Workers {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The flag that tells threads (and a running explainer, between batches) to stop.
    #[must_use]
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    #[must_use]
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Starts a named thread that `shutdown` will join. Once shutting down, nothing starts.
    pub fn spawn(&self, name: &'static str, work: impl FnOnce() + Send + 'static) {
        if self.stopping() {
            return;
        }
        let spawned = thread::Builder::new()
            .name(format!("cxr-{name}"))
            .spawn(work);
        match spawned {
            Ok(handle) => {
                if let Ok(mut threads) = self.threads.lock() {
                    threads.push((name, handle));
                }
            }
            Err(e) => tracing::error!("cannot start the {name} thread: {e}"),
        }
    }

    /// Closes `slot` on shutdown, so the thread waiting on it wakes up and ends.
    pub fn closes<T: Send + 'static>(&self, slot: &Arc<Latest<T>>) {
        let slot = slot.clone();
        if let Ok(mut slots) = self.slots.lock() {
            slots.push(Box::new(move || slot.close()));
        }
    }

    /// Stops and joins every thread; a thread that panicked is logged. Idempotent.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        if let Ok(slots) = self.slots.lock() {
            for close in slots.iter() {
                close();
            }
        }
        let threads = self
            .threads
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for (name, handle) in threads {
            let started = std::time::Instant::now();
            if handle.join().is_err() {
                tracing::error!("the {name} thread panicked");
            }
            tracing::debug!(
                "{name} thread joined in {:.0} ms",
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The classifier as the viewer runs it: every forward pass first checks the stop flag, so an
/// explainer that runs hundreds of batches (LIME, RISE, occlusion) and the quality metrics
/// after it end within one batch when the viewer closes.
struct Stoppable {
    inner: Box<dyn Classifier>,
    stop: Arc<AtomicBool>,
}

impl Stoppable {
    fn check(&self) -> cxr_core::Result<()> {
        if self.stop.load(Ordering::Acquire) {
            Err(cxr_core::CoreError::Invalid(
                "stopped: the viewer is closing".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Classifier for Stoppable {
    fn classes(&self) -> &[String] {
        self.inner.classes()
    }
    fn threshold(&self) -> f32 {
        self.inner.threshold()
    }
    fn device(&self) -> Device {
        self.inner.device()
    }
    // The input style and the trust model must pass through: with the trait's defaults the
    // viewer would feed the model another input than it was trained on, and show no flags.
    fn input_style(&self) -> cxr_core::preprocess::InputStyle {
        self.inner.input_style()
    }
    fn trust(&self) -> Option<&cxr_core::trust::TrustModel> {
        self.inner.trust()
    }
    fn logits(&self, batch: &Tensor) -> cxr_core::Result<Tensor> {
        self.check()?;
        self.inner.logits(batch)
    }
    fn features_and_logits(&self, batch: &Tensor) -> Option<cxr_core::Result<(Tensor, Tensor)>> {
        if let Err(e) = self.check() {
            return Some(Err(e));
        }
        self.inner.features_and_logits(batch)
    }
    fn supports_gradients(&self) -> bool {
        self.inner.supports_gradients()
    }
    fn linear_head(&self) -> Option<Tensor> {
        self.inner.linear_head()
    }
    fn randomised(&self, seed: u64) -> cxr_core::Result<Box<dyn Classifier>> {
        self.inner.randomised(seed)
    }
}

/// What to analyse and explain.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub generation: u64,
    pub path: PathBuf,
    pub method: String,
    pub params: String,
    pub outline: bool,
    pub opacity: f32,
}

/// What the cache keeps of a classification.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CachedPrediction {
    pub prediction: Prediction,
    pub timings: Timings,
}

/// Cache key of a file's classification.
fn prediction_key(sha256: &str, fingerprint: &str) -> CacheKey {
    CacheKey::new(sha256, fingerprint, "classify", "")
}

/// Cache keys of an explanation's report and of its overlay drawn in the job's style.
fn explanation_keys(sha256: &str, fingerprint: &str, job: &Job) -> (CacheKey, CacheKey) {
    let style = format!(
        "{}|opacity={:.1}|outline={}",
        job.params, job.opacity, job.outline
    );
    (
        CacheKey::new(sha256, fingerprint, &job.method, &job.params),
        CacheKey::new(
            sha256,
            fingerprint,
            &format!("{}-overlay", job.method),
            &style,
        ),
    )
}

/// `pipeline` with its classifier wrapped in [`Stoppable`].
fn stoppable(pipeline: Pipeline, stop: Arc<AtomicBool>) -> Pipeline {
    Pipeline {
        classifier: Box::new(Stoppable {
            inner: pipeline.classifier,
            stop,
        }),
        ..pipeline
    }
}

/// Starts the inference thread. Analyses and explanations are kept per image and method, so
/// changing only the opacity or the outline just redraws; finished results also go to the
/// on-disk cache, so reopening a reviewed folder needs no model at all.
pub fn spawn_inference(
    workers: &Workers,
    pipeline: Pipeline,
    cache: Cache,
    jobs: Arc<Latest<Job>>,
    events: Sender<AppEvent>,
) {
    workers.closes(&jobs);
    let stop = workers.stop_flag();
    let pipeline = stoppable(pipeline, stop.clone());
    workers.spawn("inference", move || {
        let mut state = Inference {
            pipeline,
            cache,
            analysis: None,
            explanations: HashMap::new(),
            explainers: HashMap::new(),
        };
        while let Some(job) = jobs.take() {
            if !state.run(&job, &events) || stop.load(Ordering::Acquire) {
                break;
            }
        }
        // The models (libtorch) are dropped here, on this thread, before it is joined.
    });
}

/// Fills the list off the UI thread: every file whose classification is cached shows its label
/// at once, and every file already reviewed in the queue of `watch_dir` (where the viewer
/// records labels) shows its review mark again when the folder is reopened. Files are matched
/// by content (SHA-256), as the queue keeps them.
pub fn spawn_cache_scan(
    workers: &Workers,
    files: Vec<PathBuf>,
    cache: Cache,
    fingerprint: String,
    watch_dir: Option<PathBuf>,
    events: Sender<AppEvent>,
) {
    let stop = workers.stop_flag();
    workers.spawn("cache-scan", move || {
        let queue = watch_dir.and_then(|dir| Queue::open(dir).ok());
        for path in files {
            if stop.load(Ordering::Acquire) {
                break;
            }
            let Ok(bytes) = cxr_core::input::Gate::TRUSTED.read(&path) else {
                continue;
            };
            let sha = cxr_core::xray::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            let mut found = Vec::new();
            if let Some(cached) =
                cache.get_json::<CachedPrediction>(&prediction_key(&sha, &fingerprint))
            {
                found.push(WorkerEvent::Known {
                    path: path.clone(),
                    prediction: cached.prediction,
                });
            }
            let reviewed = queue.as_ref().and_then(|q| match q.find(&sha) {
                Ok(entry) => entry?.label().map(|l| l.as_str().to_owned()),
                Err(e) => {
                    tracing::warn!("queue: {e}");
                    None
                }
            });
            if let Some(label) = reviewed {
                found.push(WorkerEvent::Reviewed { path, label });
            }
            if found
                .into_iter()
                .any(|event| events.send(AppEvent::Worker(event)).is_err())
            {
                break;
            }
        }
    });
}

struct Inference {
    pipeline: Pipeline,
    cache: Cache,
    analysis: Option<Analysis>,
    explanations: HashMap<(String, String), (Explanation, MethodReport)>,
    explainers: HashMap<(String, String), Box<dyn Explainer>>,
}

impl Inference {
    /// Answers from the cache alone when both the classification and the overlay in this style
    /// are there; true if it did.
    fn answer_from_cache(&self, job: &Job, send: &dyn Fn(WorkerEvent) -> bool) -> bool {
        let Ok(xray) = cxr_core::xray::Xray::open(&job.path) else {
            return false;
        };
        let fingerprint = &self.pipeline.fingerprint;
        let Some(cached) = self
            .cache
            .get_json::<CachedPrediction>(&prediction_key(&xray.sha256, fingerprint))
        else {
            return false;
        };
        let (report_key, overlay_key) = explanation_keys(&xray.sha256, fingerprint, job);
        let Some(report) = self.cache.get_json::<MethodReport>(&report_key) else {
            return false;
        };
        let Some(overlay) = self
            .cache
            .get(&overlay_key)
            .and_then(|png| image::load_from_memory(&png).ok())
        else {
            return false;
        };
        let generation = job.generation;
        send(WorkerEvent::Analysed {
            generation,
            path: job.path.clone(),
            prediction: cached.prediction,
            timings: cached.timings,
            original: xray.original,
        });
        send(WorkerEvent::Explained {
            generation,
            overlay,
            report,
        });
        true
    }

    /// Runs one job; false when the app has gone (its channel is closed).
    fn run(&mut self, job: &Job, events: &Sender<AppEvent>) -> bool {
        let send = |event: WorkerEvent| events.send(AppEvent::Worker(event)).is_ok();
        let fail = |stage: Stage, message: String| {
            send(WorkerEvent::Failed {
                generation: job.generation,
                path: job.path.clone(),
                stage,
                message,
            })
        };
        let fresh = self
            .analysis
            .as_ref()
            .is_none_or(|a| a.xray.path != job.path);
        if fresh && self.answer_from_cache(job, &send) {
            return true;
        }
        if self
            .analysis
            .as_ref()
            .is_none_or(|a| a.xray.path != job.path)
        {
            if !send(WorkerEvent::Started {
                generation: job.generation,
                what: "segmenting and classifying".into(),
            }) {
                return false;
            }
            self.explanations.clear();
            match self.pipeline.analyze_file(&job.path) {
                Ok(analysis) => {
                    let cached = CachedPrediction {
                        prediction: analysis.prediction.clone(),
                        timings: analysis.timings,
                    };
                    let key = prediction_key(&analysis.xray.sha256, &self.pipeline.fingerprint);
                    if let Err(e) = self.cache.put_json(&key, &cached) {
                        tracing::warn!("cache: {e}");
                    }
                    self.analysis = Some(analysis);
                }
                Err(e) => {
                    self.analysis = None;
                    return fail(Stage::Analysis, e.to_string());
                }
            }
        }
        let Some(analysis) = &self.analysis else {
            return true;
        };
        let analysed = WorkerEvent::Analysed {
            generation: job.generation,
            path: job.path.clone(),
            prediction: analysis.prediction.clone(),
            timings: analysis.timings,
            original: analysis.xray.original.clone(),
        };
        if !send(analysed) {
            return false;
        }
        let key = (job.method.clone(), job.params.clone());
        if !self.explanations.contains_key(&key) {
            if !send(WorkerEvent::Started {
                generation: job.generation,
                what: format!("explaining with {}", job.method),
            }) {
                return false;
            }
            tracing::info!(method = %job.method, params = %job.params, image = %job.path.display(), "explaining");
            match explain(&self.pipeline, &mut self.explainers, analysis, job) {
                Ok(done) => {
                    self.explanations.insert(key.clone(), done);
                }
                Err(e) => return fail(Stage::Explanation, e.to_string()),
            }
        }
        let Some((explanation, report)) = self.explanations.get(&key) else {
            return true;
        };
        let style = OverlayStyle {
            colormap: Colormap::Viridis,
            opacity: job.opacity,
            legend: true,
        };
        let overlay = report::overlay(analysis, explanation, report, &style, job.outline);
        let (report_key, overlay_key) =
            explanation_keys(&analysis.xray.sha256, &self.pipeline.fingerprint, job);
        let stored = self.cache.put_json(&report_key, report).and_then(|()| {
            let png = cxr_core::render::encode_png(&overlay)
                .map_err(|e| cxr_core::CoreError::Invalid(e.to_string()))?;
            self.cache.put(&overlay_key, &png)
        });
        if let Err(e) = stored {
            tracing::warn!("cache: {e}");
        }
        send(WorkerEvent::Explained {
            generation: job.generation,
            overlay: DynamicImage::ImageRgb8(overlay),
            report: report.clone(),
        })
    }
}

/// Explains the predicted class with the job's method, building each explainer once.
fn explain(
    pipeline: &Pipeline,
    explainers: &mut HashMap<(String, String), Box<dyn Explainer>>,
    analysis: &Analysis,
    job: &Job,
) -> cxr_core::Result<(Explanation, MethodReport)> {
    let entry = registry::find(&job.method)?;
    let key = (job.method.clone(), job.params.clone());
    if !explainers.contains_key(&key) {
        explainers.insert(
            key.clone(),
            entry.build(&ExplainerConfig::parse(&job.params)?)?,
        );
    }
    let explainer = &explainers[&key];
    let classes = pipeline.classifier.classes();
    let target = analysis.prediction.label_index(classes);
    let checks = QualityChecks {
        faithfulness: true,
        sanity: false,
    };
    report::explain(
        pipeline.classifier.as_ref(),
        analysis,
        entry,
        explainer.as_ref(),
        &job.params,
        target,
        checks,
    )
}

/// A picture to encode for one pane.
pub struct EncodeJob {
    pub generation: u64,
    pub pane: Pane,
    pub size: Size,
    pub image: DynamicImage,
}

/// Starts the encoder thread: resizing and encoding (sixel, kitty, halfblocks...) happen here,
/// never on the UI thread. Each pane has its own slot.
pub fn spawn_encoder(
    workers: &Workers,
    picker: Picker,
    jobs: Arc<Latest<EncodeJob>>,
    events: Sender<AppEvent>,
) {
    workers.closes(&jobs);
    workers.spawn("encoder", move || {
        while let Some(job) = jobs.take() {
            let protocol = encode(&picker, job.image, job.size);
            let encoded = Encoded {
                generation: job.generation,
                pane: job.pane,
                size: job.size,
                protocol,
            };
            if events.send(AppEvent::Encoded(encoded)).is_err() {
                break;
            }
        }
    });
}

/// Scales `image` up or down, aspect ratio kept, to the largest size that fits `size` cells
/// (pixels per cell from the picker's font size: 10x20 for half blocks, one pixel per half
/// cell), then encodes it. Fitting without scaling up would leave a small radiograph, or any
/// radiograph on a large terminal with a small font, at its natural size in a corner.
pub fn encode(picker: &Picker, image: DynamicImage, size: Size) -> Result<Protocol, String> {
    picker
        .new_protocol(image, size, Resize::Scale(Some(FilterType::Triangle)))
        .map_err(|e| e.to_string())
}

/// The images a folder holds (PNG, JPEG, DICOM), sorted by name; a file is a folder of one.
pub fn list_images(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            p.is_file() && !hidden && ["png", "jpg", "jpeg", "dcm"].contains(&ext.as_str())
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod stoppable_tests {
    use super::*;

    /// The viewer's wrapped classifier predicts exactly as the plain one: same input style,
    /// same probabilities, same familiarity and flags.
    #[test]
    fn the_viewer_classifier_predicts_like_the_plain_one() {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let sample = models.join("../samples/nih_00001299_000.png");
        let plain = Pipeline::load(&models, Device::Cpu).unwrap();
        let expected = plain.analyze_file(&sample).unwrap();
        let wrapped = stoppable(
            Pipeline::load(&models, Device::Cpu).unwrap(),
            Arc::new(AtomicBool::new(false)),
        );
        assert_eq!(
            wrapped.classifier.input_style(),
            plain.classifier.input_style()
        );
        assert!(wrapped.classifier.trust().is_some());
        let got = wrapped.analyze_file(&sample).unwrap();
        assert_eq!(got.prediction, expected.prediction);
        assert!(got.prediction.trust.familiarity.is_some());
    }
}
