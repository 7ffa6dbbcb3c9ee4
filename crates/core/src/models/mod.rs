//! The networks, the `Segmenter` and `Classifier` contracts, and their native tch
//! implementations loaded from `models/NAME.safetensors` plus `models/NAME.json`.

pub mod resnet;
pub mod unet;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

use crate::mask::{self, LungMask};
use crate::preprocess::{self, InputStyle, SEGMENTER_SIDE};
use crate::trust::{Assessment, TrustModel};
use crate::xray::GrayF32;
use crate::{CoreError, Result};
use resnet::{ResNet, ResNetConfig};
use unet::{UNet, UNetConfig};

/// Segments the lungs of a radiograph.
pub trait Segmenter: Send {
    /// The lung mask at the image's own resolution.
    fn segment(&self, gray: &GrayF32) -> Result<LungMask>;
}

/// Classifies preprocessed radiographs (see [`preprocess::classifier_input`]).
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
    /// model does not expose a feature map.
    fn features_and_logits(&self, _batch: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
        None
    }

    /// Whether [`Classifier::features_and_logits`] is available (gradient explainers need it).
    fn supports_gradients(&self) -> bool {
        false
    }

    /// When the head is global average pooling followed by one linear layer: that layer's
    /// weight `[classes, C]`. Grad-CAM then needs no backward pass: the gradient of logit k with
    /// respect to feature map c is `w[k, c] / (h w)` at every position.
    fn linear_head(&self) -> Option<Tensor> {
        None
    }

    /// The same architecture with fresh random weights, for the model-randomisation sanity
    /// check of explanations.
    fn randomised(&self, _seed: u64) -> Result<Box<dyn Classifier>> {
        Err(CoreError::Invalid(
            "this classifier cannot be re-initialised".into(),
        ))
    }

    /// How this classifier's input is made (see [`preprocess::classifier_input`]).
    fn input_style(&self) -> InputStyle {
        InputStyle::Masked
    }

    /// What training saw, to judge new inputs by; `None` for models trained without it.
    fn trust(&self) -> Option<&TrustModel> {
        None
    }

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
        Ok(Prediction::from_probabilities(
            self.classes(),
            &probs,
            self.threshold(),
        ))
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

/// The JSON written beside each model's weights: its architecture, decision threshold and the
/// record of how it was trained and what it measured on held-out patients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelMeta<A> {
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
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn half() -> f32 {
    0.5
}

/// Paths of a model's weights, metadata and card, from its directory and name.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub weights: PathBuf,
    pub meta: PathBuf,
    pub card: PathBuf,
}

impl ModelFiles {
    #[must_use]
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            weights: dir.join(format!("{name}.safetensors")),
            meta: dir.join(format!("{name}.json")),
            card: dir.join(format!("{name}.md")),
        }
    }

    pub fn read_meta<A: serde::de::DeserializeOwned>(&self) -> Result<ModelMeta<A>> {
        let text = std::fs::read_to_string(&self.meta).map_err(|e| self.load_error(e))?;
        serde_json::from_str(&text).map_err(|e| self.load_error(e))
    }

    pub fn write_meta<A: Serialize>(&self, meta: &ModelMeta<A>) -> Result<()> {
        let text = serde_json::to_string_pretty(meta).map_err(|e| self.load_error(e))?;
        crate::fsutil::write_atomic(&self.meta, text.as_bytes())
    }

    fn load_error(&self, e: impl std::error::Error + Send + Sync + 'static) -> CoreError {
        CoreError::ModelLoad {
            path: self.meta.clone(),
            source: Box::new(e),
        }
    }

    /// Loads the weights into `vs`, naming the file in the error.
    pub fn load_weights(&self, vs: &mut nn::VarStore) -> Result<()> {
        if !self.weights.exists() {
            return Err(CoreError::ModelLoad {
                path: self.weights.clone(),
                source: "file not found (train one with `cxr train`, or pass --models DIR)".into(),
            });
        }
        vs.load(&self.weights).map_err(|e| CoreError::ModelLoad {
            path: self.weights.clone(),
            source: Box::new(e),
        })
    }
}

/// The U-Net lung segmenter.
#[derive(Debug)]
pub struct UNetSegmenter {
    vs: nn::VarStore,
    net: UNet,
    pub meta: ModelMeta<UNetConfig>,
}

impl UNetSegmenter {
    /// A fresh, randomly initialised network (for training).
    #[must_use]
    pub fn new(config: UNetConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let net = UNet::new(&vs.root(), &config);
        let meta = ModelMeta {
            architecture: config,
            input_side: SEGMENTER_SIDE,
            classes: vec!["lung".into()],
            threshold: 0.5,
            record: serde_json::Value::Null,
            input: InputStyle::default(),
            trust: None,
        };
        Self { vs, net, meta }
    }

    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let meta: ModelMeta<UNetConfig> = files.read_meta()?;
        let mut model = Self::new(meta.architecture.clone(), device);
        files.load_weights(&mut model.vs)?;
        model.meta = meta;
        Ok(model)
    }

    pub fn save(&self, files: &ModelFiles) -> Result<()> {
        crate::fsutil::save_var_store(&self.vs, &files.weights)?;
        files.write_meta(&self.meta)
    }

    #[must_use]
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Lung logits for a batch of segmenter inputs `[N, 1, 256, 256]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }

    /// Lung probability at the segmenter's resolution, `[256, 256]`, on the CPU.
    pub fn probabilities(&self, gray: &GrayF32) -> Result<Tensor> {
        let side = i64::from(SEGMENTER_SIDE);
        let input = Tensor::from_slice(&preprocess::segmenter_input(gray))
            .f_view([1, 1, side, side])?
            .f_to_device(self.vs.device())?;
        let logits = tch::no_grad(|| self.net.forward_t(&input, false));
        Ok(logits
            .f_sigmoid()?
            .f_to_device(Device::Cpu)?
            .f_view([side, side])?)
    }
}

impl Segmenter for UNetSegmenter {
    /// Probabilities resized to the original resolution, thresholded, then cleaned: the two
    /// largest regions kept and their holes filled.
    fn segment(&self, gray: &GrayF32) -> Result<LungMask> {
        let probs = self.probabilities(gray)?;
        let (w, h) = gray.dimensions();
        let full = probs
            .f_view([1, 1, i64::from(SEGMENTER_SIDE), i64::from(SEGMENTER_SIDE)])?
            .f_upsample_bilinear2d([i64::from(h), i64::from(w)], false, None, None)?
            .f_gt(f64::from(self.meta.threshold))?
            .f_to_kind(Kind::Uint8)?
            .f_mul_scalar(i64::from(mask::LUNG))?
            .f_view([-1])?;
        let raw = Vec::<u8>::try_from(full)?;
        let binary = LungMask::from_raw(w, h, raw)
            .ok_or_else(|| CoreError::Invalid("mask size mismatch".into()))?;
        Ok(mask::clean(&binary, 0.1))
    }
}

/// The `ResNet` classifier.
#[derive(Debug)]
pub struct ResNetClassifier {
    vs: nn::VarStore,
    net: ResNet,
    pub meta: ModelMeta<ResNetConfig>,
}

impl ResNetClassifier {
    #[must_use]
    pub fn new(config: ResNetConfig, classes: Vec<String>, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let net = ResNet::new(&vs.root(), &config);
        let meta = ModelMeta {
            architecture: config,
            input_side: preprocess::CLASSIFIER_SIDE,
            classes,
            threshold: 0.5,
            record: serde_json::Value::Null,
            input: InputStyle::default(),
            trust: None,
        };
        Self { vs, net, meta }
    }

    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let meta: ModelMeta<ResNetConfig> = files.read_meta()?;
        if meta.classes.len() != 2 || meta.architecture.num_classes != 2 {
            return Err(CoreError::ModelLoad {
                path: files.meta.clone(),
                source: "expected a two-class classifier (positive class first)".into(),
            });
        }
        let mut model = Self::new(meta.architecture.clone(), meta.classes.clone(), device);
        files.load_weights(&mut model.vs)?;
        model.meta = meta;
        Ok(model)
    }

    pub fn save(&self, files: &ModelFiles) -> Result<()> {
        crate::fsutil::save_var_store(&self.vs, &files.weights)?;
        files.write_meta(&self.meta)
    }

    #[must_use]
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    #[must_use]
    pub fn network(&self) -> &ResNet {
        &self.net
    }

    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }
}

impl Classifier for ResNetClassifier {
    fn classes(&self) -> &[String] {
        &self.meta.classes
    }

    fn threshold(&self) -> f32 {
        self.meta.threshold
    }

    fn input_style(&self) -> InputStyle {
        self.meta.input
    }

    fn trust(&self) -> Option<&TrustModel> {
        self.meta.trust.as_ref()
    }

    fn device(&self) -> Device {
        self.vs.device()
    }

    fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        Ok(self
            .net
            .forward_t(&batch.f_to_device(self.vs.device())?, false))
    }

    fn features_and_logits(&self, batch: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
        Some(
            batch
                .f_to_device(self.vs.device())
                .map_err(CoreError::from)
                .map(|x| {
                    let features = self.net.features(&x, false);
                    let logits = self.net.head(&features);
                    (features, logits)
                }),
        )
    }

    fn supports_gradients(&self) -> bool {
        true
    }

    fn linear_head(&self) -> Option<Tensor> {
        Some(self.net.fc_weight().shallow_clone())
    }

    fn randomised(&self, seed: u64) -> Result<Box<dyn Classifier>> {
        tch::manual_seed(seed as i64);
        let mut model = Self::new(
            self.meta.architecture.clone(),
            self.meta.classes.clone(),
            self.vs.device(),
        );
        model.meta.threshold = self.meta.threshold;
        model.meta.input = self.meta.input;
        Ok(Box::new(model))
    }
}
