//! The answers every surface gives (`cxr classify`'s and `cxr worker`'s JSON, the HTTP API),
//! typed once so that a result reads the same wherever it is asked for. Surfaces add only their
//! own addressing around them: an upload's id and links, an overlay's path.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::explain::registry::{self, ExplainerEntry, Param};
use crate::explain::{HeatmapSummary, quality::Quality};
use crate::models::Gradients;
use crate::pipeline::Timings;
use crate::queue::{EntryState, QueueItem};
use crate::service::{Classified, Rendered};
use crate::trust::Assessment;

/// A classification. The file's path is left out (a server's upload folder is its own
/// business); `cxr classify` prints the whole [`crate::pipeline::ClassifyReport`] instead.
#[derive(Debug, Clone, Serialize)]
pub struct Classification<'a> {
    pub sha256: &'a str,
    pub width: u32,
    pub height: u32,
    pub label: &'a str,
    pub probabilities: &'a BTreeMap<String, f32>,
    /// Probability of the positive class at which the label switches to it.
    pub threshold: f32,
    /// Share of the image the segmenter marked as lung.
    pub lung_fraction: f32,
    /// Familiarity score and flags: when the prediction should not be trusted.
    pub trust: &'a Assessment,
    pub timings: &'a Timings,
    /// Served from the result cache (no model ran).
    pub cached: bool,
}

impl<'a> From<&'a Classified> for Classification<'a> {
    fn from(classified: &'a Classified) -> Self {
        let report = &classified.report;
        Self {
            sha256: &report.sha256,
            width: report.width,
            height: report.height,
            label: &report.label,
            probabilities: &report.probabilities,
            threshold: report.threshold,
            lung_fraction: report.lung_fraction,
            trust: &report.trust,
            timings: &report.timings,
            cached: classified.cached,
        }
    }
}

/// One explainer's explanation of an image, with the image's classification in brief.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation<'a> {
    pub method: &'a str,
    /// The explainer's parameters as used (part of the cache key).
    pub params: &'a str,
    /// The class explained.
    pub target: &'a str,
    /// The image's predicted label and class probabilities.
    pub label: &'a str,
    pub probabilities: &'a BTreeMap<String, f32>,
    pub heatmap: HeatmapSummary,
    pub quality: Quality,
    /// Method-specific facts (LIME's fit, IG's completeness gap).
    pub details: &'a serde_json::Map<String, serde_json::Value>,
    pub explain_ms: f64,
    pub quality_ms: f64,
    /// Report and overlay served from the result cache.
    pub cached: bool,
}

impl<'a> Explanation<'a> {
    #[must_use]
    pub fn new(classified: &'a Classified, rendered: &'a Rendered) -> Self {
        let report = &rendered.report;
        Self {
            method: &report.method,
            params: &report.params,
            target: &report.target,
            label: &classified.report.label,
            probabilities: &classified.report.probabilities,
            heatmap: report.heatmap,
            quality: report.quality,
            details: &report.details,
            explain_ms: report.explain_ms,
            quality_ms: report.quality_ms,
            cached: rendered.cached,
        }
    }
}

/// A registered explainer, as `cxr explainers --json` and `GET /v1/explainers` list it.
#[derive(Debug, Clone, Serialize)]
pub struct Explainer {
    pub name: &'static str,
    pub summary: &'static str,
    /// `none`, `input` or `feature-map`: how far the model's gradients must reach.
    pub needs: Gradients,
    pub params: &'static [Param],
    /// Other names it answers to (`gradcam`).
    pub aliases: Vec<&'static str>,
}

impl From<&ExplainerEntry> for Explainer {
    fn from(entry: &ExplainerEntry) -> Self {
        Self {
            name: entry.name,
            summary: entry.summary,
            needs: entry.needs,
            params: entry.params,
            aliases: registry::ALIASES
                .iter()
                .filter(|(_, real)| *real == entry.name)
                .map(|(alias, _)| *alias)
                .collect(),
        }
    }
}

/// A training-queue entry: its `state.json` and the review uncertainty the queue sorts by.
/// Where its files are is the CLI's to add (a server's watch folder is its own business).
#[derive(Debug, Clone, Serialize)]
pub struct QueueEntry<'a> {
    #[serde(flatten)]
    pub state: &'a EntryState,
    /// See [`crate::queue::Predicted::uncertainty`]; `None` without a prediction.
    pub uncertainty: Option<f32>,
}

impl<'a> From<&'a QueueItem> for QueueEntry<'a> {
    fn from(item: &'a QueueItem) -> Self {
        Self {
            state: &item.state,
            uncertainty: item.uncertainty(),
        }
    }
}
