//! The ONNX Runtime backend: the forward passes of the native models, exported to `NAME.onnx`
//! beside their weights (`python/export_onnx.py`, run by `cxr train`), on ONNX Runtime's CPU
//! kernels, which are several times faster than libtorch's for these small networks.
//!
//! It only ever runs forward passes. The classifier wraps the libtorch model it was exported
//! from: whatever needs autograd (Grad-CAM, Integrated Gradients, the randomisation check) goes
//! to libtorch, plain classification and the perturbation explainers' batches (LIME, RISE,
//! occlusion) to ONNX Runtime. Both give the same numbers within 1e-4 (tests/onnx.rs).
//!
//! The shared library is the one `PyPI`'s `onnxruntime` wheel ships, installed by
//! `scripts/env.sh` like libtorch and found through `CXR_ONNXRUNTIME` (set at build time by
//! env.sh and remembered in the binary; set it at run time to use another copy). Nothing is
//! downloaded at build or run time.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use tch::{Device, Kind, Tensor};

use super::{Classifier, Gradients, ModelFiles, Prediction, Segmenter};
use crate::compute::Precision;
use crate::mask::LungMask;
use crate::preprocess::{self, InputStyle};
use crate::trust::TrustModel;
use crate::xray::GrayF32;
use crate::{CoreError, Result};

/// The ONNX file's metadata key holding the SHA-256 of the weights it was exported from.
const WEIGHTS_KEY: &str = "cxr.weights_sha256";
/// The metadata key an INT8 export gets once its check against FP32 passed
/// (`python/quantise_onnx.py`): what was checked, and the worst differences.
const CHECK_KEY: &str = "cxr.precision_check";

/// Where ONNX Runtime's shared library is: `CXR_ONNXRUNTIME` now, else where it was at build.
fn library_path() -> Option<PathBuf> {
    std::env::var_os("CXR_ONNXRUNTIME")
        .map(PathBuf::from)
        .or_else(|| option_env!("CXR_ONNXRUNTIME_AT_BUILD").map(PathBuf::from))
}

/// ONNX Runtime, loaded once per process; the first outcome is final (it cannot load twice).
pub fn environment() -> Result<&'static Environment> {
    static LOADED: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = library_path().ok_or(
                "CXR_ONNXRUNTIME is not set (scripts/env.sh installs ONNX Runtime and sets it)",
            )?;
            if !path.is_file() {
                return Err(format!(
                    "{}: no such file (CXR_ONNXRUNTIME; scripts/env.sh installs ONNX Runtime)",
                    path.display()
                ));
            }
            ort::init_from(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .with_name("cxr")
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .as_ref()
        .map_err(|reason| CoreError::Unsupported {
            reason: format!("ONNX Runtime is not available: {reason}"),
        })
}

/// Whether `files` has an ONNX export made from its current weights; `Err` says why not.
pub fn export_of(files: &ModelFiles) -> Result<PathBuf> {
    let onnx = files.onnx();
    if !onnx.is_file() {
        return Err(CoreError::ModelLoad {
            path: onnx,
            source: "file not found (make it with `python python/export_onnx.py MODELS_DIR`)"
                .into(),
        });
    }
    Ok(onnx)
}

/// A session on the export of `files` at `precision`, the file it runs and the precision it
/// is. `Auto` takes the INT8 export when there is one whose check against FP32 passed; `Int8`
/// takes it whether checked or not (the export script runs its candidates so); both run FP32
/// when there is no INT8 file (the callers refuse `Int8` when no model ends up INT8).
fn session_for(
    files: &ModelFiles,
    threads: usize,
    precision: Precision,
) -> Result<(Mutex<Session>, PathBuf, Precision)> {
    let int8 = files.onnx_int8();
    if precision != Precision::Fp32 && int8.is_file() {
        let (session, checked) = open(files, &int8, threads)?;
        if checked || precision == Precision::Int8 {
            return Ok((session, int8, Precision::Int8));
        }
        tracing::info!(
            "{}: no passed check against FP32 recorded in it; running FP32",
            int8.display()
        );
    }
    let fp32 = export_of(files)?;
    let (session, _) = open(files, &fp32, threads)?;
    Ok((session, fp32, Precision::Fp32))
}

/// The error for `--precision int8` when no model has an INT8 export.
#[must_use]
pub fn no_int8(files: &ModelFiles) -> CoreError {
    CoreError::ModelLoad {
        path: files.onnx_int8(),
        source: "file not found (make the INT8 exports with `python python/quantise_onnx.py \
                 MODELS_DIR`)"
            .into(),
    }
}

/// An ONNX Runtime session on `path` (an export of `files`) with `threads` intra-op threads,
/// refused unless the file was exported from `files`' weights; and whether it records a passed
/// precision check.
fn open(files: &ModelFiles, path: &Path, threads: usize) -> Result<(Mutex<Session>, bool)> {
    let environment = environment()?;
    let load_error = |e: &dyn std::fmt::Display| CoreError::ModelLoad {
        path: path.to_path_buf(),
        source: e.to_string().into(),
    };
    let session = Session::builder(environment)
        .map_err(|e| load_error(&e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| load_error(&e))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| load_error(&e))?
        .with_inter_threads(1)
        .map_err(|e| load_error(&e))?
        // Threads spin between the operators of one run (waking a sleeping thread for each of
        // these small kernels costs more than it saves) but stop when the run ends, so they
        // never compete with the Rust work on the image that follows (measured over
        // `analyse`: 69-76 ms with this, 78 ms without spinning, 121 ms spinning on after runs).
        .with_intra_op_spinning(true)
        .map_err(|e| load_error(&e))?
        .with_config_entry("session.force_spinning_stop", "1")
        .map_err(|e| load_error(&e))?
        .commit_from_memory(&files.read(path, super::MAX_MODEL_BYTES)?)
        .map_err(|e| load_error(&e))?;
    let metadata = session.metadata().map_err(|e| load_error(&e))?;
    let recorded = metadata.custom(WEIGHTS_KEY);
    let checked = metadata.custom(CHECK_KEY).is_some();
    drop(metadata);
    let weights = &files.weights;
    let actual = super::sha256_hex(&files.read(weights, super::MAX_MODEL_BYTES)?);
    if recorded.as_deref() != Some(actual.as_str()) {
        return Err(load_error(&format!(
            "exported from other weights than {} (export it again with `python \
             python/export_onnx.py MODELS_DIR`)",
            weights.display()
        )));
    }
    Ok((Mutex::new(session), checked))
}

/// Runs `session` on a batch `[N, 1, side, side]` given as a CPU slice, and returns the named
/// outputs as CPU tensors.
fn run<const K: usize>(
    session: &Mutex<Session>,
    shape: [usize; 4],
    pixels: &[f32],
    outputs: [&str; K],
) -> Result<[Tensor; K]> {
    let failed = |e: ort::Error| CoreError::Backend {
        backend: "ONNX Runtime",
        reason: e.to_string(),
    };
    let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
    let input = TensorRef::from_array_view((shape, pixels)).map_err(failed)?;
    let results = session
        .run(ort::inputs!["input" => input])
        .map_err(failed)?;
    let mut tensors = Vec::with_capacity(K);
    for name in outputs {
        let (dims, values) = results[name].try_extract_tensor::<f32>().map_err(failed)?;
        tensors.push(Tensor::from_slice(values).f_view(&**dims)?);
    }
    Ok(tensors
        .try_into()
        .unwrap_or_else(|_| unreachable!("one tensor per output name")))
}

/// The U-Net's forward pass on ONNX Runtime.
pub struct OnnxSegmenter {
    session: Mutex<Session>,
    /// The ONNX file it runs, and its precision.
    pub file: PathBuf,
    pub precision: Precision,
    side: u32,
    threshold: f32,
    shape: Option<crate::shape::ShapeModel>,
}

impl OnnxSegmenter {
    /// The export of the native segmenter `files` describes, at `precision`.
    pub fn load(files: &ModelFiles, threads: usize, precision: Precision) -> Result<Self> {
        let meta: super::ModelMeta<super::unet::UNetConfig> = files.read_meta()?;
        // The export runs instead of the network, but a JSON that describes an impossible one
        // is not trusted for the rest (its side and threshold) either.
        meta.architecture
            .check()
            .map_err(|reason| files.refused(reason))?;
        files.check_segmenter_side(meta.input_side, meta.architecture.down_sampling())?;
        let (session, file, precision) = session_for(files, threads, precision)?;
        Ok(Self {
            session,
            file,
            precision,
            side: meta.input_side,
            threshold: meta.threshold,
            shape: meta.shape,
        })
    }

    /// Lung logits for a batch of segmenter inputs `[N, 1, side, side]` (CPU, contiguous).
    pub fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        let [logits] = run_tensor(&self.session, batch, ["logits"])?;
        Ok(logits)
    }
}

impl Segmenter for OnnxSegmenter {
    fn segment(&self, gray: &GrayF32) -> Result<LungMask> {
        let side = self.side as usize;
        let input = preprocess::segmenter_input(gray, self.side);
        let [logits] = run(&self.session, [1, 1, side, side], &input, ["logits"])?;
        let probabilities: Vec<f32> = Vec::<f32>::try_from(logits.f_view([-1])?)?
            .into_iter()
            .map(|logit| 1.0 / (1.0 + (-logit).exp()))
            .collect();
        super::lung_mask_of(&probabilities, side, gray, self.threshold)
    }

    fn input_side(&self) -> u32 {
        self.side
    }

    fn shape(&self) -> Option<&crate::shape::ShapeModel> {
        self.shape.as_ref()
    }
}

/// `run` on a tensor: copied to a contiguous CPU `f32` buffer first.
fn run_tensor<const K: usize>(
    session: &Mutex<Session>,
    batch: &Tensor,
    outputs: [&str; K],
) -> Result<[Tensor; K]> {
    let size = batch.size();
    let [n, c, h, w] = size[..] else {
        return Err(CoreError::Internal(format!(
            "expected a batch [N, C, H, W], got {size:?}"
        )));
    };
    let pixels = Vec::<f32>::try_from(
        batch
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?
            .f_view([-1])?,
    )?;
    let shape = [n, c, h, w].map(|d| d as usize);
    run(session, shape, &pixels, outputs)
}

/// The classifier's forward pass on ONNX Runtime, with the libtorch model it was exported from
/// for everything that needs gradients.
pub struct OnnxClassifier {
    session: Mutex<Session>,
    /// The ONNX file it runs, and its precision.
    pub file: PathBuf,
    pub precision: Precision,
    torch: Box<dyn Classifier>,
}

impl OnnxClassifier {
    /// The export of the native classifier `files` describes at `precision`, beside `torch`,
    /// that classifier loaded on libtorch.
    pub fn load(
        files: &ModelFiles,
        torch: Box<dyn Classifier>,
        threads: usize,
        precision: Precision,
    ) -> Result<Self> {
        if torch.device() != Device::Cpu {
            return Err(CoreError::Unsupported {
                reason: "the ONNX backend runs on the CPU only (use --backend torch on CUDA)"
                    .into(),
            });
        }
        let (session, file, precision) = session_for(files, threads, precision)?;
        Ok(Self {
            session,
            file,
            precision,
            torch,
        })
    }
}

impl Classifier for OnnxClassifier {
    fn classes(&self) -> &[String] {
        self.torch.classes()
    }

    fn threshold(&self) -> f32 {
        self.torch.threshold()
    }

    fn device(&self) -> Device {
        Device::Cpu
    }

    /// ONNX Runtime, unless autograd must see this forward pass (its input needs gradients).
    fn logits(&self, batch: &Tensor) -> Result<Tensor> {
        if batch.requires_grad() {
            return self.torch.logits(batch);
        }
        let [logits] = run_tensor(&self.session, batch, ["logits"])?;
        Ok(logits)
    }

    fn features_and_logits(&self, batch: &Tensor) -> Option<Result<(Tensor, Tensor)>> {
        self.torch.features_and_logits(batch)
    }

    fn gradients(&self) -> Gradients {
        self.torch.gradients()
    }

    fn linear_head(&self) -> Option<Tensor> {
        self.torch.linear_head()
    }

    fn randomised(&self, seed: u64) -> Result<Box<dyn Classifier>> {
        self.torch.randomised(seed)
    }

    fn input_style(&self) -> InputStyle {
        self.torch.input_style()
    }

    fn trust(&self) -> Option<&TrustModel> {
        self.torch.trust()
    }

    /// One ONNX Runtime pass gives the logits and the pooled features together.
    fn predict_with_features(&self, input: &Tensor) -> Result<(Prediction, Option<Vec<f32>>)> {
        let [logits, features] = run_tensor(&self.session, input, ["logits", "features"])?;
        Ok((
            self.prediction_of(&logits)?,
            Some(Vec::<f32>::try_from(features.f_view([-1])?)?),
        ))
    }
}
