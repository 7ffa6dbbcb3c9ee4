//! Background work: one inference thread owns the models (libtorch blocks, and its tensors are
//! not `Sync`), one encoder thread turns pictures into terminal protocols. Each has a single
//! slot holding only the newest request, so scrolling through a hundred images never queues a
//! hundred explanations: whatever was waiting is replaced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use crossbeam_channel::Sender;
use cxr_core::cache::{Cache, CacheKey};
use cxr_core::explain::report::{self, MethodReport, QualityChecks};
use cxr_core::explain::{Explainer, ExplainerConfig, Explanation, registry};
use cxr_core::models::Prediction;
use cxr_core::pipeline::{Analysis, Pipeline, Timings};
use cxr_core::render::{Colormap, OverlayStyle};
use image::DynamicImage;
use ratatui::layout::Size;
use ratatui_image::Resize;
use ratatui_image::picker::Picker;

use super::event::{AppEvent, Encoded, Pane, WorkerEvent};

/// A slot that keeps only the newest request.
pub struct Latest<T> {
    slot: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Latest<T> {
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(None),
            ready: Condvar::new(),
        })
    }

    /// Replaces whatever was waiting.
    pub fn put(&self, value: T) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(value);
            self.ready.notify_one();
        }
    }

    /// The waiting request, if any, without blocking.
    #[cfg(test)]
    pub fn try_take(&self) -> Option<T> {
        self.slot.lock().ok()?.take()
    }

    /// Waits for a request; `None` when the lock is poisoned (the app is going down).
    fn take(&self) -> Option<T> {
        let mut slot = self.slot.lock().ok()?;
        loop {
            if let Some(value) = slot.take() {
                return Some(value);
            }
            slot = self.ready.wait(slot).ok()?;
        }
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

/// Starts the inference thread. Analyses and explanations are kept per image and method, so
/// changing only the opacity or the outline just redraws; finished results also go to the
/// on-disk cache, so reopening a reviewed folder needs no model at all.
pub fn spawn_inference(
    pipeline: Pipeline,
    cache: Cache,
    jobs: Arc<Latest<Job>>,
    events: Sender<AppEvent>,
) {
    thread::spawn(move || {
        let mut state = Inference {
            pipeline,
            cache,
            analysis: None,
            explanations: HashMap::new(),
            explainers: HashMap::new(),
        };
        while let Some(job) = jobs.take() {
            if !state.run(&job, &events) {
                break;
            }
        }
    });
}

/// Fills the list from the cache, off the UI thread: every file whose classification is cached
/// shows its label at once.
pub fn spawn_cache_scan(
    files: Vec<PathBuf>,
    cache: Cache,
    fingerprint: String,
    events: Sender<AppEvent>,
) {
    thread::spawn(move || {
        for path in files {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let sha = cxr_core::xray::hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            if let Some(cached) =
                cache.get_json::<CachedPrediction>(&prediction_key(&sha, &fingerprint))
                && events
                    .send(AppEvent::Worker(WorkerEvent::Known {
                        path,
                        prediction: cached.prediction,
                    }))
                    .is_err()
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
        let fail = |message: String| {
            send(WorkerEvent::Failed {
                generation: job.generation,
                path: job.path.clone(),
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
                    return fail(e.to_string());
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
            match explain(&self.pipeline, &mut self.explainers, analysis, job) {
                Ok(done) => {
                    self.explanations.insert(key.clone(), done);
                }
                Err(e) => return fail(e.to_string()),
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
        let overlay = report::overlay(analysis, explanation, &style, job.outline);
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
pub fn spawn_encoder(picker: Picker, jobs: Arc<Latest<EncodeJob>>, events: Sender<AppEvent>) {
    thread::spawn(move || {
        while let Some(job) = jobs.take() {
            let protocol = picker
                .new_protocol(job.image, job.size, Resize::Fit(None))
                .map_err(|e| e.to_string());
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
