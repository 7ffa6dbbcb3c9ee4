//! Training the U-Net on a lung-mask manifest (`image,mask,patient`; mask 255 lung, 0
//! background, anything else ignored).

use std::collections::BTreeMap;
use std::time::Instant;

use image::imageops::{self, FilterType};
use rand::Rng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor, nn, nn::OptimizerConfig};

use super::{EpochReport, SplitSizes, TrainOptions, TrainingRecord, batches, gather, warp};
use crate::data::{Manifest, MaskedImage, Split, SplitShares};
use crate::metrics::Overlap;
use crate::models::unet::UNetConfig;
use crate::models::{Segmenter, UNetSegmenter};
use crate::preprocess::resize_triangle;
use crate::shape::ShapeModel;
use crate::xray::Xray;
use crate::{CoreError, Result};

const AUGMENTATION: &str = "random rotation +-10 deg, zoom 0.8-1.25 (zoomed out: padded with \
black), shift +-12% (framing: the lungs cut at the border or small in the frame); gamma 0.6-1.7, \
down/up-sampling to 35-100% (half the batches), Gaussian blur sigma 0-1.5 px (a third), Gaussian \
noise sigma 0-0.03; contrast and brightness +-15% after standardising (same warp applied to \
image and mask); sources balanced (each source's images repeated up to the largest's count), \
model chosen by the mean of the sources' validation Dice";

/// The shape of the network `cxr train segmenter` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterPlan {
    /// Channels of the U-Net's first stage.
    pub base: i64,
    /// Side of the square input.
    pub side: u32,
    /// 2x down-steps; the side must be divisible by 2^depth.
    pub depth: usize,
}

impl Default for SegmenterPlan {
    /// 8 base channels at 224 px: 1.16 GFLOP an image, 5.2 times fewer than the 16-channel,
    /// 256 px U-Net shipped before it (6.03).
    fn default() -> Self {
        Self {
            base: 8,
            side: crate::preprocess::SEGMENTER_SIDE,
            depth: 4,
        }
    }
}

impl SegmenterPlan {
    /// The network this plan makes, refused (before any data is read) when its channels or
    /// depth are out of range or the side is not a multiple of 2^depth.
    pub fn config(&self) -> Result<UNetConfig> {
        let config = UNetConfig {
            depth: self.depth,
            ..UNetConfig::with_base(self.base)
        };
        config.check().map_err(CoreError::Invalid)?;
        crate::preprocess::check_segmenter_side(self.side, config.down_sampling()).map_err(
            |reason| CoreError::Invalid(format!("a side of {} px: {reason}", self.side)),
        )?;
        Ok(config)
    }
}

/// Held-out measurements of a segmenter, at the images' original resolution after clean-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmenterMetrics {
    pub images: usize,
    /// Mean over images of the per-image Dice coefficient.
    pub dice_mean: f64,
    pub dice_min: f64,
    pub iou_mean: f64,
    /// Predicted masks the segmenter's lung-shape model judged implausible.
    #[serde(default)]
    pub shape_flagged: usize,
    /// The same measures for each source's images (see [`crate::data::source_key`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_source: BTreeMap<String, SegmenterMetrics>,
}

impl SegmenterMetrics {
    /// Means over per-image scores.
    fn of(scores: &[Score]) -> Self {
        let n = scores.len().max(1) as f64;
        Self {
            images: scores.len(),
            dice_mean: scores.iter().map(|s| s.dice).sum::<f64>() / n,
            dice_min: scores.iter().map(|s| s.dice).fold(f64::INFINITY, f64::min),
            iou_mean: scores.iter().map(|s| s.iou).sum::<f64>() / n,
            shape_flagged: scores.iter().filter(|s| s.implausible).count(),
            by_source: BTreeMap::new(),
        }
    }
}

/// One image's measures against its reference mask.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    pub dice: f64,
    pub iou: f64,
    /// The shape check called the predicted mask unlike a lung pair.
    pub implausible: bool,
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
    /// The radiograph resized, in [0, 1], not yet standardised (augmentation comes first).
    pixels: Vec<f32>,
    /// 1 lung, 0 background.
    target: Vec<f32>,
    /// 1 where the reference is defined, 0 where it says "ignore".
    weight: Vec<f32>,
}

fn load_pair(row: &MaskedImage, side: u32) -> Result<Pair> {
    let xray = Xray::open(&row.image)?;
    let mask = Xray::open(&row.mask)?.original.to_luma8();
    if mask.dimensions() != xray.gray.dimensions() {
        return Err(CoreError::data(&row.mask, "mask and image differ in size"));
    }
    let small = imageops::resize(&mask, side, side, FilterType::Nearest);
    Ok(Pair {
        row: row.clone(),
        pixels: resize_triangle(&xray.gray, side, side).into_raw(),
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

fn stack(pairs: &[Pair], side: u32, field: impl Fn(&Pair) -> &[f32]) -> Tensor {
    let side = i64::from(side);
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
    plan: SegmenterPlan,
    progress: &mut dyn FnMut(&EpochReport),
) -> Result<(UNetSegmenter, SegmenterRecord)> {
    let started = Instant::now();
    let config = plan.config()?;
    let rows = Manifest::read_all(&options.manifests)?.masks;
    if rows.is_empty() {
        return Err(CoreError::data(
            options.manifest_list(),
            "expected a lung-mask manifest (image,mask,patient)",
        ));
    }
    let mut rng = super::seeded(options.run_seed());
    let side = plan.side;
    let pairs: Vec<Pair> = rows
        .iter()
        .map(|row| load_pair(row, side))
        .collect::<Result<_>>()?;
    let side_of = |p: &Pair| Split::of(&p.row.patient, options.seed, SplitShares::SEGMENTER);
    let split = SplitSizes::count(pairs.iter().map(|p| (side_of(p), p.row.patient.as_str())));
    let sides = pairs.iter().map(|p| Some(side_of(p)));
    let [train_ix, val_ix, test_ix] = super::split_indices(sides, &options.manifest_list())?;
    let (pixels, targets, weights) = (
        stack(&pairs, side, |p| &p.pixels),
        stack(&pairs, side, |p| &p.target),
        stack(&pairs, side, |p| &p.weight),
    );
    let inputs = standardise(&pixels);

    // Each source weighs the same, in training (its images repeated up to the largest source's
    // count) and in model selection (the mean of the sources' validation Dice): the V7 masks
    // are a third of the JSRT ones in number and harder.
    let source_of = |i: &usize| pairs[*i].row.source.clone();
    let balanced = balance_sources(&train_ix, source_of);
    let val_by_source: Vec<Vec<usize>> = by_source(&val_ix, source_of).into_values().collect();
    let mut model = UNetSegmenter::new(config.clone(), side, options.device);
    super::initialise(model.var_store_mut(), options)?;
    let mut best = UNetSegmenter::new(config, side, options.device);
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
        let batch_list = batches(&balanced, options.batch_size, &mut rng);
        for batch in &batch_list {
            let theta = framing_affines(batch.len(), &mut rng);
            let x = warp(&gather(&pixels, batch, options.device), &theta, false)?;
            let x = standardise(&scanner_style(&x, &mut rng));
            let x = super::jitter_intensity(&x, &mut rng, 0.15);
            let y = warp(&gather(&targets, batch, options.device), &theta, true)?;
            // Padding is background the loss must see: warp what is ignored, not what counts.
            let ignored: Tensor = 1.0 - gather(&weights, batch, options.device);
            let w: Tensor = 1.0 - warp(&ignored, &theta, true)?;
            let l = loss(&model.forward_t(&x, true), &y, &w);
            optimizer.backward_step(&l);
            total += super::scalar(&l);
        }
        let score = per_source_dice(&model, &inputs, &targets, &weights, &val_by_source)?;
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
    best.meta.shape = Some(fit_shape(train_ix.iter().map(|&i| &pairs[i].row))?);
    let validation = evaluate(&best, val_ix.iter().map(|&i| &pairs[i].row))?;
    let test = evaluate(&best, test_ix.iter().map(|&i| &pairs[i].row))?;
    let training = super::record(options, split, best_epoch, AUGMENTATION, started);
    let record = SegmenterRecord {
        training,
        validation,
        test,
    };
    best.meta.record =
        serde_json::to_value(&record).map_err(|e| CoreError::internal("the training record", e))?;
    Ok((best, record))
}

/// Random affine warps that frame the chest as other hospitals do: rotation +-10 deg, zoom
/// 0.8-1.25 drawn evenly in log scale (out: the image shrinks inside black padding; in: the
/// lungs are cut at the border), shift +-12%.
fn framing_affines(n: usize, rng: &mut StdRng) -> Tensor {
    let mut theta = Vec::with_capacity(n * 6);
    for _ in 0..n {
        let a = rng.random_range(-10.0f32..=10.0).to_radians();
        // The grid's scale: above 1 samples a wider field, so the chest looks smaller.
        let s = rng.random_range(0.8f32.ln()..=1.25f32.ln()).exp();
        let (tx, ty) = (
            rng.random_range(-0.12..=0.12),
            rng.random_range(-0.12..=0.12),
        );
        theta.extend_from_slice(&[s * a.cos(), -s * a.sin(), tx, s * a.sin(), s * a.cos(), ty]);
    }
    Tensor::from_slice(&theta).view([n as i64, 2, 3])
}

/// What other detectors and films do to a radiograph, on `[N, 1, S, S]` pixels in [0, 1]:
/// gamma (exposure curve), down/up-sampling (resolution), Gaussian blur (focal spot, film),
/// Gaussian noise (quantum noise). Each image draws its own gamma and noise; the batch shares
/// its resampling and blur.
fn scanner_style(pixels: &Tensor, rng: &mut StdRng) -> Tensor {
    let (n, side) = (pixels.size()[0], pixels.size()[3]);
    let device = pixels.device();
    let per_image = |rng: &mut StdRng, draw: &dyn Fn(&mut StdRng) -> f32| {
        let values: Vec<f32> = (0..n).map(|_| draw(rng)).collect();
        Tensor::from_slice(&values)
            .view([n, 1, 1, 1])
            .to_device(device)
    };
    let gamma = per_image(rng, &|r| r.random_range(0.6f32.ln()..=1.7f32.ln()).exp());
    let mut x = pixels.clamp(1e-4, 1.0).pow(&gamma);
    if rng.random_bool(0.5) {
        let small = (side as f64 * rng.random_range(0.35..=1.0)).round() as i64;
        x = x
            .upsample_bilinear2d([small, small], false, None, None)
            .upsample_bilinear2d([side, side], false, None, None);
    }
    if rng.random_bool(1.0 / 3.0) {
        x = gaussian_blur(&x, rng.random_range(0.3..=1.5));
    }
    let sigma = per_image(rng, &|r| r.random_range(0.0..=0.03));
    &x + x.randn_like() * sigma
}

/// A separable Gaussian blur of `[N, 1, H, W]` images, edges replicated.
fn gaussian_blur(x: &Tensor, sigma: f64) -> Tensor {
    let radius = (3.0 * sigma).ceil() as i64;
    let taps: Vec<f32> = (-radius..=radius)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let total: f32 = taps.iter().sum();
    let taps: Vec<f32> = taps.iter().map(|t| t / total).collect();
    let k = taps.len() as i64;
    let kernel = Tensor::from_slice(&taps).to_device(x.device());
    let padded = x.replication_pad2d([radius, radius, radius, radius]);
    padded
        .conv2d(
            &kernel.view([1, 1, 1, k]),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )
        .conv2d(
            &kernel.view([1, 1, k, 1]),
            None::<Tensor>,
            [1, 1],
            [0, 0],
            [1, 1],
            1,
        )
}

/// Each `[N, 1, S, S]` image standardised to zero mean and unit variance, as
/// [`crate::preprocess::segmenter_input`] does.
fn standardise(x: &Tensor) -> Tensor {
    let dims = [1i64, 2, 3];
    let mean = x.mean_dim(dims.as_slice(), true, Kind::Float);
    let std = x.std_dim(dims.as_slice(), false, true).clamp_min(1e-3);
    (x - mean) / std
}

/// `indices` grouped by source.
fn by_source(indices: &[usize], source: impl Fn(&usize) -> String) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for i in indices {
        groups.entry(source(i)).or_default().push(*i);
    }
    groups
}

/// `indices` with every source's repeated (whole, then its first ones again) up to the count
/// of the largest source.
fn balance_sources(indices: &[usize], source: impl Fn(&usize) -> String) -> Vec<usize> {
    let groups = by_source(indices, source);
    let largest = groups.values().map(Vec::len).max().unwrap_or(0);
    groups
        .values()
        .flat_map(|group| group.iter().cycle().take(largest).copied())
        .collect()
}

/// The mean over sources of [`low_resolution_dice`], for model selection.
fn per_source_dice(
    model: &UNetSegmenter,
    inputs: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    groups: &[Vec<usize>],
) -> Result<f64> {
    let mut total = 0.0;
    for rows in groups {
        total += low_resolution_dice(model, inputs, targets, weights, rows)?;
    }
    Ok(total / groups.len().max(1) as f64)
}

/// Dice at the segmenter's resolution over the given rows, for model selection during training.
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
/// row is reported to `on_row` with its score or its error; failed rows are left out of the means.
pub fn evaluate_each<'a>(
    model: &dyn Segmenter,
    rows: impl Iterator<Item = &'a MaskedImage>,
    on_row: &mut dyn FnMut(&MaskedImage, std::result::Result<&Score, &CoreError>),
) -> SegmenterMetrics {
    let mut scores: Vec<(String, Score)> = Vec::new();
    for row in rows {
        let measured = (|| -> Result<Score> {
            let xray = Xray::open(&row.image)?;
            let reference = Xray::open(&row.mask)?.original.to_luma8();
            let predicted = model.segment(&xray.gray)?;
            let o = Overlap::of(predicted.as_raw(), reference.as_raw());
            Ok(Score {
                dice: o.dice(),
                iou: o.iou(),
                implausible: model.shape().and_then(|s| s.judge(&predicted)).is_some(),
            })
        })();
        on_row(row, measured.as_ref());
        scores.extend(measured.ok().map(|s| (row.source.clone(), s)));
    }
    let mut metrics = SegmenterMetrics::of(&scores.iter().map(|s| s.1).collect::<Vec<_>>());
    let mut sources: Vec<&str> = scores.iter().map(|s| s.0.as_str()).collect();
    sources.sort_unstable();
    sources.dedup();
    for source in sources {
        let own: Vec<Score> = scores
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

/// A reference mask as a lung mask: its lung pixels (255), without what it marks "ignore".
pub fn reference_lungs(row: &MaskedImage) -> Result<crate::mask::LungMask> {
    let mut mask = Xray::open(&row.mask)?.original.to_luma8();
    mask.pixels_mut()
        .for_each(|p| p.0[0] = if p.0[0] == 255 { 255 } else { 0 });
    Ok(mask)
}

/// Fits the lung-shape model ([`ShapeModel`]) on the reference masks of `rows`.
pub fn fit_shape<'a>(rows: impl Iterator<Item = &'a MaskedImage>) -> Result<ShapeModel> {
    let masks: Vec<_> = rows.map(reference_lungs).collect::<Result<_>>()?;
    ShapeModel::fit(&masks)
}

/// Like [`evaluate_each`], but the first failing row is an error.
pub fn evaluate<'a>(
    model: &dyn Segmenter,
    rows: impl Iterator<Item = &'a MaskedImage>,
) -> Result<SegmenterMetrics> {
    let mut first_error = None;
    let metrics = evaluate_each(model, rows, &mut |_, measured| {
        if let (Err(e), None) = (measured, &first_error) {
            first_error = Some(e.to_string());
        }
    });
    first_error.map_or(Ok(metrics), |e| Err(CoreError::Invalid(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan's network is checked before any data is read: depth within 1-5 and a side the
    /// down-steps divide.
    #[test]
    fn a_plan_refuses_a_side_its_depth_does_not_divide() {
        let shipped = SegmenterPlan::default().config().unwrap();
        assert_eq!((shipped.base, shipped.depth), (8, 4));
        let deeper = |side, depth| {
            SegmenterPlan {
                side,
                depth,
                ..SegmenterPlan::default()
            }
            .config()
        };
        assert_eq!(deeper(224, 5).unwrap().down_sampling(), 32);
        let err = deeper(240, 5).unwrap_err().to_string();
        assert!(
            err.contains("240 px") && err.contains("multiple of 32"),
            "{err}"
        );
        assert!(deeper(240, 4).is_ok());
        let err = deeper(224, 6).unwrap_err().to_string();
        assert!(err.contains("depth is 6"), "{err}");
    }
}
