//! Training the classifier on a labelled manifest (`path,label,patient`), on lung-masked inputs
//! made by the shipped segmenter through the shared preprocessing.

use std::collections::HashSet;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor, nn, nn::OptimizerConfig};

use super::{
    EpochReport, SplitSizes, TrainOnlyRecord, TrainOptions, TrainingRecord, batches, gather, warp,
};
use crate::data::{LabelledImage, Manifest, Split, SplitShares};
use crate::metrics::{Confusion, roc_auc, youden_threshold};
use crate::models::resnet::ResNetConfig;
use crate::models::{Classifier, ResNetClassifier, Segmenter};
use crate::preprocess::{CLASSIFIER_SIDE, classifier_input};
use crate::xray::{Xray, hex};
use crate::{CoreError, Result};

const AUGMENTATION: &str = "random rotation +-10 deg, scale +-10%, shift +-5%; \
contrast and brightness +-10% (on the preprocessed, lung-masked input)";

/// Held-out measurements of a classifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierMetrics {
    pub images: usize,
    pub roc_auc: Option<f64>,
    pub threshold: f32,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub confusion: Confusion,
}

impl ClassifierMetrics {
    /// Metrics of positive-class probabilities `scores` against `positive` at `threshold`.
    #[must_use]
    pub fn measure(scores: &[f32], positive: &[bool], threshold: f32) -> Self {
        let confusion = Confusion::at(scores, positive, threshold);
        Self {
            images: scores.len(),
            roc_auc: roc_auc(scores, positive),
            threshold,
            accuracy: confusion.accuracy(),
            sensitivity: confusion.sensitivity(),
            specificity: confusion.specificity(),
            confusion,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierRecord {
    pub training: TrainingRecord,
    pub classes: Vec<String>,
    pub validation: ClassifierMetrics,
    pub test: ClassifierMetrics,
}

/// The class names of a manifest, `positive` first; exactly two are required.
pub fn classes_of(
    rows: &[LabelledImage],
    positive: &str,
    manifest: &std::path::Path,
) -> Result<Vec<String>> {
    let mut names: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    names.sort();
    names.dedup();
    if names.len() != 2 || !names.iter().any(|n| n == positive) {
        return Err(CoreError::data(
            manifest,
            format!("expected exactly two labels including {positive:?}, found {names:?}"),
        ));
    }
    names.sort_by_key(|n| n != positive);
    Ok(names)
}

/// Images trained on in addition to the manifest's, never validated or tested on: reviewed
/// queue items ([`crate::queue::Queue::training_rows`]). Each row's patient id should be its
/// own (`queue-<id>`); whatever it hashes to, the row goes to the training split, so adding
/// them never moves a manifest patient and never puts one of them in the test split.
#[derive(Debug, Clone, Default)]
pub struct TrainOnly {
    /// Where the rows come from, for the model card.
    pub source: String,
    pub rows: Vec<LabelledImage>,
}

/// Segments and preprocesses every image exactly as prediction does, as `[N, 1, 224, 224]`.
pub fn prepare(rows: &[LabelledImage], segmenter: &dyn Segmenter) -> Result<Tensor> {
    prepare_hashed(rows, segmenter).map(|(inputs, _)| inputs)
}

/// [`prepare`], with a hash of each image's decoded pixels (so that a copy re-encoded or with
/// other metadata has the same hash as its original).
fn prepare_hashed(
    rows: &[LabelledImage],
    segmenter: &dyn Segmenter,
) -> Result<(Tensor, Vec<String>)> {
    let side = i64::from(CLASSIFIER_SIDE);
    let mut flat = Vec::with_capacity(rows.len() * (side * side) as usize);
    let mut hashes = Vec::with_capacity(rows.len());
    for row in rows {
        let xray = Xray::open(&row.path)?;
        let mask = segmenter.segment(&xray.gray)?;
        flat.extend(classifier_input(&xray.gray, &mask).pixels);
        let mut hasher = Sha256::new();
        hasher.update(xray.width().to_le_bytes());
        hasher.update(xray.height().to_le_bytes());
        for v in xray.gray.as_raw() {
            hasher.update(v.to_le_bytes());
        }
        hashes.push(hex(&hasher.finalize()));
    }
    let inputs = Tensor::from_slice(&flat).view([rows.len() as i64, 1, side, side]);
    Ok((inputs, hashes))
}

/// The training data, split: the manifest's rows by patient, the extra rows in training.
struct Prepared {
    classes: Vec<String>,
    inputs: Tensor,
    /// 0 for the positive class, 1 for the other.
    labels: Vec<i64>,
    train_ix: Vec<usize>,
    val_ix: Vec<usize>,
    test_ix: Vec<usize>,
    split: SplitSizes,
    train_only: Option<TrainOnlyRecord>,
}

fn assemble(
    options: &TrainOptions,
    extra: &TrainOnly,
    segmenter: &dyn Segmenter,
    positive: &str,
) -> Result<Prepared> {
    let Manifest::Labels(mut rows) = Manifest::read(&options.manifest)? else {
        return Err(CoreError::data(
            &options.manifest,
            "expected a labelled manifest (path,label,patient)",
        ));
    };
    let classes = classes_of(&rows, positive, &options.manifest)?;
    let from_manifest = rows.len();
    rows.extend(
        extra
            .rows
            .iter()
            .filter(|r| classes.contains(&r.label))
            .cloned(),
    );
    let (inputs, hashes) = prepare_hashed(&rows, segmenter)?;
    // An extra image that is also a manifest image (the same pixels, whatever the file) would
    // leak into training if the manifest holds it for validation or test: such rows are left
    // out entirely.
    let known: HashSet<&str> = hashes[..from_manifest].iter().map(String::as_str).collect();
    let duplicate: Vec<bool> = hashes[from_manifest..]
        .iter()
        .map(|h| known.contains(h.as_str()))
        .collect();
    let used = |i: usize| i < from_manifest || !duplicate[i - from_manifest];
    let side_of = |i: usize| {
        if i < from_manifest {
            Split::of(&rows[i].patient, options.seed, SplitShares::CLASSIFIER)
        } else {
            Split::Train
        }
    };
    let sides = (0..rows.len()).map(|i| used(i).then(|| side_of(i)));
    let [train_ix, val_ix, test_ix] = super::split_indices(sides, &options.manifest)?;
    Ok(Prepared {
        labels: rows
            .iter()
            .map(|r| i64::from(r.label != classes[0]))
            .collect(),
        split: SplitSizes::count(
            (0..rows.len())
                .filter(|&i| used(i))
                .map(|i| (side_of(i), rows[i].patient.as_str())),
        ),
        train_only: (!extra.rows.is_empty())
            .then(|| train_only_record(extra, &rows[from_manifest..], &duplicate)),
        classes,
        inputs,
        train_ix,
        val_ix,
        test_ix,
    })
}

/// What the card says about the extra rows: `added` were trained on unless `duplicate`.
fn train_only_record(
    extra: &TrainOnly,
    added: &[LabelledImage],
    duplicate: &[bool],
) -> TrainOnlyRecord {
    let mut record = TrainOnlyRecord {
        source: extra.source.clone(),
        other_labels: extra.rows.len() - added.len(),
        ..TrainOnlyRecord::default()
    };
    for (row, &dup) in added.iter().zip(duplicate) {
        if dup {
            record.in_manifest += 1;
        } else {
            *record.classes.entry(row.label.clone()).or_default() += 1;
        }
    }
    record
}

/// Positive-class probabilities of rows `ix`.
fn scores(model: &ResNetClassifier, inputs: &Tensor, ix: &[usize]) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(ix.len());
    for chunk in ix.chunks(64) {
        let logits = tch::no_grad(|| model.logits(&gather(inputs, chunk, model.device())))?;
        let p = logits
            .softmax(-1, Kind::Float)
            .select(1, 0)
            .to_device(tch::Device::Cpu);
        out.extend(Vec::<f32>::try_from(p)?);
    }
    Ok(out)
}

/// Trains the classifier on the manifest's rows plus `extra` (training split only); the model
/// kept is the best on the validation patients (ROC-AUC), its threshold maximises Youden's J
/// there, and the record holds the test patients' metrics.
pub fn train(
    options: &TrainOptions,
    extra: &TrainOnly,
    segmenter: &dyn Segmenter,
    positive: &str,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<(ResNetClassifier, ClassifierRecord)> {
    let started = Instant::now();
    let Prepared {
        classes,
        inputs,
        labels,
        train_ix,
        val_ix,
        test_ix,
        split,
        train_only,
    } = assemble(options, extra, segmenter, positive)?;
    let positive_of = |ix: &[usize]| -> Vec<bool> { ix.iter().map(|&i| labels[i] == 0).collect() };
    let mut rng = super::seeded(options.seed);
    let targets = Tensor::from_slice(&labels);

    let config = ResNetConfig::resnet18_quarter();
    let model = ResNetClassifier::new(config.clone(), classes.clone(), options.device);
    let mut best = ResNetClassifier::new(config, classes.clone(), options.device);
    let mut optimizer = nn::AdamW::default().build(model.var_store(), options.learning_rate)?;
    optimizer.set_weight_decay(1e-4);
    let (mut best_score, mut best_epoch) = ((f64::NEG_INFINITY, f64::NEG_INFINITY), 0);
    let val_positive = positive_of(&val_ix);
    for epoch in 1..=options.epochs {
        let epoch_start = Instant::now();
        optimizer.set_lr(super::cosine_lr(
            options.learning_rate,
            epoch - 1,
            options.epochs,
        ));
        let mut total = 0.0;
        let batch_list = batches(&train_ix, options.batch_size, &mut rng);
        for batch in &batch_list {
            let theta = super::random_affines(batch.len(), &mut rng, 10.0, 0.10, 0.10);
            let x = warp(&gather(&inputs, batch, options.device), &theta, false)?;
            let x = super::jitter_intensity(&x, &mut rng, 0.10);
            let y = gather(&targets, batch, options.device);
            let l = model.forward_t(&x, true).cross_entropy_for_logits(&y);
            optimizer.backward_step(&l);
            total += super::scalar(&l);
        }
        let val_scores = scores(&model, &inputs, &val_ix)?;
        let auc = roc_auc(&val_scores, &val_positive).unwrap_or(0.5);
        // Ties in AUC (frequent when validation is easy) go to the more confident model.
        let margin = val_scores
            .iter()
            .zip(&val_positive)
            .map(|(&s, &p)| f64::from(if p { s } else { 1.0 - s }).max(1e-6).ln())
            .sum::<f64>()
            / val_scores.len().max(1) as f64;
        let improved = (auc, margin) > best_score;
        if improved {
            best_score = (auc, margin);
            best_epoch = epoch;
            best.var_store_mut().copy(model.var_store())?;
        }
        progress(&EpochReport {
            epoch,
            epochs: options.epochs,
            train_loss: total / batch_list.len().max(1) as f64,
            validation: auc,
            best: improved,
            seconds: epoch_start.elapsed().as_secs_f64(),
        });
    }
    let val_scores = scores(&best, &inputs, &val_ix)?;
    let threshold = youden_threshold(&val_scores, &val_positive);
    best.meta.threshold = threshold;
    let validation = ClassifierMetrics::measure(&val_scores, &val_positive, threshold);
    let test = ClassifierMetrics::measure(
        &scores(&best, &inputs, &test_ix)?,
        &positive_of(&test_ix),
        threshold,
    );
    let mut training = super::record(options, split, best_epoch, AUGMENTATION, started);
    training.train_only = train_only;
    let record = ClassifierRecord {
        training,
        classes,
        validation,
        test,
    };
    best.meta.record =
        serde_json::to_value(&record).map_err(|e| CoreError::Invalid(e.to_string()))?;
    Ok((best, record))
}
