//! The review and training queue that `cxr watch` fills: one entry per distinct radiograph, with
//! its classification, explanations and review state, in a folder anyone can inspect:
//!
//! ```text
//! DIR/inbox/             drop radiographs here (write-then-rename, or plain copies)
//! DIR/queue/<id>/        one entry per content; id = the first 16 hex digits of its SHA-256
//!     image.<ext>        the radiograph, byte for byte as dropped (extension kept)
//!     report.json        classification report and one report per explainer
//!     <method>.png       one overlay per explainer
//!     state.json         review state ([`EntryState`]), replaced atomically by [`Queue::label`]
//! DIR/rejected/NAME      files that could not be read, with NAME.reason.txt beside them
//! DIR/.staging/          entries being built; never visible as entries; cleaned at start
//! ```
//!
//! An entry is built whole in `.staging/` (every file synced), then renamed into `queue/` in one
//! step, and only then is the dropped file removed from the inbox. A crash at any instant leaves
//! either no entry (the file is still in the inbox and is processed again) or a complete entry
//! (the file, if still in the inbox, is recognised by its hash and removed): nothing is lost,
//! nothing is processed into two entries, and no half-built entry is ever listed.
//!
//! The entry's state is the durable record of where an item is: in the inbox (not yet
//! processed), in `queue/` with `state.json` saying `pending_review` or `reviewed`, or in
//! `rejected/` with its reason.

mod durable;
mod entry;
mod staging;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::data::LabelledImage;
use crate::input::Gate;
use crate::{CoreError, Result};

pub(crate) use durable::{file_name, replace, sync_dir};
pub use entry::{
    EntryState, Label, MAX_REVIEWER_CHARS, Predicted, QueueItem, REVIEWER_ENV, Review, ReviewState,
    Undo, check_reviewer, is_entry_id, local_reviewer,
};
pub(crate) use staging::{Commit, Staging};

/// Version of `state.json`'s layout.
pub const SCHEMA: u32 = 1;
/// Sub-folder names of a watch folder.
pub const INBOX: &str = "inbox";
pub const ENTRIES: &str = "queue";
pub const REJECTED: &str = "rejected";
pub const STAGING: &str = ".staging";
/// File names inside an entry.
pub const STATE_FILE: &str = "state.json";
pub const REPORT_FILE: &str = "report.json";
/// For a DICOM source: the Structured Report, each overlay as `METHOD.sc.dcm` (Secondary
/// Capture), or the reason they could not be made ([`crate::dicom_out`]).
pub const REPORT_SR_FILE: &str = "sr.dcm";
pub const CAPTURE_SUFFIX: &str = ".sc.dcm";
pub const DICOM_ERROR_FILE: &str = "dicom-error.txt";
/// Hex digits of the SHA-256 that name an entry (64 bits: collisions are checked, not assumed
/// away).
pub const ID_LEN: usize = 16;

/// Orders of [`Queue::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Most uncertain first ([`Predicted::uncertainty`], highest first: predictions nearest to
    /// the decision threshold); entries without a prediction last; ties oldest first.
    #[default]
    Uncertainty,
    /// Oldest first (the order they were processed in).
    Time,
}

/// A watch folder: its inbox, queue entries and rejected files.
#[derive(Debug, Clone)]
pub struct Queue {
    root: PathBuf,
}

impl Queue {
    /// Opens an existing watch folder (its sub-folders need not exist yet).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let root = dir.into();
        if !root.is_dir() {
            return Err(CoreError::data(
                &root,
                "no watch folder here (`cxr watch DIR` creates one)",
            ));
        }
        Ok(Self { root })
    }

    /// Opens a watch folder, creating it and its sub-folders as needed.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self> {
        let queue = Self { root: dir.into() };
        for sub in [
            queue.inbox(),
            queue.entries(),
            queue.rejected(),
            queue.staging(),
        ] {
            std::fs::create_dir_all(&sub).map_err(|e| CoreError::io(&sub, e))?;
        }
        Ok(queue)
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[must_use]
    pub fn inbox(&self) -> PathBuf {
        self.root.join(INBOX)
    }

    /// `DIR/queue`, the folder of entries.
    #[must_use]
    pub fn entries(&self) -> PathBuf {
        self.root.join(ENTRIES)
    }

    /// `DIR/rejected`, where the watch folder moves the files it refuses, each with its reason
    /// ([`crate::watch::reason_path`]).
    #[must_use]
    pub fn rejected(&self) -> PathBuf {
        self.root.join(REJECTED)
    }

    #[must_use]
    pub fn staging(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    #[must_use]
    pub fn entry_dir(&self, id: &str) -> PathBuf {
        self.entries().join(id)
    }

    /// Every entry, in `order`. Entries whose `state.json` cannot be read are left out (see
    /// [`Queue::list_checked`] to hear about them).
    pub fn list(&self, order: Order) -> Result<Vec<QueueItem>> {
        let (items, problems) = self.list_checked(order)?;
        for problem in problems {
            tracing::warn!("{problem}");
        }
        Ok(items)
    }

    /// Every entry in `order`, and the errors of entries that could not be read.
    pub fn list_checked(&self, order: Order) -> Result<(Vec<QueueItem>, Vec<CoreError>)> {
        let dir = self.entries();
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(CoreError::io(&dir, e)),
        };
        let (mut items, mut problems) = (Vec::new(), Vec::new());
        for entry in listing {
            let entry = entry.map_err(|e| CoreError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_entry_id(&name) {
                continue;
            }
            match self.read_item(&name) {
                Ok(item) => items.push(item),
                Err(e) => problems.push(e),
            }
        }
        sort(&mut items, order);
        Ok((items, problems))
    }

    /// The entry `id`, or the only entry whose id starts with `id` (at least 4 hex digits).
    pub fn get(&self, id: &str) -> Result<QueueItem> {
        let id = id.trim().to_lowercase();
        if is_entry_id(&id) && self.entry_dir(&id).is_dir() {
            return self.read_item(&id);
        }
        if id.len() < 4 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(CoreError::Invalid(format!(
                "{id:?} is not a queue id (16 hex digits, or a prefix of at least 4)"
            )));
        }
        let dir = self.entries();
        let mut matches = Vec::new();
        if let Ok(listing) = std::fs::read_dir(&dir) {
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_entry_id(&name) && name.starts_with(&id) {
                    matches.push(name);
                }
            }
        }
        match matches.as_slice() {
            [one] => self.read_item(one),
            [] => Err(CoreError::data(
                &dir,
                format!("no queue entry {id} (see `cxr queue list`)"),
            )),
            many => Err(CoreError::Invalid(format!(
                "{id} matches {} entries: {}",
                many.len(),
                many.join(", ")
            ))),
        }
    }

    /// The entry holding the file whose SHA-256 is `sha256`, if any.
    pub fn find(&self, sha256: &str) -> Result<Option<QueueItem>> {
        let Some(id) = sha256.get(..ID_LEN) else {
            return Ok(None);
        };
        if !self.entry_dir(id).is_dir() {
            return Ok(None);
        }
        let item = self.read_item(id)?;
        if item.state.sha256 == sha256 {
            Ok(Some(item))
        } else {
            Err(CoreError::data(
                &item.dir,
                format!("holds another file whose hash starts like {sha256} (a 64-bit collision)"),
            ))
        }
    }

    /// Labels entry `id` (or a unique prefix): `state.json` becomes `reviewed` with `label`,
    /// `reviewer` and the time, keeping the prediction; an earlier review moves to `history`.
    /// The file is replaced atomically, so a reader never sees half of it.
    ///
    /// Concurrent labellers (processes or threads) are serialised by an exclusive lock on the
    /// entry's folder: the state is read, changed and replaced under the lock, so every
    /// accepted review is kept (the latest in `review`, the others in `history`). A label must
    /// be one of the classes the entry was predicted with, or `skip`.
    pub fn label(&self, id: &str, label: Label, reviewer: &str) -> Result<QueueItem> {
        self.label_seen(id, label, reviewer, &[])
    }

    /// [`Self::label`], recording the explanations the reviewer had on screen (`shown`:
    /// explainer names) with the review.
    pub fn label_seen(
        &self,
        id: &str,
        label: Label,
        reviewer: &str,
        shown: &[String],
    ) -> Result<QueueItem> {
        let reviewer = check_reviewer(reviewer)?;
        let id = self.get(id)?.id;
        let _lock = self.lock_entry(&id)?;
        let mut item = self.read_item(&id)?;
        if let Some(predicted) = &item.state.predicted {
            label.check(predicted.probabilities.keys())?;
        }
        if let Some(previous) = item.state.review.take() {
            item.state.history.push(previous);
        }
        item.state.review = Some(Review {
            label,
            reviewer,
            time: rfc3339_utc(SystemTime::now()),
            shown: shown.to_vec(),
            undone: None,
        });
        item.state.state = ReviewState::Reviewed;
        write_state(&item.dir, &item.state)?;
        Ok(item)
    }

    /// Takes back entry `id`'s current review, as `reviewer`: the review moves to `history`
    /// marked with who undid it and when (nothing is deleted), and the review before it that
    /// was not undone becomes current again; with none, the entry is pending review again.
    /// Under the entry's lock, like [`Self::label`].
    pub fn undo(&self, id: &str, reviewer: &str) -> Result<QueueItem> {
        let reviewer = check_reviewer(reviewer)?;
        let id = self.get(id)?.id;
        let _lock = self.lock_entry(&id)?;
        let mut item = self.read_item(&id)?;
        let Some(mut undone) = item.state.review.take() else {
            return Err(CoreError::Invalid(format!(
                "queue entry {id} has no review to undo"
            )));
        };
        undone.undone = Some(Undo {
            reviewer,
            time: rfc3339_utc(SystemTime::now()),
        });
        let history = &mut item.state.history;
        let restored = history.iter().rposition(|r| r.undone.is_none());
        item.state.review = restored.map(|i| history.remove(i));
        history.push(undone);
        item.state.state = if item.state.review.is_some() {
            ReviewState::Reviewed
        } else {
            ReviewState::PendingReview
        };
        write_state(&item.dir, &item.state)?;
        Ok(item)
    }

    /// Labels a radiograph that may not be in the queue (the viewer's "label this file"): if its
    /// content already has an entry, that entry is labelled; otherwise a copy of the file
    /// becomes a new, already reviewed entry (the file itself is left where it is). `predicted`
    /// records what the classifier said, when the caller ran it, and `model` the fingerprint of
    /// the models that said it.
    pub fn label_file(
        &self,
        file: &Path,
        label: Label,
        reviewer: &str,
        predicted: Option<Predicted>,
        model: Option<&str>,
    ) -> Result<QueueItem> {
        self.label_file_seen(file, label, reviewer, predicted, model, &[])
    }

    /// [`Self::label_file`], recording the explanations the reviewer had on screen (`shown`:
    /// explainer names) with the review, as the viewer does.
    pub fn label_file_seen(
        &self,
        file: &Path,
        label: Label,
        reviewer: &str,
        predicted: Option<Predicted>,
        model: Option<&str>,
        shown: &[String],
    ) -> Result<QueueItem> {
        let reviewer = check_reviewer(reviewer)?;
        let bytes = Gate::TRUSTED.read(file)?;
        let xray = Gate::TRUSTED.decode(&bytes, file)?;
        if let Some(item) = self.find(&xray.sha256)? {
            return self.label_seen(&item.id, label, &reviewer, shown);
        }
        let id = xray.sha256[..ID_LEN].to_owned();
        let image = format!("image.{}", image_extension(file, &bytes));
        let state = EntryState {
            schema: SCHEMA,
            id: id.clone(),
            sha256: xray.sha256.clone(),
            state: ReviewState::Reviewed,
            image: image.clone(),
            source_name: file_name(file),
            created: rfc3339_utc(SystemTime::now()),
            predicted,
            model: model.map(str::to_owned),
            methods: Vec::new(),
            review: Some(Review {
                label: label.clone(),
                reviewer: reviewer.clone(),
                time: rfc3339_utc(SystemTime::now()),
                shown: shown.to_vec(),
                undone: None,
            }),
            history: Vec::new(),
        };
        let mut staging = self.stage(&id)?;
        staging.write(&image, &bytes)?;
        staging.write_json(STATE_FILE, &state)?;
        match staging.commit()? {
            Commit::Created(dir) => Ok(QueueItem { id, dir, state }),
            // Someone (the watcher) queued the same content meanwhile: label theirs.
            Commit::Exists => self.label_seen(&id, label, &reviewer, shown),
        }
    }

    /// Reviewed entries with a class label (not `skip`) as training rows: each entry is its own
    /// patient, `queue-<id>`.
    pub fn training_rows(&self) -> Result<Vec<LabelledImage>> {
        Ok(self
            .list(Order::Time)?
            .into_iter()
            .filter_map(|item| {
                let class = item.label()?.class()?.to_owned();
                Some(LabelledImage {
                    path: item.image_path(),
                    label: class,
                    patient: format!("queue-{}", item.id),
                    source: "queue".to_owned(),
                    view: None,
                })
            })
            .collect())
    }

    /// Removes what a dead process left behind: staging folders and temporary state files.
    /// Work of live processes (another watcher, a viewer importing a file) is left alone.
    /// Returns how many leftovers were removed.
    pub fn clean_staging(&self) -> Result<usize> {
        let mut removed = 0;
        let staging = self.staging();
        if let Ok(listing) = std::fs::read_dir(&staging) {
            for entry in listing.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if durable::owner_pid(&name).is_some_and(durable::process_alive) {
                    continue;
                }
                let path = entry.path();
                let gone = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                gone.map_err(|e| CoreError::io(&path, e))?;
                removed += 1;
            }
            sync_dir(&staging)?;
        }
        // A crash during `label` can leave `.state.json.tmp-PID.N` inside an entry.
        if let Ok(listing) = std::fs::read_dir(self.entries()) {
            for entry in listing.flatten() {
                let Ok(files) = std::fs::read_dir(entry.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let name = file.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.')
                        && name.contains(".tmp-")
                        && !durable::owner_pid(&name).is_some_and(durable::process_alive)
                    {
                        std::fs::remove_file(file.path())
                            .map_err(|e| CoreError::io(file.path(), e))?;
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Holds an exclusive lock on entry `id`'s folder until dropped (`flock`: released by the
    /// kernel when the process dies, so a killed labeller never leaves a stale lock).
    fn lock_entry(&self, id: &str) -> Result<std::fs::File> {
        let dir = self.entry_dir(id);
        let handle = std::fs::File::open(&dir).map_err(|e| CoreError::io(&dir, e))?;
        loop {
            match rustix::fs::flock(&handle, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => return Ok(handle),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(CoreError::io(&dir, e.into())),
            }
        }
    }

    fn read_item(&self, id: &str) -> Result<QueueItem> {
        let dir = self.entry_dir(id);
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| CoreError::io(&path, e))?;
        let state: EntryState =
            serde_json::from_slice(&bytes).map_err(|e| CoreError::data(&path, e.to_string()))?;
        if state.id != id {
            return Err(CoreError::data(
                &path,
                format!("says it is entry {} but lies in {id}", state.id),
            ));
        }
        // The image must be a plain file inside the entry: never a path that leaves it, nor a
        // link to somewhere else (training and the viewer would read it).
        let image = Path::new(&state.image);
        let plain = image.file_name().is_some_and(|n| n == image.as_os_str())
            && !state.image.starts_with('.');
        if !plain {
            return Err(CoreError::data(
                &path,
                format!(
                    "its image {:?} is not a file name inside the entry; refused",
                    state.image
                ),
            ));
        }
        if std::fs::symlink_metadata(dir.join(image)).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(CoreError::data(
                &path,
                format!("its image {:?} is a symbolic link; refused", state.image),
            ));
        }
        Ok(QueueItem {
            id: id.to_owned(),
            dir,
            state,
        })
    }

    /// Starts building entry `id` in a private staging folder.
    pub(crate) fn stage(&self, id: &str) -> Result<Staging> {
        let staging = self.staging();
        std::fs::create_dir_all(&staging).map_err(|e| CoreError::io(&staging, e))?;
        let dir = staging.join(format!("{id}.{}", durable::unique_suffix()));
        std::fs::create_dir(&dir).map_err(|e| CoreError::io(&dir, e))?;
        Ok(Staging {
            dir,
            target: self.entry_dir(id),
            committed: false,
        })
    }
}

/// The extension an entry's image keeps: the file's own when supported, else one guessed from
/// its bytes.
pub(crate) fn image_extension(file: &Path, bytes: &[u8]) -> String {
    let own = file
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .filter(|e| crate::files::EXTENSIONS.contains(&e.as_str()));
    own.unwrap_or_else(|| crate::files::extension_from_content(bytes).into())
}

pub(crate) fn write_state(dir: &Path, state: &EntryState) -> Result<()> {
    let path = dir.join(STATE_FILE);
    let text =
        serde_json::to_vec_pretty(state).map_err(|e| CoreError::data(&path, e.to_string()))?;
    replace(&path, &text)
}

fn sort(items: &mut [QueueItem], order: Order) {
    let by_time = |a: &QueueItem, b: &QueueItem| {
        (a.state.created.as_str(), a.id.as_str()).cmp(&(b.state.created.as_str(), b.id.as_str()))
    };
    match order {
        Order::Time => items.sort_by(by_time),
        Order::Uncertainty => items.sort_by(|a, b| {
            // Flagged predictions first (they most need a reviewer), then highest uncertainty,
            // `None` last.
            let flagged = |i: &QueueItem| {
                i.state
                    .predicted
                    .as_ref()
                    .is_some_and(|p| !p.flags.is_empty())
            };
            let key = |i: &QueueItem| i.uncertainty().map_or(f32::NEG_INFINITY, |u| u);
            flagged(b)
                .cmp(&flagged(a))
                .then_with(|| key(b).total_cmp(&key(a)))
                .then_with(|| by_time(a, b))
        }),
    }
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-05-01T12:34:56.789Z`. Strings of this form
/// sort in time order.
#[must_use]
pub fn rfc3339_utc(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests;
