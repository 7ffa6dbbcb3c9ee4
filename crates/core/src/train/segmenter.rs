//! Training the U-Net on a lung-mask manifest (`image,mask,patient`; mask 255 lung, 0
//! background, anything else ignored).

use std::collections::BTreeMap;
use std::time::Instant;

use image::imageops::{self, FilterType};
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor, nn, nn::OptimizerConfig};

use super::{EpochReport, SplitSizes, TrainOptions, TrainingRecord, batches, gather, warp};
use crate::data::{Manifest, MaskedImage, Split, SplitShares};
use crate::metrics::Overlap;
use crate::models::unet::UNetConfig;
use crate::models::{Segmenter, UNetSegmenter};
use crate::preprocess::{SEGMENTER_SIDE, segmenter_input};
use crate::xray::Xray;
use crate::{CoreError, Result};

const AUGMENTATION: &str = "random rotation +-10 deg, scale +-12%, shift +-6%; \
contrast and brightness +-15% (same warp applied to image and mask)";

/// Held-out measurements of a segmenter, at the images' original resolution after clean-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmenterMetrics {
    pub images: usize,
    /// Mean over images of the per-image Dice coefficient.
    pub dice_mean: f64,
    pub dice_min: f64,
    pub iou_mean: f64,
    /// The same measures for each source's images (see [`crate::data::source_key`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_source: BTreeMap<String, SegmenterMetrics>,
}

impl SegmenterMetrics {
    /// Means over per-image `(dice, iou)` scores.
    fn of(scores: &[(f64, f64)]) -> Self {
        let n = scores.len().max(1) as f64;
        Self {
            images: scores.len(),
            dice_mean: scores.iter().map(|s| s.0).sum::<f64>() / n,
            dice_min: scores.iter().map(|s| s.0).fold(f64::INFINITY, f64::min),
            iou_mean: scores.iter().map(|s| s.1).sum::<f64>() / n,
            by_source: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmenterRecord {
    pub training: TrainingRecord,
    pub validation: SegmenterMetrics,
    pub test: SegmenterMetrics,
}

/// One decoded training pair at the segmenter's resolution.
struct Pair {
    row: MaskedImage,
    input: Vec<f32>,
    /// 1 lung, 0 background.
    target: Vec<f32>,
    /// 1 where the reference is defined, 0 where it says "ignore".
    weight: Vec<f32>,
}

fn load_pair(row: &MaskedImage) -> Result<Pair> {
    let xray = Xray::open(&row.image)?;
    let mask = Xray::open(&row.mask)?.original.to_luma8();
    if mask.dimensions() != xray.gray.dimensions() {
        return Err(CoreError::data(&row.mask, "mask and image differ in size"));
    }
    let small = imageops::resize(&mask, SEGMENTER_SIDE, SEGMENTER_SIDE, FilterType::Nearest);
    Ok(Pair {
        row: row.clone(),
        input: segmenter_input(&xray.gray),
        target: small
            .as_raw()
            .iter()
            .map(|&v| f32::from(v == 255))
            .collect(),
        weight: small
            .as_raw()
            .iter()
            .map(|&v| f32::from(v == 255 || v == 0))
            .collect(),
    })
}

fn stack(pairs: &[Pair], field: impl Fn(&Pair) -> &[f32]) -> Tensor {
    let side = i64::from(SEGMENTER_SIDE);
    let flat: Vec<f32> = pairs
        .iter()
        .flat_map(|p| field(p).iter().copied())
        .collect();
    Tensor::from_slice(&flat).view([pairs.len() as i64, 1, side, side])
}

/// Weighted binary cross-entropy plus soft Dice, both ignoring weight-0 pixels.
fn loss(logits: &Tensor, target: &Tensor, weight: &Tensor) -> Tensor {
    let bce = logits.binary_cross_entropy_with_logits::<Tensor>(
        target,
        Some(weight.shallow_clone()),
        None,
        Reduction::Sum,
    ) / weight.sum(Kind::Float).clamp_min(1.0);
    let p = logits.sigmoid() * weight;
    let dice = (2.0 * (&p * target).sum(Kind::Float) + 1.0)
        / (p.sum(Kind::Float) + (target * weight).sum(Kind::Float) + 1.0);
    bce + (1.0 - dice)
}

/// Trains a U-Net; returns the best model on the validation patients and its record, with
/// Dice and `IoU` measured on the test patients.
pub fn train(
    options: &TrainOptions,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<(UNetSegmenter, SegmenterRecord)> {
    let started = Instant::now();
    let rows = Manifest::read_all(&options.manifests)?.masks;
    if rows.is_empty() {
        return Err(CoreError::data(
            options.manifest_list(),
            "expected a lung-mask manifest (image,mask,patient)",
        ));
    }
    let mut rng = super::seeded(options.seed);
    let pairs: Vec<Pair> = rows.iter().map(load_pair).collect::<Result<_>>()?;
    let side_of = |p: &Pair| Split::of(&p.row.patient, options.seed, SplitShares::SEGMENTER);
    let split = SplitSizes::count(pairs.iter().map(|p| (side_of(p), p.row.patient.as_str())));
    let sides = pairs.iter().map(|p| Some(side_of(p)));
    let [train_ix, val_ix, test_ix] = super::split_indices(sides, &options.manifest_list())?;
    let (inputs, targets, weights) = (
        stack(&pairs, |p| &p.input),
        stack(&pairs, |p| &p.target),
        stack(&pairs, |p| &p.weight),
    );

    let mut model = UNetSegmenter::new(UNetConfig::small(), options.device);
    super::initialise(model.var_store_mut(), options)?;
    let mut best = UNetSegmenter::new(UNetConfig::small(), options.device);
    let mut optimizer = nn::AdamW::default().build(model.var_store(), options.learning_rate)?;
    let (mut best_score, mut best_epoch) = (f64::NEG_INFINITY, 0);
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
            let theta = super::random_affines(batch.len(), &mut rng, 10.0, 0.12, 0.12);
            let x = warp(&gather(&inputs, batch, options.device), &theta, false)?;
            let x = super::jitter_intensity(&x, &mut rng, 0.15);
            let y = warp(&gather(&targets, batch, options.device), &theta, true)?;
            let w = warp(&gather(&weights, batch, options.device), &theta, true)?;
            let l = loss(&model.forward_t(&x, true), &y, &w);
            optimizer.backward_step(&l);
            total += super::scalar(&l);
        }
        let score = low_resolution_dice(&model, &inputs, &targets, &weights, &val_ix)?;
        let improved = score > best_score;
        if improved {
            best_score = score;
            best_epoch = epoch;
            best.var_store_mut().copy(model.var_store())?;
        }
        progress(&EpochReport {
            epoch,
            epochs: options.epochs,
            train_loss: total / batch_list.len().max(1) as f64,
            validation: score,
            best: improved,
            seconds: epoch_start.elapsed().as_secs_f64(),
        });
    }
    let validation = evaluate(&best, val_ix.iter().map(|&i| &pairs[i].row))?;
    let test = evaluate(&best, test_ix.iter().map(|&i| &pairs[i].row))?;
    let training = super::record(options, split, best_epoch, AUGMENTATION, started);
    let record = SegmenterRecord {
        training,
        validation,
        test,
    };
    best.meta.record =
        serde_json::to_value(&record).map_err(|e| CoreError::Invalid(e.to_string()))?;
    Ok((best, record))
}

/// Dice at 256x256 over the given rows, for model selection during training.
fn low_resolution_dice(
    model: &UNetSegmenter,
    inputs: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    rows: &[usize],
) -> Result<f64> {
    let device = model.var_store().device();
    let mut overlap = Overlap::default();
    for chunk in rows.chunks(8) {
        let logits = tch::no_grad(|| model.forward_t(&gather(inputs, chunk, device), false));
        let predicted = logits
            .gt(0.0)
            .to_kind(Kind::Uint8)
            .to_device(tch::Device::Cpu)
            * 255;
        let ignored: Tensor = 1 - gather(weights, chunk, tch::Device::Cpu);
        let reference: Tensor = gather(targets, chunk, tch::Device::Cpu) * 255 + ignored * 127;
        let predicted = Vec::<u8>::try_from(predicted.view([-1]))?;
        let reference = Vec::<u8>::try_from(reference.to_kind(Kind::Uint8).view([-1]))?;
        let o = Overlap::of(&predicted, &reference);
        overlap.intersection += o.intersection;
        overlap.predicted += o.predicted;
        overlap.reference += o.reference;
    }
    Ok(overlap.dice())
}

/// Dice and `IoU` at each image's original resolution, through the full `segment` path. Every
/// row is reported to `on_row` with its error, if any; failed rows are left out of the means.
pub fn evaluate_each<'a>(
    model: &dyn Segmenter,
    rows: impl Iterator<Item = &'a MaskedImage>,
    on_row: &mut dyn FnMut(&MaskedImage, Option<&CoreError>),
) -> SegmenterMetrics {
    let mut scores: Vec<(String, (f64, f64))> = Vec::new();
    for row in rows {
        let measured = (|| -> Result<(f64, f64)> {
            let xray = Xray::open(&row.image)?;
            let reference = Xray::open(&row.mask)?.original.to_luma8();
            let predicted = model.segment(&xray.gray)?;
            let o = Overlap::of(predicted.as_raw(), reference.as_raw());
            Ok((o.dice(), o.iou()))
        })();
        on_row(row, measured.as_ref().err());
        scores.extend(measured.ok().map(|s| (row.source.clone(), s)));
    }
    let mut metrics = SegmenterMetrics::of(&scores.iter().map(|s| s.1).collect::<Vec<_>>());
    let mut sources: Vec<&str> = scores.iter().map(|s| s.0.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    for source in sources {
        let own: Vec<(f64, f64)> = scores
            .iter()
            .filter(|s| s.0 == source)
            .map(|s| s.1)
            .collect();
        metrics
            .by_source
            .insert(source.to_owned(), SegmenterMetrics::of(&own));
    }
    metrics
}

/// Like [`evaluate_each`], but the first failing row is an error.
pub fn evaluate<'a>(
    model: &dyn Segmenter,
    rows: impl Iterator<Item = &'a MaskedImage>,
) -> Result<SegmenterMetrics> {
    let mut first_error = None;
    let metrics = evaluate_each(model, rows, &mut |_, error| {
        if let (Some(e), None) = (error, &first_error) {
            first_error = Some(e.to_string());
        }
    });
    first_error.map_or(Ok(metrics), |e| Err(CoreError::Invalid(e)))
}
