//! Training the classifier on labelled manifests (`path,label,patient,source`), on lung crops
//! made by the shipped segmenter through the shared preprocessing, with defences against
//! learning the source instead of the disease ([`Defences`]), and measured per source.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use rand::Rng;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor, nn, nn::OptimizerConfig};

use super::{EpochReport, SplitSizes, TrainOnlyRecord, TrainOptions, TrainingRecord};
use super::{batches, gather, warp};
use crate::data::{LabelledImage, Manifest, Split, SplitShares};
use crate::evaluation::{
    ClassifierMetrics, HeldOutSource, Scored, SourceMetrics, by_source, held_out_of,
};
use crate::metrics::{roc_auc, youden_threshold};
use crate::models::resnet::ResNetConfig;
use crate::models::{Classifier, ResNetClassifier, Segmenter};
use crate::preprocess::{CLASSIFIER_SIDE, InputStyle, classifier_input};
use crate::trust::{Flag, LungShape, TrustData, TrustModel};
use crate::xray::Xray;
use crate::{CoreError, Result};

const AUGMENTATION: &str = "random rotation +-10 deg, scale +-10%, shift +-10%; \
contrast and brightness +-10% (on the preprocessed input); the shortcut defences below add more";

/// The shortcut defences a classifier is trained with; each is a switch of `cxr train
/// classifier`, recorded in the model's JSON and card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Positive class first, then the negative class; rows with other labels (`lung nodule`)
    /// are never trained on, only reported.
    pub classes: [String; 2],
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

/// Every image, segmented and preprocessed once; folds and epochs index into it.
struct Prepared {
    /// What the classifier sees, `[N, 1, 224, 224]`.
    inputs: Tensor,
    /// The crop before masking, and the binary lung mask, for augmentation.
    unmasked: Tensor,
    masks: Tensor,
    shapes: Vec<LungShape>,
    /// Each image's whole-image layout ([`crate::trust::layout`]), `[N * 64]`, and detail.
    layouts: Vec<f32>,
    details: Vec<f32>,
    /// Each image's acquisition measures, `[N * acquisition::DIM]`.
    acquisitions: Vec<f32>,
    /// Each image's appearance, and why the segmenter's lung-shape model judged its mask
    /// implausible, if it did (for the flags the held-out tables count).
    appearances: Vec<crate::trust::Appearance>,
    implausible: Vec<Option<String>>,
    /// Hash of each image's decoded pixels (a copy re-encoded has the same hash).
    hashes: Vec<String>,
}

impl Prepared {
    fn of(rows: &[LabelledImage], segmenter: &dyn Segmenter, style: InputStyle) -> Result<Self> {
        let side = i64::from(CLASSIFIER_SIDE);
        let n = (side * side) as usize;
        let (mut inputs, mut unmasked, mut masks) = (
            Vec::with_capacity(rows.len() * n),
            Vec::with_capacity(rows.len() * n),
            Vec::with_capacity(rows.len() * n),
        );
        let (mut shapes, mut hashes) = (Vec::new(), Vec::new());
        let (mut layouts, mut details, mut acquisitions) = (Vec::new(), Vec::new(), Vec::new());
        let (mut appearances, mut implausible) = (Vec::new(), Vec::new());
        for row in rows {
            let xray = Xray::open(&row.path)?;
            let mask = segmenter.segment(&xray.gray)?;
            shapes.push(LungShape::of(&mask));
            appearances.push(crate::trust::Appearance::of(&xray));
            implausible.push(segmenter.shape().and_then(|s| s.judge(&mask)));
            layouts.extend(crate::trust::layout(&xray.gray));
            details.push(crate::trust::detail(&xray.gray));
            acquisitions.extend(crate::trust::acquisition::measures(&xray.gray));
            let input = classifier_input(&xray.gray, &mask, style);
            inputs.extend(input.pixels);
            unmasked.extend(input.unmasked);
            masks.extend(input.mask);
            let mut hasher = Sha256::new();
            hasher.update(xray.width().to_le_bytes());
            hasher.update(xray.height().to_le_bytes());
            for v in xray.gray.as_raw() {
                hasher.update(v.to_le_bytes());
            }
            hashes.push(format!("{:x}", hasher.finalize()));
        }
        let shape = [rows.len() as i64, 1, side, side];
        Ok(Self {
            inputs: Tensor::from_slice(&inputs).view(shape),
            unmasked: Tensor::from_slice(&unmasked).view(shape),
            masks: Tensor::from_slice(&masks).view(shape),
            shapes,
            layouts,
            details,
            acquisitions,
            appearances,
            implausible,
            hashes,
        })
    }
}

/// The rows of a training run and what each is for.
struct Dataset {
    rows: Vec<LabelledImage>,
    prepared: Prepared,
    /// The positive and the negative class (the plan's).
    classes: [String; 2],
    /// 0 positive, 1 negative, 2 any other label (never trained on).
    class: Vec<i64>,
    /// Index of each row's source in `sources`.
    source: Vec<usize>,
    sources: Vec<String>,
    /// Split side; `None` for a row left out (a queue image identical to a manifest image).
    side: Vec<Option<Split>>,
    from_manifest: usize,
    train_only: Option<TrainOnlyRecord>,
}

impl Dataset {
    fn assemble(
        options: &TrainOptions,
        plan: &ClassifierPlan,
        extra: &TrainOnly,
        segmenter: &dyn Segmenter,
    ) -> Result<Self> {
        let mut rows = Manifest::read_all(&options.manifests)?.labels;
        let list = options.manifest_list();
        for class in &plan.classes {
            if !rows.iter().any(|r| &r.label == class) {
                return Err(CoreError::data(
                    &list,
                    format!("no image labelled {class:?} (classes: {:?})", plan.classes),
                ));
            }
        }
        let from_manifest = rows.len();
        let is_class = |r: &LabelledImage| plan.classes.contains(&r.label);
        rows.extend(extra.rows.iter().filter(|r| is_class(r)).cloned());
        let prepared = Prepared::of(&rows, segmenter, plan.defences.input)?;
        // A queue image that is also a manifest image (the same pixels, whatever the file)
        // would leak into training if the manifest holds it for validation or test: such rows
        // are left out entirely.
        let known: HashSet<&str> = prepared.hashes[..from_manifest]
            .iter()
            .map(String::as_str)
            .collect();
        let duplicate: Vec<bool> = prepared.hashes[from_manifest..]
            .iter()
            .map(|h| known.contains(h.as_str()))
            .collect();
        let side = (0..rows.len())
            .map(|i| {
                if i < from_manifest {
                    Some(Split::of(
                        &rows[i].patient,
                        options.seed,
                        SplitShares::CLASSIFIER,
                    ))
                } else {
                    (!duplicate[i - from_manifest]).then_some(Split::Train)
                }
            })
            .collect();
        let mut sources: Vec<String> = rows.iter().map(|r| r.source.clone()).collect();
        sources.sort();
        sources.dedup();
        let train_only = (!extra.rows.is_empty())
            .then(|| train_only_record(extra, &rows[from_manifest..], &duplicate));
        Ok(Self {
            class: rows
                .iter()
                .map(|r| {
                    plan.classes
                        .iter()
                        .position(|c| c == &r.label)
                        .map_or(2, |i| i as i64)
                })
                .collect(),
            source: rows
                .iter()
                .map(|r| sources.iter().position(|s| s == &r.source).unwrap_or(0))
                .collect(),
            sources,
            side,
            from_manifest,
            train_only,
            classes: plan.classes.clone(),
            rows,
            prepared,
        })
    }

    /// Train, validation and test rows of the two classes, leaving `held_out` out entirely.
    fn split(&self, held_out: Option<&str>, list: &std::path::Path) -> Result<[Vec<usize>; 3]> {
        super::split_indices(
            (0..self.rows.len()).map(|i| {
                let excluded = self.class[i] == 2 || held_out == Some(self.rows[i].source.as_str());
                if excluded { None } else { self.side[i] }
            }),
            list,
        )
    }

    fn split_sizes(&self, ix: &[Vec<usize>; 3]) -> SplitSizes {
        let sides = [Split::Train, Split::Validation, Split::Test];
        SplitSizes::count(
            ix.iter()
                .zip(sides)
                .flat_map(|(ix, side)| ix.iter().map(move |&i| (side, i)))
                .map(|(side, i)| (side, self.rows[i].patient.as_str())),
        )
    }

    fn positive(&self, ix: &[usize]) -> Vec<bool> {
        ix.iter().map(|&i| self.class[i] == 0).collect()
    }
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
    Ok(features_and_scores(model, inputs, ix)?.1)
}

/// Pooled features `[len(ix) * C]` (row-major) and positive-class probabilities of rows `ix`.
fn features_and_scores(
    model: &ResNetClassifier,
    inputs: &Tensor,
    ix: &[usize],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (mut features, mut out) = (Vec::new(), Vec::with_capacity(ix.len()));
    for chunk in ix.chunks(64) {
        let (f, logits) = tch::no_grad(|| {
            let f = model
                .network()
                .features(&gather(inputs, chunk, model.device()), false);
            let logits = model.network().head(&f);
            (f.mean_dim([2i64, 3].as_slice(), false, Kind::Float), logits)
        });
        let p = logits
            .softmax(-1, Kind::Float)
            .select(1, 0)
            .to_device(tch::Device::Cpu);
        out.extend(Vec::<f32>::try_from(p)?);
        features.extend(Vec::<f32>::try_from(
            f.to_device(tch::Device::Cpu).view([-1]),
        )?);
    }
    Ok((features, out))
}

/// `x` in the forward pass, `-weight` times the gradient in the backward pass.
fn reverse_gradient(x: &Tensor, weight: f64) -> Tensor {
    x * (-weight) + (x * (1.0 + weight)).detach()
}

/// Binary masks dilated (`r` > 0) or eroded (`r` < 0) by `|r|` pixels.
fn morph(masks: &Tensor, r: i64) -> Tensor {
    let k = 2 * r.abs() + 1;
    let pool = |m: &Tensor| m.max_pool2d([k, k], [1, 1], [r.abs(), r.abs()], [1, 1], false);
    match r.signum() {
        1 => pool(masks),
        -1 => 1.0 - pool(&(1.0 - masks)),
        _ => masks.shallow_clone(),
    }
}

/// The tensor twin of [`crate::preprocess::feather`], for augmented masks.
fn feather_t(masks: &Tensor) -> Tensor {
    let k = crate::preprocess::FEATHER as i64;
    masks
        .avg_pool2d([1, k], [1, 1], [0, k / 2], false, false, None)
        .avg_pool2d([k, 1], [1, 1], [k / 2, 0], false, false, None)
}

/// The input of one training batch: augmented as `defences` say, then warped; also returns
/// the warped lung mask (for the lung-focus penalty).
fn training_batch(
    data: &Prepared,
    batch: &[usize],
    defences: &Defences,
    rng: &mut StdRng,
    device: tch::Device,
) -> Result<(Tensor, Tensor)> {
    let mut masks = gather(&data.masks, batch, device);
    let mut unmasked = gather(&data.unmasked, batch, device);
    if defences.style_augmentation {
        masks = morph(&masks, rng.random_range(-3..=3));
        let side = i64::from(CLASSIFIER_SIDE);
        let small = (side as f64 * rng.random_range(0.4..=1.0)).round() as i64;
        if small < side {
            unmasked = unmasked
                .upsample_bilinear2d([small, small], false, None, None)
                .upsample_bilinear2d([side, side], false, None, None);
        }
        let sigma = rng.random_range(0.0..=0.2);
        unmasked = &unmasked + unmasked.randn_like() * sigma;
    }
    let weights = match defences.input {
        InputStyle::Masked => masks.shallow_clone(),
        InputStyle::EqualisedFeathered => feather_t(&masks),
    };
    let theta = super::random_affines(batch.len(), rng, 10.0, 0.10, 0.10);
    let x = warp(&(unmasked * weights), &theta, false)?;
    let x = super::jitter_intensity(&x, rng, 0.10);
    Ok((x, warp(&masks, &theta, true)?))
}

/// Share of each image's positive class-activation map (true class) outside the lungs.
fn outside_share(features: &Tensor, fc: &Tensor, y: &Tensor, lungs: &Tensor) -> Tensor {
    let (h, w) = (features.size()[2], features.size()[3]);
    let weights = fc.index_select(0, y).unsqueeze(-1).unsqueeze(-1); // [N, C, 1, 1]
    let cam = (features * weights)
        .sum_dim_intlist(1, false, Kind::Float)
        .relu(); // [N, h, w]
    let inside = lungs.adaptive_avg_pool2d([h, w]).squeeze_dim(1);
    let total = cam.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float) + 1e-6;
    let outside: Tensor = 1.0 - inside;
    let out = (&cam * outside).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
    (out / total).mean(Kind::Float)
}

/// The order of one epoch's training rows: shuffled, or with sources balanced within each
/// class (drawn with replacement, as many as there are rows).
fn epoch_order(data: &Dataset, train: &[usize], balance: bool, rng: &mut StdRng) -> Vec<usize> {
    if !balance {
        return train.to_vec();
    }
    let mut groups: BTreeMap<(i64, usize), usize> = BTreeMap::new();
    let mut per_class: BTreeMap<i64, usize> = BTreeMap::new();
    for &i in train {
        *groups.entry((data.class[i], data.source[i])).or_default() += 1;
        *per_class.entry(data.class[i]).or_default() += 1;
    }
    // Every row of a class-source group weighs 1 / (group size x sources in the class), so
    // each class keeps its share and each of its sources an equal part of it.
    let sources_in = |class: i64| groups.keys().filter(|(c, _)| *c == class).count() as f64;
    let weights: Vec<f64> = train
        .iter()
        .map(|&i| {
            let (c, s) = (data.class[i], data.source[i]);
            per_class[&c] as f64 / (groups[&(c, s)] as f64 * sources_in(c))
        })
        .collect();
    let Ok(dist) = rand::distr::weighted::WeightedIndex::new(&weights) else {
        return train.to_vec();
    };
    (0..train.len()).map(|_| train[dist.sample(rng)]).collect()
}

/// A small head that predicts an image's source from the classifier's pooled features and the
/// true class; its gradient reaches the features reversed, so they lose what tells the sources
/// of one class apart (conditioning on the class leaves the class information alone).
struct SourceAdversary {
    _vs: nn::VarStore,
    net: nn::Sequential,
    optimizer: nn::Optimizer,
}

impl SourceAdversary {
    fn new(width: i64, sources: usize, options: &TrainOptions) -> Result<Self> {
        let vs = nn::VarStore::new(options.device);
        let linear = nn::LinearConfig::default();
        let net = nn::seq()
            .add(nn::linear(vs.root() / "a1", width + 2, 64, linear))
            .add_fn(Tensor::relu)
            .add(nn::linear(vs.root() / "a2", 64, sources as i64, linear));
        let optimizer = nn::Adam::default().build(&vs, options.learning_rate)?;
        Ok(Self {
            _vs: vs,
            net,
            optimizer,
        })
    }

    /// The source loss of one batch (its gradients zeroed first, so that the caller's backward
    /// pass fills them for [`nn::Optimizer::step`]).
    fn loss(&mut self, features: &Tensor, y: &Tensor, sources: &Tensor, weight: f64) -> Tensor {
        let pooled = features.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let onehot = y.one_hot(2).to_kind(Kind::Float);
        let input = Tensor::cat(&[reverse_gradient(&pooled, weight), onehot], 1);
        self.optimizer.zero_grad();
        input.apply(&self.net).cross_entropy_for_logits(sources)
    }
}

/// One trained model and what it measured.
struct Fit {
    model: ResNetClassifier,
    best_epoch: usize,
    validation: ClassifierMetrics,
}

/// Trains one model on rows `train`, selecting the epoch by ROC-AUC on `val` (ties to the
/// more confident model) and choosing the threshold there (Youden's J).
fn fit(
    data: &Dataset,
    [train, val]: [&[usize]; 2],
    options: &TrainOptions,
    defences: &Defences,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<Fit> {
    let mut rng = super::seeded(options.seed);
    let classes = data.classes.to_vec();
    let config = ResNetConfig::resnet18_quarter();
    let mut model = ResNetClassifier::new(config.clone(), classes.clone(), options.device);
    let mut best = ResNetClassifier::new(config, classes, options.device);
    model.meta.input = defences.input;
    best.meta.input = defences.input;
    super::initialise(model.var_store_mut(), options)?;
    let mut optimizer = nn::AdamW::default().build(model.var_store(), options.learning_rate)?;
    optimizer.set_weight_decay(1e-4);
    let width = *model.meta.architecture.widths.last().unwrap_or(&128);
    let mut adversary = SourceAdversary::new(width, data.sources.len(), options)?;
    let labels = Tensor::from_slice(&data.class);
    let source_ix = Tensor::from_slice(&data.source.iter().map(|&s| s as i64).collect::<Vec<_>>());
    let val_positive = data.positive(val);
    let (mut best_score, mut best_epoch) = ((f64::NEG_INFINITY, f64::NEG_INFINITY), 0);
    for epoch in 1..=options.epochs {
        let epoch_start = Instant::now();
        let lr = super::cosine_lr(options.learning_rate, epoch - 1, options.epochs);
        optimizer.set_lr(lr);
        adversary.optimizer.set_lr(lr);
        let mut total = 0.0;
        let order = epoch_order(data, train, defences.balance_sources, &mut rng);
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
            total += super::scalar(&loss);
        }
        let val_scores = scores(&model, &data.prepared.inputs, val)?;
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
    let val_scores = scores(&best, &data.prepared.inputs, val)?;
    let threshold = youden_threshold(&val_scores, &val_positive);
    best.meta.threshold = threshold;
    Ok(Fit {
        model: best,
        best_epoch,
        validation: ClassifierMetrics::measure(&val_scores, &val_positive, threshold),
    })
}

impl Dataset {
    /// Per-source metrics of `model` on rows `ix`.
    fn table(
        &self,
        model: &ResNetClassifier,
        ix: &[usize],
    ) -> Result<BTreeMap<String, SourceMetrics>> {
        self.measure(model, ix, |scored| {
            by_source(scored, &model.meta.classes, model.meta.threshold)
        })
    }

    /// `measure` of `model`'s scores and flags on rows `ix`.
    fn measure<T>(
        &self,
        model: &ResNetClassifier,
        ix: &[usize],
        measure: impl FnOnce(&[Scored<'_>]) -> T,
    ) -> Result<T> {
        let (features, s) = features_and_scores(model, &self.prepared.inputs, ix)?;
        let flags = self.flags(model, ix, &features);
        let scored: Vec<Scored<'_>> = ix
            .iter()
            .zip(&s)
            .zip(&flags)
            .map(|((&i, &score), flags)| Scored {
                source: &self.rows[i].source,
                label: &self.rows[i].label,
                score,
                flags,
            })
            .collect();
        Ok(measure(&scored))
    }

    /// The flags `model`'s trust model and the segmenter's shape model raise on rows `ix`
    /// (`features`: their pooled features, row-major), as the pipeline raises them.
    fn flags(&self, model: &ResNetClassifier, ix: &[usize], features: &[f32]) -> Vec<Vec<Flag>> {
        let Some(trust) = &model.meta.trust else {
            return vec![Vec::new(); ix.len()];
        };
        let side = (crate::trust::LAYOUT_SIDE * crate::trust::LAYOUT_SIDE) as usize;
        let dim = features.len() / ix.len().max(1);
        ix.iter()
            .zip(features.chunks(dim.max(1)))
            .map(|(&i, f)| {
                let p = &self.prepared;
                let checks = crate::trust::ImageChecks {
                    appearance: p.appearances[i],
                    layout: p.layouts[i * side..(i + 1) * side].to_vec(),
                    detail: p.details[i],
                    acquisition: acquisition_of(p, i).to_vec(),
                };
                let mut assessment = trust.assess(f, &checks, p.shapes[i]);
                assessment.shape_verdict(p.implausible[i].clone());
                assessment.flags
            })
            .collect()
    }

    /// `model` (trained without `source`) on every image of `source`, and those images ranked
    /// against the test images of the class the source lacks.
    fn held_out(
        &self,
        model: &ResNetClassifier,
        source: &str,
        test: &[usize],
    ) -> Result<HeldOutSource> {
        let ix: Vec<usize> = (0..self.from_manifest)
            .filter(|&i| self.rows[i].source == source)
            .chain(
                test.iter()
                    .copied()
                    .filter(|&i| self.rows[i].source != source),
            )
            .collect();
        self.measure(model, &ix, |scored| {
            held_out_of(source, scored, &model.meta.classes, model.meta.threshold)
        })
    }
}

/// The familiarity model of `model`, from the training rows' features, layouts and lung shapes
/// and the validation rows' features and layouts.
fn fit_trust(
    model: &ResNetClassifier,
    data: &Dataset,
    train_ix: &[usize],
    val_ix: &[usize],
) -> Result<TrustModel> {
    let (train_features, _) = features_and_scores(model, &data.prepared.inputs, train_ix)?;
    let (val_features, _) = features_and_scores(model, &data.prepared.inputs, val_ix)?;
    let side = (crate::trust::LAYOUT_SIDE * crate::trust::LAYOUT_SIDE) as usize;
    let layouts = |ix: &[usize]| -> Vec<f32> {
        ix.iter()
            .flat_map(|&i| {
                data.prepared.layouts[i * side..(i + 1) * side]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let shapes: Vec<LungShape> = train_ix.iter().map(|&i| data.prepared.shapes[i]).collect();
    let acquisitions = |ix: &[usize]| -> Vec<f32> {
        ix.iter()
            .flat_map(|&i| acquisition_of(&data.prepared, i).iter().copied())
            .collect()
    };
    let sources = |ix: &[usize]| -> Vec<&str> {
        ix.iter()
            .map(|&i| data.sources[data.source[i]].as_str())
            .collect()
    };
    TrustModel::fit(&TrustData {
        train_features: &train_features,
        validation_features: &val_features,
        dim: *model.meta.architecture.widths.last().unwrap_or(&128) as usize,
        train_layouts: &layouts(train_ix),
        validation_layouts: &layouts(val_ix),
        shapes: &shapes,
        details: &train_ix
            .iter()
            .map(|&i| data.prepared.details[i])
            .collect::<Vec<_>>(),
        train_acquisitions: &acquisitions(train_ix),
        validation_acquisitions: &acquisitions(val_ix),
        train_sources: &sources(train_ix),
        validation_sources: &sources(val_ix),
    })
}

/// Image `i`'s acquisition measures.
fn acquisition_of(prepared: &Prepared, i: usize) -> &[f32] {
    let dim = crate::trust::acquisition::DIM;
    &prepared.acquisitions[i * dim..(i + 1) * dim]
}

/// Fits `model`'s familiarity model again on the manifests' training and validation patients
/// and `extra` (training split: reviewed queue items, their own source), as training does at
/// its end: for a model trained before the model existed, after its checks changed, or to make
/// a site's own radiographs familiar (`cxr train trust [--include-queue]`). The weights are
/// not touched.
pub fn refit_trust(
    options: &TrainOptions,
    model: &mut ResNetClassifier,
    extra: &TrainOnly,
    segmenter: &dyn Segmenter,
) -> Result<()> {
    let [positive, negative] = [&model.meta.classes[0], &model.meta.classes[1]];
    let plan = ClassifierPlan {
        classes: [positive.clone(), negative.clone()],
        defences: Defences {
            input: model.meta.input,
            ..Defences::none()
        },
        hold_out: None,
        leave_one_source_out: false,
    };
    let data = Dataset::assemble(options, &plan, extra, segmenter)?;
    let [train_ix, val_ix, _] = data.split(None, &options.manifest_list())?;
    model.meta.trust = Some(fit_trust(model, &data, &train_ix, &val_ix)?);
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
    let data = Dataset::assemble(options, plan, extra, segmenter)?;
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
