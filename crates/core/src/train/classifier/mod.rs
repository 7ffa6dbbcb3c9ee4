//! Training the classifier on labelled manifests (`path,label,patient,source`), on lung crops
//! made by the shipped segmenter through the shared preprocessing, with defences against
//! learning the source instead of the disease ([`Defences`]), and measured per source.
//!
//! This file holds the plan, the record and the entry points ([`train`], [`refit_trust`],
//! [`prepare`]); the rows are assembled in `dataset`, augmented in `augment`, the loss-side
//! defences are in `penalties`, one model is fitted in `fit`, and measured in `measure`.

mod augment;
mod dataset;
mod fit;
mod measure;
mod penalties;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use self::augment::AUGMENTATION;
use self::dataset::{Dataset, Prepared};
use self::fit::{Fit, fit};
use self::measure::{fit_trust, scores};
use super::{EpochReport, TrainOptions, TrainingRecord};
use crate::data::LabelledImage;
use crate::evaluation::{ClassifierMetrics, HeldOutSource, SourceMetrics};
use crate::models::{ResNetClassifier, Segmenter};
use crate::preprocess::InputStyle;
use crate::{CoreError, Result};

/// The shortcut defences a classifier is trained with; each is a switch of `cxr train
/// classifier`, recorded in the model's JSON and card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // independent switches, each recorded in the JSON
pub struct Defences {
    /// How the input is made (see [`InputStyle`]).
    pub input: InputStyle,
    /// Scanner-style augmentation: random blur by down- and up-sampling, noise, and a lung mask
    /// dilated or eroded by up to 3 pixels before it is applied.
    pub style_augmentation: bool,
    /// Each source of a class weighs the same in every epoch (sampling with replacement).
    pub balance_sources: bool,
    /// Weight of a domain-adversarial head that predicts the source from the pooled features
    /// and the true class, through gradient reversal: features are pushed to carry no
    /// within-class source information (0: off).
    pub adversarial: f64,
    /// Weight of a penalty on the share of the true class's class-activation map outside the
    /// lungs (right for the right reasons; 0: off).
    pub lung_focus: f64,
    /// Framing augmentation: zoom of +-30% (crops that cut the lungs at the border, or the
    /// lungs shrunk inside padding) and shifts of +-15%, against +-10% each without it, so that
    /// how tightly a radiograph is framed cannot stand for its class.
    #[serde(default)]
    pub framing: bool,
    /// Each view (AP, PA) of a class's source weighs the same in every epoch, so that the
    /// projection cannot stand for the class (rows without a view form a group of their own).
    #[serde(default)]
    pub balance_views: bool,
}

impl Default for Defences {
    /// What `cxr train classifier` uses unless told otherwise: every defence, as the shortcut
    /// study in the model card kept them (the lung focus moves Grad-CAM into the lungs, the
    /// adversary lowers the within-class source probe; held out, NIH specificity 36% -> 67%).
    fn default() -> Self {
        Self {
            input: InputStyle::EqualisedFeathered,
            style_augmentation: true,
            balance_sources: true,
            adversarial: 0.3,
            lung_focus: 1.0,
            framing: false,
            balance_views: false,
        }
    }
}

impl Defences {
    /// The first shipped models' recipe, for comparison.
    #[must_use]
    pub fn none() -> Self {
        Self {
            input: InputStyle::Masked,
            style_augmentation: false,
            balance_sources: false,
            adversarial: 0.0,
            lung_focus: 0.0,
            framing: false,
            balance_views: false,
        }
    }

    /// One line for model cards.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("input: {}", self.input.describe())];
        if self.style_augmentation {
            parts.push(
                "scanner-style augmentation (down/up-sampling to 40-100%, Gaussian noise up to \
                 0.2, lung mask dilated or eroded by up to 3 px)"
                    .into(),
            );
        }
        if self.balance_sources {
            parts.push("sources balanced within each class".into());
        }
        if self.balance_views {
            parts.push("views (AP, PA) balanced within each class's source".into());
        }
        if self.framing {
            parts.push("framing augmentation (zoom +-30%, shift +-15%)".into());
        }
        if self.adversarial > 0.0 {
            parts.push(format!(
                "domain-adversarial source head (gradient reversal, conditioned on the class), \
                 weight {}",
                self.adversarial
            ));
        }
        if self.lung_focus > 0.0 {
            parts.push(format!(
                "penalty on class-activation mass outside the lungs, weight {}",
                self.lung_focus
            ));
        }
        parts.join("; ")
    }
}

/// What a classifier is trained on and how.
#[derive(Debug, Clone)]
pub struct ClassifierPlan {
    /// Positive class first, then the negative class, then any further class trained on
    /// (`pneumonia`: disease from the negative class's own hospital); rows with other labels
    /// (`lung nodule`) are never trained on, only reported.
    pub classes: Vec<String>,
    pub defences: Defences,
    /// Leave this source out of training and validation entirely, and report on it.
    pub hold_out: Option<String>,
    /// Also train one model per source without it, and report each on its held-out source.
    pub leave_one_source_out: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierRecord {
    pub training: TrainingRecord,
    pub classes: Vec<String>,
    #[serde(default)]
    pub defences: Option<Defences>,
    pub validation: ClassifierMetrics,
    pub test: ClassifierMetrics,
    /// The test patients' metrics per source, at the model's threshold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub test_by_source: BTreeMap<String, SourceMetrics>,
    /// The source held out of this model's training (`--hold-out-source`), measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<HeldOutSource>,
    /// Leave-one-source-out: one model per source, trained without it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leave_one_source_out: Vec<HeldOutSource>,
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
pub fn prepare(
    rows: &[LabelledImage],
    segmenter: &dyn Segmenter,
    style: InputStyle,
) -> Result<Tensor> {
    Ok(Prepared::of(rows, segmenter, style)?.inputs)
}

/// Fits each model's familiarity model again on the manifests' training and validation
/// patients and `extra` (training split: reviewed queue items, their own source), as training
/// does at its end: for a model trained before the model existed, after its checks changed, or
/// to make a site's own radiographs familiar (`cxr train trust [--include-queue]`). With
/// `extra` rows, the decision threshold of each model not paired with a source is chosen again
/// (Youden's J) on the validation patients and those rows together, so that a site's reviewed
/// radiographs move it to where the site's images fall. A model paired with a source is a
/// leave-one-source-out model: fitted without that source, as it was trained. The images are
/// read and segmented once for all. The weights are not touched.
pub fn refit_trust(
    options: &TrainOptions,
    models: &mut [(&mut ResNetClassifier, Option<&str>)],
    extra: &TrainOnly,
    segmenter: &dyn Segmenter,
) -> Result<()> {
    let Some((first, _)) = models.first() else {
        return Ok(());
    };
    let (classes, input) = (first.meta.classes.clone(), first.meta.input);
    if let Some((other, _)) = models
        .iter()
        .find(|(m, _)| m.meta.classes != classes || m.meta.input != input)
    {
        return Err(CoreError::Invalid(format!(
            "the models to refit take different classes or inputs ({:?} {:?}, {:?} {:?})",
            classes, input, other.meta.classes, other.meta.input
        )));
    }
    let plan = ClassifierPlan {
        classes,
        defences: Defences {
            input,
            ..Defences::none()
        },
        hold_out: None,
        leave_one_source_out: false,
    };
    // The manifests a trust model is fitted on need the positive and the negative class, and
    // may lack a further one (pneumonia).
    let required = plan.classes.get(..2).unwrap_or(&plan.classes);
    let data = Dataset::assemble(options, &plan, required, extra, segmenter)?;
    let reviewed = data.extra_rows();
    for (model, held_out) in models.iter_mut() {
        let [train_ix, val_ix, _] = data.split(*held_out, &options.manifest_list())?;
        model.meta.trust = Some(fit_trust(model, &data, &train_ix, &val_ix)?);
        if held_out.is_none() && !reviewed.is_empty() {
            let mut ix = val_ix.clone();
            ix.extend(&reviewed);
            let scores = scores(model, &data.prepared.inputs, &ix)?;
            model.meta.threshold = crate::metrics::youden_threshold(&scores, &data.positive(&ix));
        }
    }
    Ok(())
}

/// What [`train`] makes: the model, its record, and the leave-one-source-out models.
pub struct Trained {
    pub model: ResNetClassifier,
    pub record: ClassifierRecord,
    pub folds: Vec<FoldModel>,
}

/// A model trained without one source's images (validation threshold and trust model fitted
/// without them too), its record `{"held_out": ...}` the source measured at training: what
/// `cxr eval --leave-one-source-out` measures again.
pub struct FoldModel {
    pub source: String,
    pub model: ResNetClassifier,
}

/// Trains the classifier as `plan` says on the manifests' rows plus `extra` (training split
/// only); the model kept is the best on the validation patients, and the record holds the test
/// patients' metrics, pooled and per source, the held-out source's and, when asked, a
/// leave-one-source-out table (one more model per source).
pub fn train(
    options: &TrainOptions,
    plan: &ClassifierPlan,
    extra: &TrainOnly,
    segmenter: &dyn Segmenter,
    progress: &mut dyn FnMut(&str, &EpochReport),
) -> Result<Trained> {
    let started = Instant::now();
    let list = options.manifest_list();
    let data = Dataset::assemble(options, plan, &plan.classes, extra, segmenter)?;
    let ix = data.split(plan.hold_out.as_deref(), &list)?;
    let [train_ix, val_ix, test_ix] = &ix;
    let Fit {
        mut model,
        best_epoch,
        validation,
    } = fit(
        &data,
        [train_ix, val_ix],
        options,
        &plan.defences,
        &mut |e| progress("", e),
    )?;
    let test = ClassifierMetrics::measure(
        &scores(&model, &data.prepared.inputs, test_ix)?,
        &data.positive(test_ix),
        model.meta.threshold,
    );
    model.meta.trust = Some(fit_trust(&model, &data, train_ix, val_ix)?);
    let test_by_source = data.table(&model, test_ix)?;
    let held_out = plan
        .hold_out
        .as_deref()
        .map(|s| data.held_out(&model, s, test_ix))
        .transpose()?;

    let (mut leave_one_source_out, mut folds) = (Vec::new(), Vec::new());
    if plan.leave_one_source_out {
        for source in data.sources.clone() {
            let fold = data.split(Some(&source), &list)?;
            let mut fitted = fit(
                &data,
                [&fold[0], &fold[1]],
                options,
                &plan.defences,
                &mut |e| {
                    progress(&source, e);
                },
            )?;
            // The fold's own trust model, fitted without the source: do its flags catch it?
            fitted.model.meta.trust = Some(fit_trust(&fitted.model, &data, &fold[0], &fold[1])?);
            let held_out = data.held_out(&fitted.model, &source, &fold[2])?;
            fitted.model.meta.record = serde_json::json!({ "held_out": &held_out });
            leave_one_source_out.push(held_out);
            folds.push(FoldModel {
                source,
                model: fitted.model,
            });
        }
    }
    let mut training = super::record(
        options,
        data.split_sizes(&ix),
        best_epoch,
        AUGMENTATION,
        started,
    );
    training.train_only.clone_from(&data.train_only);
    let record = ClassifierRecord {
        training,
        classes: model.meta.classes.clone(),
        defences: Some(plan.defences.clone()),
        validation,
        test,
        test_by_source,
        held_out,
        leave_one_source_out,
    };
    model.meta.record =
        serde_json::to_value(&record).map_err(|e| CoreError::internal("the training record", e))?;
    Ok(Trained {
        model,
        record,
        folds,
    })
}
