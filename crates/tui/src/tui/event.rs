//! Everything that can happen to the viewer arrives as one `AppEvent` on one channel: terminal
//! input, resizes, ticks, and results from the background workers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossterm::event::KeyEvent;
use cxr_core::explain::report::MethodReport;
use cxr_core::models::Prediction;
use cxr_core::pipeline::{LungBox, Timings};
use image::DynamicImage;
use ratatui::layout::Size;
use ratatui_image::protocol::Protocol;

/// Which picture a pane shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pane {
    Original,
    Overlay,
}

/// Which part of a job failed: the image itself (decoding, segmentation, classification), or
/// only its explanation (bad parameters, an explainer error), which leaves the image's
/// prediction standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Analysis,
    Explanation,
}

/// A long explanation's progress, as the worker last reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplainProgress {
    pub done: usize,
    pub total: usize,
    /// Since the explainer started, when `done` was reached.
    pub elapsed: Duration,
}

impl ExplainProgress {
    /// "lime 300/1000 · ~3 s left"; the time left only once enough is done for an honest
    /// estimate (the time so far per evaluation times those left, as the batch commands say);
    /// "lime 1000/1000 · finishing" once all are done.
    #[must_use]
    pub fn text(&self, method: &str) -> String {
        let counts = format!("{method} {}/{}", self.done, self.total);
        if self.done >= self.total {
            // The quality checks and the drawing are still to come.
            return format!("{counts} · finishing");
        }
        match crate::format::eta(self.done as u64, self.total as u64, self.elapsed) {
            Some(left) => format!("{counts} · ~{} left", crate::format::human(left)),
            None => counts,
        }
    }
}

/// A worker's answer, tagged with the generation of the request it answers: the app drops
/// answers to requests it has since replaced.
pub enum WorkerEvent {
    /// The job for `generation` has started.
    Started { generation: u64, what: String },
    /// Segmentation and classification are done.
    Analysed {
        generation: u64,
        path: PathBuf,
        prediction: Prediction,
        timings: Timings,
        original: DynamicImage,
        /// Where the lungs are, for zooming in on them.
        lungs: Option<LungBox>,
    },
    /// A long explanation's progress: `done` of `total` model evaluations, `elapsed` since the
    /// explainer started (sent at most about ten times a second, and at the end).
    Progress {
        generation: u64,
        progress: ExplainProgress,
    },
    /// The explanation is done and drawn.
    Explained {
        generation: u64,
        overlay: DynamicImage,
        report: MethodReport,
    },
    /// A file's classification found in the cache (for the list; any generation).
    Known {
        path: PathBuf,
        prediction: Prediction,
    },
    /// A file's review found in the queue (for the list; any generation).
    Reviewed { path: PathBuf, label: String },
    /// The job failed; the viewer shows the message and goes on.
    Failed {
        generation: u64,
        path: PathBuf,
        stage: Stage,
        message: String,
    },
}

/// A picture encoded for the terminal at a given size.
pub struct Encoded {
    pub generation: u64,
    pub pane: Pane,
    pub size: Size,
    pub protocol: Result<Protocol, String>,
}

pub enum AppEvent {
    /// A key press, with the time it was read (for the input-to-redraw latency).
    Key(KeyEvent, Instant),
    Resize,
    Tick,
    Worker(WorkerEvent),
    Encoded(Encoded),
}
