//! One queue entry as its `state.json` records it: the prediction it was queued with, the
//! review and its history, and the rules for labels, ids and reviewer names.

use std::collections::BTreeMap;
use std::fmt;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ID_LEN, REPORT_FILE};
use crate::models::Prediction;
use crate::{CoreError, Result};

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
    /// The explanations the reviewer had on screen (explainer names), where the surface knows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shown: Vec<String>,
    /// Who took this review back, and when ([`super::Queue::undo`]); it stays in `history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undone: Option<Undo>,
}

/// An undo: a review event of its own, recorded on the review it took back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undo {
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
    /// Earlier reviews, oldest first, when an entry was labelled more than once; undone
    /// reviews stay here with their undo.
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

/// Whether `name` is an entry folder's name: 16 lower-case hex digits.
#[must_use]
pub fn is_entry_id(name: &str) -> bool {
    name.len() == ID_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The environment variable naming who reviews on this machine.
pub const REVIEWER_ENV: &str = "CXR_REVIEWER";

/// Who reviews when a person labels on this machine and names nobody (the viewer and `cxr queue
/// label` without `--reviewer`): `$CXR_REVIEWER`, else the login name (`$USER`, `$LOGNAME`), else
/// `unknown`. (A web page's visitor is not this machine's user: the server takes the name the
/// request gives, else `anonymous`.) Every surface then checks it with [`check_reviewer`].
#[must_use]
pub fn local_reviewer() -> String {
    [REVIEWER_ENV, "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .map_or_else(|| "unknown".into(), |s| s.trim().to_owned())
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
