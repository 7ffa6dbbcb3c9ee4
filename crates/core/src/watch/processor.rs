//! One worker thread: owns its own pipeline and explainers (libtorch modules are `Send`, not
//! `Sync`) and turns one inbox file into a queue entry, a duplicate, a rejection, or a "not
//! complete yet, try again later".

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::WatchOptions;
use crate::cache::Cache;
use crate::explain::report::{ImageReport, MethodOutcome};
use crate::explain::{Method, MethodSpec};
use crate::files::sha256_hex;
use crate::input::Gate;
use crate::queue::{
    self, Commit, EntryState, ID_LEN, Predicted, Queue, QueueItem, REPORT_FILE, ReviewState,
    SCHEMA, STATE_FILE,
};
use crate::service::{Image, Service, Settings, Target};
use crate::xray::Xray;
use crate::{CoreError, InputError, Result};

/// What a file looked like when it was examined: any change means "still being written".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    pub(crate) fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

/// One file to look at.
pub(crate) struct Job {
    pub path: PathBuf,
    /// The file as the coordinator last saw it, quiet.
    pub stamp: Stamp,
    /// No retry follows: a file that still does not decode is rejected.
    pub last_try: bool,
    /// Attempts so far (for the reason of a rejection).
    pub attempts: u32,
}

/// What became of the file in the inbox after its entry was in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbox {
    Removed,
    /// It changed after it was read (the writer was not done): look at it again.
    Changed,
    /// It could not be removed (read-only inbox): try again later.
    Stuck(String),
}

pub(crate) enum Outcome {
    Queued {
        item: Box<QueueItem>,
        ms: f64,
        inbox: Inbox,
    },
    Duplicate {
        item: Box<QueueItem>,
        inbox: Inbox,
    },
    Rejected {
        to: PathBuf,
        reason: String,
    },
    /// Did not decode (yet): retry after a delay unless it was the last try.
    Incomplete {
        reason: String,
    },
    /// Changed while being read.
    Changed,
    /// Gone before it could be taken (removed or renamed by someone else).
    Vanished,
    /// Another worker is on the same content right now.
    Busy,
    /// Could not be moved out of the inbox into `rejected/`.
    Stuck(String),
    /// Failed for a reason that is not the file's (disk full, unreadable entry): retry later.
    Failed(String),
}

/// The pipeline, explainers and settings one worker processes files with.
pub(crate) struct Processor {
    queue: Queue,
    service: Service,
    methods: Vec<Method>,
    settings: Settings,
    /// Ids being built by any worker of this process.
    claims: Arc<Mutex<HashSet<String>>>,
}

/// Holds an id in the claim set until dropped.
struct Claim<'a> {
    claims: &'a Mutex<HashSet<String>>,
    id: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.claims.lock() {
            set.remove(&self.id);
        }
    }
}

impl Processor {
    pub(crate) fn new(
        options: &WatchOptions,
        queue: Queue,
        claims: Arc<Mutex<HashSet<String>>>,
    ) -> Result<Self> {
        let compute = options.compute.for_workers(options.jobs);
        let methods = options
            .methods
            .iter()
            .map(MethodSpec::build)
            .collect::<Result<_>>()?;
        Ok(Self {
            queue,
            // Each entry is made once: nothing to gain from a result cache.
            service: Service::load(&options.models, &compute, Cache::disabled())?,
            methods,
            settings: Settings {
                target: Target::Predicted,
                checks: options.checks,
                style: options.style,
                outline: options.outline,
            },
            claims,
        })
    }

    pub(crate) fn process(&self, job: &Job) -> Outcome {
        let path = &job.path;
        let before = match std::fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound => return Outcome::Vanished,
            Err(e) => return self.unreadable(job, &format!("cannot read it: {e}")),
        };
        // The inbox is written by others: no links followed, no FIFO opened blocking, bounded.
        let bytes = match Gate::UNTRUSTED.read(path) {
            Ok(bytes) => bytes,
            Err(InputError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Outcome::Vanished;
            }
            Err(e @ InputError::Refused { .. }) => return self.reject(path, &e.to_string()),
            Err(e) => return self.unreadable(job, &format!("cannot read it: {e}")),
        };
        let stamp = Stamp::of(&before);
        if stamp != job.stamp {
            // Written to since it was found quiet: not done yet.
            return Outcome::Changed;
        }
        match std::fs::symlink_metadata(path) {
            Ok(after) if Stamp::of(&after) == stamp && after.len() == bytes.len() as u64 => {}
            Ok(_) => return Outcome::Changed,
            Err(_) => return Outcome::Vanished,
        }
        let sha256 = sha256_hex(&bytes);
        match self.queue.find(&sha256) {
            Ok(Some(item)) => return duplicate(path, stamp, item),
            Ok(None) => {}
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        let xray = match Gate::UNTRUSTED.decode(&bytes, path) {
            Ok(xray) => xray,
            // Refused for good; anything else (a truncated file, a full memory budget) may
            // read when retried.
            Err(e @ (InputError::TooLarge { .. } | InputError::Refused { .. })) => {
                return self.reject(path, &e.to_string());
            }
            Err(e) => return self.unreadable(job, &e.to_string()),
        };
        let id = sha256[..ID_LEN].to_owned();
        let Some(_claim) = self.claim(&id) else {
            return Outcome::Busy;
        };
        // Another worker may have committed this content between the check and the claim.
        if let Ok(Some(item)) = self.queue.find(&sha256) {
            return duplicate(path, stamp, item);
        }
        let start = Instant::now();
        match self.build(xray, &bytes, path, &id) {
            Ok(Built::Created(item)) => Outcome::Queued {
                ms: start.elapsed().as_secs_f64() * 1000.0,
                inbox: remove_from_inbox(path, stamp),
                item,
            },
            Ok(Built::Exists) => match self.queue.find(&sha256) {
                Ok(Some(item)) => duplicate(path, stamp, item),
                Ok(None) => Outcome::Failed(format!("entry {id} vanished while being made")),
                Err(e) => Outcome::Failed(e.to_string()),
            },
            Err(BuildError::Analysis(e)) => {
                self.reject(path, &format!("the models could not analyse it: {e}"))
            }
            Err(BuildError::Storage(e)) => Outcome::Failed(e.to_string()),
        }
    }

    fn claim(&self, id: &str) -> Option<Claim<'_>> {
        let mut set = self.claims.lock().ok()?;
        set.insert(id.to_owned()).then(|| Claim {
            claims: &self.claims,
            id: id.to_owned(),
        })
    }

    /// A file that cannot be read or decoded: maybe still being written, so retried unless
    /// this was the last try.
    fn unreadable(&self, job: &Job, reason: &str) -> Outcome {
        if job.last_try {
            let reason = format!(
                "{reason}\n(unchanged and still unreadable after {} attempts)",
                job.attempts + 1
            );
            self.reject(&job.path, &reason)
        } else {
            Outcome::Incomplete {
                reason: reason.to_owned(),
            }
        }
    }

    fn reject(&self, path: &Path, reason: &str) -> Outcome {
        match super::rejected::reject(&self.queue.rejected(), path, reason) {
            Ok(Some(to)) => Outcome::Rejected {
                to,
                reason: reason.to_owned(),
            },
            Ok(None) => Outcome::Vanished,
            Err(e) => Outcome::Stuck(format!(
                "cannot move it to {}: {e} (reason for rejecting it: {reason})",
                self.queue.rejected().display()
            )),
        }
    }

    /// Analyses, explains and writes the entry in staging, then renames it into the queue.
    fn build(
        &self,
        xray: Xray,
        bytes: &[u8],
        path: &Path,
        id: &str,
    ) -> std::result::Result<Built, BuildError> {
        let image = Image::with_decoded(bytes.to_vec(), xray, Gate::UNTRUSTED);
        let analysis = self
            .service
            .analysis(&image)
            .map_err(BuildError::Analysis)?;
        let report = self
            .service
            .report(&image, &self.methods, &self.settings, None)
            .map_err(BuildError::Analysis)?;
        let mut staging = self.queue.stage(id).map_err(BuildError::Storage)?;
        // A DICOM source also gets its results as DICOM in the entry (METHOD.sc.dcm, sr.dcm);
        // a source that cannot be referenced (no UIDs) is queued without them, with the reason.
        match crate::dicom_out::for_image(
            bytes,
            path,
            &report.classification.report,
            &report.methods,
            self.service.fingerprint(),
        ) {
            Ok(Some(results)) => {
                for (method, capture) in &results.captures {
                    staging
                        .write(
                            &format!("{method}{}", queue::CAPTURE_SUFFIX),
                            &capture.bytes,
                        )
                        .map_err(BuildError::Storage)?;
                }
                staging
                    .write(queue::REPORT_SR_FILE, &results.report.bytes)
                    .map_err(BuildError::Storage)?;
            }
            Ok(None) => {}
            Err(e) => staging
                .write(queue::DICOM_ERROR_FILE, format!("{e}\n").as_bytes())
                .map_err(BuildError::Storage)?,
        }
        let mut explanations = Vec::with_capacity(report.methods.len());
        for outcome in report.methods {
            // One explainer failing does not lose the image: the report says what failed.
            explanations.push(match outcome {
                Ok(rendered) => {
                    let overlay = format!("{}.png", rendered.report.method);
                    staging
                        .write(&overlay, &rendered.overlay_png)
                        .map_err(BuildError::Storage)?;
                    MethodOutcome::Done {
                        overlay,
                        report: rendered.report,
                    }
                }
                Err(failure) => MethodOutcome::Failed {
                    method: failure.method,
                    error: failure.error,
                },
            });
        }
        let image_name = format!("image.{}", queue::image_extension(path, bytes));
        let mut classification = report.classification.report;
        classification.file = PathBuf::from(&image_name);
        let classes = self.service.pipeline().classifier.classes();
        let now = queue::rfc3339_utc(SystemTime::now());
        let state = EntryState {
            schema: SCHEMA,
            id: id.to_owned(),
            sha256: analysis.xray.sha256.clone(),
            state: ReviewState::PendingReview,
            image: image_name.clone(),
            source_name: queue::file_name(path),
            created: now,
            predicted: Some(Predicted::new(&analysis.prediction, &classes[0])),
            model: Some(self.service.fingerprint().to_owned()),
            methods: self
                .methods
                .iter()
                .map(|m| m.entry.name.to_owned())
                .collect(),
            review: None,
            history: Vec::new(),
        };
        let report = ImageReport {
            classification,
            explanations,
            raw: None,
        };
        let write = |staging: &mut queue::Staging| -> Result<()> {
            staging.write(&image_name, bytes)?;
            staging.write_json(REPORT_FILE, &report)?;
            // Last: an entry folder with a state file is complete.
            staging.write_json(STATE_FILE, &state)
        };
        write(&mut staging).map_err(BuildError::Storage)?;
        match staging.commit().map_err(BuildError::Storage)? {
            Commit::Created(dir) => Ok(Built::Created(Box::new(QueueItem {
                id: id.to_owned(),
                dir,
                state,
            }))),
            Commit::Exists => Ok(Built::Exists),
        }
    }
}

enum Built {
    Created(Box<QueueItem>),
    Exists,
}

enum BuildError {
    /// The models failed on this image: the file is at fault, as far as we can tell.
    Analysis(CoreError),
    /// Writing the entry failed: not the file's fault.
    Storage(CoreError),
}

fn duplicate(path: &Path, stamp: Stamp, item: QueueItem) -> Outcome {
    Outcome::Duplicate {
        inbox: remove_from_inbox(path, stamp),
        item: Box::new(item),
    }
}

/// Removes the dropped file once its content is safely in the queue, unless it changed after
/// it was read.
fn remove_from_inbox(path: &Path, stamp: Stamp) -> Inbox {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Inbox::Removed,
        Ok(meta) if Stamp::of(&meta) != stamp => return Inbox::Changed,
        _ => {}
    }
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = queue::sync_dir(dir);
            }
            Inbox::Removed
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Inbox::Removed,
        Err(e) => Inbox::Stuck(format!("cannot remove it from the inbox: {e}")),
    }
}
