//! Fitting one model: the epochs, the optimiser and its schedule, the loss with its penalties,
//! and keeping the epoch that is best on the validation rows.

use std::time::Instant;

use tch::{Tensor, nn, nn::OptimizerConfig};

use super::Defences;
use super::augment::training_batch;
use super::dataset::{Dataset, epoch_order};
use super::measure::{Outputs, outputs, scores};
use super::penalties::{SourceAdversary, outside_share};
use crate::Result;
use crate::evaluation::ClassifierMetrics;
use crate::metrics::{roc_auc, youden_threshold};
use crate::models::ResNetClassifier;
use crate::models::resnet::ResNetConfig;
use crate::train::{EpochReport, TrainOptions, batches, gather};

/// One trained model and what it measured.
pub(super) struct Fit {
    pub(super) model: ResNetClassifier,
    pub(super) best_epoch: usize,
    pub(super) validation: ClassifierMetrics,
}

/// Trains one model on rows `train`, selecting the epoch by ROC-AUC on `val` (each class's
/// against the rest, averaged; ties to the more confident model) and choosing the positive
/// class's threshold there (Youden's J).
pub(super) fn fit(
    data: &Dataset,
    [train, val]: [&[usize]; 2],
    options: &TrainOptions,
    defences: &Defences,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<Fit> {
    let mut rng = crate::train::seeded(options.run_seed());
    let classes = data.classes.clone();
    let config = ResNetConfig {
        num_classes: classes.len() as i64,
        ..ResNetConfig::resnet18_quarter()
    };
    let mut model = ResNetClassifier::new(config.clone(), classes.clone(), options.device);
    let mut best = ResNetClassifier::new(config, classes, options.device);
    model.meta.input = defences.input;
    best.meta.input = defences.input;
    crate::train::initialise(model.var_store_mut(), options)?;
    let mut optimizer = nn::AdamW::default().build(model.var_store(), options.learning_rate)?;
    optimizer.set_weight_decay(1e-4);
    let width = *model.meta.architecture.widths.last().unwrap_or(&128);
    let mut adversary =
        SourceAdversary::new(width, data.classes.len(), data.sources.len(), options)?;
    let labels = Tensor::from_slice(&data.class);
    let source_ix = Tensor::from_slice(&data.source.iter().map(|&s| s as i64).collect::<Vec<_>>());
    let val_positive = data.positive(val);
    let val_class: Vec<i64> = val.iter().map(|&i| data.class[i]).collect();
    let (mut best_score, mut best_epoch) = ((f64::NEG_INFINITY, f64::NEG_INFINITY), 0);
    for epoch in 1..=options.epochs {
        let epoch_start = Instant::now();
        let lr = crate::train::cosine_lr(options.learning_rate, epoch - 1, options.epochs);
        optimizer.set_lr(lr);
        adversary.optimizer.set_lr(lr);
        let mut total = 0.0;
        let order = epoch_order(data, train, defences, &mut rng);
        let batch_list = batches(&order, options.batch_size, &mut rng);
        for batch in &batch_list {
            let (x, lungs) =
                training_batch(&data.prepared, batch, defences, &mut rng, options.device)?;
            let y = gather(&labels, batch, options.device);
            let features = model.network().features(&x, true);
            let logits = model.network().head(&features);
            let mut loss = logits.cross_entropy_for_logits(&y);
            if defences.lung_focus > 0.0 {
                let fc = model.network().fc_weight();
                loss += outside_share(&features, fc, &y, &lungs) * defences.lung_focus;
            }
            if defences.adversarial > 0.0 {
                let s = gather(&source_ix, batch, options.device);
                loss += adversary.loss(&features, &y, &s, defences.adversarial);
            }
            optimizer.backward_step(&loss);
            if defences.adversarial > 0.0 {
                adversary.optimizer.step();
            }
            total += crate::train::scalar(&loss);
        }
        let val_out = outputs(&model, &data.prepared.inputs, val)?;
        let auc = one_against_rest(&val_out, &val_class, data.classes.len());
        // Ties in AUC (frequent when validation is easy) go to the more confident model.
        let margin = val_out
            .rows()
            .zip(&val_class)
            .map(|(p, &k)| f64::from(p[k as usize]).max(1e-6).ln())
            .sum::<f64>()
            / val_class.len().max(1) as f64;
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
    let val_scores = scores(&best, &data.prepared.inputs, val)?;
    let threshold = youden_threshold(&val_scores, &val_positive);
    best.meta.threshold = threshold;
    Ok(Fit {
        model: best,
        best_epoch,
        validation: ClassifierMetrics::measure(&val_scores, &val_positive, threshold),
    })
}

/// Mean over the classes present in `truth` (with rows of other classes beside them) of the
/// ROC-AUC of the class's probability against the rest: for two classes, the positive class's
/// AUC; with a third, the score must also tell it apart (NIH pneumonia from NIH no finding).
fn one_against_rest(out: &Outputs, truth: &[i64], classes: usize) -> f64 {
    let aucs: Vec<f64> = (0..classes)
        .filter_map(|k| {
            let is_k: Vec<bool> = truth.iter().map(|&t| t == k as i64).collect();
            roc_auc(&out.class(k), &is_k)
        })
        .collect();
    if aucs.is_empty() {
        0.5
    } else {
        aucs.iter().sum::<f64>() / aucs.len() as f64
    }
}
