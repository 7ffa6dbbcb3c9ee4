//! Model cards: Markdown written by `cxr train` beside each model, from the numbers that run
//! measured, so a card can never disagree with its model.

use std::fmt::Write;

use crate::models::resnet::ResNetConfig;
use crate::models::unet::UNetConfig;
use crate::train::TrainingRecord;
use crate::train::classifier::{ClassifierMetrics, ClassifierRecord};
use crate::train::segmenter::{SegmenterMetrics, SegmenterRecord};

const DATA_SOURCES: &str = "\
Data is read in place from the project's shared data folder (see its README); nothing is copied.
- COVID-19: Hannover Medical School COVID-19 image repository (CC BY 3.0) and the ieee8023
  COVID-19 image data collection (per-image CC BY 4.0 or \"authorized for everyone\").
- No finding: NIH Clinical Center ChestX-ray14 (unrestricted use, attribution requested).
- Lung masks: V7 Labs COVID-19 X-ray annotations (CC BY 4.0), on ieee8023 images.";

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
        "| {split} | {} | {:.4} | {:.4} | {:.4} |",
        m.images, m.dice_mean, m.dice_min, m.iou_mean
    );
}

/// The card of a lung segmenter.
#[must_use]
pub fn segmenter_card(architecture: &UNetConfig, record: &SegmenterRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Model card: lung segmenter (`segmenter.safetensors`)\n"
    );
    let _ = writeln!(
        out,
        "U-Net, {} base channels, depth {}, batch norm, one input channel; input: the whole \
         radiograph resized to 256x256 and standardised (`preprocess::segmenter_input`). Output: \
         a lung probability per pixel, resized back to the original size, thresholded at 0.5, \
         then the two largest regions kept and holes filled.\n",
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
        "| split | images | Dice (mean) | Dice (min) | IoU (mean) |\n|---|---|---|---|---|"
    );
    segmenter_row(&mut out, "validation", &record.validation);
    segmenter_row(&mut out, "test", &record.test);
    let _ = writeln!(out, "\n## Data and limits\n\n{DATA_SOURCES}\n");
    let _ = writeln!(
        out,
        "The reference masks include the lung behind the heart and come from COVID-19 patients \
         only: accuracy on normal radiographs is not measured here."
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

/// The card of a classifier.
#[must_use]
pub fn classifier_card(architecture: &ResNetConfig, record: &ClassifierRecord) -> String {
    let mut out = String::new();
    let (pos, neg) = (&record.classes[0], &record.classes[1]);
    let _ = writeln!(out, "# Model card: classifier (`classifier.safetensors`)\n");
    let _ = writeln!(
        out,
        "ResNet with basic blocks {:?} and widths {:?} (ResNet-18's layout and torchvision's \
         parameter names; `python/cxr_models.py` loads the same file in PyTorch), {} input \
         channel, classes `{pos}` (positive) and `{neg}`. Input: the radiograph cropped to the \
         lungs found by the segmenter, outside-lung pixels set to the lung mean, standardised, \
         224x224 (`preprocess::classifier_input`).\n",
        architecture.blocks, architecture.widths, architecture.in_channels
    );
    training_section(&mut out, &record.training);
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
