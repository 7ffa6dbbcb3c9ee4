//! How the models run in this process: the device, the inference backend and the threads each
//! model uses. Every command decides this once, here, from its options (`--device`,
//! `--backend`, `--threads`, `--jobs`); this is the one place the thread policy lives.
//!
//! The policy: the cores that are not busy when the command starts (the program measures them,
//! [`crate::host::idle_cores`], and hands them in with [`Compute::with_idle_cores`]; all the
//! available cores otherwise) are shared out between the workers that run at once (one worker
//! for `classify`, `explain` and the viewer; `--jobs N` for the watch folder, the worker and the
//! server), at least one thread each. Oversubscribing cores is what makes libtorch's OpenMP
//! kernels crawl when another process holds a core: every parallel region waits for its slowest
//! thread (measured on this project's 2-core machine under a load of 4: `cxr classify` of the six
//! samples took 6.5-7.9 s with two libtorch threads and 1.9 s with one; ONNX Runtime 2.8-3.0 s
//! and 1.5-1.6 s).

use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::{CoreError, Result};

/// The number format ONNX Runtime runs the models in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// INT8 where the models have INT8 exports whose export-time check against FP32 passed
    /// (`python/quantise_onnx.py`), FP32 otherwise.
    #[default]
    Auto,
    /// 32-bit floats: the weights as trained.
    Fp32,
    /// Every INT8 export there is (`NAME.int8.onnx`), checked or not, FP32 for a model
    /// without one; an error when no model has one.
    Int8,
}

impl Precision {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fp32 => "fp32",
            Self::Int8 => "int8",
        }
    }
}

/// Which library runs the models' forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// ONNX Runtime when the models have current ONNX exports and the library loads (on the
    /// CPU), libtorch otherwise.
    #[default]
    Auto,
    /// libtorch for everything.
    Torch,
    /// ONNX Runtime for forward passes (libtorch still computes gradients); an error when it
    /// cannot be used.
    Onnx,
}

impl Backend {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Torch => "torch",
            Self::Onnx => "onnx",
        }
    }
}

impl FromStr for Backend {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "torch" => Ok(Self::Torch),
            "onnx" => Ok(Self::Onnx),
            _ => Err(CoreError::Invalid(format!(
                "--backend {s}: expected auto, torch or onnx"
            ))),
        }
    }
}

/// Where and how models run: chosen once per command, handed to everything that loads models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub device: Device,
    pub backend: Backend,
    /// On ONNX Runtime: FP32 or INT8 files ([`Precision::Auto`] is resolved per model).
    pub precision: Precision,
    /// Intra-op threads per worker the user asked for (`--threads`, `CXR_THREADS`).
    pub requested_threads: Option<usize>,
    /// Workers that run models at once in this process.
    pub workers: usize,
    /// Cores not busy with other work, as the program measured them once at start-up (all the
    /// available cores unless told): every model a command loads gets the same thread count.
    idle_cores: usize,
}

impl Compute {
    /// One worker on `device` with the automatic backend and the policy's threads, sharing all
    /// the available cores (a program that measured how many are idle says so with
    /// [`Self::with_idle_cores`]).
    #[must_use]
    pub fn on(device: Device) -> Self {
        Self {
            device,
            backend: Backend::Auto,
            precision: Precision::Auto,
            requested_threads: None,
            workers: 1,
            idle_cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        }
    }

    /// The workers share `cores` (at least one) instead of all the available cores: the cores
    /// other work leaves idle, measured by the program ([`crate::host::idle_cores`]).
    #[must_use]
    pub fn with_idle_cores(self, cores: usize) -> Self {
        Self {
            idle_cores: cores.max(1),
            ..self
        }
    }

    #[must_use]
    pub fn with_backend(self, backend: Backend) -> Self {
        Self { backend, ..self }
    }

    #[must_use]
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }

    /// Exactly `threads` per worker (`None`: the policy decides).
    #[must_use]
    pub fn with_threads(self, threads: Option<usize>) -> Self {
        Self {
            requested_threads: threads,
            ..self
        }
    }

    /// `workers` running models at once, sharing the cores.
    #[must_use]
    pub fn for_workers(self, workers: usize) -> Self {
        Self {
            workers: workers.max(1),
            ..self
        }
    }

    /// Intra-op threads of each worker (libtorch and ONNX Runtime alike).
    #[must_use]
    pub fn threads(&self) -> usize {
        match self.requested_threads {
            Some(n) => n.max(1),
            None => (self.idle_cores / self.workers).max(1),
        }
    }

    /// Applies the thread count to libtorch on the calling thread; each worker thread calls it
    /// (through [`crate::pipeline::Pipeline::load_with`]) before it runs a model. ONNX Runtime
    /// sessions take the count when they are made. Nothing process-wide is set here: the
    /// allocator's settings are the program's ([`crate::host::reuse_freed_memory`]).
    pub fn apply(&self) {
        tch::set_num_threads(i32::try_from(self.threads()).unwrap_or(i32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_shared_between_workers_and_never_below_one() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let cpu = Compute::on(Device::Cpu);
        // Unless the program says how many cores are idle, the library shares all of them.
        assert_eq!(cpu.threads(), cores);
        assert_eq!(cpu.for_workers(cores * 4).threads(), 1);
        assert_eq!(cpu.for_workers(3).with_threads(Some(5)).threads(), 5);
        assert_eq!(cpu.with_threads(Some(0)).threads(), 1);
    }

    #[test]
    fn the_idle_cores_given_are_shared_out() {
        let cpu = Compute::on(Device::Cpu).with_idle_cores(6);
        assert_eq!(cpu.threads(), 6);
        assert_eq!(cpu.for_workers(2).threads(), 3);
        assert_eq!(cpu.for_workers(4).threads(), 1);
        assert_eq!(cpu.for_workers(7).threads(), 1);
        assert_eq!(cpu.with_idle_cores(0).threads(), 1);
        assert_eq!(cpu.with_idle_cores(0).for_workers(3).threads(), 1);
        assert_eq!(cpu.for_workers(2).with_threads(Some(4)).threads(), 4);
    }

    #[test]
    fn an_explicit_thread_count_wins_over_the_share() {
        let compute = Compute::on(Device::Cpu).for_workers(64);
        assert_eq!(compute.threads(), 1);
        assert_eq!(compute.with_threads(Some(3)).threads(), 3);
        assert!(Compute::on(Device::Cpu).threads() >= 1);
    }

    #[test]
    fn backends_parse_and_refuse_others() {
        assert_eq!("onnx".parse::<Backend>().unwrap(), Backend::Onnx);
        assert_eq!("torch".parse::<Backend>().unwrap(), Backend::Torch);
        assert_eq!("auto".parse::<Backend>().unwrap(), Backend::Auto);
        let e = "tensorrt".parse::<Backend>().unwrap_err().to_string();
        assert!(e.contains("expected auto, torch or onnx"), "{e}");
    }
}
