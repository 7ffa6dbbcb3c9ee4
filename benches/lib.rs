//! Shared set-up for the criterion benchmarks in this folder (`cargo bench -p cxr-benches`).

use std::path::{Path, PathBuf};

use cxr_core::compute::Compute;
use cxr_core::host;
use cxr_core::pipeline::Pipeline;
use cxr_core::tch::Device;

/// Models on the CPU as the `cxr` binary runs them, so the figures are the binary's: the
/// process's allocator keeps what libtorch frees ([`host::reuse_freed_memory`]: a quarter of
/// the U-Net's forward otherwise) and the workers share the cores other work leaves idle
/// ([`host::idle_cores`]). The binary does both at start-up; a benchmark calls this before it
/// loads a model.
#[must_use]
pub fn cpu() -> Compute {
    host::reuse_freed_memory();
    Compute::on(Device::Cpu).with_idle_cores(host::idle_cores())
}

/// The models in `dir`, on [`cpu`].
#[must_use]
pub fn load_pipeline(dir: &Path) -> Pipeline {
    Pipeline::load_with(dir, &cpu()).expect("shipped models")
}

/// The repository root.
#[must_use]
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A committed sample radiograph (512 px on its longer side).
#[must_use]
pub fn sample(name: &str) -> PathBuf {
    repo().join("samples").join(name)
}

/// The same PNG with a `tEXt` chunk after its header: the same picture in other bytes (a new
/// content hash, so a cache or a queue sees a new file).
#[must_use]
pub fn with_text(png: &[u8], text: &str) -> Vec<u8> {
    const AFTER_IHDR: usize = 8 + 4 + 4 + 13 + 4;
    let mut chunk = b"tEXt".to_vec();
    chunk.extend_from_slice(b"cxr-bench\0");
    chunk.extend_from_slice(text.as_bytes());
    let mut out = png[..AFTER_IHDR].to_vec();
    out.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}
