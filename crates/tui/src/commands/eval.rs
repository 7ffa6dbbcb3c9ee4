//! `cxr eval MANIFEST`: the models' metrics on a manifest, and with `--explainers`, the
//! explanation quality measures averaged per explainer.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr};
use cxr_core::CoreError;
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::data::{LabelledImage, Manifest, MaskedImage, Split, SplitShares};
use cxr_core::evaluation::{
    ClassifierMetrics, Scored, SourceMetrics, by_source, held_out_of, worst_source,
};
use cxr_core::explain::report::{self, QualityChecks};
use cxr_core::explain::{Method, MethodSpec, registry};
use cxr_core::input::Gate;
use cxr_core::models::{Classifier, ModelFiles, Prediction, UNetSegmenter, class_index};
use cxr_core::pipeline::{Analysis, CLASSIFIER_NAME, Pipeline, SEGMENTER_NAME};
use cxr_core::service::{Image, Service, Settings, Target};
use cxr_core::train::segmenter::{Score, SegmenterMetrics, evaluate_each};
use cxr_core::trust::Flag;
use serde::Serialize;

use crate::cli::SplitArg;
use crate::plots;

mod against;

/// What to evaluate besides the models.
pub struct Options<'a> {
    pub split: SplitArg,
    pub seed: u64,
    /// Explainer names (`all` for every registered one).
    pub explainers: &'a [String],
    /// At most this many images get explanations (explaining is far slower than classifying).
    pub explain_limit: usize,
    pub sanity: bool,
    /// Write one CSV row per image here.
    pub per_image: Option<&'a Path>,
    /// Draw the charts into this folder (see [`crate::plots`]).
    pub plots: Option<&'a Path>,
    /// Measure the leave-one-source-out models in this folder instead.
    pub folds: Option<&'a Path>,
    /// Compare the models with the ones in this folder instead.
    pub against: Option<&'a Path>,
}

#[derive(Serialize)]
struct ClassifierEval<'a> {
    manifests: &'a [PathBuf],
    split: String,
    failed: usize,
    #[serde(flatten)]
    metrics: ClassifierMetrics,
    /// The same measures per source, at the same threshold.
    by_source: BTreeMap<String, SourceMetrics>,
    /// The source with the lowest accuracy, and that accuracy.
    worst_source: Option<(String, f64)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    explainers: Vec<ExplainerQuality>,
    /// The charts' SVG files (`--plots`); a PNG of the same name beside each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plots: Vec<PathBuf>,
}

#[derive(Serialize)]
struct SegmenterEval<'a> {
    manifests: &'a [PathBuf],
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
    /// Mean share of heatmap mass inside the lungs, per source: where the evidence lies.
    lung_mass_share_by_source: BTreeMap<String, f64>,
    #[serde(skip)]
    images_by_source: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    randomisation_correlation: Option<f64>,
    explain_ms: f64,
}

pub fn run(
    manifests: &[PathBuf],
    options: &Options<'_>,
    models: &Path,
    compute: Compute,
) -> Result<ExitCode> {
    let all = Manifest::read_all(manifests)?;
    // Each kind of row is split with the shares its model was trained with.
    let wanted = |patient: &str, shares: SplitShares| {
        let side = Split::of(patient, options.seed, shares);
        match options.split {
            SplitArg::All => true,
            SplitArg::Train => side == Split::Train,
            SplitArg::Validation => side == Split::Validation,
            SplitArg::Test => side == Split::Test,
            SplitArg::HeldOut => side != Split::Train,
        }
    };
    let split = clap::ValueEnum::to_possible_value(&options.split)
        .map_or_else(String::new, |v| v.get_name().to_owned());
    if let Some(dir) = options.folds {
        let failed = evaluate_folds(&all.labels, &wanted, dir, models, compute)?;
        return Ok(super::exit_code(failed));
    }
    let mut failed = 0;
    let (has_labels, has_masks) = (!all.labels.is_empty(), !all.masks.is_empty());
    let both = has_labels && has_masks;
    let labelled: Vec<LabelledImage> = all
        .labels
        .into_iter()
        .filter(|r| wanted(&r.patient, SplitShares::CLASSIFIER))
        .collect();
    let masked: Vec<MaskedImage> = all
        .masks
        .into_iter()
        .filter(|r| wanted(&r.patient, SplitShares::SEGMENTER))
        .collect();
    if let Some(b) = options.against {
        let pair = against::Pair {
            a: models,
            b,
            seed: options.seed,
        };
        if has_labels {
            failed += against::classifiers(manifests, &split, &labelled, &pair, &compute)?;
        }
        if has_masks {
            failed += against::segmenters(manifests, &split, &masked, &pair, compute)?;
        }
        return Ok(super::exit_code(failed));
    }
    if has_labels {
        failed += evaluate_classifier(
            manifests,
            &labelled,
            split.clone(),
            options,
            models,
            compute,
        )?;
    }
    if has_masks {
        let segmenter =
            UNetSegmenter::load(&ModelFiles::new(models, SEGMENTER_NAME), compute.device)?;
        let mut per_image = options
            .per_image
            .map(|path| csv_writer(&mask_rows_path(path, both)))
            .transpose()?;
        let bar = super::progress(masked.len(), "evaluating the segmenter");
        let (mut seg_failed, mut written) = (0, Ok(()));
        let metrics = evaluate_each(&segmenter, masked.iter(), &mut |row, measured| {
            if let Err(e) = measured {
                seg_failed += 1;
                bar.suspend(|| eprintln!("cxr: {e}"));
            }
            if let (Some(w), Ok(())) = (&mut per_image, &written) {
                written = w.serialize(MaskRow::of(row, measured));
            }
            bar.inc(1);
        });
        bar.finish_and_clear();
        written?;
        if let Some(w) = &mut per_image {
            w.flush()?;
        }
        eprintln!("{}", segmenter_table(&metrics));
        super::print_json(&SegmenterEval {
            manifests,
            split,
            failed: seg_failed,
            metrics,
        })?;
        failed += seg_failed;
    }
    Ok(super::exit_code(failed))
}

/// `--plots DIR`: the charts of the classified images (see [`plots`]); returns the SVG paths.
fn draw_plots(
    dir: &Path,
    scored: &[(&LabelledImage, Scores, Vec<Flag>)],
    classes: &[String],
    threshold: f32,
    by_source: &BTreeMap<String, SourceMetrics>,
) -> Result<Vec<PathBuf>> {
    let scored = as_scored(scored);
    let classes = (classes[0].as_str(), classes[1].as_str());
    plots::write(
        dir,
        &plots::Evaluation::of(&scored, classes, threshold, by_source),
    )
}

/// The charts as a Markdown list of links (SVG, and the PNG beside it).
fn plots_list(svgs: &[PathBuf]) -> String {
    let mut text = String::from("Plots:\n");
    for svg in svgs {
        let name = svg
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let png = svg.with_extension("png");
        let _ = writeln!(
            text,
            "- {name}: [SVG]({}) [PNG]({})",
            svg.display(),
            png.display()
        );
    }
    text
}

/// One image's line of `--per-image`: file, source, truth, the positive class's probability,
/// label, familiarity, flags, then every class's probability (`p_CLASS`, in the model's order).
struct ImageRow<'a> {
    file: String,
    source: &'a str,
    truth: &'a str,
    label: String,
    familiarity: Option<f32>,
    flags: String,
    /// Every class's probability in the model's order (the positive class first); empty until
    /// the model has spoken.
    class_probabilities: Vec<f32>,
}

impl<'a> ImageRow<'a> {
    /// The row of a manifest image, before anything is known of it.
    fn of(row: &'a LabelledImage) -> Self {
        Self {
            file: row.path.display().to_string(),
            source: &row.source,
            truth: &row.label,
            label: String::new(),
            familiarity: None,
            flags: String::new(),
            class_probabilities: Vec::new(),
        }
    }

    fn header(classes: &[String]) -> Vec<String> {
        let fixed = [
            "file",
            "source",
            "truth",
            "probability",
            "label",
            "familiarity",
            "flags",
        ];
        let each = classes.iter().map(|c| format!("p_{c}"));
        fixed.into_iter().map(str::to_owned).chain(each).collect()
    }

    /// The fields in [`Self::header`]'s order, empty where nothing is known; `classes` long.
    fn record(&self, classes: usize) -> Vec<String> {
        let text = |v: Option<f32>| v.map_or_else(String::new, |v| v.to_string());
        let mut fields = vec![
            self.file.clone(),
            self.source.to_owned(),
            self.truth.to_owned(),
            text(self.class_probabilities.first().copied()),
            self.label.clone(),
            text(self.familiarity),
            self.flags.clone(),
        ];
        fields.extend((0..classes).map(|k| text(self.class_probabilities.get(k).copied())));
        fields
    }

    /// What the model said: the positive class's (`classes[0]`) and every class's probability,
    /// the label, familiarity and flags.
    fn predicted(&mut self, p: &cxr_core::models::Prediction, classes: &[String]) {
        self.class_probabilities = classes.iter().map(|c| p.probabilities[c]).collect();
        self.label.clone_from(&p.label);
        self.familiarity = p.trust.familiarity;
        self.flags = p
            .trust
            .flags
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join(" ");
    }
}

/// One `--per-image` row of a mask manifest: the image's Dice and `IoU` against its reference
/// mask and whether the shape check flagged the predicted mask, or why it failed.
#[derive(Serialize)]
struct MaskRow<'a> {
    file: String,
    source: &'a str,
    dice: Option<f64>,
    iou: Option<f64>,
    implausible: Option<bool>,
    error: String,
}

impl<'a> MaskRow<'a> {
    fn of(row: &'a MaskedImage, measured: std::result::Result<&Score, &CoreError>) -> Self {
        let (score, error) = match measured {
            Ok(score) => (Some(score), String::new()),
            Err(e) => (None, e.to_string()),
        };
        Self {
            file: row.image.display().to_string(),
            source: &row.source,
            dice: score.map(|s| s.dice),
            iou: score.map(|s| s.iou),
            implausible: score.map(|s| s.implausible),
            error,
        }
    }
}

/// Where mask rows go: `path` itself, or beside it as `NAME.masks.csv` when the labelled rows
/// are written to `path` too.
fn mask_rows_path(path: &Path, beside_labels: bool) -> PathBuf {
    if beside_labels {
        path.with_extension("masks.csv")
    } else {
        path.to_owned()
    }
}

fn csv_writer(path: &Path) -> Result<csv::Writer<std::fs::File>> {
    csv::Writer::from_path(path).wrap_err_with(|| format!("writing {}", path.display()))
}

fn evaluate_classifier(
    manifests: &[PathBuf],
    rows: &[LabelledImage],
    split: String,
    options: &Options<'_>,
    models: &Path,
    compute: Compute,
) -> Result<usize> {
    let service = Service::load(models, &compute, Cache::disabled())?;
    let classes = service.pipeline().classifier.classes().to_vec();
    let (methods, mut quality) = explainers(options.explainers)?;
    let checks = QualityChecks {
        faithfulness: true,
        sanity: options.sanity,
    };
    let mut per_image = options.per_image.map(csv_writer).transpose()?;
    if let Some(w) = &mut per_image {
        w.write_record(ImageRow::header(&classes))?;
    }
    // Explained images are spread evenly over the selection, so every source is represented.
    let every = rows.len().div_ceil(options.explain_limit.max(1)).max(1);

    let bar = super::progress(rows.len(), "evaluating");
    let (mut scored, mut failed) = (Vec::new(), 0);
    let mut refused: BTreeMap<String, usize> = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let outcome = Image::read(&row.path, Gate::TRUSTED).and_then(|image| {
            service.analysis(&image)?;
            Ok(image)
        });
        let mut line = ImageRow::of(row);
        match outcome {
            Ok(image) => {
                let analysis = service.analysis(&image)?; // made above: no work again
                let p = &analysis.prediction;
                line.predicted(p, &classes);
                scored.push((row, scores(p, &classes), p.trust.flags.clone()));
                if options.explain_limit > 0 && i % every == 0 && !methods.is_empty() {
                    // The image's own class; the positive one for labels of neither (nodules).
                    let target = classes[class_index(&classes, &row.label)].clone();
                    let settings = Settings {
                        target: Target::Class(target),
                        checks,
                        ..Settings::default()
                    };
                    for (method, q) in methods.iter().zip(&mut quality) {
                        let outcome = service.explain_report(&image, method, &settings);
                        accumulate(q, outcome, &row.source, analysis, &bar);
                    }
                }
            }
            Err(CoreError::NotARadiograph { reason, .. }) => {
                *refused.entry(row.source.clone()).or_default() += 1;
                line.label = "refused".into();
                line.flags = Flag::NotAChestRadiograph.name().into();
                bar.suspend(|| eprintln!("cxr: {}: refused: {reason}", row.path.display()));
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("cxr: {e}"));
            }
        }
        if let Some(w) = &mut per_image {
            w.write_record(line.record(classes.len()))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(w) = &mut per_image {
        w.flush()?;
    }
    for q in &mut quality {
        q.finish();
    }
    if !quality.is_empty() {
        eprintln!("{}", table(&quality));
    }
    let (metrics, by_source) = summarise(
        &scored,
        refused,
        &classes,
        service.pipeline().classifier.threshold(),
    );
    eprintln!("{}", source_table(&metrics, &by_source, &classes));
    let plots = match options.plots {
        Some(dir) => {
            let threshold = service.pipeline().classifier.threshold();
            let written = draw_plots(dir, &scored, &classes, threshold, &by_source)?;
            eprintln!("{}", plots_list(&written));
            written
        }
        None => Vec::new(),
    };
    super::print_json(&ClassifierEval {
        manifests,
        split,
        failed,
        metrics,
        worst_source: worst_source(&by_source).map(|(s, a)| (s.to_owned(), a)),
        by_source,
        explainers: quality,
        plots,
    })?;
    Ok(failed)
}

/// `--leave-one-source-out DIR`: each model DIR/SOURCE/ (trained without SOURCE) on every image
/// of SOURCE and on the other sources' images that `wanted` keeps, with the segmenter of
/// `models`. Prints the model card's table and one JSON object with every fold's measures.
fn evaluate_folds(
    rows: &[LabelledImage],
    wanted: &dyn Fn(&str, SplitShares) -> bool,
    dir: &Path,
    models: &Path,
    compute: Compute,
) -> Result<usize> {
    let pipeline = Pipeline::load_with(models, &compute)?;
    let models = fold_models(dir, rows, &compute)?;
    let wanted_by = |row: &LabelledImage| -> Vec<usize> {
        let shared = wanted(&row.patient, SplitShares::CLASSIFIER);
        (0..models.len())
            .filter(|&i| shared || models[i].0 == row.source)
            .collect()
    };
    let selection: Vec<(&LabelledImage, Vec<usize>)> = rows
        .iter()
        .map(|row| (row, wanted_by(row)))
        .filter(|(_, folds)| !folds.is_empty())
        .collect();
    let bar = super::progress(selection.len(), "the leave-one-source-out models");
    let mut scored = vec![Vec::new(); models.len()];
    let mut refused = vec![BTreeMap::<String, usize>::new(); models.len()];
    let mut failed = 0;
    for (row, folds) in selection {
        let segmented = Gate::TRUSTED
            .open(&row.path)
            .map_err(CoreError::from)
            .and_then(|xray| {
                let mask = pipeline.segmenter.segment(&xray.gray)?;
                Ok((xray, mask))
            });
        let (xray, mask) = match segmented {
            Ok(segmented) => segmented,
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("cxr: {e}"));
                bar.inc(1);
                continue;
            }
        };
        for fold in folds {
            let classifier = &*models[fold].1;
            match pipeline.classify_segmented(classifier, &xray, &mask) {
                Ok(classified) => {
                    let p = classified.prediction;
                    let scores = scores(&p, classifier.classes());
                    scored[fold].push((row, scores, p.trust.flags));
                }
                Err(CoreError::NotARadiograph { .. }) => {
                    *refused[fold].entry(row.source.clone()).or_default() += 1;
                }
                Err(e) => {
                    failed += 1;
                    bar.suspend(|| eprintln!("cxr: {e}"));
                }
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut folds = Vec::new();
    for (((source, classifier), scored), refused) in models.iter().zip(scored).zip(refused) {
        let classes = classifier.classes();
        let threshold = classifier.threshold();
        let mut fold = held_out_of(source, &as_scored(&scored), classes, threshold);
        for (from, n) in refused {
            let m = if &from == source {
                &mut fold.metrics
            } else {
                fold.seen.entry(from).or_default()
            };
            count_refused(m, n);
        }
        folds.push(fold);
    }
    if !folds.is_empty() {
        let classes = pipeline.classifier.classes();
        eprintln!("{}", cxr_core::card::held_out_table(classes, &folds));
    }
    super::print_json(&serde_json::json!({ "leave_one_source_out": folds }))?;
    Ok(failed)
}

/// Every model `DIR/SOURCE/` with images of SOURCE among `rows`, loaded at once so that each
/// image is decoded and segmented once for all of them.
fn fold_models(
    dir: &Path,
    rows: &[LabelledImage],
    compute: &Compute,
) -> Result<Vec<(String, Box<dyn Classifier>)>> {
    let sources = super::fold_dirs(dir)?;
    let mut models = Vec::new();
    for (source, fold_dir) in sources {
        if !rows.iter().any(|r| r.source == source) {
            super::note(&format!(
                "no image of {source} in the manifests: its model is left out"
            ));
            continue;
        }
        let files = ModelFiles::new(&fold_dir, CLASSIFIER_NAME);
        models.push((
            source,
            cxr_core::models::load_classifier(&files, compute.device)?,
        ));
    }
    Ok(models)
}

/// Pooled metrics over the images of the two classes, and the per-source table, with the
/// refused images counted as flagged `not-a-chest-radiograph`.
fn summarise(
    scored: &[(&LabelledImage, Scores, Vec<Flag>)],
    refused: BTreeMap<String, usize>,
    classes: &[String],
    threshold: f32,
) -> (ClassifierMetrics, BTreeMap<String, SourceMetrics>) {
    let in_classes: Vec<&(&LabelledImage, Scores, Vec<Flag>)> = scored
        .iter()
        .filter(|(r, _, _)| classes.contains(&r.label))
        .collect();
    let metrics = ClassifierMetrics::measure(
        &in_classes.iter().map(|s| s.1.0).collect::<Vec<_>>(),
        &in_classes
            .iter()
            .map(|s| s.0.label == classes[0])
            .collect::<Vec<_>>(),
        threshold,
    );
    let mut table = by_source(&as_scored(scored), classes, threshold);
    for (source, n) in refused {
        count_refused(table.entry(source).or_default(), n);
    }
    (metrics, table)
}

/// An image's probability of the positive class and 1 - its probability of the negative one.
type Scores = (f32, f32);

fn scores(p: &Prediction, classes: &[String]) -> Scores {
    let of = |k: usize| p.probabilities.get(&classes[k]).copied().unwrap_or(0.0);
    (of(0), 1.0 - of(1))
}

/// Images with their scores and flags, as the metrics take them.
fn as_scored<'a>(scored: &'a [(&LabelledImage, Scores, Vec<Flag>)]) -> Vec<Scored<'a>> {
    scored
        .iter()
        .map(|(r, (score, abnormal), flags)| Scored {
            source: &r.source,
            label: &r.label,
            score: *score,
            abnormal: *abnormal,
            flags,
        })
        .collect()
}

/// Adds `n` refused images to a source's measures: flagged `not-a-chest-radiograph`, no label.
fn count_refused(m: &mut SourceMetrics, n: usize) {
    m.images += n;
    m.flagged += n;
    *m.flags
        .entry(Flag::NotAChestRadiograph.name().to_owned())
        .or_default() += n;
}

/// The per-source table (and the pooled row) as Markdown.
fn source_table(
    pooled: &ClassifierMetrics,
    by_source: &BTreeMap<String, SourceMetrics>,
    classes: &[String],
) -> String {
    let pct = |v: Option<f64>| {
        v.filter(|v| v.is_finite())
            .map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", 100.0 * v))
    };
    let mut out = format!(
        "| source | images | {} / {} / other | ROC-AUC | accuracy | sensitivity | specificity | \
         other called {} | mean P({}) | flagged | silent-wrong | AUC other vs {} | flags |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        classes[0], classes[1], classes[0], classes[0], classes[1]
    );
    for (source, m) in by_source {
        let flags: Vec<String> = m.flags.iter().map(|(f, n)| format!("{f} {n}")).collect();
        let _ = writeln!(
            out,
            "| {source} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {:.3} | {} | {} |",
            m.images,
            m.positives,
            m.negatives,
            m.others,
            m.roc_auc
                .map_or_else(|| "-".to_owned(), |a| format!("{a:.3}")),
            pct(Some(m.accuracy)),
            pct(m.sensitivity),
            pct(m.specificity),
            pct(m.others_called_positive),
            m.mean_positive_probability,
            cxr_core::card::flag_cells(m),
            if flags.is_empty() {
                "-".to_owned()
            } else {
                flags.join(", ")
            }
        );
    }
    let _ = write!(
        out,
        "| pooled | {} | | {} | {} | {} | {} | | | | | | |",
        pooled.images,
        pooled
            .roc_auc
            .map_or_else(|| "-".to_owned(), |a| format!("{a:.3}")),
        pct(Some(pooled.accuracy)),
        pct(Some(pooled.sensitivity)),
        pct(Some(pooled.specificity)),
    );
    out
}

/// Dice per source as Markdown.
fn segmenter_table(m: &SegmenterMetrics) -> String {
    let mut out = String::from(
        "| source | images | Dice (mean) | Dice (min) | IoU (mean) | shape flagged |\n\
         |---|---|---|---|---|---|\n",
    );
    for (source, s) in m.by_source.iter().chain([(&"pooled".to_owned(), m)]) {
        let _ = writeln!(
            out,
            "| {source} | {} | {:.4} | {:.4} | {:.4} | {} |",
            s.images, s.dice_mean, s.dice_min, s.iou_mean, s.shape_flagged
        );
    }
    out
}

/// The explainers named (`all` for every registered one), built with their defaults, and an
/// empty quality record for each.
fn explainers(names: &[String]) -> Result<(Vec<Method>, Vec<ExplainerQuality>)> {
    let names: Vec<&str> = if names.iter().any(|n| n == "all") {
        registry::all()?.iter().map(|e| e.name).collect()
    } else {
        names.iter().map(String::as_str).collect()
    };
    let methods = names
        .iter()
        .map(|name| {
            MethodSpec {
                name: (*name).to_owned(),
                params: String::new(),
            }
            .build()
        })
        .collect::<cxr_core::Result<Vec<_>>>()?;
    let quality = names
        .iter()
        .map(|n| ExplainerQuality {
            method: (*n).to_owned(),
            ..Default::default()
        })
        .collect();
    Ok((methods, quality))
}

impl ExplainerQuality {
    /// Sums to means, once every image is in.
    fn finish(&mut self) {
        let n = self.images.max(1) as f64;
        self.deletion_auc /= n;
        self.insertion_auc /= n;
        self.lung_mass_share /= n;
        self.explain_ms /= n;
        self.randomisation_correlation = self.randomisation_correlation.map(|r| r / n);
        for (source, share) in &mut self.lung_mass_share_by_source {
            *share /= self.images_by_source[source].max(1) as f64;
        }
    }
}

/// Adds one image's measures (for the true class) to the running sums.
fn accumulate(
    q: &mut ExplainerQuality,
    outcome: cxr_core::Result<report::MethodReport>,
    source: &str,
    analysis: &Analysis,
    bar: &super::Progress,
) {
    match outcome {
        Ok(r) => {
            q.images += 1;
            q.deletion_auc += r.quality.deletion_auc.unwrap_or(f64::NAN);
            q.insertion_auc += r.quality.insertion_auc.unwrap_or(f64::NAN);
            q.lung_mass_share += r.quality.lung_mass_share.unwrap_or(0.0);
            *q.lung_mass_share_by_source
                .entry(source.to_owned())
                .or_default() += r.quality.lung_mass_share.unwrap_or(0.0);
            *q.images_by_source.entry(source.to_owned()).or_default() += 1;
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
