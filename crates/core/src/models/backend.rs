//! Which backend runs a model, and the one dispatch per backend: a new backend (or
//! accelerator) is a file beside this one and an arm in [`segmenter`] and [`classifier`].
//! Which *format* a model is stored in (native or TorchScript) is the libtorch backend's
//! business ([`super::load_segmenter`], [`super::load_classifier`]).

use std::path::PathBuf;

use tch::Device;

use super::onnx::{OnnxClassifier, OnnxSegmenter};
use super::{Classifier, Format, ModelFiles, Segmenter};
use crate::compute::{Backend, Compute, Precision};
use crate::{CoreError, Result};

/// A model as loaded for a backend, and the exported file that backend runs, if not the
/// model's own weights.
pub struct Loaded<M: ?Sized> {
    pub model: Box<M>,
    pub export: Option<Export>,
}

/// An exported model file a backend runs (an ONNX export, FP32 or INT8).
#[derive(Debug, Clone)]
pub struct Export {
    pub file: PathBuf,
    pub precision: Precision,
}

impl<M: ?Sized> Loaded<M> {
    /// A model that runs its own weights.
    fn own(model: Box<M>) -> Self {
        Self {
            model,
            export: None,
        }
    }

    /// A model that runs the export `file`.
    fn exported(model: Box<M>, file: PathBuf, precision: Precision) -> Self {
        Self {
            model,
            export: Some(Export { file, precision }),
        }
    }

    /// Whether it runs an INT8 export.
    #[must_use]
    pub fn is_int8(&self) -> bool {
        self.export
            .as_ref()
            .is_some_and(|e| e.precision == Precision::Int8)
    }
}

/// The segmenter `files` describe, on `backend` (resolved: see [`choose`]).
pub fn segmenter(
    files: &ModelFiles,
    backend: Backend,
    compute: &Compute,
) -> Result<Loaded<dyn Segmenter>> {
    match backend {
        Backend::Onnx => {
            onnx_applies(files, compute)?;
            let model = OnnxSegmenter::load(files, compute.threads(), compute.precision)?;
            let (file, precision) = (model.file.clone(), model.precision);
            Ok(Loaded::exported(Box::new(model), file, precision))
        }
        Backend::Torch | Backend::Auto => {
            torch_precision(compute)?;
            Ok(Loaded::own(super::load_segmenter(files, compute.device)?))
        }
    }
}

/// The classifier `files` describe, on `backend` (resolved: see [`choose`]). On ONNX Runtime it
/// keeps its libtorch twin for the gradients the explainers need.
pub fn classifier(
    files: &ModelFiles,
    backend: Backend,
    compute: &Compute,
) -> Result<Loaded<dyn Classifier>> {
    match backend {
        Backend::Onnx => {
            onnx_applies(files, compute)?;
            let torch = super::load_classifier(files, compute.device)?;
            let model = OnnxClassifier::load(files, torch, compute.threads(), compute.precision)?;
            let export = Export {
                file: model.file.clone(),
                precision: model.precision,
            };
            Ok(Loaded {
                model: Box::new(model),
                export: Some(export),
            })
        }
        Backend::Torch | Backend::Auto => {
            torch_precision(compute)?;
            Ok(Loaded {
                model: super::load_classifier(files, compute.device)?,
                export: None,
            })
        }
    }
}

/// The backend that runs the models `files`: the one `compute` names, and for `auto` ONNX
/// Runtime unless [`onnx_unavailable`] says why not (logged). Never `auto`.
#[must_use]
pub fn choose(files: &[&ModelFiles], compute: &Compute) -> Backend {
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
    super::onnx::environment().err().map(|why| why.to_string())
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
