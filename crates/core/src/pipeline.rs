//! Decode, segment, preprocess, classify: one radiograph end to end, with per-stage timings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::compute::{Backend, Compute, Precision};
use crate::mask::{self, LungMask};
use crate::models::onnx::{OnnxClassifier, OnnxSegmenter};
use crate::models::{self, Classifier, Format, ModelFiles, Prediction, Segmenter};
use crate::preprocess::{self, ClassifierInput};
use crate::trust::{self, Assessment, Flag, ImageChecks, LungShape, TrustModel};
use crate::xray::Xray;
use crate::{CoreError, Result};

/// File names of the shipped models inside a models directory.
pub const SEGMENTER_NAME: &str = "segmenter";
pub const CLASSIFIER_NAME: &str = "classifier";

/// Both models, the backend that runs them and the ONNX files it runs (none on libtorch).
type Loaded = (
    Box<dyn Segmenter>,
    Box<dyn Classifier>,
    Backend,
    Vec<PathBuf>,
);

/// The two models, loaded once.
pub struct Pipeline {
    pub segmenter: Box<dyn Segmenter>,
    pub classifier: Box<dyn Classifier>,
    /// How the models run; its backend is the one in use, [`Backend::Torch`] or
    /// [`Backend::Onnx`] (`auto` is resolved when loading). A thread that takes the pipeline
    /// over calls [`Compute::apply`] first.
    pub compute: Compute,
    /// SHA-256 over both models' weights and metadata (and ONNX exports, when they run): part
    /// of every cache key, so results of another model are never served.
    pub fingerprint: String,
    /// The model files it was loaded from, each read once, in the order read.
    pub files: Vec<PathBuf>,
}

/// Milliseconds spent in each stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub decode_ms: f64,
    pub segment_ms: f64,
    pub preprocess_ms: f64,
    pub classify_ms: f64,
    pub total_ms: f64,
}

/// Everything the pipeline learns about one radiograph.
pub struct Analysis {
    pub xray: Xray,
    pub mask: LungMask,
    pub input: ClassifierInput,
    pub prediction: Prediction,
    /// The classifier's pooled features (what the familiarity score measures), when exposed.
    pub features: Option<Vec<f32>>,
    pub timings: Timings,
}

/// The JSON line `cxr classify` prints for one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyReport {
    pub file: PathBuf,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub label: String,
    pub probabilities: std::collections::BTreeMap<String, f32>,
    pub threshold: f32,
    /// Share of the image the segmenter marked as lung (near 0 means it found none).
    pub lung_fraction: f32,
    /// Familiarity score and flags (`unfamiliar`, `implausible-lungs`).
    pub trust: Assessment,
    pub timings: Timings,
    /// DICOM patient and study identifiers, only when asked for
    /// ([`Analysis::report_with_identifiers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifiers: Option<crate::dicom::DicomIdentifiers>,
}

impl Pipeline {
    /// Loads `segmenter` and `classifier` from `dir` onto `device`, on the automatic backend
    /// with all the cores (see [`Pipeline::load_with`]).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        Self::load_with(dir, &Compute::on(device))
    }

    /// Loads both models from `dir` as `compute` says. `auto` runs forward passes on ONNX
    /// Runtime when both models are native, have ONNX exports beside them, ONNX Runtime is
    /// installed and the device is the CPU, and on libtorch otherwise (the reason is logged).
    /// An export that is there but unusable (made from other weights, damaged) is an error,
    /// never a reason to fall back: it means the model folder is not what it claims to be.
    pub fn load_with(dir: &Path, compute: &Compute) -> Result<Self> {
        compute.apply();
        let files = (
            ModelFiles::new(dir, SEGMENTER_NAME),
            ModelFiles::new(dir, CLASSIFIER_NAME),
        );
        let (segmenter, classifier, backend, onnx_files) =
            match backend_for(&[&files.0, &files.1], compute) {
                Backend::Onnx => Self::onnx_models(&files, compute)?,
                _ => Self::torch_models(&files, compute)?,
            };
        // The bytes the models were loaded from (read once, kept by `files`), in a fixed order.
        let mut hasher = Sha256::new();
        for model in [&files.0, &files.1] {
            for path in model.parts()? {
                hasher.update(model.read(&path, models::MAX_MODEL_BYTES)?);
            }
        }
        for (model, export) in [&files.0, &files.1].into_iter().zip(&onnx_files) {
            hasher.update(model.read(export, models::MAX_MODEL_BYTES)?);
        }
        let mut files_read = files.0.files_read();
        files_read.extend(files.1.files_read());
        Ok(Self {
            segmenter,
            classifier,
            compute: compute.with_backend(backend),
            fingerprint: format!("{:x}", hasher.finalize()),
            files: files_read,
        })
    }

    /// The segmenter alone (`cxr segment`), on the backend `compute` asks for.
    pub fn load_segmenter(dir: &Path, compute: &Compute) -> Result<Box<dyn Segmenter>> {
        compute.apply();
        let files = ModelFiles::new(dir, SEGMENTER_NAME);
        let onnx = || -> Result<Box<dyn Segmenter>> {
            onnx_applies(&files, compute)?;
            let segmenter = OnnxSegmenter::load(&files, compute.threads(), compute.precision)?;
            if compute.precision == Precision::Int8 && segmenter.precision != Precision::Int8 {
                return Err(crate::models::onnx::no_int8(&files));
            }
            tracing::info!("segmenter: {}", segmenter.file.display());
            Ok(Box::new(segmenter))
        };
        let torch = || -> Result<Box<dyn Segmenter>> {
            torch_precision(compute)?;
            models::load_segmenter(&files, compute.device)
        };
        match backend_for(&[&files], compute) {
            Backend::Onnx => onnx(),
            _ => torch(),
        }
    }

    fn torch_models(
        (segmenter, classifier): &(ModelFiles, ModelFiles),
        compute: &Compute,
    ) -> Result<Loaded> {
        torch_precision(compute)?;
        Ok((
            models::load_segmenter(segmenter, compute.device)?,
            models::load_classifier(classifier, compute.device)?,
            Backend::Torch,
            Vec::new(),
        ))
    }

    /// Both models' forward passes on ONNX Runtime (the classifier keeps its libtorch twin for
    /// gradients); an error says why they cannot be.
    fn onnx_models(
        (segmenter_files, classifier_files): &(ModelFiles, ModelFiles),
        compute: &Compute,
    ) -> Result<Loaded> {
        onnx_applies(segmenter_files, compute)?;
        onnx_applies(classifier_files, compute)?;
        let torch = models::load_classifier(classifier_files, compute.device)?;
        let (threads, precision) = (compute.threads(), compute.precision);
        let segmenter = OnnxSegmenter::load(segmenter_files, threads, precision)?;
        let classifier = OnnxClassifier::load(classifier_files, torch, threads, precision)?;
        if precision == Precision::Int8
            && segmenter.precision != Precision::Int8
            && classifier.precision != Precision::Int8
        {
            return Err(crate::models::onnx::no_int8(segmenter_files));
        }
        let files = vec![segmenter.file.clone(), classifier.file.clone()];
        tracing::info!(
            "forward passes on ONNX Runtime: {} ({}), {} ({})",
            files[0].display(),
            segmenter.precision.name(),
            files[1].display(),
            classifier.precision.name()
        );
        Ok((
            Box::new(segmenter),
            Box::new(classifier),
            Backend::Onnx,
            files,
        ))
    }

    /// Reads, decodes and analyses one file.
    pub fn analyse_file(&self, path: &Path) -> Result<Analysis> {
        let start = Instant::now();
        let xray = Xray::open(path)?;
        let decode_ms = ms(start);
        let mut analysis = self.analyse(xray)?;
        analysis.timings.decode_ms = decode_ms;
        analysis.timings.total_ms += decode_ms;
        Ok(analysis)
    }

    /// Segments and classifies a decoded radiograph.
    pub fn analyse(&self, xray: Xray) -> Result<Analysis> {
        let start = Instant::now();
        let mask = self.segmenter.segment(&xray.gray)?;
        let segment_ms = ms(start);
        let t = Instant::now();
        let input = preprocess::classifier_input(&xray.gray, &mask, self.classifier.input_style());
        let tensor = input.to_tensor(self.compute.device);
        let preprocess_ms = ms(t);
        let t = Instant::now();
        let (mut prediction, features) = self.classifier.predict_with_features(&tensor)?;
        let classify_ms = ms(t);
        prediction.trust = assess(self.classifier.trust(), &xray, &mask, features.as_deref());
        prediction
            .trust
            .shape_verdict(self.segmenter.shape().and_then(|shape| shape.judge(&mask)));
        if prediction.trust.has(Flag::NotAChestRadiograph) {
            return Err(CoreError::NotARadiograph {
                path: xray.path.clone(),
                reason: prediction.trust.reasons.join("; "),
            });
        }
        let timings = Timings {
            decode_ms: 0.0,
            segment_ms,
            preprocess_ms,
            classify_ms,
            total_ms: ms(start),
        };
        Ok(Analysis {
            xray,
            mask,
            input,
            prediction,
            features,
            timings,
        })
    }
}

impl ClassifyReport {
    /// The prediction this report was made from.
    #[must_use]
    pub fn prediction(&self) -> Prediction {
        Prediction {
            probabilities: self.probabilities.clone(),
            label: self.label.clone(),
            threshold: self.threshold,
            trust: self.trust.clone(),
        }
    }
}

impl Analysis {
    /// The report without patient or study identifiers.
    #[must_use]
    pub fn report(&self) -> ClassifyReport {
        self.report_with_identifiers(false)
    }

    /// The report, with the DICOM identifiers when `identifiers` is set and the input had them.
    #[must_use]
    pub fn report_with_identifiers(&self, identifiers: bool) -> ClassifyReport {
        ClassifyReport {
            file: self.xray.path.clone(),
            sha256: self.xray.sha256.clone(),
            width: self.xray.width(),
            height: self.xray.height(),
            label: self.prediction.label.clone(),
            probabilities: self.prediction.probabilities.clone(),
            threshold: self.prediction.threshold,
            lung_fraction: mask::coverage(&self.mask),
            trust: self.prediction.trust.clone(),
            timings: self.timings,
            identifiers: if identifiers {
                self.xray.identifiers.clone()
            } else {
                None
            },
        }
    }
}

/// Refuses `--precision int8` on libtorch: only ONNX Runtime runs the INT8 exports.
fn torch_precision(compute: &Compute) -> Result<()> {
    if compute.precision == Precision::Int8 {
        return Err(CoreError::Unsupported {
            reason: "--precision int8 runs on ONNX Runtime (--backend onnx or auto, on the CPU)"
                .into(),
        });
    }
    Ok(())
}

/// Whether the model `files` describe can run on ONNX Runtime as `compute` asks: a native
/// model on the CPU; `Err` says why not.
fn onnx_applies(files: &ModelFiles, compute: &Compute) -> Result<()> {
    if compute.device != Device::Cpu {
        return Err(CoreError::Unsupported {
            reason: "the ONNX backend runs on the CPU only (use --backend torch on CUDA)".into(),
        });
    }
    if files.format()? != Format::NativeSafetensors {
        return Err(CoreError::Unsupported {
            reason: format!(
                "{}: ONNX exports are made of native models only",
                files.meta.display()
            ),
        });
    }
    Ok(())
}

/// The backend that runs the models `files`: the one `compute` names, and for `auto` ONNX
/// Runtime unless [`onnx_unavailable`] says why not (logged). Never `auto`.
fn backend_for(files: &[&ModelFiles], compute: &Compute) -> Backend {
    match compute.backend {
        Backend::Auto => match onnx_unavailable(files, compute) {
            None => Backend::Onnx,
            Some(why) => {
                tracing::info!("forward passes on libtorch: {why}");
                Backend::Torch
            }
        },
        chosen => chosen,
    }
}

/// Why the automatic backend runs the models `files` on libtorch: the device is not the CPU, a
/// model is not native, an export is missing, or ONNX Runtime is not installed. `None`: ONNX
/// Runtime runs them, and whatever then fails is an error.
fn onnx_unavailable(files: &[&ModelFiles], compute: &Compute) -> Option<String> {
    for files in files {
        if let Err(why) = onnx_applies(files, compute) {
            return Some(why.to_string());
        }
        let onnx = files.onnx();
        if !onnx.is_file() {
            return Some(format!("{}: no ONNX export", onnx.display()));
        }
    }
    crate::models::onnx::environment()
        .err()
        .map(|why| why.to_string())
}

/// Familiarity and flags of one analysed radiograph: the input checks always, the feature and
/// lung-range checks when the classifier was trained with a trust model.
fn assess(
    model: Option<&TrustModel>,
    xray: &Xray,
    mask: &LungMask,
    features: Option<&[f32]>,
) -> Assessment {
    let lungs = LungShape::of(mask);
    match (model, features) {
        (Some(model), Some(f)) if f.len() == model.feature_mean.len() => {
            model.assess(f, &ImageChecks::of(xray), lungs)
        }
        _ => trust::assess_input(lungs, trust::Appearance::of(xray)),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}
