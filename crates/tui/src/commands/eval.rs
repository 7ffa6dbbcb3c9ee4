//! `cxr eval MANIFEST`

use std::path::Path;
use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::data::{Manifest, Split, SplitShares};
use cxr_core::metrics::Overlap;
use cxr_core::models::{ModelFiles, Segmenter, UNetSegmenter};
use cxr_core::pipeline::{Pipeline, SEGMENTER_NAME};
use cxr_core::tch::Device;
use cxr_core::train::classifier::ClassifierMetrics;
use cxr_core::xray::Xray;
use serde::Serialize;

use crate::cli::SplitArg;

#[derive(Serialize)]
struct ClassifierEval<'a> {
    manifest: &'a Path,
    split: String,
    failed: usize,
    #[serde(flatten)]
    metrics: ClassifierMetrics,
}

#[derive(Serialize)]
struct SegmenterEval<'a> {
    manifest: &'a Path,
    split: String,
    images: usize,
    failed: usize,
    dice_mean: f64,
    iou_mean: f64,
    dice_min: f64,
}

pub fn run(
    manifest: &Path,
    split: SplitArg,
    seed: u64,
    models: &Path,
    device: Device,
) -> Result<ExitCode> {
    let manifest_rows = Manifest::read(manifest)?;
    // Each kind of manifest is split with the shares its model was trained with.
    let shares = match manifest_rows {
        Manifest::Labels(_) => SplitShares::CLASSIFIER,
        Manifest::Masks(_) => SplitShares::SEGMENTER,
    };
    let wanted = |patient: &str| match split {
        SplitArg::All => true,
        SplitArg::Train => Split::of(patient, seed, shares) == Split::Train,
        SplitArg::Validation => Split::of(patient, seed, shares) == Split::Validation,
        SplitArg::Test => Split::of(patient, seed, shares) == Split::Test,
    };
    let split_name = format!("{split:?}").to_lowercase();
    match manifest_rows {
        Manifest::Labels(rows) => {
            let pipeline = Pipeline::load(models, device)?;
            let classes = pipeline.classifier.classes().to_vec();
            let rows: Vec<_> = rows.into_iter().filter(|r| wanted(&r.patient)).collect();
            let bar = super::progress(rows.len(), "evaluating");
            let (mut scores, mut positive, mut failed) = (Vec::new(), Vec::new(), 0);
            for row in &rows {
                match pipeline.analyze_file(&row.path) {
                    Ok(a) => {
                        scores.push(a.prediction.probabilities[&classes[0]]);
                        positive.push(row.label == classes[0]);
                    }
                    Err(e) => {
                        failed += 1;
                        bar.suspend(|| eprintln!("cxr: {e}"));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            let metrics =
                ClassifierMetrics::measure(&scores, &positive, pipeline.classifier.threshold());
            super::print_json(&ClassifierEval {
                manifest,
                split: split_name,
                failed,
                metrics,
            })?;
            Ok(super::exit_code(failed))
        }
        Manifest::Masks(rows) => {
            let segmenter = UNetSegmenter::load(&ModelFiles::new(models, SEGMENTER_NAME), device)?;
            let rows: Vec<_> = rows.into_iter().filter(|r| wanted(&r.patient)).collect();
            let bar = super::progress(rows.len(), "evaluating");
            let (mut scores, mut failed) = (Vec::new(), 0);
            for row in &rows {
                let measured = (|| -> cxr_core::Result<(f64, f64)> {
                    let xray = Xray::open(&row.image)?;
                    let reference = Xray::open(&row.mask)?.original.to_luma8();
                    let o =
                        Overlap::of(segmenter.segment(&xray.gray)?.as_raw(), reference.as_raw());
                    Ok((o.dice(), o.iou()))
                })();
                match measured {
                    Ok(s) => scores.push(s),
                    Err(e) => {
                        failed += 1;
                        bar.suspend(|| eprintln!("cxr: {e}"));
                    }
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            let n = scores.len().max(1) as f64;
            super::print_json(&SegmenterEval {
                manifest,
                split: split_name,
                images: scores.len(),
                failed,
                dice_mean: scores.iter().map(|s| s.0).sum::<f64>() / n,
                iou_mean: scores.iter().map(|s| s.1).sum::<f64>() / n,
                dice_min: scores.iter().map(|s| s.0).fold(f64::INFINITY, f64::min),
            })?;
            Ok(super::exit_code(failed))
        }
    }
}
