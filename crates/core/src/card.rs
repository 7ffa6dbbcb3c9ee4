//! Model cards: Markdown written by `cxr train` beside each model, from the numbers that run
//! measured, so a card can never disagree with its model.

use std::fmt::Write;

use crate::evaluation::{ClassifierMetrics, HeldOutSource, SourceMetrics, worst_source};
use crate::models::resnet::ResNetConfig;
use crate::models::unet::UNetConfig;
use crate::preprocess::InputStyle;
use crate::train::TrainingRecord;
use crate::train::classifier::ClassifierRecord;
use crate::train::segmenter::{SegmenterMetrics, SegmenterRecord};

const DATA_SOURCES: &str = "\
Data is read in place from the project's shared data folder (see its README); nothing is copied.
- COVID-19: Hannover Medical School COVID-19 image repository (CC BY 3.0) and the ieee8023
  COVID-19 image data collection (per-image CC BY 4.0 or \"authorized for everyone\").
- No finding: NIH Clinical Center ChestX-ray14 (unrestricted use, attribution requested), and the
  JSRT database's radiographs without nodules (Shiraishi et al., AJR 2000; research and education
  use), a second no-finding source from another country and era. JSRT's radiographs with a lung
  nodule are neither class: they are only reported (how many are called COVID-19).
- Lung masks: V7 Labs COVID-19 X-ray annotations (CC BY 4.0) on ieee8023 images (source
  `lungseg`), and the JSRT masks (as redistributed by vfmatzkin/jsrt-segmentation-unet, MIT code).
- Sources are keyed by the first word of each manifest's `source` column (`hannover`,
  `ieee8023`, `nih`, `jsrt`), or the manifest's folder when it has none (`lungseg`).";

fn training_section(out: &mut String, t: &TrainingRecord) {
    let s = &t.split;
    let _ = writeln!(out, "## Training\n");
    let _ = writeln!(out, "- Manifest: `{}`", t.manifest);
    let _ = writeln!(
        out,
        "- Split by patient (seed {}): train {} images / {} patients, validation {} / {}, test {} / {}",
        t.seed,
        s.train.images,
        s.train.patients,
        s.validation.images,
        s.validation.patients,
        s.test.images,
        s.test.patients
    );
    if let Some(init_seed) = t.init_seed {
        let _ = writeln!(
            out,
            "- Initial weights, augmentation and batch order from seed {init_seed}"
        );
    }
    let _ = writeln!(
        out,
        "- {} epochs (best on validation: epoch {}), batch {}, AdamW, learning rate {} with cosine decay",
        t.epochs, t.best_epoch, t.batch_size, t.learning_rate
    );
    if let Some(extra) = &t.train_only {
        let used: usize = extra.classes.values().sum();
        let per_class: Vec<String> = extra
            .classes
            .iter()
            .map(|(class, n)| format!("{n} {class}"))
            .collect();
        let _ = writeln!(
            out,
            "- Plus {used} reviewed queue images from `{}` ({}), each its own patient \
             (`queue-<id>`) and always in the training split: validation and test are the \
             manifest's patients only",
            extra.source,
            if per_class.is_empty() {
                "none usable".to_owned()
            } else {
                per_class.join(", ")
            }
        );
        if extra.other_labels + extra.in_manifest > 0 {
            let _ = writeln!(
                out,
                "  (left out: {} with a label that is not a class here, {} identical to a \
                 manifest image)",
                extra.other_labels, extra.in_manifest
            );
        }
    }
    if let Some(init) = &t.initialised_from {
        let _ = writeln!(out, "- Started from the weights in `{init}` (fine-tuned)");
    }
    let _ = writeln!(out, "- Augmentation: {}", t.augmentation);
    let _ = writeln!(
        out,
        "- Trained on {} ({} threads) in {:.1} minutes, {}\n",
        t.device,
        t.threads,
        t.seconds / 60.0,
        t.date
    );
}

fn segmenter_row(out: &mut String, split: &str, m: &SegmenterMetrics) {
    let _ = writeln!(
        out,
        "| {split} | all | {} | {:.4} | {:.4} | {:.4} | {} |",
        m.images, m.dice_mean, m.dice_min, m.iou_mean, m.shape_flagged
    );
    for (source, s) in &m.by_source {
        let _ = writeln!(
            out,
            "| {split} | {source} | {} | {:.4} | {:.4} | {:.4} | {} |",
            s.images, s.dice_mean, s.dice_min, s.iou_mean, s.shape_flagged
        );
    }
}

/// The card of a lung segmenter.
#[must_use]
pub fn segmenter_card(architecture: &UNetConfig, side: u32, record: &SegmenterRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Model card: lung segmenter (`segmenter.safetensors`)\n"
    );
    let _ = writeln!(
        out,
        "U-Net, {} base channels, depth {}, batch norm, one input channel; input: the whole \
         radiograph resized to {side}x{side} and standardised (`preprocess::segmenter_input`). \
         Output: a lung probability per pixel, resized back to the original size (bilinear), \
         thresholded at 0.5, then the two largest regions kept and holes filled. Each mask is \
         judged by a lung-shape space fitted on the training patients' reference masks \
         (`shape.rs`): one unlike any lung pair raises `implausible-lungs`.\n",
        architecture.base, architecture.depth
    );
    training_section(&mut out, &record.training);
    let _ = writeln!(out, "## Measured\n");
    let _ = writeln!(
        out,
        "At each image's original resolution after post-processing; pixels the reference marks \"ignore\" (127) are left out.\n"
    );
    let _ = writeln!(
        out,
        "| split | source | images | Dice (mean) | Dice (min) | IoU (mean) | shape flagged |\n|---|---|---|---|---|---|---|"
    );
    segmenter_row(&mut out, "validation", &record.validation);
    segmenter_row(&mut out, "test", &record.test);
    let _ = writeln!(out, "\n## Data and limits\n\n{DATA_SOURCES}\n");
    let _ = writeln!(
        out,
        "The V7 masks include the lung behind the heart and come from COVID-19 patients; the \
         JSRT masks come from adults with and without a lung nodule, digitised film from Japan. \
         Radiographs from NIH and Hannover have no reference masks: accuracy there is not \
         measured, only checked by the classifier's lung-plausibility flag."
    );
    out
}

fn classifier_row(out: &mut String, split: &str, m: &ClassifierMetrics) {
    let auc = m
        .roc_auc
        .map_or_else(|| "n/a".to_owned(), |a| format!("{a:.4}"));
    let _ = writeln!(
        out,
        "| {split} | {} | {auc} | {:.4} | {:.4} | {:.4} |",
        m.images, m.accuracy, m.sensitivity, m.specificity
    );
}

/// A share as a percentage; `-` when there is none (no images of that kind).
fn pct(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(|| "-".to_owned(), |v| format!("{:.1}%", 100.0 * v))
}

fn auc(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |a| format!("{a:.3}"))
}

/// A source's flagged share, silent-wrong share (of its images of the two classes) and
/// within-source AUC of other labels against negatives, as three Markdown table cells.
#[must_use]
pub fn flag_cells(m: &SourceMetrics) -> String {
    let share = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
    format!(
        "{} | {} | {}",
        pct(share(m.flagged, m.images)),
        pct(share(m.silent_wrong, m.positives + m.negatives)),
        auc(m.others_vs_negatives_auc)
    )
}

fn source_row(out: &mut String, source: &str, m: &SourceMetrics) {
    let _ = writeln!(
        out,
        "| {source} | {} | {} / {} / {} | {} | {} | {} | {} | {} | {:.3} | {} |",
        m.images,
        m.positives,
        m.negatives,
        m.others,
        auc(m.roc_auc),
        pct(Some(m.accuracy)),
        pct(m.sensitivity),
        pct(m.specificity),
        pct(m.others_called_positive),
        m.mean_positive_probability,
        flag_cells(m)
    );
}

/// Per-source test metrics, the held-out source and the leave-one-source-out table.
fn source_sections(out: &mut String, record: &ClassifierRecord) {
    let pos = &record.classes[0];
    let header = format!(
        "| source | images | {pos} / {} / other | ROC-AUC | accuracy | sensitivity | \
         specificity | other called {pos} | mean P({pos}) | flagged | silent-wrong | AUC other \
         vs {neg} |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
        record.classes[1],
        neg = record.classes[1]
    );
    if !record.test_by_source.is_empty() {
        let _ = writeln!(
            out,
            "\n### Per source (test patients, threshold {:.4})\n\nEvery source holds one \
             class only, so a pooled AUC mostly measures how well the model tells the sources \
             apart; read each source's sensitivity or specificity. \"Flagged\": images with any \
             trust flag; \"silent-wrong\": images of the two classes called wrong without a \
             flag; \"other\": labels of neither class ({others}); \"AUC other vs {neg}\": \
             within a source that has both, the other-label images (NIH pneumonia) ranked \
             against its {neg} ones by 1 - P({neg}).\n\n{header}",
            record.test.threshold,
            neg = record.classes[1],
            others = if record.classes.len() > 2 {
                format!(
                    "{}, learnt as a class of its own, and any unlearnt label",
                    record.classes[2..].join(", ")
                )
            } else {
                "unlearnt, only reported".to_owned()
            },
        );
        for (source, m) in &record.test_by_source {
            source_row(out, source, m);
        }
        let _ = writeln!(
            out,
            "| **pooled** | {} | | {} | {} | {} | {} | | | | | |",
            record.test.images,
            auc(record.test.roc_auc),
            pct(Some(record.test.accuracy)),
            pct(Some(record.test.sensitivity)),
            pct(Some(record.test.specificity))
        );
        if let Some((source, accuracy)) = worst_source(&record.test_by_source) {
            let _ = writeln!(
                out,
                "\nWorst source: **{source}**, accuracy {}.",
                pct(Some(accuracy))
            );
        }
    }
    if let Some(h) = &record.held_out {
        let _ = writeln!(
            out,
            "\n### Held out of training: {} (every image, threshold {:.4})\n\n{header}",
            h.source, h.threshold
        );
        source_row(out, &h.source, &h.metrics);
        let _ = writeln!(
            out,
            "\nROC-AUC of these images against the test images of the other class: {}.",
            auc(h.auc_against_other_class)
        );
    }
    leave_one_source_out_section(out, record);
}

/// The leave-one-source-out table, with each fold's flags.
fn leave_one_source_out_section(out: &mut String, record: &ClassifierRecord) {
    if record.leave_one_source_out.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### Leave one source out\n\nFor each source, a model trained (same recipe and \
         seed) without any of its images, measured on all of them at its own validation \
         threshold, and flagged by its own trust model (fitted without the source). \"AUC vs \
         other class\" ranks them against that model's test images of the class the source \
         lacks; the last column is the share of the other sources' test images that model \
         flags.\n\n{}",
        held_out_table(&record.classes, &record.leave_one_source_out)
    );
}

/// Leave-one-source-out measures as a Markdown table (the model card's, and `cxr eval
/// --leave-one-source-out`'s), and the worst held-out source.
#[must_use]
pub fn held_out_table(classes: &[String], folds: &[HeldOutSource]) -> String {
    let (pos, neg) = (&classes[0], &classes[1]);
    let mut out = format!(
        "| held-out source | images | {pos} / {neg} / other | threshold | accuracy | \
         sensitivity | specificity | other called {pos} | mean P({pos}) | AUC vs other class \
         | flagged | silent-wrong | AUC other vs {neg} | seen sources' test images flagged |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for h in folds {
        let m = &h.metrics;
        let seen: Vec<String> = h
            .seen
            .iter()
            .map(|(source, s)| {
                let share = (s.images > 0).then(|| s.flagged as f64 / s.images as f64);
                format!("{source} {} of {}", pct(share), s.images)
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} / {} | {:.3} | {} | {} | {} | {} | {:.3} | {} | {} | {} |",
            h.source,
            m.images,
            m.positives,
            m.negatives,
            m.others,
            h.threshold,
            pct(Some(m.accuracy)),
            pct(m.sensitivity),
            pct(m.specificity),
            pct(m.others_called_positive),
            m.mean_positive_probability,
            auc(h.auc_against_other_class),
            flag_cells(m),
            if seen.is_empty() {
                "-".to_owned()
            } else {
                seen.join(", ")
            }
        );
    }
    if let Some(worst) = folds
        .iter()
        .filter(|h| h.metrics.positives + h.metrics.negatives > 0)
        .min_by(|a, b| a.metrics.accuracy.total_cmp(&b.metrics.accuracy))
    {
        let _ = write!(
            out,
            "\nWorst held-out source: **{}**, accuracy {}.",
            worst.source,
            pct(Some(worst.metrics.accuracy))
        );
    }
    out
}

/// The card of a classifier.
#[must_use]
pub fn classifier_card(architecture: &ResNetConfig, record: &ClassifierRecord) -> String {
    let mut out = String::new();
    let (pos, neg) = (&record.classes[0], &record.classes[1]);
    let more: String = record.classes[2..]
        .iter()
        .flat_map(|c| [", `", c, "`"])
        .collect();
    let _ = writeln!(out, "# Model card: classifier (`classifier.safetensors`)\n");
    let _ = writeln!(
        out,
        "ResNet with basic blocks {:?} and widths {:?} (ResNet-18's layout and torchvision's \
         parameter names; `python/cxr_models.py` loads the same file in PyTorch), {} input \
         channel, classes `{pos}` (positive), `{neg}`{more}; the label is `{pos}` at or above \
         the threshold on P({pos}), else `{neg}`, and 1 - P({neg}) ranks disease of any kind. \
         Input: the radiograph cropped to the \
         lungs found by the segmenter, 224x224, {} (`preprocess::classifier_input`). Every \
         prediction carries a familiarity score and flags (`trust.rs`): `unfamiliar` beyond the \
         validation images' 99th percentile of feature distance, `implausible-lungs` outside \
         the training lung-share and shape range, and `not-a-chest-radiograph` (refused).\n",
        architecture.blocks,
        architecture.widths,
        architecture.in_channels,
        record
            .defences
            .as_ref()
            .map_or(InputStyle::Masked, |d| d.input)
            .describe()
    );
    training_section(&mut out, &record.training);
    if let Some(d) = &record.defences {
        let _ = writeln!(out, "- Shortcut defences: {}\n", d.describe());
    }
    let _ = writeln!(out, "## Measured\n");
    let _ = writeln!(
        out,
        "Decision threshold on P({pos}): {:.4}, chosen on the validation patients (Youden's J).\n",
        record.test.threshold
    );
    let _ = writeln!(
        out,
        "| split | images | ROC-AUC | accuracy | sensitivity | specificity |\n|---|---|---|---|---|---|"
    );
    classifier_row(&mut out, "validation", &record.validation);
    classifier_row(&mut out, "test", &record.test);
    // With a third class, the decision is the positive class against the rest.
    let neg = if record.classes.len() > 2 {
        let _ = writeln!(
            out,
            "\n{pos} against every other class ({}), by P({pos}).",
            record.classes[1..].join(", ")
        );
        format!("not {pos}")
    } else {
        neg.clone()
    };
    let c = &record.test.confusion;
    let _ = writeln!(
        out,
        "\nConfusion matrix, test patients (rows: truth, columns: prediction):\n"
    );
    let _ = writeln!(
        out,
        "| | predicted {pos} | predicted {neg} |\n|---|---|---|"
    );
    let _ = writeln!(
        out,
        "| {pos} | {} | {} |",
        c.true_positive, c.false_negative
    );
    let _ = writeln!(
        out,
        "| {neg} | {} | {} |",
        c.false_positive, c.true_negative
    );
    source_sections(&mut out, record);
    let _ = writeln!(out, "\n## Data and limits\n\n{DATA_SOURCES}\n");
    let _ = writeln!(
        out,
        "**Known source bias.** The two classes come from different sources: COVID-19 images \
         mostly from one hospital in Hannover (AP-heavy, ICU patients, burned-in text markers), \
         normals from NIH ChestX-ray14. A classifier can learn the source instead of the disease \
         (DeGrave et al., Nature Machine Intelligence 2021), so these figures overstate how well \
         it detects COVID-19 on radiographs from any other hospital. Lung masking removes the \
         markers and borders from the input, but exposure, positioning and scanner differences \
         inside the lungs remain; check explanations (share of evidence inside the lungs) before \
         trusting a prediction. This model is a research tool, not a medical device."
    );
    out
}

/// A model card (`classifier.md`) in one line for the viewer's panel: the test patients'
/// measures from the first table of "## Measured", and the card's stated limit ("known source
/// bias", "not a medical device"). `None` when the card has no test row.
#[must_use]
pub fn headline(card: &str) -> Option<String> {
    let measured = &card[card.find("## Measured")?..];
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect()
    };
    let mut lines = measured.lines().filter(|l| l.trim_start().starts_with('|'));
    let header = cells(lines.next()?);
    let test = lines
        .map(cells)
        .find(|row| row.first().is_some_and(|c| c == "test"))?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .and_then(|i| test.get(i))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let mut parts = Vec::new();
    if let Some(auc) = column("ROC-AUC") {
        parts.push(format!("test AUC {auc:.3}"));
    }
    if let Some(accuracy) = column("accuracy") {
        parts.push(format!("accuracy {accuracy:.3}"));
    }
    if let Some(images) = column("images") {
        parts.push(format!("{images} images"));
    }
    if parts.is_empty() {
        return None;
    }
    let mut line = parts.join(", ");
    if card.contains("Known source bias") {
        line.push_str("; known source bias");
    }
    if card.contains("not a medical device") {
        line.push_str("; research tool, not a medical device");
    }
    Some(line)
}

#[cfg(test)]
mod headline_tests {
    use super::headline;

    #[test]
    fn the_shipped_card_in_one_line() {
        let card = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/classifier.md"),
        )
        .expect("the shipped model card");
        let line = headline(&card).expect("a test row");
        assert!(line.starts_with("test AUC 0."), "{line}");
        assert!(
            line.contains("accuracy 0.") && line.contains("images"),
            "{line}"
        );
        assert!(line.contains("known source bias"), "{line}");
    }

    #[test]
    fn a_card_without_measures_has_no_headline() {
        assert_eq!(headline("# Model card\n\nno table"), None);
        let card = "## Measured\n\n| split | images | ROC-AUC | accuracy |\n|---|---|---|---|\n\
                    | validation | 10 | 0.5 | 0.5 |\n| test | 12 | 0.91234 | 0.875 |\n";
        assert_eq!(
            headline(card).as_deref(),
            Some("test AUC 0.912, accuracy 0.875, 12 images")
        );
    }
}
