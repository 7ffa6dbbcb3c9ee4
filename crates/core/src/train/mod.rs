//! `cxr train`: the training loops for the segmenter and the classifier, the augmentation they
//! share, and the records that become model cards.

pub mod classifier;
pub mod segmenter;

use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::Result;
use crate::data::Split;

/// Settings common to both trainings.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// The manifests to train on, read as one (their rows carry their sources).
    pub manifests: Vec<PathBuf>,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Seed of the patient split (and, without `init_seed`, of everything else).
    pub seed: u64,
    /// Seed of the initial weights, the augmentation and the batch order, when it should differ
    /// from `seed`: another training run on the same split, to see how much a figure moves
    /// from run to run.
    pub init_seed: Option<u64>,
    pub device: Device,
    /// Start from these weights (a model of the same architecture) instead of random ones.
    pub init: Option<PathBuf>,
}

impl TrainOptions {
    /// The seed of everything random in a run but the split.
    #[must_use]
    pub fn run_seed(&self) -> u64 {
        self.init_seed.unwrap_or(self.seed)
    }

    /// The manifests as one path-like name for messages and records (`a.csv + b.csv`).
    #[must_use]
    pub fn manifest_list(&self) -> PathBuf {
        PathBuf::from(
            self.manifests
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" + "),
        )
    }
}

/// One line of training progress.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    /// The model-selection measure on the validation patients (Dice or ROC-AUC).
    pub validation: f64,
    pub best: bool,
    pub seconds: f64,
}

/// Sizes of one side of the split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSize {
    pub images: usize,
    pub patients: usize,
}

/// Image and patient counts per side of the split.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSizes {
    pub train: SplitSize,
    pub validation: SplitSize,
    pub test: SplitSize,
}

impl SplitSizes {
    fn count<'a>(rows: impl Iterator<Item = (Split, &'a str)>) -> Self {
        let mut patients: [std::collections::BTreeSet<&str>; 3] = Default::default();
        let mut sizes = Self::default();
        for (split, patient) in rows {
            let (slot, set) = match split {
                Split::Train => (&mut sizes.train, &mut patients[0]),
                Split::Validation => (&mut sizes.validation, &mut patients[1]),
                Split::Test => (&mut sizes.test, &mut patients[2]),
            };
            slot.images += 1;
            set.insert(patient);
        }
        sizes.train.patients = patients[0].len();
        sizes.validation.patients = patients[1].len();
        sizes.test.patients = patients[2].len();
        sizes
    }
}

/// How a model was trained: written into its JSON and its card.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingRecord {
    pub manifest: String,
    pub seed: u64,
    pub split: SplitSizes,
    pub epochs: usize,
    pub best_epoch: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub augmentation: String,
    pub seconds: f64,
    pub device: String,
    pub threads: i32,
    pub date: String,
    /// Images trained on beside the manifest's (reviewed queue items), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_only: Option<TrainOnlyRecord>,
    /// The weights training started from, when not random (fine-tuning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initialised_from: Option<String>,
    /// The seed of the initial weights, augmentation and batch order, when not `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_seed: Option<u64>,
}

/// What [`classifier::TrainOnly`] images a model was trained with: they are always in the
/// training split, so validation and test are the manifest's patients alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainOnlyRecord {
    /// Where they came from (the queue folder).
    pub source: String,
    /// Images used, per class.
    pub classes: std::collections::BTreeMap<String, usize>,
    /// Left out because their label is not one of the manifest's classes.
    pub other_labels: usize,
    /// Left out because the same image (the same decoded pixels) is in the manifest, where it
    /// may be a validation or test image.
    pub in_manifest: usize,
}

/// Row indices on each side of the split (`None`: a row left out), refusing a split with no
/// training or no validation rows: model selection needs both.
fn split_indices(
    sides: impl Iterator<Item = Option<Split>>,
    manifest: &std::path::Path,
) -> Result<[Vec<usize>; 3]> {
    let mut out: [Vec<usize>; 3] = Default::default();
    for (i, side) in sides.enumerate() {
        match side {
            Some(Split::Train) => out[0].push(i),
            Some(Split::Validation) => out[1].push(i),
            Some(Split::Test) => out[2].push(i),
            None => {}
        }
    }
    if out[0].is_empty() || out[1].is_empty() {
        return Err(crate::CoreError::data(
            manifest,
            "too few patients for a train/validation split",
        ));
    }
    Ok(out)
}

/// Random affine warps for a batch: rotation, scale, shift (as `[N, 2, 3]` matrices for
/// `affine_grid_generator`), drawn from `rng` so that a seed fixes them.
fn random_affines(n: usize, rng: &mut StdRng, degrees: f32, scale: f32, shift: f32) -> Tensor {
    let mut theta = Vec::with_capacity(n * 6);
    for _ in 0..n {
        let a = rng.random_range(-degrees..=degrees).to_radians();
        let s = rng.random_range(1.0 - scale..=1.0 + scale);
        let (tx, ty) = (
            rng.random_range(-shift..=shift),
            rng.random_range(-shift..=shift),
        );
        theta.extend_from_slice(&[s * a.cos(), -s * a.sin(), tx, s * a.sin(), s * a.cos(), ty]);
    }
    Tensor::from_slice(&theta).view([n as i64, 2, 3])
}

/// Resamples `[N, C, H, W]` through the affine matrices; outside the image becomes 0.
fn warp(images: &Tensor, theta: &Tensor, nearest: bool) -> Result<Tensor> {
    let grid =
        Tensor::f_affine_grid_generator(&theta.to_device(images.device()), images.size(), false)?;
    Ok(images.f_grid_sampler(&grid, i64::from(nearest), 0, false)?)
}

/// Random per-image contrast and brightness on standardised pixels.
fn jitter_intensity(images: &Tensor, rng: &mut StdRng, amount: f32) -> Tensor {
    let n = images.size()[0];
    let (gains, offsets): (Vec<f32>, Vec<f32>) = (0..n)
        .map(|_| {
            (
                rng.random_range(1.0 - amount..=1.0 + amount),
                rng.random_range(-amount..=amount),
            )
        })
        .unzip();
    let shape = [n, 1, 1, 1];
    let device = images.device();
    images * Tensor::from_slice(&gains).view(shape).to_device(device)
        + Tensor::from_slice(&offsets).view(shape).to_device(device)
}

/// Shuffled mini-batches of indices.
fn batches(indices: &[usize], batch_size: usize, rng: &mut StdRng) -> Vec<Vec<usize>> {
    let mut order = indices.to_vec();
    order.shuffle(rng);
    order.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Rows `indices` of `t` as one tensor on `device`.
fn gather(t: &Tensor, indices: &[usize], device: Device) -> Tensor {
    let index: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    t.index_select(0, &Tensor::from_slice(&index))
        .to_device(device)
}

/// Cosine decay from `lr` to 5% of it over the run.
fn cosine_lr(lr: f64, epoch: usize, epochs: usize) -> f64 {
    let t = epoch as f64 / epochs.max(1) as f64;
    lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
}

/// Mean of a scalar loss tensor as f64.
fn scalar(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).double_value(&[])
}

fn record(
    options: &TrainOptions,
    split: SplitSizes,
    best_epoch: usize,
    augmentation: &str,
    started: Instant,
) -> TrainingRecord {
    TrainingRecord {
        manifest: options.manifest_list().display().to_string(),
        seed: options.seed,
        split,
        epochs: options.epochs,
        best_epoch,
        batch_size: options.batch_size,
        learning_rate: options.learning_rate,
        augmentation: augmentation.to_owned(),
        seconds: started.elapsed().as_secs_f64(),
        device: format!("{:?}", options.device),
        threads: tch::get_num_threads(),
        date: today(),
        train_only: None,
        initialised_from: options.init.as_ref().map(|p| p.display().to_string()),
        init_seed: options.init_seed,
    }
}

/// Today's date (UTC) as YYYY-MM-DD, from the system clock.
fn today() -> String {
    crate::queue::rfc3339_utc(std::time::SystemTime::now())[..10].to_owned()
}

/// Loads `options.init` into `vs` when fine-tuning (the model then starts from those weights).
fn initialise(vs: &mut tch::nn::VarStore, options: &TrainOptions) -> Result<()> {
    if let Some(init) = &options.init {
        vs.load(init).map_err(|e| crate::CoreError::ModelLoad {
            path: init.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

fn seeded(seed: u64) -> StdRng {
    tch::manual_seed(seed as i64);
    StdRng::seed_from_u64(seed)
}
