//! The `Segmenter` and `Classifier` contracts, and the backends that implement them. A model
//! is `NAME.json` (its metadata, [`ModelMeta`]) beside its weights; the JSON's `format` picks
//! the backend ([`Format`], one match in [`load_segmenter`] and [`load_classifier`]):
//!
//! - [`native`]: `native-safetensors`, the networks defined here ([`unet`], [`resnet`]) with
//!   weights in `NAME.safetensors`, as `cxr train` writes them;
//! - [`torchscript`]: `torchscript`, a user's own network exported from PyTorch to `NAME.pt`
//!   (see docs/bring-your-own-model.md).
//!
//! A native model may also have `NAME.onnx`, its export for ONNX Runtime: [`onnx`] runs the
//! forward passes on it when the backend ([`crate::compute::Backend`]) says so.

pub mod backend;
pub mod native;
pub mod onnx;
pub mod resnet;
pub mod torchscript;
pub mod unet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::mask::{self, LungMask};
use crate::preprocess::InputStyle;
use crate::shape::ShapeModel;
use crate::trust::{Assessment, TrustModel};
use crate::xray::GrayF32;
use crate::{CoreError, Result};
pub use native::{ResNetClassifier, UNetSegmenter};

/// Segments the lungs of a radiograph.
pub trait Segmenter: Send {
    /// The lung mask at the image's own resolution.
    fn segment(&self, gray: &GrayF32) -> Result<LungMask>;
    /// Side of the square input it sees ([`crate::preprocess::segmenter_input`]).
    fn input_side(&self) -> u32;
    /// The lung-shape model fitted beside the segmenter, which judges its masks.
    fn shape(&self) -> Option<&ShapeModel> {
        None
    }
}

/// Classifies preprocessed radiographs (see [`crate::preprocess::classifier_input`]).
pub trait Classifier: Send {
    /// Class names, in logit order; the first is the positive class ("covid").
    fn classes(&self) -> &[String];
    /// Decision threshold on the positive class's probability.
    fn threshold(&self) -> f32;
    fn device(&self) -> Device;
    /// # Shapes
    /// `[N, 1, 224, 224]` -> `[N, classes]` logits (before softmax)
    fn logits(&self, batch: &Tensor) -> Result<Tensor>;

    /// The last convolutional feature map `[N, C, h, w]` and the logits computed from it, in one
    /// forward pass that autograd can differentiate (for gradient explainers); `None` when the
    /// model does not expose a feature map ([`Classifier::gradients`] says which).
    fn features_and_logits(&self, _batch: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
        None
    }

    /// What autograd can reach in this model: the one capability query explainers are checked
    /// against ([`crate::explain::ExplainerEntry::needs`]).
    fn gradients(&self) -> Gradients;

    /// When the head is global average pooling followed by one linear layer: that layer's
    /// weight `[classes, C]`. Grad-CAM then needs no backward pass: the gradient of logit k with
    /// respect to feature map c is `w[k, c] / (h w)` at every position.
    fn linear_head(&self) -> Option<Tensor> {
        None
    }

    /// The same architecture with fresh random weights, for the model-randomisation sanity
    /// check of explanations.
    fn randomised(&self, _seed: u64) -> Result<Box<dyn Classifier>> {
        Err(CoreError::Unsupported {
            reason: "this classifier cannot be re-initialised".into(),
        })
    }

    /// How this classifier's input is made (see [`crate::preprocess::classifier_input`]).
    /// No default: a wrapper that forgot to pass it on would feed the model another input.
    fn input_style(&self) -> InputStyle;

    /// What training saw, to judge new inputs by; `None` for models trained without it.
    fn trust(&self) -> Option<&TrustModel>;

    /// Probabilities and label for one preprocessed image `[1, 1, 224, 224]`, with the
    /// features the familiarity score is computed on (mean of the last feature map), when the
    /// model exposes them; one forward pass either way.
    fn predict_with_features(&self, input: &Tensor) -> Result<(Prediction, Option<Vec<f32>>)> {
        let Some(pair) = tch::no_grad(|| self.features_and_logits(input)) else {
            return Ok((self.predict(input)?, None));
        };
        let (features, logits) = pair?;
        let pooled = features
            .f_mean_dim([2, 3].as_slice(), false, Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_view([-1])?;
        Ok((
            self.prediction_of(&logits)?,
            Some(Vec::<f32>::try_from(pooled)?),
        ))
    }

    /// Probabilities and label for one preprocessed image `[1, 1, 224, 224]`.
    fn predict(&self, input: &Tensor) -> Result<Prediction> {
        let logits = tch::no_grad(|| self.logits(input))?;
        self.prediction_of(&logits)
    }

    /// The prediction from one image's logits.
    fn prediction_of(&self, logits: &Tensor) -> Result<Prediction> {
        let probs = logits
            .f_softmax(-1, Kind::Float)?
            .f_to_device(Device::Cpu)?;
        let probs = Vec::<f32>::try_from(probs.f_view([-1])?)?;
        if probs.iter().any(|p| !p.is_finite()) {
            return Err(non_finite_probability());
        }
        Ok(Prediction::from_probabilities(
            self.classes(),
            &probs,
            self.threshold(),
        ))
    }
}

/// The error for a classifier that answers NaN or infinity.
fn non_finite_probability() -> CoreError {
    CoreError::Internal(
        "the classifier answered a non-finite probability (NaN or infinite): its weights or \
         export are damaged; no label or explanation is made from it"
            .into(),
    )
}

/// The probability of class `target` for each image of `batch` `[N, 1, 224, 224]`, without
/// gradients, as `[N]` on the model's device: what perturbation explainers and the quality
/// metrics measure. A non-finite probability is an error, never a number they use.
pub fn target_probabilities(
    model: &dyn Classifier,
    batch: &Tensor,
    target: usize,
) -> Result<Tensor> {
    let probs = tch::no_grad(|| model.logits(batch))?
        .f_softmax(-1, Kind::Float)?
        .f_select(1, target as i64)?;
    if !bool::try_from(&probs.f_isfinite()?.f_all()?)? {
        return Err(non_finite_probability());
    }
    Ok(probs)
}

/// How far gradients reach in a classifier, in increasing order: an explainer that needs one
/// level runs on every model that offers it or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gradients {
    /// Forward passes only (perturbation explainers: LIME, RISE, occlusion).
    None,
    /// Gradients of the logits with respect to the input (Integrated Gradients).
    Input,
    /// The last feature map and gradients with respect to it (Grad-CAM, Grad-CAM++).
    FeatureMap,
}

impl Gradients {
    /// How `cxr explainers` and errors name it.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::None => "forward passes only",
            Self::Input => "gradients with respect to the input",
            Self::FeatureMap => "the last feature map and its gradients",
        }
    }
}

/// Index of `name` in `classes` (the classifier's logit order); the positive class (0) when it
/// is not one of them.
#[must_use]
pub fn class_index(classes: &[String], name: &str) -> usize {
    classes.iter().position(|c| c == name).unwrap_or(0)
}

/// What the classifier says about one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub probabilities: BTreeMap<String, f32>,
    pub label: String,
    /// Probability of the positive class at which the label switches to it.
    pub threshold: f32,
    /// Familiarity score and flags: when this prediction should not be trusted.
    #[serde(default)]
    pub trust: Assessment,
}

impl Prediction {
    /// Index of the predicted label in `classes` (the classifier's logit order).
    #[must_use]
    pub fn label_index(&self, classes: &[String]) -> usize {
        class_index(classes, &self.label)
    }

    /// The positive class at or above the threshold, else the negative class: the seed's
    /// binary answer. A further class (pneumonia) is reported in `probabilities` only, and
    /// 1 - P(negative) is the score for disease of any kind.
    #[must_use]
    pub fn from_probabilities(classes: &[String], probs: &[f32], threshold: f32) -> Self {
        let positive = probs.first().copied().unwrap_or(0.0);
        let label = if positive >= threshold {
            &classes[0]
        } else {
            &classes[1]
        };
        Self {
            probabilities: classes.iter().cloned().zip(probs.iter().copied()).collect(),
            label: label.clone(),
            threshold,
            trust: Assessment::default(),
        }
    }
}

/// Largest model file read (weights, TorchScript module, ONNX export): 2 GiB, far above these
/// networks (a full-width ResNet-50 is 100 MB), far below the memory of a workstation.
pub const MAX_MODEL_BYTES: u64 = 2 << 30;
/// Largest model JSON read: 64 MiB (the shipped classifier's, with its trust model, is 0.4 MB).
pub const MAX_META_BYTES: u64 = 64 << 20;

/// Reads a model file once, from the opened handle, with the input gate's rules: a regular
/// file (a FIFO, device or folder is refused, never waited on or read forever), at most `max`
/// bytes, counted while reading (a link to `/dev/zero` or a file that grows is cut off).
pub fn read_model_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    let gate = cxr_io::input::Gate {
        max_bytes: max,
        ..cxr_io::input::Gate::TRUSTED
    };
    gate.read(path).map_err(|e| {
        let source: Box<dyn std::error::Error + Send + Sync> = match e {
            cxr_io::Error::Refused { reason, .. } => reason.into(),
            cxr_io::Error::Io { source, .. } => Box::new(source),
            other => other.to_string().into(),
        };
        CoreError::ModelLoad {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Hex SHA-256 of `bytes`.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// Which backend reads a model: the `format` field of its JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Format {
    /// [`native`]: a network defined here, weights in `NAME.safetensors` (files without a
    /// `format` field are of this kind).
    #[default]
    #[serde(rename = "native-safetensors")]
    NativeSafetensors,
    /// [`torchscript`]: a scripted PyTorch module in `NAME.pt`.
    #[serde(rename = "torchscript")]
    TorchScript,
}

impl Format {
    /// The weights' file extension.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::NativeSafetensors => "safetensors",
            Self::TorchScript => "pt",
        }
    }
}

/// The JSON written beside each model's weights: its backend, architecture, decision threshold
/// and the record of how it was trained and what it measured on held-out patients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta<A> {
    #[serde(default)]
    pub format: Format,
    pub architecture: A,
    pub input_side: u32,
    #[serde(default)]
    pub classes: Vec<String>,
    #[serde(default = "half")]
    pub threshold: f32,
    /// Training record and held-out metrics, as written by `cxr train`.
    #[serde(default)]
    pub record: serde_json::Value,
    /// How the classifier's input is made (classifiers only; older files: `masked`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub input: InputStyle,
    /// Familiarity model and lung ranges fitted at training (classifiers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustModel>,
    /// Lung-shape space fitted on the reference masks (segmenters only; `implausible-lungs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<ShapeModel>,
    /// SHA-256 of the weights file, written by `cxr train` and checked when loading, so a
    /// damaged or swapped file is refused (files without it get the finite-weights check only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
}

impl<A> ModelMeta<A> {
    /// Refuses values no model can have: a decision threshold outside [0, 1], class names that
    /// are empty, repeated or not one short line.
    fn check(&self) -> std::result::Result<(), String> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(format!(
                "threshold is {}; a decision threshold is a probability, in [0, 1]",
                self.threshold
            ));
        }
        for (i, class) in self.classes.iter().enumerate() {
            if class.trim().is_empty() || class.len() > 64 || class.chars().any(char::is_control) {
                return Err(format!(
                    "class name {class:?}: expected a name of 1 to 64 characters on one line"
                ));
            }
            if self.classes[..i].contains(class) {
                return Err(format!("class {class:?} is listed twice"));
            }
        }
        Ok(())
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn half() -> f32 {
    0.5
}

/// Paths of a model's weights, metadata and card, from its directory and name; and the files
/// read through them, each read once: the JSON that picks the backend is the one the backend
/// parses, the weights whose digest an export is checked against are the ones loaded, and the
/// fingerprint hashes the same bytes again, never a second read of a file that may have changed.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The native backend's weights (`NAME.safetensors`); see [`ModelFiles::weights_for`].
    pub weights: PathBuf,
    pub meta: PathBuf,
    pub card: PathBuf,
    stem: PathBuf,
    /// What was read, in the order first read (shared by clones).
    read: Arc<Mutex<Vec<Read>>>,
}

/// One file as read.
#[derive(Debug)]
struct Read {
    path: PathBuf,
    bytes: Arc<[u8]>,
}

/// The part of a model's JSON that picks the backend.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: Format,
}

impl ModelFiles {
    #[must_use]
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            weights: dir.join(format!("{name}.safetensors")),
            meta: dir.join(format!("{name}.json")),
            card: dir.join(format!("{name}.md")),
            stem: dir.join(name),
            read: Arc::default(),
        }
    }

    /// `path`, one of this model's files, read once (bounded to `max` bytes, regular files
    /// only; see [`read_model_file`]): a second call gets the same bytes without reading again.
    pub fn read(&self, path: &Path, max: u64) -> Result<Arc<[u8]>> {
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = read.iter().find(|r| r.path == path) {
            return Ok(Arc::clone(&done.bytes));
        }
        let bytes: Arc<[u8]> = read_model_file(path, max)?.into();
        read.push(Read {
            path: path.to_path_buf(),
            bytes: Arc::clone(&bytes),
        });
        Ok(bytes)
    }

    /// The files read so far, in the order first read.
    #[must_use]
    pub fn files_read(&self) -> Vec<PathBuf> {
        let read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        read.iter().map(|r| r.path.clone()).collect()
    }

    /// The weights file of a model in `format`.
    #[must_use]
    pub fn weights_for(&self, format: Format) -> PathBuf {
        self.stem.with_extension(format.extension())
    }

    /// The ONNX export of a native model (`NAME.onnx`), for the ONNX Runtime backend.
    #[must_use]
    pub fn onnx(&self) -> PathBuf {
        self.stem.with_extension("onnx")
    }

    /// Its INT8 ONNX export (`python/quantise_onnx.py`).
    #[must_use]
    pub fn onnx_int8(&self) -> PathBuf {
        self.stem.with_extension("int8.onnx")
    }

    /// The backend the JSON names (`native-safetensors` when it names none).
    pub fn format(&self) -> Result<Format> {
        Ok(self.read_meta_as::<Header>()?.format)
    }

    /// The files that make the model (its JSON and weights), for fingerprints and copies.
    pub fn parts(&self) -> Result<[PathBuf; 2]> {
        Ok([self.meta.clone(), self.weights_for(self.format()?)])
    }

    /// Refuses a model whose JSON says it takes another input size than cxr makes.
    pub fn check_side(&self, input_side: u32, expected: u32) -> Result<()> {
        if input_side == expected {
            return Ok(());
        }
        Err(self.refused(format!(
            "input_side is {input_side}, but cxr feeds this kind of model {expected}x{expected} \
             images"
        )))
    }

    /// Refuses a segmenter side [`crate::preprocess::check_segmenter_side`] refuses.
    pub fn check_segmenter_side(&self, side: u32, multiple: u32) -> Result<()> {
        crate::preprocess::check_segmenter_side(side, multiple)
            .map_err(|reason| self.refused(format!("input_side is {side}; {reason}")))
    }

    /// The load error for a JSON that says something no model can be (`reason` says what).
    #[must_use]
    pub fn refused(&self, reason: impl Into<String>) -> CoreError {
        CoreError::ModelLoad {
            path: self.meta.clone(),
            source: reason.into().into(),
        }
    }

    fn read_meta_as<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        let bytes = self.read(&self.meta, MAX_META_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|e| self.load_error(e))
    }

    /// The model's JSON, with its threshold and classes checked.
    pub fn read_meta<A: serde::de::DeserializeOwned>(&self) -> Result<ModelMeta<A>> {
        let meta: ModelMeta<A> = self.read_meta_as()?;
        meta.check().map_err(|reason| self.refused(reason))?;
        Ok(meta)
    }

    /// Writes the JSON (after the weights: what was read before is forgotten).
    pub fn write_meta<A: Serialize>(&self, meta: &ModelMeta<A>) -> Result<()> {
        let text = serde_json::to_string_pretty(meta).map_err(|e| self.load_error(e))?;
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        crate::fsutil::write_atomic(&self.meta, text.as_bytes())
    }

    fn load_error(&self, e: impl std::error::Error + Send + Sync + 'static) -> CoreError {
        CoreError::ModelLoad {
            path: self.meta.clone(),
            source: Box::new(e),
        }
    }

    /// The weights file of `format`, read once (bounded, see [`read_model_file`]) and, when the
    /// JSON records their digest, checked against it.
    pub fn read_weights(&self, format: Format, expected_sha256: Option<&str>) -> Result<Arc<[u8]>> {
        let path = self.weights_for(format);
        let bytes = self.read(&path, MAX_MODEL_BYTES)?;
        if let Some(expected) = expected_sha256
            && sha256_hex(&bytes) != expected.to_ascii_lowercase()
        {
            return Err(CoreError::ModelLoad {
                path,
                source: format!(
                    "the file's SHA-256 is not the one {} records: it is damaged or was replaced \
                     (restore it, or train the model again)",
                    self.meta.display()
                )
                .into(),
            });
        }
        Ok(bytes)
    }

    /// Loads the native weights into `vs` (see [`load_safetensors`]), naming the file in errors.
    pub fn load_weights(
        &self,
        vs: &mut tch::nn::VarStore,
        expected_sha256: Option<&str>,
    ) -> Result<()> {
        let bytes = self.read_weights(Format::NativeSafetensors, expected_sha256)?;
        load_safetensors(vs, &bytes).map_err(|reason| CoreError::ModelLoad {
            path: self.weights.clone(),
            source: reason.into(),
        })
    }
}

/// Copies every variable of `vs` from the safetensors file held in `bytes`, refusing a file
/// that lacks one, holds it in another shape or type, or holds a value that is not finite (a
/// NaN in the weights gives NaN probabilities, which would otherwise become a label).
pub fn load_safetensors(
    vs: &mut tch::nn::VarStore,
    bytes: &[u8],
) -> std::result::Result<(), String> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file ({e})"))?;
    let mut variables: Vec<_> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut variable) in variables {
        let view = file
            .tensor(&name)
            .map_err(|_| format!("has no tensor {name:?}, which the architecture needs"))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if shape != variable.size() {
            return Err(format!(
                "tensor {name:?} has shape {shape:?}, the architecture needs {:?} (does the \
                 JSON describe these weights?)",
                variable.size()
            ));
        }
        if view.dtype() != safetensors::Dtype::F32 || variable.kind() != Kind::Float {
            return Err(format!(
                "tensor {name:?} is stored as {:?}; cxr's models hold 32-bit floats",
                view.dtype()
            ));
        }
        let data = view.data();
        if data.len() != variable.numel() * 4 {
            return Err(format!(
                "tensor {name:?} holds {} bytes for its shape",
                data.len()
            ));
        }
        if let Some((index, value)) = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(format!(
                "tensor {name:?} holds a non-finite value ({value}) at index {index}: the file is \
                 damaged"
            ));
        }
        let source = Tensor::f_from_data_size(data, &shape, Kind::Float)
            .map_err(|e| format!("tensor {name:?}: {e}"))?;
        tch::no_grad(|| variable.f_copy_(&source)).map_err(|e| format!("tensor {name:?}: {e}"))?;
    }
    Ok(())
}

/// The segmenter `files` describe, on the backend its JSON names.
pub fn load_segmenter(files: &ModelFiles, device: Device) -> Result<Box<dyn Segmenter>> {
    Ok(match files.format()? {
        Format::NativeSafetensors => Box::new(UNetSegmenter::load(files, device)?),
        Format::TorchScript => Box::new(torchscript::ScriptSegmenter::load(files, device)?),
    })
}

/// The classifier `files` describe, on the backend its JSON names.
pub fn load_classifier(files: &ModelFiles, device: Device) -> Result<Box<dyn Classifier>> {
    Ok(match files.format()? {
        Format::NativeSafetensors => Box::new(ResNetClassifier::load(files, device)?),
        Format::TorchScript => Box::new(torchscript::ScriptClassifier::load(files, device)?),
    })
}

/// Lung probabilities on the segmenter's grid (`[side, side]`, CPU) made into the lung mask at
/// the image's own resolution: cleaned (the two largest regions kept and their holes filled),
/// resized and thresholded. Every segmenter backend ends here.
pub fn lung_mask(probabilities: &Tensor, gray: &GrayF32, threshold: f32) -> Result<LungMask> {
    let side = probabilities.size().last().copied().unwrap_or(0);
    let values = Vec::<f32>::try_from(probabilities.f_to_kind(Kind::Float)?.f_view([-1])?)?;
    lung_mask_of(&values, side as usize, gray, threshold)
}

/// [`lung_mask`] of probabilities given as a slice, row-major on the segmenter's grid.
///
/// The clean-up runs on the grid, not at full resolution: regions dropped there get
/// probability 0 and filled holes 1 before the resize, and bilinear interpolation has no
/// maximum or minimum inside a cell, so the resized mask has no region or hole the grid did
/// not. The one full-resolution buffer is the mask itself (a 20-megapixel image once needed
/// about 300 MB of labels, flood-fill stacks and probabilities here, per job in flight).
///
/// Plain Rust rather than libtorch: on the ONNX backend no libtorch operator then runs while an
/// image is analysed, so libtorch's OpenMP threads, which spin for milliseconds after each
/// parallel operator, never compete with ONNX Runtime's for the cores (they took 13% of the CPU
/// time of `cxr classify --backend onnx` when the resize ran on libtorch).
pub fn lung_mask_of(
    probabilities: &[f32],
    side: usize,
    gray: &GrayF32,
    threshold: f32,
) -> Result<LungMask> {
    if probabilities.len() != side * side {
        return Err(CoreError::Internal(format!(
            "lung probabilities: expected {side}x{side} values, got {}",
            probabilities.len()
        )));
    }
    let grid = u32::try_from(side).map_err(|_| CoreError::Internal("grid too large".into()))?;
    let binary = LungMask::from_raw(
        grid,
        grid,
        probabilities
            .iter()
            .map(|&p| if p > threshold { mask::LUNG } else { 0 })
            .collect(),
    )
    .ok_or_else(|| CoreError::Internal("mask size mismatch".into()))?;
    let cleaned: Vec<f32> = probabilities
        .iter()
        .zip(mask::clean(&binary, 0.1).as_raw())
        .map(|(&p, &kept)| match (p > threshold, kept == mask::LUNG) {
            (true, false) => 0.0, // a small region dropped
            (false, true) => 1.0, // a hole filled
            _ => p,
        })
        .collect();
    let (w, h) = gray.dimensions();
    let mut raw = Vec::with_capacity(w as usize * h as usize);
    for_each_resized_row(&cleaned, side, w as usize, h as usize, |row| {
        raw.extend(
            row.iter()
                .map(|&p| if p > threshold { mask::LUNG } else { 0 }),
        );
    });
    LungMask::from_raw(w, h, raw).ok_or_else(|| CoreError::Internal("mask size mismatch".into()))
}

/// `values`, a `side` x `side` grid, resized to `w` x `h` by bilinear interpolation and
/// handed to `row` one output row at a time (so a large output is never held as floats).
fn for_each_resized_row(
    values: &[f32],
    side: usize,
    w: usize,
    h: usize,
    mut row: impl FnMut(&[f32]),
) {
    let columns = linear_taps(side, w);
    let mut resized = Vec::with_capacity(w);
    for (y0, y1, wy0, wy1) in linear_taps(side, h) {
        let (top, bottom) = (&values[y0 * side..], &values[y1 * side..]);
        resized.clear();
        resized.extend(columns.iter().map(|&(x0, x1, wx0, wx1)| {
            let upper = top[x0] * wx0 + top[x1] * wx1;
            let lower = bottom[x0] * wx0 + bottom[x1] * wx1;
            upper * wy0 + lower * wy1
        }));
        row(&resized);
    }
}

/// For each of `output` positions, the two source positions among `input` and their weights of
/// linear interpolation, with pixel centres aligned as libtorch's `upsample_bilinear2d` does
/// without `align_corners`.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let source = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let first = (source as usize).min(input - 1);
            let second = (first + 1).min(input - 1);
            let weight = (source - first as f32).clamp(0.0, 1.0);
            (first, second, 1.0 - weight, weight)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that learnt a third class still answers COVID-19 or not: below the threshold
    /// the label is the negative class, however likely the third; every probability is kept.
    #[test]
    fn a_third_class_is_reported_not_labelled() {
        let classes = ["covid", "normal", "pneumonia"].map(str::to_owned);
        let below = Prediction::from_probabilities(&classes, &[0.1, 0.2, 0.7], 0.19);
        assert_eq!(below.label, "normal");
        assert_eq!(below.probabilities["pneumonia"], 0.7);
        assert_eq!(below.probabilities.len(), 3);
        let above = Prediction::from_probabilities(&classes, &[0.2, 0.1, 0.7], 0.19);
        assert_eq!(above.label, "covid");
    }

    /// The Rust resize gives libtorch's `upsample_bilinear2d` (no `align_corners`) within float
    /// rounding, enlarging and shrinking, on square and narrow outputs.
    #[test]
    fn the_bilinear_resize_matches_libtorch() {
        tch::manual_seed(7);
        let side = 256_usize;
        let grid = Tensor::rand([1, 1, side as i64, side as i64], (Kind::Float, Device::Cpu));
        let values = Vec::<f32>::try_from(grid.view([-1])).unwrap();
        for (w, h) in [
            (512, 512),
            (512, 481),
            (256, 256),
            (1000, 37),
            (100, 300),
            (1, 1),
        ] {
            let expected = grid.upsample_bilinear2d([h as i64, w as i64], false, None, None);
            let expected = Vec::<f32>::try_from(expected.view([-1])).unwrap();
            let mut resized = Vec::new();
            for_each_resized_row(&values, side, w, h, |row| resized.extend_from_slice(row));
            assert_eq!(resized.len(), expected.len());
            let worst = resized
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0_f32, f32::max);
            assert!(worst < 1e-5, "{w}x{h}: max |rust - libtorch| = {worst}");
        }
    }

    /// Cleaning on the grid leaves nothing at full resolution for a full-resolution clean to
    /// do: the speck is gone, the hole filled, both lungs kept.
    #[test]
    fn the_mask_is_cleaned_on_the_grid_and_stays_clean_when_resized() {
        let side = 16;
        let mut grid = vec![0.1_f32; side * side];
        for y in 3..13 {
            for x in (2..7).chain(9..14) {
                grid[y * side + x] = 0.9; // two lungs
            }
        }
        grid[8 * side + 4] = 0.2; // a hole in the right lung
        grid[side + 15] = 0.8; // a speck in a corner, 2% of the largest
        let gray = GrayF32::new(100, 90);
        let lungs = lung_mask_of(&grid, side, &gray, 0.5).unwrap();
        assert_eq!(lungs.dimensions(), (100, 90));
        let at = |x: usize, y: usize| {
            let cell = |v: usize, n: u32| ((v as f32 + 0.5) * n as f32 / side as f32) as u32;
            lungs.get_pixel(cell(x, 100), cell(y, 90)).0[0]
        };
        assert_eq!(at(4, 8), mask::LUNG, "the hole is filled");
        assert_eq!(at(15, 1), 0, "the speck is dropped");
        assert_eq!((at(4, 5), at(11, 5)), (mask::LUNG, mask::LUNG));
        assert_eq!(mask::clean(&lungs, 0.1), lungs);
    }

    #[test]
    fn a_probability_grid_of_the_wrong_size_is_refused() {
        let gray = GrayF32::new(4, 4);
        let e = lung_mask_of(&[0.5; 10], 4, &gray, 0.5)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 4x4 values, got 10"), "{e}");
    }
}
