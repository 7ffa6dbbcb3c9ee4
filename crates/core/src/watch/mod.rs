//! `cxr watch`: takes radiographs dropped into `DIR/inbox/`, processes each into a queue entry
//! ([`crate::queue`]) and rejects what cannot be read, losing nothing across crashes.
//!
//! One coordinator thread (the caller's, in [`run`]) owns all bookkeeping: it turns file-system
//! events ([`filter`]) into pending paths, waits until each file has been quiet, and hands it to
//! a small pool of workers through a bounded channel; each worker owns its own pipeline. A file
//! that does not decode is retried with backoff while it keeps changing or until the retries
//! are spent (a writer may be slow); only then is it rejected. Because every step on disk is an
//! atomic rename and the inbox file is removed last, the process can be killed at any instant:
//! the next start cleans staging leftovers, lists the inbox, and carries on.
//!
//! Memory stays bounded however many files arrive at once: the coordinator holds paths only,
//! and at most two files per worker are in flight.

pub mod dicom_listen;
pub mod dicom_send;
pub mod filter;
pub mod folder;
mod processor;
mod rejected;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::compute::Compute;
use notify_debouncer_full::DebounceEventResult;
use serde::Serialize;

use crate::explain::report::QualityChecks;
use crate::pool::ModelPool;
use crate::queue::Queue;
use crate::render::OverlayStyle;
use crate::{CoreError, Result};
use filter::{Action, Ignored};
pub use folder::{FolderWatcher, WatchMode};
use processor::{Inbox, Job, Outcome, Processor, Stamp};
pub use rejected::reason_path;

pub use crate::explain::MethodSpec;

/// How often and how patiently a file that does not decode is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt; the file is rejected when the last one fails too.
    pub retries: u32,
    /// Delay before the first retry; each next one waits twice as long.
    pub first_delay: Duration,
}

impl Default for RetryPolicy {
    /// 0.5, 1, 2 and 4 s: a file that stays unreadable is rejected after about 8 s.
    fn default() -> Self {
        Self {
            retries: 4,
            first_delay: Duration::from_millis(500),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        self.first_delay * 2u32.saturating_pow(attempt.saturating_sub(1).min(16))
    }
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The watch folder (inbox, queue, rejected), created if missing.
    pub dir: PathBuf,
    /// The models folder each worker loads.
    pub models: PathBuf,
    /// Device, backend and threads; the cores are shared between the `jobs` workers.
    pub compute: Compute,
    /// Explainers run on every file (none: classification only).
    pub methods: Vec<MethodSpec>,
    pub style: OverlayStyle,
    /// Outline the lungs on overlays.
    pub outline: bool,
    pub checks: QualityChecks,
    /// Worker threads, each with its own pipeline.
    pub jobs: usize,
    pub mode: WatchMode,
    /// Watch sub-folders of the inbox too.
    pub recursive: bool,
    /// Quiet time: events are debounced over it, and a file is not read before it has been
    /// unchanged for that long.
    pub debounce: Duration,
    /// Polling period of the polling watcher.
    pub poll_interval: Duration,
    pub retry: RetryPolicy,
    /// Return once the inbox is empty (files that are stuck count as done), instead of
    /// watching for ever.
    pub once: bool,
    /// Also receive DICOM instances over the network (C-STORE) into the inbox.
    pub dicom: Option<dicom_listen::DicomListen>,
    /// Send each DICOM entry's results (Secondary Captures, SR) there with C-STORE.
    pub send_to: Option<dicom_send::SendTo>,
}

impl WatchOptions {
    /// Defaults: Grad-CAM, one worker per core ([`default_jobs`]), native events, 400 ms quiet
    /// time.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>, models: impl Into<PathBuf>, compute: Compute) -> Self {
        Self {
            dir: dir.into(),
            models: models.into(),
            compute,
            methods: vec![MethodSpec {
                name: "grad-cam".into(),
                params: String::new(),
            }],
            style: OverlayStyle::default(),
            outline: true,
            checks: QualityChecks {
                faithfulness: false,
                sanity: false,
            },
            jobs: default_jobs(),
            mode: WatchMode::Auto,
            recursive: false,
            debounce: Duration::from_millis(400),
            poll_interval: Duration::from_secs(1),
            retry: RetryPolicy::default(),
            once: false,
            dicom: None,
            send_to: None,
        }
    }
}

/// One worker per core (at most 8), each running its models on one thread. Separate files in
/// parallel beat one file's operators in parallel for models this small, and single-threaded
/// workers do not stall when another process holds a core (libtorch's multi-threaded operators
/// wait for all their threads at every step: on this project's 2-core machine, with a core
/// busy elsewhere, one two-thread worker ran up to 3 times slower than two one-thread workers).
#[must_use]
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// What happened, one event per file outcome; `cxr watch` prints them as JSON lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WatchEvent {
    /// Models loaded, leftovers cleaned, the inbox listed: watching from now on.
    Watching {
        dir: PathBuf,
        /// `inotify`, `poll`, ...
        watcher: String,
        jobs: usize,
        methods: Vec<String>,
        recursive: bool,
        /// Files found in the inbox at start.
        waiting: usize,
        /// Staging leftovers of a previous run, removed.
        cleaned: usize,
    },
    /// Something the user should know that is not an error (e.g. polling instead of events).
    Notice { message: String },
    /// The file became queue entry `id`, at `entry`.
    Queued {
        file: PathBuf,
        id: String,
        entry: PathBuf,
        label: String,
        confidence: f32,
        uncertainty: f32,
        ms: f64,
    },
    /// Same content as entry `id`, which came from a file named `of`: removed from the inbox.
    Duplicate {
        file: PathBuf,
        id: String,
        entry: PathBuf,
        of: String,
    },
    /// This very file was queued already (before a crash, or while the inbox was read-only):
    /// removed from the inbox now.
    AlreadyQueued {
        file: PathBuf,
        id: String,
        entry: PathBuf,
    },
    /// Not readable yet; tried again after `delay_ms`.
    Retrying {
        file: PathBuf,
        attempt: u32,
        reason: String,
        delay_ms: u64,
    },
    /// Moved to `to`, with the reason in `to`.reason.txt.
    Rejected {
        file: PathBuf,
        to: PathBuf,
        reason: String,
    },
    /// A file left in the inbox on purpose (said once per file).
    Ignored { file: PathBuf, reason: String },
    /// Something went wrong; the watcher carries on and retries where it makes sense.
    Error {
        file: Option<PathBuf>,
        error: String,
    },
    /// The DICOM listener is accepting associations.
    DicomListening { addr: String, ae_title: String },
    /// An instance arrived over C-STORE and is in the inbox as `file` (then processed like
    /// any dropped file).
    DicomReceived {
        file: PathBuf,
        calling_ae: String,
        sop_instance_uid: String,
    },
    /// An association, a presentation context or an instance was refused; the sender was
    /// told (rejection or failure status) and nothing was written.
    DicomRefused { peer: String, reason: String },
    /// A result of a queue entry (`file`) was stored at `to` with C-STORE.
    DicomSent {
        file: PathBuf,
        to: String,
        sop_instance_uid: String,
    },
    /// A result could not be sent; the entry keeps it, with the reason in
    /// [`dicom_send::SEND_FAILED_FILE`], and it is sent again later.
    DicomSendFailed {
        file: PathBuf,
        to: String,
        error: String,
    },
    /// With [`WatchOptions::once`]: the inbox is done.
    Finished(Summary),
}

/// Counts of outcomes over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub queued: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub errors: usize,
    /// Files still in the inbox that could not be moved (with `once`).
    pub stuck: usize,
}

/// Messages to the coordinator: file events and worker results.
pub(crate) enum Msg {
    Events(DebounceEventResult),
    Done(PathBuf, Outcome),
    /// An event from elsewhere (the DICOM listener), passed on as it is.
    Event(WatchEvent),
}

/// Bookkeeping of one path the coordinator is responsible for.
struct Pending {
    due: Instant,
    /// Failed decodes of the current content.
    attempts: u32,
    /// The file as last seen, and since when it has looked like that.
    seen: Option<(Stamp, Instant)>,
    in_flight: bool,
    /// An event arrived while it was in flight: look again afterwards.
    recheck: bool,
    /// Could not be moved out of the inbox; already reported.
    stuck: bool,
    /// Failures that were not the file's fault, for backoff.
    failures: u32,
}

impl Pending {
    fn new(due: Instant) -> Self {
        Self {
            due,
            attempts: 0,
            seen: None,
            in_flight: false,
            recheck: false,
            stuck: false,
            failures: 0,
        }
    }
}

/// A stuck file (read-only inbox) is tried again this often, and on any change of the inbox's
/// permissions.
const STUCK_RETRY: Duration = Duration::from_secs(10);
/// The whole inbox is listed again this often, in case an event was lost.
const RESCAN_EVERY: Duration = Duration::from_secs(30);
/// A worker on the same content: try again after this.
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// Watches `options.dir` until `stop` is set (or, with `once`, until the inbox is done),
/// reporting every outcome to `on_event`. Fatal problems (models that do not load, a folder
/// that cannot be created or watched) are errors; problems with single files are events.
pub fn run(
    options: &WatchOptions,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&WatchEvent),
) -> Result<Summary> {
    let queue = Queue::create(&options.dir)?;
    // One watcher per folder: two would take each other's files and rejection reasons.
    let _lock = lock_folder(&options.dir)?;
    let jobs = options.jobs.max(1);
    let claims = Arc::new(Mutex::new(HashSet::new()));
    let (worker_options, worker_queue) = (options.clone(), queue.clone());
    // Fatal problems first: every worker must have its models.
    let pool = ModelPool::start(jobs, jobs, "cxr-watch", move |_| {
        Processor::new(&worker_options, worker_queue.clone(), Arc::clone(&claims))
    })?;
    coordinate(options, &queue, &pool, stop, on_event)
    // The pool is dropped after the coordinator has every outcome: its threads end there.
}

/// Where the coordinator hands files to be processed: the model pool in [`run`], a scripted
/// fake in the coordinator's tests.
pub(crate) trait Processing {
    /// Starts `job` if a worker can take it now (false: not now, try later); its outcome comes
    /// back as [`Msg::Done`] on `done`, whatever happens (a panic is a failure).
    fn try_start(&self, job: Job, done: &mpsc::Sender<Msg>) -> bool;
}

impl Processing for ModelPool<Processor> {
    fn try_start(&self, job: Job, done: &mpsc::Sender<Msg>) -> bool {
        let done = done.clone();
        self.try_submit(move |processor: &Processor| {
            let outcome = crate::pool::catching(|| processor.process(&job)).unwrap_or_else(|p| {
                Outcome::Failed(format!("internal error while processing it: {}", p.0))
            });
            let _ = done.send(Msg::Done(job.path, outcome));
        })
        .is_ok()
    }
}

/// Watches the inbox until `stop` (or, with `once`, until it is done), handing quiet files to
/// `processing` and acting on their outcomes; waits for every file in flight before returning.
pub(crate) fn coordinate(
    options: &WatchOptions,
    queue: &Queue,
    processing: &dyn Processing,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(&WatchEvent),
) -> Result<Summary> {
    let jobs = options.jobs.max(1);
    let (tx, rx) = mpsc::channel::<Msg>();
    let mut coordinator = Coordinator {
        options,
        inbox: queue.inbox(),
        pending: HashMap::new(),
        reported: HashSet::new(),
        summary: Summary::default(),
        on_event,
        processing,
        accepting: true,
        in_flight: 0,
        max_in_flight: 2 * jobs,
        sender: None,
    };
    let result = coordinator.run(queue, &tx, &rx, stop, jobs);
    // Let the workers finish what they hold, and report it.
    coordinator.accepting = false;
    while coordinator.in_flight > 0 {
        match rx.recv() {
            Ok(Msg::Done(path, outcome)) => coordinator.finished(path, outcome),
            Ok(Msg::Events(_) | Msg::Event(_)) => {}
            Err(_) => break,
        }
    }
    // The sender finishes the entries it was given; what it says is still told.
    coordinator.sender = None;
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Event(event) = msg {
            coordinator.emit(&event);
        }
    }
    result.map(|()| coordinator.summary)
}

/// The lock file that keeps a second `cxr watch` off a folder.
pub const LOCK_FILE: &str = ".watch.lock";

/// Takes the folder's single-instance lock (`flock` on `DIR/.watch.lock`, released by the
/// kernel when the process ends, however it ends) and writes this process id into it; a folder
/// already locked is an error naming the holder.
fn lock_folder(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| CoreError::io(&path, e))?;
    let flags = rustix::fs::FlockOperation::NonBlockingLockExclusive;
    match rustix::fs::flock(&file, flags) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(CoreError::Invalid(format!(
                "{}: another `cxr watch`{} is already watching this folder (lock {}); one \
                 watcher per folder",
                dir.display(),
                if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
                path.display()
            )));
        }
        Err(e) => return Err(CoreError::io(&path, e.into())),
    }
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(pid.as_bytes()))
        .map_err(|e| CoreError::io(&path, e))?;
    Ok(file)
}

struct Coordinator<'a> {
    options: &'a WatchOptions,
    inbox: PathBuf,
    pending: HashMap<PathBuf, Pending>,
    /// Ignored files already reported.
    reported: HashSet<PathBuf>,
    summary: Summary,
    on_event: &'a mut dyn FnMut(&WatchEvent),
    processing: &'a dyn Processing,
    /// False once stopping: nothing new is handed out.
    accepting: bool,
    in_flight: usize,
    max_in_flight: usize,
    /// With `send_to`: where queued entries go to have their DICOM results sent.
    sender: Option<dicom_send::Sender>,
}

impl Coordinator<'_> {
    fn run(
        &mut self,
        queue: &Queue,
        tx: &mpsc::Sender<Msg>,
        rx: &mpsc::Receiver<Msg>,
        stop: &AtomicBool,
        jobs: usize,
    ) -> Result<()> {
        let cleaned = queue.clean_staging()?;
        let options = self.options;
        let watcher = FolderWatcher::new(
            &self.inbox,
            options.recursive,
            options.mode,
            options.debounce,
            options.poll_interval,
            folder::Forward(tx.clone()),
        )?;
        if let Some(why) = &watcher.fallback {
            self.emit(&WatchEvent::Notice {
                message: why.clone(),
            });
        }
        // After the inbox watcher: a received file is seen.
        let listener = match &options.dicom {
            Some(dicom) => Some(dicom_listen::Listener::start(
                dicom,
                &self.inbox,
                tx.clone(),
            )?),
            None => None,
        };
        if let Some(target) = &options.send_to {
            self.sender = Some(dicom_send::Sender::start(
                target,
                &queue.entries(),
                tx.clone(),
            )?);
        }
        self.scan(&self.inbox.clone());
        self.emit(&WatchEvent::Watching {
            dir: options.dir.clone(),
            watcher: watcher.kind.clone(),
            jobs,
            methods: options.methods.iter().map(|m| m.name.clone()).collect(),
            recursive: options.recursive,
            waiting: self.pending.len(),
            cleaned,
        });
        if let (Some(listener), Some(dicom)) = (&listener, &options.dicom) {
            self.emit(&WatchEvent::DicomListening {
                addr: listener.local_addr.to_string(),
                ae_title: dicom.ae_title.clone(),
            });
        }
        let mut last_scan = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            self.dispatch(tx);
            if options.once && self.pending.values().all(|p| p.stuck && !p.in_flight) {
                self.summary.stuck = self.pending.len();
                let summary = self.summary;
                self.emit(&WatchEvent::Finished(summary));
                break;
            }
            let now = Instant::now();
            let wait = self
                .pending
                .values()
                .filter(|p| !p.in_flight)
                .map(|p| p.due.saturating_duration_since(now))
                .min()
                .unwrap_or(Duration::from_millis(200))
                .clamp(Duration::from_millis(5), Duration::from_millis(200));
            match rx.recv_timeout(wait) {
                Ok(msg) => self.handle(msg),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Drain whatever else arrived before deciding what to run next.
            while let Ok(msg) = rx.try_recv() {
                self.handle(msg);
            }
            if last_scan.elapsed() >= RESCAN_EVERY {
                last_scan = Instant::now();
                self.scan(&self.inbox.clone());
            }
        }
        // The listener first: it finishes the instances it is receiving into the inbox.
        drop(listener);
        drop(watcher);
        Ok(())
    }

    fn emit(&mut self, event: &WatchEvent) {
        match event {
            WatchEvent::Error { .. } => self.summary.errors += 1,
            WatchEvent::Queued { entry, .. } => {
                self.summary.queued += 1;
                if let Some(sender) = &self.sender {
                    sender.send(entry);
                }
            }
            WatchEvent::Duplicate { .. } => self.summary.duplicates += 1,
            WatchEvent::Rejected { .. } => self.summary.rejected += 1,
            _ => {}
        }
        (self.on_event)(event);
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Events(Ok(events)) => {
                let events: Vec<notify::Event> = events.into_iter().map(|d| d.event).collect();
                for action in filter::actions(&self.inbox, self.options.recursive, &events) {
                    self.act(action);
                }
            }
            Msg::Events(Err(errors)) => {
                for error in errors {
                    self.emit(&WatchEvent::Error {
                        file: error.paths.first().cloned(),
                        error: folder::describe(&error),
                    });
                }
                // Events may have been lost with them.
                self.scan(&self.inbox.clone());
            }
            Msg::Done(path, outcome) => self.finished(path, outcome),
            Msg::Event(event) => self.emit(&event),
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Check(path) => self.check(path),
            Action::Forget(path) => {
                self.reported.remove(&path);
                if self.pending.get(&path).is_some_and(|p| !p.in_flight) {
                    self.pending.remove(&path);
                }
            }
            Action::Scan(dir) => self.scan(&dir),
            Action::Ignore(path, why) => self.ignore(path, why),
        }
    }

    /// Something happened to `path`: look at it (again) once it has been quiet.
    fn check(&mut self, path: PathBuf) {
        let now = Instant::now();
        let pending = self
            .pending
            .entry(path)
            .or_insert_with(|| Pending::new(now));
        if pending.in_flight {
            pending.recheck = true;
        } else {
            pending.due = pending.due.min(now);
        }
    }

    fn ignore(&mut self, path: PathBuf, why: Ignored) {
        if why.worth_reporting() && self.reported.insert(path.clone()) {
            self.emit(&WatchEvent::Ignored {
                file: path,
                reason: why.describe(),
            });
        }
    }

    /// Lists `dir` (and its sub-folders when recursive): every radiograph name is checked, and
    /// stuck files are retried now.
    fn scan(&mut self, dir: &Path) {
        let listing = match std::fs::read_dir(dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) => {
                self.emit(&WatchEvent::Error {
                    file: Some(dir.to_path_buf()),
                    error: format!("cannot list it: {e}"),
                });
                return;
            }
        };
        let mut paths: Vec<(PathBuf, bool)> = listing
            .flatten()
            .map(|e| (e.path(), e.file_type().is_ok_and(|t| t.is_dir())))
            .collect();
        // Oldest names first is as good as any order, and deterministic.
        paths.sort();
        for (path, is_dir) in paths {
            if is_dir {
                let hidden = path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                if self.options.recursive && !hidden {
                    self.scan(&path);
                }
                continue;
            }
            match filter::actions_for_file(&self.inbox, self.options.recursive, &path) {
                Some(Action::Check(path)) => {
                    if let Some(p) = self.pending.get_mut(&path).filter(|p| p.stuck) {
                        p.due = Instant::now();
                    } else {
                        self.check(path);
                    }
                }
                Some(Action::Ignore(path, why)) => self.ignore(path, why),
                _ => {}
            }
        }
    }

    /// Hands due, quiet files to the workers, as long as the bounded channel takes them.
    fn dispatch(&mut self, done: &mpsc::Sender<Msg>) {
        let now = Instant::now();
        let mut due: Vec<(Instant, PathBuf)> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.in_flight && p.due <= now)
            .map(|(path, p)| (p.due, path.clone()))
            .collect();
        due.sort();
        for (_, path) in due {
            if self.in_flight >= self.max_in_flight {
                break;
            }
            // The link itself, never what it points to: a link is handed on to be rejected.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    self.pending.remove(&path);
                    continue;
                }
                Err(e) => {
                    self.emit(&WatchEvent::Error {
                        file: Some(path.clone()),
                        error: format!("cannot look at it: {e}"),
                    });
                    if let Some(p) = self.pending.get_mut(&path) {
                        p.due = now + STUCK_RETRY;
                    }
                    continue;
                }
            };
            if meta.is_dir() {
                self.pending.remove(&path);
                if self.options.recursive {
                    self.scan(&path);
                }
                continue;
            }
            let Some(p) = self.pending.get_mut(&path) else {
                continue;
            };
            let stamp = Stamp::of(&meta);
            let since = match p.seen {
                Some((seen, since)) if seen == stamp => since,
                previous => {
                    if previous.is_some() {
                        // It changed: earlier failed decodes were of an incomplete file.
                        p.attempts = 0;
                    }
                    p.seen = Some((stamp, now));
                    now
                }
            };
            let modified_ago = meta
                .modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .unwrap_or_default();
            let quiet_for = modified_ago.max(now - since);
            if quiet_for < self.options.debounce {
                p.due = now + self.options.debounce.saturating_sub(quiet_for);
                continue;
            }
            let job = Job {
                path: path.clone(),
                stamp,
                last_try: p.attempts >= self.options.retry.retries,
                attempts: p.attempts,
            };
            if !self.accepting || !self.processing.try_start(job, done) {
                return;
            }
            p.in_flight = true;
            p.recheck = false;
            self.in_flight += 1;
        }
    }

    /// A worker is done with `path`.
    fn finished(&mut self, path: PathBuf, outcome: Outcome) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let now = Instant::now();
        let recheck = match self.pending.get_mut(&path) {
            Some(p) => {
                p.in_flight = false;
                p.recheck
            }
            None => false,
        };
        // `Some(delay)`: keep the path pending and look again after `delay`.
        let again: Option<Duration> = match outcome {
            Outcome::Queued { item, ms, inbox } => {
                let predicted = item.state.predicted.clone();
                self.emit(&WatchEvent::Queued {
                    file: path.clone(),
                    id: item.id.clone(),
                    entry: item.dir.clone(),
                    label: predicted
                        .as_ref()
                        .map(|p| p.label.clone())
                        .unwrap_or_default(),
                    confidence: predicted.as_ref().map_or(f32::NAN, |p| p.confidence),
                    uncertainty: item.uncertainty().unwrap_or(f32::NAN),
                    ms,
                });
                self.after_entry(&path, &inbox)
            }
            Outcome::Duplicate { item, inbox } => {
                let same = item.state.source_name == crate::queue::file_name(&path);
                if inbox == Inbox::Removed {
                    let (file, id, entry) = (path.clone(), item.id.clone(), item.dir.clone());
                    self.emit(&if same {
                        WatchEvent::AlreadyQueued { file, id, entry }
                    } else {
                        WatchEvent::Duplicate {
                            file,
                            id,
                            entry,
                            of: item.state.source_name.clone(),
                        }
                    });
                }
                self.after_entry(&path, &inbox)
            }
            Outcome::Rejected { to, reason } => {
                self.emit(&WatchEvent::Rejected {
                    file: path.clone(),
                    to,
                    reason,
                });
                None
            }
            Outcome::Incomplete { reason } => {
                let p = self
                    .pending
                    .entry(path.clone())
                    .or_insert_with(|| Pending::new(now));
                p.attempts += 1;
                let (attempt, delay) = (p.attempts, self.options.retry.delay(p.attempts));
                self.emit(&WatchEvent::Retrying {
                    file: path.clone(),
                    attempt,
                    reason,
                    delay_ms: delay.as_millis() as u64,
                });
                Some(delay)
            }
            Outcome::Changed => Some(Duration::ZERO),
            Outcome::Vanished => None,
            Outcome::Busy => Some(BUSY_RETRY),
            Outcome::Stuck(error) => Some(self.stuck(&path, &error)),
            Outcome::Failed(error) => {
                let failures = self.pending.get_mut(&path).map_or(1, |p| {
                    p.failures += 1;
                    p.failures
                });
                self.emit(&WatchEvent::Error {
                    file: Some(path.clone()),
                    error: format!("{error} (retrying)"),
                });
                Some(Duration::from_secs(1 << failures.min(6)))
            }
        };
        match again {
            Some(delay) => {
                let p = self
                    .pending
                    .entry(path)
                    .or_insert_with(|| Pending::new(now));
                p.due = now + if recheck { Duration::ZERO } else { delay };
            }
            None if recheck && path.exists() => {
                let mut p = Pending::new(now);
                p.recheck = false;
                self.pending.insert(path, p);
            }
            None => {
                self.pending.remove(&path);
            }
        }
    }

    /// After the content is in the queue: done, or look again if the file changed or could not
    /// be removed.
    fn after_entry(&mut self, path: &Path, inbox: &Inbox) -> Option<Duration> {
        match inbox {
            Inbox::Removed => None,
            Inbox::Changed => Some(Duration::ZERO),
            Inbox::Stuck(error) => Some(self.stuck(path, error)),
        }
    }

    /// A file that cannot be moved out of the inbox: said once, retried now and then.
    fn stuck(&mut self, path: &Path, error: &str) -> Duration {
        let now = Instant::now();
        let p = self
            .pending
            .entry(path.to_path_buf())
            .or_insert_with(|| Pending::new(now));
        if !p.stuck {
            p.stuck = true;
            self.emit(&WatchEvent::Error {
                file: Some(path.to_path_buf()),
                error: format!(
                    "{error}; it stays in the inbox and is retried (nothing is lost: it is \
                     queued or will be rejected once the inbox is writable)"
                ),
            });
        }
        STUCK_RETRY
    }
}
