//! Decode, segment, preprocess, classify: one radiograph end to end, with per-stage timings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::Device;

use crate::compute::{Compute, Precision};
use crate::mask::{self, LungMask};
use crate::models::{self, Classifier, ModelFiles, Prediction, Segmenter, backend};
use crate::preprocess::{self, ClassifierInput};
use crate::trust::{self, Assessment, Flag, ImageChecks, LungShape, TrustModel};
use crate::xray::Xray;
use crate::{CoreError, Result};

/// File names of the shipped models inside a models directory.
pub const SEGMENTER_NAME: &str = "segmenter";
pub const CLASSIFIER_NAME: &str = "classifier";

/// The two models, loaded once.
pub struct Pipeline {
    pub segmenter: Box<dyn Segmenter>,
    pub classifier: Box<dyn Classifier>,
    /// How the models run; its backend is the one in use, [`crate::compute::Backend::Torch`] or
    /// [`crate::compute::Backend::Onnx`] (`auto` is resolved when loading). A thread that takes the pipeline
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

/// The lungs' bounding box in the radiograph's own pixels (`x`, `y` its top left corner): what
/// a viewer zooms to, and what the classifier's crop is built around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LungBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl LungBox {
    /// The box of the mask's lung pixels, scaled from the mask's grid to a `width` x `height`
    /// radiograph; `None` when the mask has no lung.
    #[must_use]
    pub fn of(mask: &LungMask, width: u32, height: u32) -> Option<Self> {
        let lungs = crate::mask::lung_box(mask)?;
        let (mw, mh) = mask.dimensions();
        let scale = |v: u32, from: u32, to: u32| {
            u32::try_from(u64::from(v) * u64::from(to) / u64::from(from.max(1))).unwrap_or(to)
        };
        let (x, y) = (scale(lungs.x0, mw, width), scale(lungs.y0, mh, height));
        Some(Self {
            x,
            y,
            width: scale(lungs.x1, mw, width).saturating_sub(x).max(1),
            height: scale(lungs.y1, mh, height).saturating_sub(y).max(1),
        })
    }

    /// The box's centre as shares of the radiograph's width and height.
    #[must_use]
    pub fn centre(&self, width: u32, height: u32) -> (f32, f32) {
        let share = |start: u32, size: u32, of: u32| {
            ((f64::from(start) + f64::from(size) / 2.0) / f64::from(of.max(1))) as f32
        };
        (
            share(self.x, self.width, width),
            share(self.y, self.height, height),
        )
    }
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
    /// Where the segmenter found the lungs (absent when it found none, and in reports cached
    /// before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_box: Option<LungBox>,
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
        let files = [
            ModelFiles::new(dir, SEGMENTER_NAME),
            ModelFiles::new(dir, CLASSIFIER_NAME),
        ];
        let chosen = backend::choose(&[&files[0], &files[1]], compute);
        let segmenter = backend::segmenter(&files[0], chosen, compute)?;
        let classifier = backend::classifier(&files[1], chosen, compute)?;
        if compute.precision == Precision::Int8 && !segmenter.is_int8() && !classifier.is_int8() {
            return Err(crate::models::onnx::no_int8(&files[0]));
        }
        let exports: Vec<PathBuf> = [&segmenter.export, &classifier.export]
            .into_iter()
            .flatten()
            .map(|e| e.file.clone())
            .collect();
        if let (Some(s), Some(c)) = (&segmenter.export, &classifier.export) {
            tracing::info!(
                "forward passes on ONNX Runtime: {} ({}), {} ({})",
                s.file.display(),
                s.precision.name(),
                c.file.display(),
                c.precision.name()
            );
        }
        // The bytes the models were loaded from (read once, kept by `files`), in a fixed order.
        let mut hasher = Sha256::new();
        for model in &files {
            for path in model.parts()? {
                hasher.update(model.read(&path, models::MAX_MODEL_BYTES)?);
            }
        }
        for (model, export) in files.iter().zip(&exports) {
            hasher.update(model.read(export, models::MAX_MODEL_BYTES)?);
        }
        Ok(Self {
            segmenter: segmenter.model,
            classifier: classifier.model,
            compute: compute.with_backend(chosen),
            fingerprint: format!("{:x}", hasher.finalize()),
            files: files.iter().flat_map(ModelFiles::files_read).collect(),
        })
    }

    /// The segmenter alone (`cxr segment`), on the backend `compute` asks for.
    pub fn load_segmenter(dir: &Path, compute: &Compute) -> Result<Box<dyn Segmenter>> {
        compute.apply();
        let files = ModelFiles::new(dir, SEGMENTER_NAME);
        let segmenter = backend::segmenter(&files, backend::choose(&[&files], compute), compute)?;
        if compute.precision == Precision::Int8 && !segmenter.is_int8() {
            return Err(crate::models::onnx::no_int8(&files));
        }
        if let Some(export) = &segmenter.export {
            tracing::info!("segmenter: {}", export.file.display());
        }
        Ok(segmenter.model)
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
        let classified = self.classify_segmented(&*self.classifier, &xray, &mask)?;
        let timings = Timings {
            decode_ms: 0.0,
            segment_ms,
            preprocess_ms: classified.preprocess_ms,
            classify_ms: classified.classify_ms,
            total_ms: ms(start),
        };
        Ok(Analysis {
            xray,
            mask,
            input: classified.input,
            prediction: classified.prediction,
            features: classified.features,
            timings,
        })
    }

    /// The classification half of [`Pipeline::analyse`] for a radiograph this pipeline's
    /// segmenter has segmented, by `classifier`: this pipeline's own, or another trained on the
    /// same masks (`cxr eval --leave-one-source-out` puts each image through every fold's
    /// model after segmenting it once). A radiograph judged not to be a chest radiograph is
    /// [`CoreError::NotARadiograph`].
    pub fn classify_segmented(
        &self,
        classifier: &dyn Classifier,
        xray: &Xray,
        mask: &LungMask,
    ) -> Result<Segmented> {
        let t = Instant::now();
        let input = preprocess::classifier_input(&xray.gray, mask, classifier.input_style());
        let tensor = input.to_tensor(self.compute.device);
        let preprocess_ms = ms(t);
        let t = Instant::now();
        let (mut prediction, features) = classifier.predict_with_features(&tensor)?;
        let classify_ms = ms(t);
        prediction.trust = assess(classifier.trust(), xray, mask, features.as_deref());
        let familiar = classifier.trust().and_then(|t| t.mask_shapes.as_ref());
        prediction.trust.shape_verdict(
            self.segmenter
                .shape()
                .and_then(|shape| shape.verdict(&shape.measure(mask)?, familiar)),
        );
        if prediction.trust.has(Flag::NotAChestRadiograph) {
            return Err(CoreError::NotARadiograph {
                path: xray.path.clone(),
                reason: prediction.trust.reasons.join("; "),
            });
        }
        Ok(Segmented {
            input,
            prediction,
            features,
            preprocess_ms,
            classify_ms,
        })
    }
}

/// What [`Pipeline::classify_segmented`] learns.
pub struct Segmented {
    pub input: ClassifierInput,
    pub prediction: Prediction,
    /// The classifier's pooled features, when exposed.
    pub features: Option<Vec<f32>>,
    pub preprocess_ms: f64,
    pub classify_ms: f64,
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
            lung_box: LungBox::of(&self.mask, self.xray.width(), self.xray.height()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The box is found on the mask's grid and scaled to the radiograph; its centre is a share
    /// of the radiograph's size.
    #[test]
    fn lung_box_scales_from_the_mask_grid_to_the_radiograph() {
        // A 100x50 mask with lung in columns 20..60 and rows 10..30, for a 400x200 radiograph.
        let mask = LungMask::from_fn(100, 50, |x, y| {
            image::Luma([if (20..60).contains(&x) && (10..30).contains(&y) {
                255
            } else {
                0
            }])
        });
        let lungs = LungBox::of(&mask, 400, 200).unwrap();
        assert_eq!(
            lungs,
            LungBox {
                x: 80,
                y: 40,
                width: 160,
                height: 80
            }
        );
        assert_eq!(lungs.centre(400, 200), (0.4, 0.4));
        assert_eq!(LungBox::of(&LungMask::new(100, 50), 400, 200), None);
    }
}
