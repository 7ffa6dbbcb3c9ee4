//! Background work: one inference thread owns the models (libtorch blocks, and its tensors are
//! not `Sync`), one encoder thread turns pictures into terminal protocols. Each has a single
//! slot holding only the newest request, so scrolling through a hundred images never queues a
//! hundred explanations: whatever was waiting is replaced.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use cxr_core::cache::Cache;
use cxr_core::explain::report::{MethodReport, QualityChecks};
use cxr_core::explain::{Explanation, Method, MethodSpec};
use cxr_core::files::{has_supported_extension, sha256_hex};
use cxr_core::input::Gate;
use cxr_core::queue::Queue;
use cxr_core::render::{Colormap, OverlayStyle};
use cxr_core::service::{Image, Service, Settings, Target, cached_classification};
use image::DynamicImage;
use ratatui::layout::Size;
use ratatui_image::picker::Picker;
use ratatui_image::protocol::Protocol;
use ratatui_image::{FilterType, Resize};

use super::event::{AppEvent, Encoded, ExplainProgress, Pane, Stage, WorkerEvent};

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

/// Starts the inference thread. Analyses and explanations are kept per image and method, so
/// changing only the opacity or the outline just redraws; finished results also go to the
/// on-disk cache, so reopening a reviewed folder needs no model at all.
pub fn spawn_inference(
    workers: &Workers,
    service: Service,
    jobs: Arc<Latest<Job>>,
    events: Sender<AppEvent>,
) {
    workers.closes(&jobs);
    let stop = workers.stop_flag();
    workers.spawn("inference", move || {
        service.pipeline().compute.apply();
        let mut state = Inference {
            stop: stop.clone(),
            service,
            image: None,
            explanations: HashMap::new(),
            methods: HashMap::new(),
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
            let sha = sha256_hex(&bytes);
            let mut found = Vec::new();
            if let Some(cached) = cached_classification(&cache, &sha, &fingerprint) {
                found.push(WorkerEvent::Known {
                    path: path.clone(),
                    prediction: cached.prediction(),
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

/// The shortest time between two progress reports to the app: ten a second at most, enough for
/// a counter, and no flood of redraws from an explainer reporting every batch.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Lets a progress report through when `interval` has passed since the last one let through;
/// the first and the last (`done == total`) always pass.
pub struct Throttle {
    interval: Duration,
    last: std::cell::Cell<Option<Instant>>,
}

impl Throttle {
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: std::cell::Cell::new(None),
        }
    }

    /// Whether the report of `done` of `total` at `now` goes to the app.
    pub fn admit(&self, done: usize, total: usize, now: Instant) -> bool {
        let due = self
            .last
            .get()
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due || done >= total {
            self.last.set(Some(now));
        }
        due || done >= total
    }
}

struct Inference {
    /// Raised when the viewer closes: a long explainer stops within one batch.
    stop: Arc<AtomicBool>,
    service: Service,
    /// The image shown, with its analysis once made, and its decoded original.
    image: Option<(Image, DynamicImage)>,
    /// Explanations of that image made in this session, by method and parameters, so a change
    /// of opacity or outline only redraws.
    explanations: HashMap<(String, String), (Explanation, MethodReport)>,
    methods: HashMap<(String, String), Method>,
}

impl Inference {
    /// The job's explanation drawn in `settings`: redrawn when this session already made it,
    /// else from the service (the cache, or computed). None when the app has gone.
    fn explanation(
        &mut self,
        job: &Job,
        settings: &Settings,
        send: &dyn Fn(WorkerEvent) -> bool,
    ) -> Option<cxr_core::Result<(Vec<u8>, MethodReport)>> {
        let (image, _) = self.image.as_ref()?;
        let key = (job.method.clone(), job.params.clone());
        if let Some((explanation, report)) = self.explanations.get(&key) {
            return Some(
                self.service
                    .redraw(
                        image,
                        &job.method,
                        &report.params, // canonical, as the cache keys it
                        explanation,
                        report,
                        settings,
                    )
                    .map(|png| (png, report.clone())),
            );
        }
        if !send(WorkerEvent::Started {
            generation: job.generation,
            what: format!("explaining with {}", job.method),
        }) {
            return None;
        }
        tracing::info!(method = %job.method, params = %job.params, image = %job.path.display(), "explaining");
        let method = match self.methods.entry(key.clone()) {
            Entry::Occupied(built) => Ok(&*built.into_mut()),
            Entry::Vacant(slot) => MethodSpec {
                name: job.method.clone(),
                params: job.params.clone(),
            }
            .build()
            .map(|method| &*slot.insert(method)),
        };
        let started = Instant::now();
        let throttle = Throttle::new(PROGRESS_INTERVAL);
        let progress = |done: usize, total: usize| {
            if self.stop.load(Ordering::Acquire) {
                return ControlFlow::Break(());
            }
            let now = Instant::now();
            if throttle.admit(done, total, now) {
                // A closed channel (the app has gone) is noticed when the job ends.
                send(WorkerEvent::Progress {
                    generation: job.generation,
                    progress: ExplainProgress {
                        done,
                        total,
                        elapsed: now.saturating_duration_since(started),
                    },
                });
            }
            ControlFlow::Continue(())
        };
        Some(
            method
                .and_then(|method| {
                    self.service
                        .explain_reporting(image, method, settings, Some(&progress))
                })
                .map(|rendered| {
                    if let Some(explanation) = rendered.explanation {
                        self.explanations
                            .insert(key, (explanation, rendered.report.clone()));
                    }
                    (rendered.overlay_png, rendered.report)
                }),
        )
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
        if self
            .image
            .as_ref()
            .is_none_or(|(image, _)| image.path() != job.path)
        {
            self.image = None;
            self.explanations.clear();
            let opened = Image::read(&job.path, Gate::TRUSTED).and_then(|image| {
                let original = image.decode()?.original;
                Ok((image, original))
            });
            match opened {
                Ok(opened) => self.image = Some(opened),
                Err(e) => return fail(Stage::Analysis, e.to_string()),
            }
        }
        let Some((image, original)) = &self.image else {
            return true;
        };
        if image.analysed().is_none()
            && !send(WorkerEvent::Started {
                generation: job.generation,
                what: "segmenting and classifying".into(),
            })
        {
            return false;
        }
        let classified = match self.service.classify(image) {
            Ok(classified) => classified,
            Err(e) => return fail(Stage::Analysis, e.to_string()),
        };
        let analysed = WorkerEvent::Analysed {
            generation: job.generation,
            path: job.path.clone(),
            prediction: classified.report.prediction(),
            timings: classified.report.timings,
            original: original.clone(),
            lungs: classified.report.lung_box,
        };
        if !send(analysed) {
            return false;
        }
        let settings = Settings {
            target: Target::Predicted,
            checks: QualityChecks {
                faithfulness: true,
                sanity: false,
            },
            style: OverlayStyle {
                colormap: Colormap::Viridis,
                opacity: job.opacity,
                legend: true,
            },
            outline: job.outline,
        };
        let Some(drawn) = self.explanation(job, &settings, &send) else {
            return false;
        };
        let overlay = drawn.and_then(|(png, report)| {
            let overlay = image::load_from_memory(&png)
                .map_err(|e| cxr_core::CoreError::Invalid(format!("reading the overlay: {e}")))?;
            Ok((overlay, report))
        });
        match overlay {
            Ok((overlay, report)) => send(WorkerEvent::Explained {
                generation: job.generation,
                overlay,
                report,
            }),
            Err(e) => fail(Stage::Explanation, e.to_string()),
        }
    }
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
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            p.is_file() && !name.starts_with('.') && has_supported_extension(&name)
        })
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod inference_tests {
    use super::*;
    use cxr_core::compute::Compute;
    use cxr_core::tch::Device;

    fn root() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The viewer's inference thread on the models in `models`: its workers, job slot and the
    /// events it sends.
    fn inference_on(
        models: &Path,
    ) -> (
        Arc<Workers>,
        Arc<Latest<Job>>,
        crossbeam_channel::Receiver<AppEvent>,
    ) {
        let service = Service::load(models, &Compute::on(Device::Cpu), Cache::disabled()).unwrap();
        let workers = Workers::new();
        let jobs = Latest::new();
        let (events, received) = crossbeam_channel::unbounded();
        spawn_inference(&workers, service, jobs.clone(), events);
        (workers, jobs, received)
    }

    /// Closing the viewer stops a long explanation between two batches: LIME with 2,000
    /// samples reports a few batches, the stop flag is raised, and the thread ends without an
    /// explanation, long before the last sample.
    #[test]
    fn closing_the_viewer_stops_a_running_explainer() {
        let root = root();
        let (workers, jobs, received) = inference_on(&root.join("models"));
        jobs.put(Job {
            generation: 1,
            path: root.join("samples/nih_00001299_000.png"),
            method: "lime".into(),
            params: "samples=2000".into(),
            outline: true,
            opacity: 0.6,
        });
        let total = loop {
            match received
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap()
            {
                AppEvent::Worker(WorkerEvent::Progress { progress, .. }) => break progress.total,
                AppEvent::Worker(WorkerEvent::Failed { message, .. }) => panic!("{message}"),
                _ => {}
            }
        };
        assert_eq!(total, 2000);
        workers.shutdown();
        let mut last_done = 0;
        for event in received.try_iter() {
            match event {
                AppEvent::Worker(WorkerEvent::Progress { progress, .. }) => {
                    last_done = progress.done;
                }
                AppEvent::Worker(WorkerEvent::Explained { .. }) => {
                    panic!("the explanation ran to its end after the stop")
                }
                _ => {}
            }
        }
        assert!(last_done < total, "{last_done} of {total}");
    }

    /// The viewer's inference thread on a TorchScript classifier (the committed fixture beside
    /// the shipped segmenter): a Grad-CAM job is analysed, explained and drawn, and the same job
    /// with another opacity is only redrawn.
    #[test]
    fn the_viewer_runs_a_torchscript_classifier() {
        let root = root();
        let dir = tempfile::tempdir().unwrap();
        for (from, to) in [
            ("models/segmenter.json", "segmenter.json"),
            ("models/segmenter.safetensors", "segmenter.safetensors"),
            (
                "crates/core/tests/fixtures/torchscript/tiny-split.json",
                "classifier.json",
            ),
            (
                "crates/core/tests/fixtures/torchscript/tiny-split.pt",
                "classifier.pt",
            ),
        ] {
            std::fs::copy(root.join(from), dir.path().join(to)).unwrap();
        }
        let (workers, jobs, received) = inference_on(dir.path());
        let job = Job {
            generation: 1,
            path: root.join("samples/nih_00001299_000.png"),
            method: "grad-cam".into(),
            params: String::new(),
            outline: true,
            opacity: 0.6,
        };
        let explained = |jobs: &Latest<Job>, job: Job| {
            jobs.put(job);
            loop {
                match received
                    .recv_timeout(std::time::Duration::from_secs(120))
                    .unwrap()
                {
                    AppEvent::Worker(WorkerEvent::Explained {
                        overlay, report, ..
                    }) => return (overlay, report),
                    AppEvent::Worker(WorkerEvent::Failed { message, .. }) => panic!("{message}"),
                    _ => {}
                }
            }
        };
        let (overlay, report) = explained(&jobs, job.clone());
        assert_eq!(report.method, "grad-cam");
        assert!(report.heatmap.max > 0.0);
        let (faint, again) = explained(
            &jobs,
            Job {
                generation: 2,
                opacity: 0.1,
                ..job
            },
        );
        assert_eq!(again.explain_ms, report.explain_ms, "not explained again");
        assert_eq!(
            (faint.width(), faint.height()),
            (overlay.width(), overlay.height())
        );
        assert_ne!(faint.to_rgb8().into_raw(), overlay.to_rgb8().into_raw());
        workers.shutdown();
    }

    /// Issue 20, defect 1, the viewer: opening the deeply nested DICOM (which overflowed the
    /// parser's stack and aborted the process) fails that one image with its reason; issue 26:
    /// so does a colour screenshot of a viewer (it was classified). The inference thread goes on
    /// to analyse the next.
    #[test]
    fn the_viewer_refuses_a_nested_dicom_and_a_screenshot_and_goes_on() {
        let root = root();
        let (workers, jobs, received) = inference_on(&root.join("models"));
        let job = |generation, path: PathBuf| Job {
            generation,
            path,
            method: "grad-cam".into(),
            params: String::new(),
            outline: true,
            opacity: 0.6,
        };
        let outcome = |jobs: &Latest<Job>, job: Job| {
            let generation = job.generation;
            jobs.put(job);
            loop {
                match received
                    .recv_timeout(std::time::Duration::from_secs(120))
                    .unwrap()
                {
                    AppEvent::Worker(WorkerEvent::Failed { message, .. }) => return Err(message),
                    AppEvent::Worker(WorkerEvent::Analysed {
                        generation: g,
                        prediction,
                        ..
                    }) if g == generation => return Ok(prediction),
                    _ => {}
                }
            }
        };
        let fixtures = root.join("crates/io/tests/fixtures");
        let nested = outcome(&jobs, job(1, fixtures.join("nested-sequences.dcm"))).unwrap_err();
        assert!(nested.contains("too deeply nested"), "{nested}");
        let screenshot = outcome(&jobs, job(2, fixtures.join("screenshot.png"))).unwrap_err();
        assert!(
            screenshot.contains("not a chest radiograph") && screenshot.contains("colour"),
            "{screenshot}"
        );
        let prediction = outcome(&jobs, job(3, root.join("samples/nih_00001299_000.png")));
        assert!(prediction.is_ok(), "{prediction:?}");
        workers.shutdown();
    }
}
