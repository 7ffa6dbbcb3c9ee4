//! `cxr eval --against DIR`: the models of `--models` (A) against the models in DIR (B) on the
//! same images, source by source, each difference with its 95% paired-bootstrap interval. It
//! answers "is the new model worse than the old one anywhere?" with how sure the images allow:
//! a lead whose interval straddles zero is one the images cannot tell from chance.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use color_eyre::eyre::Result;
use cxr_core::CoreError;
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::data::{LabelledImage, MaskedImage};
use cxr_core::evaluation::{Scored, SourceMetrics, by_source};
use cxr_core::input::Gate;
use cxr_core::metrics::{Comparison, compare_paired, paired_means};
use cxr_core::models::{ModelFiles, Segmenter, UNetSegmenter};
use cxr_core::pipeline::SEGMENTER_NAME;
use cxr_core::service::{Image, Service};
use cxr_core::train::segmenter::evaluate_each;
use cxr_core::trust::Flag;
use serde::Serialize;

use super::{Scores, scores};

/// The two model folders and how to resample.
pub struct Pair<'a> {
    pub a: &'a Path,
    pub b: &'a Path,
    /// Seed of the bootstrap resamples.
    pub seed: u64,
}

/// One measure of A and B on one source's images.
#[derive(Serialize)]
struct Row {
    source: String,
    measure: &'static str,
    #[serde(flatten)]
    comparison: Comparison,
    /// Images where A's own value is higher (per-image measures only).
    #[serde(skip_serializing_if = "Option::is_none")]
    a_higher_on: Option<usize>,
}

#[derive(Serialize)]
struct Report<'a> {
    manifests: &'a [PathBuf],
    split: &'a str,
    a: &'a Path,
    b: &'a Path,
    /// Images left out because either model failed on them (or the input gate refused them).
    left_out: usize,
    resamples: usize,
    comparisons: Vec<Row>,
}

/// Compares the segmenters of the pair on `rows` (Dice per source, and pooled) and prints the
/// table and one JSON object. Returns the number of images a segmenter failed on.
pub fn segmenters(
    manifests: &[PathBuf],
    split: &str,
    rows: &[MaskedImage],
    pair: &Pair<'_>,
    compute: Compute,
) -> Result<usize> {
    let dice = |dir: &Path| -> Result<Vec<Option<f64>>> {
        let model = UNetSegmenter::load(&ModelFiles::new(dir, SEGMENTER_NAME), compute.device)?;
        Ok(each_dice(&model, rows, dir))
    };
    let (a, b) = (dice(pair.a)?, dice(pair.b)?);
    let kept: Vec<(&str, f64, f64)> = rows
        .iter()
        .zip(a.iter().zip(&b))
        .filter_map(|(row, (a, b))| Some((row.source.as_str(), (*a)?, (*b)?)))
        .collect();
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for &(source, a, b) in &kept {
        groups.entry(source.to_owned()).or_default().push((a, b));
        groups.entry("all".to_owned()).or_default().push((a, b));
    }
    if groups.len() == 2 {
        groups.remove("all"); // one source: the pooled row would repeat it
    }
    let comparisons = groups
        .into_iter()
        .filter_map(|(source, pairs)| {
            let (a, b): (Vec<f64>, Vec<f64>) = pairs.into_iter().unzip();
            let comparison = compare_paired(a.len(), pair.seed, |i| paired_means(&a, &b, i))?;
            Some(Row {
                source,
                measure: "dice",
                comparison,
                a_higher_on: Some(a.iter().zip(&b).filter(|(a, b)| a > b).count()),
            })
        })
        .collect();
    report(manifests, split, pair, rows.len() - kept.len(), comparisons)?;
    // Every image left out here is one a segmenter failed on (mask manifests have no gate).
    Ok(rows.len() - kept.len())
}

/// Each row's Dice under `model`, `None` where it failed (reported on stderr).
fn each_dice(model: &dyn Segmenter, rows: &[MaskedImage], dir: &Path) -> Vec<Option<f64>> {
    let what = format!("segmenting with {}", dir.display());
    let bar = super::super::progress(rows.len(), &what);
    let mut dice = Vec::with_capacity(rows.len());
    evaluate_each(model, rows.iter(), &mut |_, measured| {
        if let Err(e) = measured {
            bar.suspend(|| eprintln!("cxr: {e}"));
        }
        dice.push(measured.ok().map(|s| s.dice));
        bar.inc(1);
    });
    bar.finish_and_clear();
    dice
}

/// One image as the classifier comparison needs it: its scores and flags.
type Classified = (Scores, Vec<Flag>);
type Outcome = Option<Classified>;

/// Compares the classifiers (each with its own segmenter and trust model) on `rows`, source by
/// source: accuracy, the within-source contrast (other labels against the negatives), the
/// two classes' ROC-AUC, and the flagged and silent-wrong shares. Prints the table and one JSON
/// object; returns the number of images a model failed on (refused ones are left out, not
/// failed).
pub fn classifiers(
    manifests: &[PathBuf],
    split: &str,
    rows: &[LabelledImage],
    pair: &Pair<'_>,
    compute: &Compute,
) -> Result<usize> {
    let mut failed = 0;
    let mut run = |dir: &Path| -> Result<(Vec<Outcome>, Vec<String>, f32)> {
        let service = Service::load(dir, compute, Cache::disabled())?;
        let classifier = &service.pipeline().classifier;
        let classes = classifier.classes().to_vec();
        let what = format!("classifying with {}", dir.display());
        let bar = super::super::progress(rows.len(), &what);
        let mut outcomes = Vec::with_capacity(rows.len());
        for row in rows {
            let analysed = Image::read(&row.path, Gate::TRUSTED)
                .and_then(|image| Ok(service.analysis(&image)?.prediction.clone()));
            outcomes.push(match analysed {
                Ok(p) => Some((scores(&p, &classes), p.trust.flags)),
                Err(e) => {
                    failed += usize::from(!matches!(e, CoreError::NotARadiograph { .. }));
                    bar.suspend(|| eprintln!("cxr: {e}"));
                    None
                }
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok((outcomes, classes, classifier.threshold()))
    };
    let (a, classes, threshold_a) = run(pair.a)?;
    let (b, classes_b, threshold_b) = run(pair.b)?;
    if classes.get(..2) != classes_b.get(..2) {
        color_eyre::eyre::bail!(
            "the two classifiers do not share their first two classes ({classes:?} against \
             {classes_b:?}): their measures cannot be compared"
        );
    }
    let kept: Vec<(&LabelledImage, &Classified, &Classified)> = rows
        .iter()
        .zip(a.iter().zip(&b))
        .filter_map(|(row, (a, b))| Some((row, a.as_ref()?, b.as_ref()?)))
        .collect();
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, (row, _, _)) in kept.iter().enumerate() {
        groups.entry(row.source.as_str()).or_default().push(i);
    }
    let measure = |indices: &[usize], pick_b: bool| -> SourceMetrics {
        let scored: Vec<Scored<'_>> = indices
            .iter()
            .map(|&i| {
                let (row, a, b) = kept[i];
                let ((score, abnormal), flags) = if pick_b { b } else { a };
                Scored {
                    source: &row.source,
                    label: &row.label,
                    score: *score,
                    abnormal: *abnormal,
                    flags,
                }
            })
            .collect();
        let threshold = if pick_b { threshold_b } else { threshold_a };
        by_source(&scored, &classes, threshold)
            .into_values()
            .next()
            .unwrap_or_default()
    };
    let mut comparisons = Vec::new();
    for (source, members) in groups {
        for (name, value) in MEASURES {
            let statistic = |drawn: &[usize]| {
                let images: Vec<usize> = drawn.iter().map(|&k| members[k]).collect();
                value(&measure(&images, false)).zip(value(&measure(&images, true)))
            };
            if let Some(comparison) = compare_paired(members.len(), pair.seed, statistic) {
                comparisons.push(Row {
                    source: source.to_owned(),
                    measure: name,
                    comparison,
                    a_higher_on: None,
                });
            }
        }
    }
    report(manifests, split, pair, rows.len() - kept.len(), comparisons)?;
    Ok(failed)
}

/// One measure of a source's images, `None` where they cannot give it.
type Measure = fn(&SourceMetrics) -> Option<f64>;

/// The classifier measures compared.
const MEASURES: [(&str, Measure); 5] = [
    ("accuracy", |m| {
        (m.positives + m.negatives > 0).then_some(m.accuracy)
    }),
    ("others_vs_negatives_auc", |m| m.others_vs_negatives_auc),
    ("roc_auc", |m| m.roc_auc),
    ("flagged_share", |m| share(m.flagged, m.images)),
    ("silent_wrong_share", |m| {
        share(m.silent_wrong, m.positives + m.negatives)
    }),
];

fn share(n: usize, of: usize) -> Option<f64> {
    (of > 0).then(|| n as f64 / of as f64)
}

fn report(
    manifests: &[PathBuf],
    split: &str,
    pair: &Pair<'_>,
    left_out: usize,
    comparisons: Vec<Row>,
) -> Result<()> {
    if left_out > 0 {
        super::super::note(&format!(
            "{left_out} images left out: a model failed on them or the input gate refused them"
        ));
    }
    eprintln!("{}", table(pair, &comparisons));
    super::super::print_json(&Report {
        manifests,
        split,
        a: pair.a,
        b: pair.b,
        left_out,
        resamples: cxr_core::metrics::BOOTSTRAP_RESAMPLES,
        comparisons,
    })
}

/// Below this many images the bootstrap's interval is too narrow to trust (one image has no
/// spread at all): the table gives the figures but no verdict.
const VERDICT_IMAGES: usize = 10;

/// The comparisons as Markdown; "behind" where A's whole interval is below B, "ahead" where it
/// is above (for the shares of flagged and silent-wrong images, lower is better), no verdict
/// on fewer than [`VERDICT_IMAGES`] images.
fn table(pair: &Pair<'_>, rows: &[Row]) -> String {
    let mut text = format!(
        "A = {}, B = {}; 95% paired-bootstrap intervals\n\n\
         | source | measure | images | A | B | A - B [95%] | A higher on | verdict |\n\
         |---|---|---|---|---|---|---|---|\n",
        pair.a.display(),
        pair.b.display()
    );
    for row in rows {
        let c = &row.comparison;
        let lower_is_better = row.measure.ends_with("_share");
        let verdict = match (c.low > 0.0, c.high < 0.0) {
            _ if c.images < VERDICT_IMAGES => "too few images",
            (true, _) if lower_is_better => "A behind",
            (true, _) => "A ahead",
            (_, true) if lower_is_better => "A ahead",
            (_, true) => "A behind",
            _ => "no difference shown",
        };
        let higher = row
            .a_higher_on
            .map_or_else(|| "-".to_owned(), |n| format!("{n} of {}", c.images));
        let _ = writeln!(
            text,
            "| {} | {} | {} | {:.4} | {:.4} | {:+.4} [{:+.4}, {:+.4}] | {higher} | {verdict} |",
            row.source, row.measure, c.images, c.a, c.b, c.difference, c.low, c.high
        );
    }
    text
}
