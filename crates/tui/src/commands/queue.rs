//! `cxr queue list|label|undo|send|export`: the review queue of a watch folder, from scripts or
//! a shell.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::answer;
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::input::Gate;
use cxr_core::models::ModelFiles;
use cxr_core::pipeline::CLASSIFIER_NAME;
use cxr_core::queue::{Label, Order, Predicted, Queue, QueueItem, ReviewState};
use cxr_core::service::{Image, Service};
use cxr_core::watch::{WatchEvent, dicom_send};
use serde::Serialize;

use crate::cli::{Global, QueueCommand, QueueOrder};

/// One entry as `cxr queue list --json` and `cxr queue label` print it: `state.json` plus where
/// the files are and the uncertainty the order uses.
#[derive(Serialize)]
struct Listed<'a> {
    #[serde(flatten)]
    entry: answer::QueueEntry<'a>,
    dir: &'a Path,
    image_path: PathBuf,
}

impl<'a> Listed<'a> {
    fn new(item: &'a QueueItem) -> Self {
        Self {
            entry: item.into(),
            dir: &item.dir,
            image_path: item.image_path(),
        }
    }
}

pub fn run(command: QueueCommand, global: &Global) -> Result<ExitCode> {
    match command {
        QueueCommand::List {
            watch,
            dir,
            order,
            pending,
            json,
        } => list(
            dir.as_ref().unwrap_or(&watch.watch_dir),
            order,
            pending,
            json,
        ),
        QueueCommand::Label {
            id,
            label,
            watch,
            reviewer,
            model,
        } => {
            let reviewer = reviewer.unwrap_or_else(cxr_core::queue::local_reviewer);
            let m = super::models(global, &model)?;
            label_one(&watch.watch_dir, &id, &label, &reviewer, &m.dir, m.compute)
        }
        QueueCommand::Undo {
            id,
            watch,
            reviewer,
        } => {
            let reviewer = reviewer.unwrap_or_else(cxr_core::queue::local_reviewer);
            let item = Queue::open(&watch.watch_dir)?.undo(&id, &reviewer)?;
            super::note(&format!(
                "{} undone by {reviewer}: now {}",
                item.id,
                item.label().map_or("unreviewed", |l| l.as_str())
            ));
            super::print_json(&Listed::new(&item))?;
            Ok(ExitCode::SUCCESS)
        }
        QueueCommand::Send {
            ids,
            unsent,
            to,
            ae_title,
            watch,
        } => send(&watch.watch_dir, &ids, unsent, &to, &ae_title),
        QueueCommand::Export {
            watch,
            format,
            out,
            reviewed,
        } => super::export::run(&watch.watch_dir, format, out.as_deref(), reviewed),
    }
}

/// `cxr queue send`: each entry's DICOM results to `to`, in the foreground; exit 1 when an
/// instance failed or a named entry has no DICOM results.
fn send(dir: &Path, ids: &[String], unsent: bool, to: &str, ae_title: &str) -> Result<ExitCode> {
    let queue = Queue::open(dir)?;
    let target = dicom_send::SendTo::parse(to, ae_title.trim())?;
    let entries: Vec<PathBuf> = if unsent {
        dicom_send::unsent_entries(&queue.entries())
    } else {
        ids.iter()
            .map(|id| Ok(queue.get(id)?.dir))
            .collect::<Result<_>>()?
    };
    if unsent && entries.is_empty() {
        super::note("nothing to send: every entry's DICOM results were stored already");
    }
    let mut failed = 0;
    for entry in &entries {
        let events = dicom_send::send_now(&target, entry);
        if events.is_empty() {
            failed += 1;
            eprintln!(
                "cxr: {}: no DICOM results to send (its input was not DICOM, or it has no \
                 explanation to capture)",
                entry.display()
            );
        }
        for event in events {
            failed += usize::from(!matches!(event, WatchEvent::DicomSent { .. }));
            super::print_json(&event)?;
        }
    }
    Ok(super::exit_code(failed))
}

fn list(dir: &Path, order: QueueOrder, pending: bool, json: bool) -> Result<ExitCode> {
    let queue = Queue::open(dir)?;
    let order = match order {
        QueueOrder::Uncertainty => Order::Uncertainty,
        QueueOrder::Time => Order::Time,
    };
    let (items, problems) = queue.list_checked(order)?;
    for problem in &problems {
        eprintln!("cxr: {problem}");
    }
    let items: Vec<&QueueItem> = items
        .iter()
        .filter(|i| !pending || i.state.state == ReviewState::PendingReview)
        .collect();
    if json {
        for item in &items {
            super::print_json(&Listed::new(item))?;
        }
    } else {
        super::print_line(&format!(
            "{:<16}  {:<14}  {:<9}  {:>6}  {:>5}  {:<8}  {:<10}  source",
            "id", "state", "predicted", "p", "doubt", "label", "reviewer"
        ))?;
        for item in &items {
            let s = &item.state;
            let (predicted, p) = s.predicted.as_ref().map_or(("-".into(), "-".into()), |p| {
                (p.label.clone(), format!("{:.3}", p.confidence))
            });
            let doubt = item
                .uncertainty()
                .map_or_else(|| "-".into(), |u| format!("{u:.2}"));
            let (label, reviewer) = s
                .review
                .as_ref()
                .map_or(("-", "-"), |r| (r.label.as_str(), r.reviewer.as_str()));
            let state = match s.state {
                ReviewState::PendingReview => "pending_review",
                ReviewState::Reviewed => "reviewed",
            };
            // Trust flags (flagged entries are listed first in the uncertainty order).
            let flags: Vec<&str> = s
                .predicted
                .iter()
                .flat_map(|p| p.flags.iter().map(|f| f.name()))
                .collect();
            let flags = if flags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", flags.join(", "))
            };
            super::print_line(&format!(
                "{:<16}  {state:<14}  {predicted:<9}  {p:>6}  {doubt:>5}  {label:<8}  {reviewer:<10}  {}{flags}",
                item.id, s.source_name
            ))?;
        }
        let reviewed = items.iter().filter(|i| i.is_reviewed()).count();
        super::note(&format!(
            "{} entries, {} reviewed, {} pending (doubt: 1 = on the decision threshold, \
             0 = probability 0 or 1)",
            items.len(),
            reviewed,
            items.len() - reviewed
        ));
    }
    Ok(super::exit_code(problems.len()))
}

fn label_one(
    dir: &Path,
    id: &str,
    label: &str,
    reviewer: &str,
    models: &Path,
    compute: Compute,
) -> Result<ExitCode> {
    let queue = Queue::open(dir)?;
    let label: Label = label.parse()?;
    let file = Path::new(id);
    let item = if file.is_file() {
        // A radiograph not (necessarily) in the queue: record what the models say about it too,
        // so that it sorts by uncertainty like the others.
        let service = Service::load(models, &compute, Cache::disabled())?;
        let classes = service.pipeline().classifier.classes();
        label.check(classes)?;
        let image = Image::read(file, Gate::TRUSTED)?;
        let predicted = Predicted::new(&service.analysis(&image)?.prediction, &classes[0]);
        queue.label_file(
            file,
            label,
            reviewer,
            Some(predicted),
            Some(service.fingerprint()),
        )?
    } else {
        // The model's classes from its metadata alone (no weights loaded); the entry's own
        // prediction is checked again under the entry's lock.
        let meta = ModelFiles::new(models, CLASSIFIER_NAME).read_meta::<serde_json::Value>()?;
        label.check(&meta.classes)?;
        queue.label(id, label, reviewer)?
    };
    let review = item.state.review.as_ref();
    super::note(&format!(
        "{} labelled {} by {}{}",
        item.id,
        review.map_or("", |r| r.label.as_str()),
        review.map_or("", |r| r.reviewer.as_str()),
        item.state
            .predicted
            .as_ref()
            .map(|p| format!(" (predicted {} {:.2})", p.label, p.confidence))
            .unwrap_or_default()
    ));
    super::print_json(&Listed::new(&item))?;
    Ok(ExitCode::SUCCESS)
}
