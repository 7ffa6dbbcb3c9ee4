//! The viewer's link to the training queue: labels go where `cxr train --include-queue` reads
//! them, and a watch folder opens as its queue, most uncertain first.

use std::path::{Path, PathBuf};

use cxr_core::models::Prediction;
use cxr_core::queue::{Label, Order, Predicted, Queue};

use crate::tui::app::{Item, ItemState};

/// A label written to the queue: a line for the status bar, and the entry it went to (for
/// undo).
#[derive(Debug)]
pub struct Recorded {
    pub message: String,
    pub entry: String,
}

/// What a label is given with in the viewer.
pub struct Seen<'a> {
    pub reviewer: &'a str,
    /// The prediction shown, and the model's positive class.
    pub predicted: Option<(&'a Prediction, &'a str)>,
    /// The model's classes: the only labels recorded (besides `skip`).
    pub classes: &'a [String],
    /// The fingerprint of the models whose prediction is shown.
    pub model: Option<&'a str>,
    /// The explanations on screen (explainer names).
    pub shown: &'a [String],
}

/// Records a `label` for the radiograph at `path` in the queue of `watch_dir` (created if
/// missing), with what was `seen`: the reviewer, the prediction and the models that made it, the
/// explanations on screen. The label must be one of the model's classes (or `skip`), as `cxr
/// queue label` requires: nothing is written otherwise.
pub fn record(
    watch_dir: &Path,
    path: &Path,
    label: &str,
    seen: &Seen<'_>,
) -> cxr_core::Result<Recorded> {
    let label: Label = label.parse()?;
    label.check(seen.classes)?;
    let queue = Queue::create(watch_dir)?;
    let predicted = seen
        .predicted
        .map(|(p, positive)| Predicted::new(p, positive));
    let item = queue.label_file_seen(
        path,
        label.clone(),
        seen.reviewer,
        predicted,
        seen.model,
        seen.shown,
    )?;
    Ok(Recorded {
        message: format!(
            "labelled {} as {} (queue entry {})",
            shown_name(&item, path),
            label.as_str(),
            item.id
        ),
        entry: item.id,
    })
}

/// Takes back the current review of queue `entry` in `watch_dir` as `reviewer` (the review
/// before it, if any, is current again; nothing is deleted): a line for the status bar, and
/// the label the entry has now.
pub fn undo(
    watch_dir: &Path,
    entry: &str,
    path: &Path,
    reviewer: &str,
) -> cxr_core::Result<(String, Option<String>)> {
    let item = Queue::open(watch_dir)?.undo(entry, reviewer)?;
    let now = item.label().map(|l| l.as_str().to_owned());
    let undone = item.state.history.last().map_or("", |r| r.label.as_str());
    let message = format!(
        "undid {undone} on {} (now {})",
        shown_name(&item, path),
        now.as_deref().unwrap_or("unreviewed")
    );
    Ok((message, now))
}

/// A queue entry's image is `image.png`: name it by the file that was dropped in.
fn shown_name(item: &cxr_core::queue::QueueItem, path: &Path) -> String {
    if item.state.source_name.is_empty() {
        path.display().to_string()
    } else {
        item.state.source_name.clone()
    }
}

/// The watch folder that `path` is, or whose `queue/` folder it is.
#[must_use]
pub fn watch_root(path: &Path) -> Option<PathBuf> {
    if path.join("queue").is_dir() && path.join("inbox").is_dir() {
        Some(path.to_path_buf())
    } else if path.file_name().is_some_and(|n| n == "queue") {
        path.parent()
            .filter(|p| p.join("inbox").is_dir())
            .map(Path::to_path_buf)
    } else {
        None
    }
}

/// The items of a watch folder's queue, most uncertain first, with their predictions and
/// reviews already filled in.
pub fn queue_items(root: &Path) -> cxr_core::Result<Vec<Item>> {
    let queue = Queue::open(root)?;
    Ok(queue
        .list(Order::Uncertainty)?
        .into_iter()
        .map(|entry| {
            let mut item = Item::new(entry.image_path());
            if !entry.state.source_name.is_empty() {
                item.name.clone_from(&entry.state.source_name);
            }
            if let Some(p) = &entry.state.predicted {
                item.state = ItemState::Predicted {
                    label: p.label.clone(),
                    probability: p.confidence,
                };
            }
            item.reviewed = entry.label().map(|l| l.as_str().to_owned());
            item
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_entries_are_listed_by_their_original_names() {
        let watch = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(watch.path().join("inbox")).unwrap();
        let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples");
        let classes = ["covid".to_owned(), "normal".to_owned()];
        for name in ["hannover_2c35005f.png", "nih_00001299_000.png"] {
            let seen = Seen {
                reviewer: "alice",
                predicted: None,
                classes: &classes,
                model: Some("f1"),
                shown: &[],
            };
            let said = record(watch.path(), &samples.join(name), "normal", &seen)
                .unwrap()
                .message;
            // Named by the file dropped in, not the entry's image.png.
            assert!(
                said.starts_with(&format!("labelled {name} as normal")),
                "{said}"
            );
        }
        let root = watch_root(&watch.path().join("queue")).expect("a watch folder");
        let items = queue_items(&root).unwrap();
        let mut names: Vec<&str> = items.iter().map(|i| i.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["hannover_2c35005f.png", "nih_00001299_000.png"]);
        assert!(items.iter().all(|i| i.path.ends_with("image.png")));
        assert!(
            items
                .iter()
                .all(|i| i.reviewed.as_deref() == Some("normal"))
        );
    }
}
