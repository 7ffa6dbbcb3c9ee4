//! The TorchScript backend: a user's own network, exported from PyTorch with
//! `torch.jit.save(torch.jit.script(model), "NAME.pt")`, described by `NAME.json` with
//! `"format": "torchscript"` (docs/bring-your-own-model.md).
//!
//! - A classifier takes `[N, 1, 224, 224]` (cxr's preprocessing) and returns `[N, classes]`
//!   logits from `forward`. When the JSON's `architecture` names a `features` and a `head`
//!   method (`features(x)` the last feature map `[N, C, h, w]`, `head(f)` the logits), every
//!   explainer runs, Grad-CAM included; without them the model offers input gradients only, and
//!   the explainers that need a feature map are refused with a clear error.
//! - A segmenter takes `[N, 1, 256, 256]` and returns lung logits of the same shape.
//!
//! Loading runs one forward pass on a blank input, so a module that does not take cxr's input
//! size or returns the wrong shape is refused when loaded, not on the first radiograph.

use serde::{Deserialize, Serialize};
use tch::{CModule, Device, IValue, Kind, Tensor};

use super::{Classifier, Format, Gradients, ModelFiles, ModelMeta, Segmenter};
use crate::mask::LungMask;
use crate::preprocess::{self, CLASSIFIER_SIDE, InputStyle};
use crate::trust::TrustModel;
use crate::xray::GrayF32;
use crate::{CoreError, Result};

/// The `architecture` of a TorchScript model's JSON: the names of the methods that split the
/// classifier at its last feature map (both, or neither).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptSpec {
    #[serde(default)]
    pub features: Option<String>,
    #[serde(default)]
    pub head: Option<String>,
}

/// Loads the module and its JSON, checks the input side the JSON declares: `side`, or for a
/// segmenter (`None`) any side one may have (its forward pass then checks the output's).
fn open(
    files: &ModelFiles,
    device: Device,
    side: Option<u32>,
) -> Result<(CModule, ModelMeta<ScriptSpec>)> {
    let meta: ModelMeta<ScriptSpec> = files.read_meta()?;
    match side {
        Some(side) => files.check_side(meta.input_side, side)?,
        None => files.check_segmenter_side(meta.input_side, 1)?,
    }
    let path = files.weights_for(Format::TorchScript);
    let bytes = files.read_weights(Format::TorchScript, meta.weights_sha256.as_deref())?;
    let load_error = |source: Box<dyn std::error::Error + Send + Sync>| CoreError::ModelLoad {
        path: path.clone(),
        source,
    };
    let mut module = CModule::load_data_on_device(&mut std::io::Cursor::new(bytes), device)
        .map_err(|e| load_error(Box::new(e)))?;
    module.set_eval();
    // A NaN or infinity in the parameters would make every probability NaN.
    for (name, parameter) in module
        .named_parameters()
        .map_err(|e| load_error(Box::new(e)))?
    {
        let finite = parameter
            .f_isfinite()
            .and_then(|f| f.f_all())
            .and_then(|all| bool::try_from(&all))
            .map_err(|e| load_error(Box::new(e)))?;
        if !finite {
            return Err(load_error(
                format!("parameter {name:?} holds a non-finite value: the file is damaged").into(),
            ));
        }
    }
    Ok((module, meta))
}

/// A load-time error about what the module returned.
fn refuse(files: &ModelFiles, what: String) -> CoreError {
    CoreError::ModelLoad {
        path: files.weights_for(Format::TorchScript),
        source: what.into(),
    }
}

fn blank(side: u32, device: Device) -> Tensor {
    let side = i64::from(side);
    Tensor::zeros([1, 1, side, side], (Kind::Float, device))
}

/// A scripted PyTorch classifier.
pub struct ScriptClassifier {
    module: CModule,
    pub meta: ModelMeta<ScriptSpec>,
    device: Device,
    /// The `features` and `head` method names, when the module has both.
    split: Option<(String, String)>,
}

impl std::fmt::Debug for ScriptClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptClassifier")
            .field("classes", &self.meta.classes)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

impl ScriptClassifier {
    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let (module, meta) = open(files, device, Some(CLASSIFIER_SIDE))?;
        if meta.classes.len() < 2 {
            return Err(
                files.refused("expected two classes or more (positive first, then negative)")
            );
        }
        let split = match (&meta.architecture.features, &meta.architecture.head) {
            (Some(features), Some(head)) => Some((features.clone(), head.clone())),
            (None, None) => None,
            _ => {
                return Err(files.refused(
                    "architecture names only one of `features` and `head`: name both (or \
                     neither, for a model that gives logits only)",
                ));
            }
        };
        let model = Self {
            module,
            meta,
            device,
            split,
        };
        let blank = blank(CLASSIFIER_SIDE, device);
        let logits = tch::no_grad(|| model.logits(&blank))
            .map_err(|e| refuse(files, format!("forward on a blank input failed: {e}")))?;
        let classes = model.meta.classes.len() as i64;
        if logits.size() != [1, classes] {
            return Err(refuse(
                files,
                format!(
                    "forward returned shape {:?} for one image; expected [1, {classes}] logits, \
                     one per class the JSON lists",
                    logits.size()
                ),
            ));
        }
        if let Some(pair) = tch::no_grad(|| model.features_and_logits(&blank)) {
            let (features, split_logits) =
                pair.map_err(|e| refuse(files, format!("features/head on a blank input: {e}")))?;
            let diff = f64::try_from((&split_logits - &logits).abs().max())?;
            if features.dim() != 4 || diff > 1e-4 {
                return Err(refuse(
                    files,
                    format!(
                        "features gave shape {:?} (expected [1, C, h, w]) and head(features) \
                         differs from forward by {diff:.2e}",
                        features.size()
                    ),
                ));
            }
        }
        Ok(model)
    }

    fn method(&self, name: &str, input: &Tensor) -> Result<Tensor> {
        match self
            .module
            .method_is(name, &[IValue::Tensor(input.shallow_clone())])?
        {
            IValue::Tensor(t) => Ok(t),
            other => Err(CoreError::Backend {
                backend: "TorchScript",
                reason: format!("the method {name} returned {other:?}, not a tensor"),
            }),
        }
    }
}

impl Classifier for ScriptClassifier {
    fn classes(&self) -> &[String] {
        &self.meta.classes
    }

    fn threshold(&self) -> f32 {
        self.meta.threshold
    }

    fn device(&self) -> Device {
        self.device
    }

    fn input_style(&self) -> InputStyle {
        self.meta.input
    }

    fn trust(&self) -> Option<&TrustModel> {
        self.meta.trust.as_ref()
    }

    fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        Ok(self.module.forward_ts(&[batch.f_to_device(self.device)?])?)
    }

    fn features_and_logits(&self, batch: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
        let (features, head) = self.split.as_ref()?;
        Some((|| {
            let x = batch.f_to_device(self.device)?;
            let f = self.method(features, &x)?;
            let logits = self.method(head, &f)?;
            Ok((f, logits))
        })())
    }

    fn gradients(&self) -> Gradients {
        if self.split.is_some() {
            Gradients::FeatureMap
        } else {
            Gradients::Input
        }
    }
}

/// A scripted PyTorch lung segmenter.
pub struct ScriptSegmenter {
    module: CModule,
    pub meta: ModelMeta<ScriptSpec>,
    device: Device,
}

impl ScriptSegmenter {
    pub fn load(files: &ModelFiles, device: Device) -> Result<Self> {
        let (module, meta) = open(files, device, None)?;
        let model = Self {
            module,
            meta,
            device,
        };
        let side = model.meta.input_side;
        let logits = tch::no_grad(|| model.module.forward_ts(&[blank(side, device)]))
            .map_err(|e| refuse(files, format!("forward on a blank input failed: {e}")))?;
        let side = i64::from(side);
        if logits.size() != [1, 1, side, side] {
            return Err(refuse(
                files,
                format!(
                    "forward returned shape {:?}; expected [1, 1, {side}, {side}] lung logits",
                    logits.size()
                ),
            ));
        }
        Ok(model)
    }
}

impl Segmenter for ScriptSegmenter {
    fn segment(&self, gray: &GrayF32) -> Result<LungMask> {
        let side = self.meta.input_side;
        let input = Tensor::from_slice(&preprocess::segmenter_input(gray, side))
            .f_view([1, 1, i64::from(side), i64::from(side)])?
            .f_to_device(self.device)?;
        let probabilities = tch::no_grad(|| self.module.forward_ts(&[input]))?
            .f_sigmoid()?
            .f_to_device(Device::Cpu)?;
        super::lung_mask(&probabilities, gray, self.meta.threshold)
    }

    fn input_side(&self) -> u32 {
        self.meta.input_side
    }

    fn shape(&self) -> Option<&crate::shape::ShapeModel> {
        self.meta.shape.as_ref()
    }
}
