//! Running an explainer on an analysed radiograph: the explanation, its quality measures, its
//! timings, and its overlay drawn on the original image.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::time::Instant;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::quality::{self, Quality};
use super::{ExplainInput, Explainer, ExplainerEntry, Explanation, HeatmapSummary, Progress};
use crate::Result;
use crate::models::Classifier;
use crate::pipeline::Analysis;
use crate::render::{self, Lines, OverlayStyle};

/// Which quality measures to compute (each costs forward passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QualityChecks {
    /// Deletion/insertion AUC (34 forward passes, batched) and lung mass share (free).
    pub faithfulness: bool,
    /// Model-randomisation check: the explainer runs again on a randomly initialised model.
    pub sanity: bool,
}

/// One explainer's result on one radiograph, as reported in JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodReport {
    pub method: String,
    pub params: String,
    /// The class explained.
    pub target: String,
    pub heatmap: HeatmapSummary,
    pub quality: Quality,
    pub details: serde_json::Map<String, serde_json::Value>,
    pub explain_ms: f64,
    pub quality_ms: f64,
}

/// The JSON report of one image: its classification and one outcome per explainer. `cxr
/// explain` writes it beside the overlays, the watcher as a queue entry's `report.json`.
#[derive(Debug, Serialize)]
pub struct ImageReport {
    #[serde(flatten)]
    pub classification: crate::pipeline::ClassifyReport,
    pub explanations: Vec<MethodOutcome>,
    /// The index of the raw arrays (`cxr explain --raw`), when written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

/// One explainer's outcome on one image.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum MethodOutcome {
    Done {
        /// The overlay PNG (a path, or a name inside the queue entry).
        overlay: String,
        #[serde(flatten)]
        report: MethodReport,
    },
    Failed {
        method: String,
        error: String,
    },
}

/// Seed of the randomly initialised model of the sanity check.
const SANITY_SEED: u64 = 1234;

/// Runs `explainer` (registered as `entry`, built with `params`) on `analysis` for class
/// `target`, then the chosen quality measures.
pub fn explain(
    classifier: &dyn Classifier,
    analysis: &Analysis,
    entry: &ExplainerEntry,
    explainer: &dyn Explainer,
    params: &str,
    target: usize,
    checks: QualityChecks,
) -> Result<(Explanation, MethodReport)> {
    explain_reporting(
        classifier, analysis, entry, explainer, params, target, checks, None,
    )
}

/// [`explain`], telling `progress` `(done, total)` model evaluations as the explainer gets
/// through them (see [`ExplainInput::progress`]).
#[allow(clippy::too_many_arguments)] // `explain`'s arguments and the hook
pub fn explain_reporting(
    classifier: &dyn Classifier,
    analysis: &Analysis,
    entry: &ExplainerEntry,
    explainer: &dyn Explainer,
    params: &str,
    target: usize,
    checks: QualityChecks,
    progress: Option<Progress<'_>>,
) -> Result<(Explanation, MethodReport)> {
    entry.check_runs_on(classifier)?;
    let device = classifier.device();
    let tensor = analysis.input.to_tensor(device);
    // The quality measures after the explainer report no progress of their own; they ask the
    // caller whether to go on with the explainer's last count (done, so a bar stays full).
    let last = Cell::new((0, 0));
    let forward = |done, total| {
        last.set((done, total));
        progress.map_or(ControlFlow::Continue(()), |p| p(done, total))
    };
    let input = ExplainInput {
        input: &tensor,
        lung_mask: &analysis.input.mask,
        target,
        progress: Some(&forward),
    };
    let start = Instant::now();
    let explanation = explainer.explain(classifier, &input)?;
    let explain_ms = start.elapsed().as_secs_f64() * 1000.0;

    let start = Instant::now();
    let mut measured = Quality {
        deletion_auc: None,
        insertion_auc: None,
        lung_mass_share: quality::lung_mass_share(&explanation.heatmap, &analysis.input.mask),
        randomisation_correlation: None,
    };
    if checks.faithfulness {
        let (done, total) = last.get();
        input.report_progress(done, total)?;
        let (deletion, insertion) =
            quality::deletion_insertion(classifier, &tensor, &explanation.heatmap, target)?;
        measured.deletion_auc = Some(deletion);
        measured.insertion_auc = Some(insertion);
    }
    if checks.sanity {
        let random = classifier.randomised(SANITY_SEED)?;
        let keep_going = |_, _| {
            let (done, total) = last.get();
            forward(done, total)
        };
        let quiet = ExplainInput {
            progress: Some(&keep_going),
            ..input
        };
        let again = explainer.explain(random.as_ref(), &quiet)?;
        measured.randomisation_correlation = Some(quality::spearman(
            &explanation.heatmap.values,
            &again.heatmap.values,
        ));
    }
    let quality_ms = start.elapsed().as_secs_f64() * 1000.0;
    let report = MethodReport {
        method: entry.name.to_owned(),
        params: params.to_owned(),
        target: classifier.classes()[target].clone(),
        heatmap: explanation.heatmap.summary(),
        quality: measured,
        details: explanation.details.clone(),
        explain_ms,
        quality_ms,
    };
    Ok((explanation, report))
}

/// The words on an explanation's overlay: method, target class and its probability in the
/// header, and what the colour bar measures.
#[must_use]
pub fn annotation(analysis: &Analysis, report: &MethodReport) -> render::Annotation {
    let class = render::class_display_name(&report.target);
    let probability = analysis
        .prediction
        .probabilities
        .get(&report.target)
        .map_or_else(String::new, |p| format!("  p={p:.2}"));
    render::Annotation {
        header: format!("{}  target {class}{probability}", report.method),
        caption: format!("relative evidence for {class}"),
    }
}

/// The explanation drawn on the original radiograph at its own size: the heatmap blended in
/// (faded to zero just outside the lungs' bounding box, so the classifier's square crop does not
/// show), the lung outline (when `outline`), the selected superpixels' boundaries for methods
/// that use superpixels, and a header naming the method, target class and probability.
#[must_use]
pub fn overlay(
    analysis: &Analysis,
    explanation: &Explanation,
    report: &MethodReport,
    style: &OverlayStyle,
    outline: bool,
) -> RgbImage {
    let (w, h) = (analysis.xray.width(), analysis.xray.height());
    let crop = &analysis.input.crop;
    let mut heat = explanation.heatmap.to_original(crop, w, h);
    if let Some(lungs) = crate::mask::lung_box(&analysis.mask) {
        render::fade_outside(&mut heat.values, w, h, lungs, fade_margin(w, h));
    }
    let base = analysis.xray.original.to_luma8();
    let lung_edges = outline.then(|| render::mask_edges(&analysis.mask));
    let segment_edges = explanation.segments.as_ref().map(|segments| {
        let grid = &explanation.heatmap;
        let labels = segments.to_original(grid.width, grid.height, crop, w, h);
        render::label_edges(&labels, w, h, |l| segments.selected.contains(&l))
    });
    let mut lines = Vec::new();
    if let Some(edges) = &lung_edges {
        lines.push(Lines {
            pixels: edges,
            colour: [0, 200, 255],
        });
    }
    if let Some(edges) = &segment_edges {
        lines.push(Lines {
            pixels: edges,
            colour: [255, 64, 64],
        });
    }
    let mut picture = render::overlay(&base, &heat.values, style, &lines);
    render::annotate(&mut picture, &annotation(analysis, report), style.legend);
    picture
}

/// How far outside the lungs' bounding box the heat fades out: 2% of the shorter side.
#[must_use]
pub fn fade_margin(width: u32, height: u32) -> u32 {
    (width.min(height) / 50).max(2)
}
