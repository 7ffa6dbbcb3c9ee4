//! Shared set-up for the criterion benchmarks in this folder (`cargo bench -p cxr-benches`).

use std::path::{Path, PathBuf};

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
