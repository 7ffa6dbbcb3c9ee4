//! How the models run in this process: the device, the inference backend and the threads each
//! model uses. Every command decides this once, here, from its options (`--device`,
//! `--backend`, `--threads`, `--jobs`); this is the one place the thread policy lives.
//!
//! The policy: the cores that are not busy when the command starts (the available cores less
//! the one-minute load average) are shared out between the workers that run at once (one worker
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
    /// Cores not busy with other work when this was made: measured once, so that every model a
    /// command loads gets the same thread count.
    idle_cores: usize,
}

impl Compute {
    /// One worker on `device` with the automatic backend and the policy's threads.
    #[must_use]
    pub fn on(device: Device) -> Self {
        Self {
            device,
            backend: Backend::Auto,
            precision: Precision::Auto,
            requested_threads: None,
            workers: 1,
            idle_cores: idle_cores(load_average()),
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
    /// sessions take the count when they are made.
    pub fn apply(&self) {
        tch::set_num_threads(i32::try_from(self.threads()).unwrap_or(i32::MAX));
        reuse_freed_memory();
    }
}

/// Keeps the memory libtorch frees for its next allocations, once per process.
///
/// A forward pass allocates and frees megabytes of activations per layer. With glibc's defaults
/// each such block is a fresh `mmap` (or the heap is trimmed after it), so the next pass faults
/// every page in again and the kernel zeroes it: about 6,600 page faults and a quarter of the
/// U-Net's time per forward on this project's machine (102 ms against 77 ms with this; PyTorch
/// in Python pays the same cost). Blocks of up to 1 GiB now come from the heap, and up to 1 GiB
/// of freed heap is kept for reuse rather than given back: the process keeps its peak footprint
/// instead of refaulting it.
fn reuse_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            #[allow(unsafe_code)]
            // SAFETY: mallopt only sets two of glibc's allocator parameters; it takes its own
            // lock, and blocks allocated before keep working.
            let accepted = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
            };
            if !accepted {
                tracing::debug!("glibc refused the allocator settings; freed memory goes back");
            }
        }
    });
}

/// The available cores less those other work keeps busy (`load`, the one-minute load average,
/// rounded down), at least one.
fn idle_cores(load: f64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let busy = if load.is_finite() && load > 0.0 {
        load as usize
    } else {
        0
    };
    cores.saturating_sub(busy).max(1)
}

/// The one-minute load average (Linux `/proc/loadavg`); 0 where there is none.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_shared_between_workers_and_never_below_one() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let cpu = Compute::on(Device::Cpu);
        assert!((1..=cores).contains(&cpu.threads()));
        assert_eq!(cpu.for_workers(cores * 4).threads(), 1);
        assert_eq!(cpu.for_workers(3).with_threads(Some(5)).threads(), 5);
        assert_eq!(cpu.with_threads(Some(0)).threads(), 1);
    }

    #[test]
    fn busy_cores_are_left_alone() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(idle_cores(0.0), cores);
        assert_eq!(idle_cores(0.9), cores);
        assert_eq!(idle_cores(1.2), (cores - 1).max(1));
        assert_eq!(idle_cores(1000.0), 1);
        assert_eq!(idle_cores(f64::NAN), cores);
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
