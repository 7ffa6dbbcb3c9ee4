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
