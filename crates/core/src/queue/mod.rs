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

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::data::LabelledImage;
use crate::input::Gate;
use crate::models::Prediction;
use crate::{CoreError, Result};

pub use durable::reason_path;
pub(crate) use durable::{file_name, free_name, replace, sync_dir};

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
/// Hex digits of the SHA-256 that name an entry (64 bits: collisions are checked, not assumed
/// away).
pub const ID_LEN: usize = 16;

/// Where an entry is in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    /// Processed by the watcher, waiting for a person.
    PendingReview,
    /// A person gave it a label (which may be `skip`).
    Reviewed,
}

/// A reviewer's verdict: one of the classifier's classes, or `skip` (seen, but not to be used
/// for training: unsure, wrong body part, bad image). Written as plain lower-case text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Label {
    Covid,
    Normal,
    Skip,
    /// Another class name (lower-case letters, digits, `-`, `_`), for other classifiers.
    Class(String),
}

impl Label {
    #[must_use]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Covid => "covid",
            Self::Normal => "normal",
            Self::Skip => "skip",
            Self::Class(name) => name,
        }
    }

    /// The class this label trains towards; `None` for `skip`.
    #[must_use]
    pub fn class(&self) -> Option<&str> {
        match self {
            Self::Skip => None,
            other => Some(other.as_str()),
        }
    }
}

impl FromStr for Label {
    type Err = CoreError;

    fn from_str(text: &str) -> Result<Self> {
        let name = text.trim().to_lowercase();
        Ok(match name.as_str() {
            "covid" => Self::Covid,
            "normal" => Self::Normal,
            "skip" => Self::Skip,
            _ if !name.is_empty()
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Self::Class(name)
            }
            _ => {
                return Err(CoreError::Invalid(format!(
                    "label {text:?}: expected covid, normal, skip or a class name \
                     (letters, digits, - and _)"
                )));
            }
        })
    }
}

impl Label {
    /// Accepts `skip` and any of `classes`; anything else (`nromal`) is an error listing them.
    pub fn check<'a>(&self, classes: impl IntoIterator<Item = &'a String>) -> Result<()> {
        let classes: Vec<&str> = classes.into_iter().map(String::as_str).collect();
        match self.class() {
            None => Ok(()),
            Some(class) if classes.contains(&class) => Ok(()),
            Some(class) => Err(CoreError::Invalid(format!(
                "label {class:?} is not one of the model's classes; expected one of: {}, skip",
                classes.join(", ")
            ))),
        }
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Label {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What the classifier said when the entry was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    pub label: String,
    /// Probability of the predicted label.
    pub confidence: f32,
    /// The positive class: the threshold applies to its probability.
    pub positive: String,
    pub probabilities: BTreeMap<String, f32>,
    pub threshold: f32,
    /// Why the prediction should not be trusted, if anything (see [`crate::trust`]); flagged
    /// entries come first in the review order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<crate::trust::Flag>,
}

impl Predicted {
    /// From a prediction of a classifier whose positive class is `positive` (its first class).
    #[must_use]
    pub fn new(prediction: &Prediction, positive: &str) -> Self {
        Self {
            label: prediction.label.clone(),
            confidence: prediction
                .probabilities
                .get(&prediction.label)
                .copied()
                .unwrap_or(f32::NAN),
            positive: positive.to_owned(),
            probabilities: prediction.probabilities.clone(),
            threshold: prediction.threshold,
            flags: prediction.trust.flags.clone(),
        }
    }

    /// How close the decision was, in [0, 1]: 1 when the positive class's probability `p` sits
    /// on the decision threshold `t` (a coin flip for this model), 0 when it is 0 or 1 (as sure
    /// as the model can be). In between it falls linearly with the distance to the threshold,
    /// measured as a share of the room on the predicted side: `1 - (p - t) / (1 - t)` when
    /// `p >= t` (predicted positive), `1 - (t - p) / t` otherwise. The threshold is rarely 0.5,
    /// so the two sides have different room; scaling by it makes "halfway to certain" mean the
    /// same on both sides.
    #[must_use]
    pub fn uncertainty(&self) -> f32 {
        let p = self
            .probabilities
            .get(&self.positive)
            .copied()
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        let t = self.threshold.clamp(0.0, 1.0);
        let room = if p >= t { 1.0 - t } else { t };
        if room <= f32::EPSILON {
            return 1.0;
        }
        (1.0 - (p - t).abs() / room).clamp(0.0, 1.0)
    }
}

/// A reviewer's label with who gave it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub label: Label,
    pub reviewer: String,
    /// RFC 3339, UTC.
    pub time: String,
}

/// The contents of `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryState {
    pub schema: u32,
    pub id: String,
    /// SHA-256 of the image file's bytes.
    pub sha256: String,
    pub state: ReviewState,
    /// The image's file name inside the entry (`image.png`, `image.dcm`, ...).
    pub image: String,
    /// The name the file had when it was dropped (or imported).
    pub source_name: String,
    /// When the entry was made: RFC 3339, UTC.
    pub created: String,
    /// `None` for a file labelled in the viewer without a prediction.
    pub predicted: Option<Predicted>,
    /// Fingerprint of the models that made the prediction ([`crate::pipeline::Pipeline`]).
    #[serde(default)]
    pub model: Option<String>,
    /// Explainers whose reports and overlays the entry holds.
    #[serde(default)]
    pub methods: Vec<String>,
    /// The current review; `None` while pending.
    pub review: Option<Review>,
    /// Earlier reviews, oldest first, when an entry was labelled more than once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Review>,
}

/// One entry of the queue as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItem {
    pub id: String,
    /// The entry's folder, `DIR/queue/<id>`.
    pub dir: PathBuf,
    pub state: EntryState,
}

impl QueueItem {
    #[must_use]
    pub fn image_path(&self) -> PathBuf {
        self.dir.join(&self.state.image)
    }

    /// `report.json`; absent for files imported without running the pipeline.
    #[must_use]
    pub fn report_path(&self) -> PathBuf {
        self.dir.join(REPORT_FILE)
    }

    /// The overlay of explainer `method` (it exists when `method` is in `state.methods` and the
    /// explainer succeeded; the report says why otherwise).
    #[must_use]
    pub fn overlay_path(&self, method: &str) -> PathBuf {
        self.dir.join(format!("{method}.png"))
    }

    /// The overlays that exist, with their method names, in the order of `state.methods`.
    #[must_use]
    pub fn overlays(&self) -> Vec<(String, PathBuf)> {
        self.state
            .methods
            .iter()
            .map(|m| (m.clone(), self.overlay_path(m)))
            .filter(|(_, p)| p.is_file())
            .collect()
    }

    /// The report as JSON (`None` when the entry has none). Kept untyped: explainers add their
    /// own details, and measures that were not computed are `null`.
    pub fn report(&self) -> Result<Option<serde_json::Value>> {
        let path = self.report_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| CoreError::data(&path, e.to_string())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CoreError::io(&path, e)),
        }
    }

    /// See [`Predicted::uncertainty`]; `None` without a prediction.
    #[must_use]
    pub fn uncertainty(&self) -> Option<f32> {
        self.state.predicted.as_ref().map(Predicted::uncertainty)
    }

    #[must_use]
    pub fn is_reviewed(&self) -> bool {
        self.state.state == ReviewState::Reviewed
    }

    /// The reviewed label, if any.
    #[must_use]
    pub fn label(&self) -> Option<&Label> {
        self.state.review.as_ref().map(|r| &r.label)
    }
}

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
        });
        item.state.state = ReviewState::Reviewed;
        write_state(&item.dir, &item.state)?;
        Ok(item)
    }

    /// Labels a radiograph that may not be in the queue (the viewer's "label this file"): if its
    /// content already has an entry, that entry is labelled; otherwise a copy of the file
    /// becomes a new, already reviewed entry (the file itself is left where it is). `predicted`
    /// records what the classifier said, when the caller ran it.
    pub fn label_file(
        &self,
        file: &Path,
        label: Label,
        reviewer: &str,
        predicted: Option<Predicted>,
    ) -> Result<QueueItem> {
        let reviewer = check_reviewer(reviewer)?;
        let bytes = Gate::TRUSTED.read(file)?;
        let xray = Gate::TRUSTED.decode(&bytes, file)?;
        if let Some(item) = self.find(&xray.sha256)? {
            return self.label(&item.id, label, &reviewer);
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
            model: None,
            methods: Vec::new(),
            review: Some(Review {
                label: label.clone(),
                reviewer: reviewer.clone(),
                time: rfc3339_utc(SystemTime::now()),
            }),
            history: Vec::new(),
        };
        let mut staging = self.stage(&id)?;
        staging.write(&image, &bytes)?;
        staging.write_json(STATE_FILE, &state)?;
        match staging.commit()? {
            Commit::Created(dir) => Ok(QueueItem { id, dir, state }),
            // Someone (the watcher) queued the same content meanwhile: label theirs.
            Commit::Exists => self.label(&id, label, &reviewer),
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

    /// Moves `file` out of the inbox into `rejected/`, with `reason` written beside it first (a
    /// crash in between leaves the file in the inbox, to be rejected again). Returns where it
    /// went; `Ok(None)` when the file was gone already.
    ///
    /// Names never collide (two `a.png` from different sub-folders become `a.png` and
    /// `a-2.png`): the workers of a watcher choose and take names one at a time, the move never
    /// replaces an existing file (`RENAME_NOREPLACE`), and one watcher per folder is enforced
    /// by its lock. A symbolic link is moved as the link, never followed.
    pub(crate) fn reject(&self, file: &Path, reason: &str) -> std::io::Result<Option<PathBuf>> {
        static NAMING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let rejected = self.rejected();
        std::fs::create_dir_all(&rejected)?;
        let _naming = NAMING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let text = format!(
            "{reason}\n\nfile: {}\nrejected: {}\n",
            file.display(),
            rfc3339_utc(SystemTime::now())
        );
        let mut target = free_name(&rejected, &file_name(file));
        let moved = loop {
            replace(&reason_path(&target), text.as_bytes()).map_err(std::io::Error::other)?;
            match move_no_replace(file, &target) {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // Taken since it was chosen (not by this watcher): the next free name.
                    let _ = std::fs::remove_file(reason_path(&target));
                    let next = free_name(&rejected, &file_name(file));
                    if next == target {
                        break Err(e);
                    }
                    target = next;
                }
                other => break other,
            }
        };
        match moved {
            Ok(()) => {
                let _ = sync_dir(&rejected);
                if let Some(parent) = file.parent() {
                    let _ = sync_dir(parent);
                }
                Ok(Some(target))
            }
            Err(e) => {
                let _ = std::fs::remove_file(reason_path(&target));
                if e.kind() == ErrorKind::NotFound {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then).
fn move_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(std::io::Error::from)
}

/// An entry being built in `.staging/`; dropped without [`Staging::commit`], it is removed.
pub(crate) struct Staging {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// What [`Staging::commit`] found.
pub(crate) enum Commit {
    /// The entry is in place, at this folder.
    Created(PathBuf),
    /// An entry with this id was already there (made by someone else meanwhile); nothing was
    /// changed.
    Exists,
}

impl Staging {
    /// Writes one file of the entry, synced.
    pub(crate) fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        durable::write_new(&self.dir.join(name), bytes)
    }

    pub(crate) fn write_json(&mut self, name: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| CoreError::data(self.dir.join(name), e.to_string()))?;
        self.write(name, &text)
    }

    /// Renames the finished entry into the queue in one step.
    pub(crate) fn commit(mut self) -> Result<Commit> {
        sync_dir(&self.dir)?;
        if self.target.exists() {
            return Ok(Commit::Exists);
        }
        let entries = self.target.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(entries).map_err(|e| CoreError::io(entries, e))?;
        match std::fs::rename(&self.dir, &self.target) {
            Ok(()) => {
                self.committed = true;
                sync_dir(entries)?;
                if let Some(staging) = self.dir.parent() {
                    sync_dir(staging)?;
                }
                Ok(Commit::Created(self.target.clone()))
            }
            // Renaming a folder onto a non-empty one fails: another process won the race.
            Err(_) if self.target.join(STATE_FILE).exists() => Ok(Commit::Exists),
            Err(e) => Err(CoreError::io(&self.target, e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether `name` is an entry folder's name: 16 lower-case hex digits.
#[must_use]
pub fn is_entry_id(name: &str) -> bool {
    name.len() == ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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

/// Who reviews when a person labels on this machine (the viewer, `cxr queue label` without
/// `--reviewer`): `$USER`, else `$LOGNAME`, else `unknown`. (A web page's visitor is not this
/// machine's user: the server takes the name the request gives, else `anonymous`.)
#[must_use]
pub fn local_reviewer() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// Longest reviewer name accepted, in characters.
pub const MAX_REVIEWER_CHARS: usize = 100;

/// The one rule for reviewer names, whichever surface labels (CLI, viewer, HTTP): one line of
/// at most [`MAX_REVIEWER_CHARS`] characters without control characters, not starting with a
/// character a spreadsheet reads as the start of a formula (`=`, `+`, `-`, `@`; OWASP's CSV
/// injection rule), since reviews are exported to CSV.
pub fn check_reviewer(reviewer: &str) -> Result<String> {
    let reviewer = reviewer.trim();
    let invalid = |why: &str| {
        CoreError::Invalid(format!(
            "reviewer {:?}: {why}",
            reviewer
                .chars()
                .take(MAX_REVIEWER_CHARS)
                .collect::<String>()
        ))
    };
    if reviewer.is_empty()
        || reviewer.chars().count() > MAX_REVIEWER_CHARS
        || reviewer.chars().any(char::is_control)
    {
        return Err(invalid(&format!(
            "expected a name of at most {MAX_REVIEWER_CHARS} characters on one line"
        )));
    }
    if reviewer.starts_with(['=', '+', '-', '@']) {
        return Err(invalid(
            "a name may not start with =, +, - or @ (spreadsheets read such a cell as a formula)",
        ));
    }
    Ok(reviewer.to_owned())
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
