//! The native backend: networks defined in Rust ([`super::unet`], [`super::resnet`]) with their
//! weights in `NAME.safetensors`; what `cxr train` writes. Models of this backend can be
//! trained, fine-tuned and re-initialised (the sanity check of explanations).

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

use super::resnet::{ResNet, ResNetConfig};
use super::unet::{UNet, UNetConfig};
use super::{Classifier, Format, Gradients, ModelFiles, ModelMeta, Segmenter};
use crate::mask::LungMask;
use crate::preprocess::{self, InputStyle};
use crate::trust::TrustModel;
use crate::xray::GrayF32;
use crate::{CoreError, Result};

/// The U-Net lung segmenter.
#[derive(Debug)]
pub struct UNetSegmenter {
    vs: nn::VarStore,
    net: UNet,
    pub meta: ModelMeta<UNetConfig>,
}

impl UNetSegmenter {
    /// A fresh, randomly initialised network that sees `side` x `side` inputs (for training).
    #[must_use]
    pub fn new(config: UNetConfig, side: u32, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let net = UNet::new(&vs.root(), &config);
        let meta = ModelMeta {
            format: Format::NativeSafetensors,
            architecture: config,
            input_side: side,
            classes: vec!["lung".into()],
            threshold: 0.5,
            record: serde_json::Value::Null,
            input: InputStyle::default(),
            trust: None,
            shape: None,
            weights_sha256: None,
        };
        Self { vs, net, meta }
    }

    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let meta: ModelMeta<UNetConfig> = files.read_meta()?;
        meta.architecture
            .check()
            .map_err(|reason| files.refused(reason))?;
        files.check_segmenter_side(meta.input_side, meta.architecture.down_sampling())?;
        let (architecture, side) = (meta.architecture.clone(), meta.input_side);
        let mut model = build(files, || Self::new(architecture, side, device))?;
        files.load_weights(&mut model.vs, meta.weights_sha256.as_deref())?;
        model.meta = meta;
        Ok(model)
    }

    /// Writes the weights, then the JSON with their digest.
    pub fn save(&self, files: &ModelFiles) -> Result<()> {
        let digest = crate::fsutil::save_var_store(&self.vs, &files.weights)?;
        files.write_meta(&ModelMeta {
            weights_sha256: Some(digest),
            ..self.meta.clone()
        })
    }

    #[must_use]
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Lung logits for a batch of segmenter inputs `[N, 1, side, side]`.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.net.forward_t(xs, train)
    }

    /// Lung probability at the segmenter's resolution, `[side, side]`, on the CPU.
    pub fn probabilities(&self, gray: &GrayF32) -> Result<Tensor> {
        let side = i64::from(self.meta.input_side);
        let input = Tensor::from_slice(&preprocess::segmenter_input(gray, self.meta.input_side))
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
        super::lung_mask(&self.probabilities(gray)?, gray, self.meta.threshold)
    }

    fn input_side(&self) -> u32 {
        self.meta.input_side
    }

    fn shape(&self) -> Option<&crate::shape::ShapeModel> {
        self.meta.shape.as_ref()
    }
}

/// Builds a network whose architecture passed its checks. tch allocates parameters with
/// panicking calls; a failure there (out of memory) becomes this model's load error.
fn build<T>(files: &ModelFiles, make: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(make)).map_err(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        files.refused(format!("cannot build the network it describes: {why}"))
    })
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
            format: Format::NativeSafetensors,
            architecture: config,
            input_side: preprocess::CLASSIFIER_SIDE,
            classes,
            threshold: 0.5,
            record: serde_json::Value::Null,
            input: InputStyle::default(),
            trust: None,
            shape: None,
            weights_sha256: None,
        };
        Self { vs, net, meta }
    }

    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let meta: ModelMeta<ResNetConfig> = files.read_meta()?;
        files.check_side(meta.input_side, preprocess::CLASSIFIER_SIDE)?;
        if meta.classes.len() < 2 || meta.architecture.num_classes != meta.classes.len() as i64 {
            return Err(files.refused(format!(
                "expected two classes or more (positive first, then negative), as many as the \
                 network's outputs; the JSON lists {} for {} outputs",
                meta.classes.len(),
                meta.architecture.num_classes
            )));
        }
        meta.architecture
            .check()
            .map_err(|reason| files.refused(reason))?;
        let (architecture, classes) = (meta.architecture.clone(), meta.classes.clone());
        let mut model = build(files, || Self::new(architecture, classes, device))?;
        files.load_weights(&mut model.vs, meta.weights_sha256.as_deref())?;
        model.meta = meta;
        Ok(model)
    }

    /// Writes the weights, then the JSON with their digest.
    pub fn save(&self, files: &ModelFiles) -> Result<()> {
        let digest = crate::fsutil::save_var_store(&self.vs, &files.weights)?;
        files.write_meta(&ModelMeta {
            weights_sha256: Some(digest),
            ..self.meta.clone()
        })
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

    fn gradients(&self) -> Gradients {
        Gradients::FeatureMap
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
