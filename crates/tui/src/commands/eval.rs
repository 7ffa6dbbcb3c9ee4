//! `cxr eval MANIFEST`: the models' metrics on a manifest, and with `--explainers`, the
//! explanation quality measures averaged per explainer.

use std::fmt::Write;
use std::path::Path;
use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::data::{LabelledImage, Manifest, Split, SplitShares};
use cxr_core::explain::report::{self, QualityChecks};
use cxr_core::explain::{ExplainerConfig, registry};
use cxr_core::models::{ModelFiles, UNetSegmenter};
use cxr_core::pipeline::{Analysis, Pipeline, SEGMENTER_NAME};
use cxr_core::tch::Device;
use cxr_core::train::classifier::ClassifierMetrics;
use cxr_core::train::segmenter::{SegmenterMetrics, evaluate_each};
use serde::Serialize;

use crate::cli::SplitArg;

/// What to evaluate besides the models.
pub struct Options<'a> {
    pub split: SplitArg,
    pub seed: u64,
    /// Explainer names (`all` for every registered one).
    pub explainers: &'a [String],
    /// At most this many images get explanations (explaining is far slower than classifying).
    pub explain_limit: usize,
    pub sanity: bool,
}

#[derive(Serialize)]
struct ClassifierEval<'a> {
    manifest: &'a Path,
    split: String,
    failed: usize,
    #[serde(flatten)]
    metrics: ClassifierMetrics,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    explainers: Vec<ExplainerQuality>,
}

#[derive(Serialize)]
struct SegmenterEval<'a> {
    manifest: &'a Path,
    split: String,
    failed: usize,
    #[serde(flatten)]
    metrics: SegmenterMetrics,
}

/// Mean quality measures of one explainer over the explained images.
#[derive(Serialize, Default)]
struct ExplainerQuality {
    method: String,
    images: usize,
    failed: usize,
    deletion_auc: f64,
    insertion_auc: f64,
    lung_mass_share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    randomisation_correlation: Option<f64>,
    explain_ms: f64,
}

pub fn run(
    manifest: &Path,
    options: &Options<'_>,
    models: &Path,
    device: Device,
) -> Result<ExitCode> {
    let rows = Manifest::read(manifest)?;
    // Each kind of manifest is split with the shares its model was trained with.
    let shares = match rows {
        Manifest::Labels(_) => SplitShares::CLASSIFIER,
        Manifest::Masks(_) => SplitShares::SEGMENTER,
    };
    let wanted = |patient: &str| {
        let side = Split::of(patient, options.seed, shares);
        match options.split {
            SplitArg::All => true,
            SplitArg::Train => side == Split::Train,
            SplitArg::Validation => side == Split::Validation,
            SplitArg::Test => side == Split::Test,
        }
    };
    let split = format!("{:?}", options.split).to_lowercase();
    match rows {
        Manifest::Labels(rows) => {
            let rows: Vec<LabelledImage> =
                rows.into_iter().filter(|r| wanted(&r.patient)).collect();
            evaluate_classifier(manifest, &rows, split, options, models, device)
        }
        Manifest::Masks(rows) => {
            let segmenter = UNetSegmenter::load(&ModelFiles::new(models, SEGMENTER_NAME), device)?;
            let rows: Vec<_> = rows.into_iter().filter(|r| wanted(&r.patient)).collect();
            let bar = super::progress(rows.len(), "evaluating");
            let mut failed = 0;
            let metrics = evaluate_each(&segmenter, rows.iter(), &mut |_, error| {
                if let Some(e) = error {
                    failed += 1;
                    bar.suspend(|| eprintln!("cxr: {e}"));
                }
                bar.inc(1);
            });
            bar.finish_and_clear();
            super::print_json(&SegmenterEval {
                manifest,
                split,
                failed,
                metrics,
            })?;
            Ok(super::exit_code(failed))
        }
    }
}

fn evaluate_classifier(
    manifest: &Path,
    rows: &[LabelledImage],
    split: String,
    options: &Options<'_>,
    models: &Path,
    device: Device,
) -> Result<ExitCode> {
    let pipeline = Pipeline::load(models, device)?;
    let classes = pipeline.classifier.classes().to_vec();
    let names: Vec<&str> = if options.explainers.iter().any(|n| n == "all") {
        registry::all()?.iter().map(|e| e.name).collect()
    } else {
        options.explainers.iter().map(String::as_str).collect()
    };
    let methods = names
        .iter()
        .map(|name| {
            let entry = registry::find(name)?;
            Ok((entry, entry.build(&ExplainerConfig::default())?))
        })
        .collect::<cxr_core::Result<Vec<_>>>()?;
    let mut quality: Vec<ExplainerQuality> = names
        .iter()
        .map(|n| ExplainerQuality {
            method: (*n).to_owned(),
            ..Default::default()
        })
        .collect();
    let checks = QualityChecks {
        faithfulness: true,
        sanity: options.sanity,
    };

    let bar = super::progress(rows.len(), "evaluating");
    let (mut scores, mut positive, mut failed) = (Vec::new(), Vec::new(), 0);
    for (i, row) in rows.iter().enumerate() {
        match pipeline.analyze_file(&row.path) {
            Ok(analysis) => {
                scores.push(analysis.prediction.probabilities[&classes[0]]);
                positive.push(row.label == classes[0]);
                if i < options.explain_limit {
                    let target = cxr_core::models::class_index(&classes, &row.label);
                    for ((entry, explainer), q) in methods.iter().zip(&mut quality) {
                        let outcome = report::explain(
                            pipeline.classifier.as_ref(),
                            &analysis,
                            entry,
                            explainer.as_ref(),
                            "",
                            target,
                            checks,
                        );
                        accumulate(q, outcome.map(|(_, r)| r), &analysis, &bar);
                    }
                }
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("cxr: {e}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    for q in &mut quality {
        let n = q.images.max(1) as f64;
        q.deletion_auc /= n;
        q.insertion_auc /= n;
        q.lung_mass_share /= n;
        q.explain_ms /= n;
        q.randomisation_correlation = q.randomisation_correlation.map(|r| r / n);
    }
    if !quality.is_empty() {
        eprintln!("{}", table(&quality));
    }
    let metrics = ClassifierMetrics::measure(&scores, &positive, pipeline.classifier.threshold());
    super::print_json(&ClassifierEval {
        manifest,
        split,
        failed,
        metrics,
        explainers: quality,
    })?;
    Ok(super::exit_code(failed))
}

/// Adds one image's measures (for the true class) to the running sums.
fn accumulate(
    q: &mut ExplainerQuality,
    outcome: cxr_core::Result<report::MethodReport>,
    analysis: &Analysis,
    bar: &indicatif::ProgressBar,
) {
    match outcome {
        Ok(r) => {
            q.images += 1;
            q.deletion_auc += r.quality.deletion_auc.unwrap_or(f64::NAN);
            q.insertion_auc += r.quality.insertion_auc.unwrap_or(f64::NAN);
            q.lung_mass_share += r.quality.lung_mass_share.unwrap_or(0.0);
            q.explain_ms += r.explain_ms;
            if let Some(c) = r.quality.randomisation_correlation {
                q.randomisation_correlation = Some(q.randomisation_correlation.unwrap_or(0.0) + c);
            }
        }
        Err(e) => {
            q.failed += 1;
            bar.suspend(|| eprintln!("cxr: {}: {}: {e}", analysis.xray.path.display(), q.method));
        }
    }
}

/// The per-explainer means as a Markdown table.
fn table(quality: &[ExplainerQuality]) -> String {
    let mut out = String::from(
        "| explainer | images | deletion AUC (lower is better) | insertion AUC (higher is better) | mass in lungs | randomisation corr. | ms |\n|---|---|---|---|---|---|---|\n",
    );
    for q in quality {
        let r = q
            .randomisation_correlation
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"));
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.3} | {r} | {:.0} |",
            q.method, q.images, q.deletion_auc, q.insertion_auc, q.lung_mass_share, q.explain_ms
        );
    }
    out
}
