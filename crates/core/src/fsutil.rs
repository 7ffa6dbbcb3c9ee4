//! Writes that never leave a half-written file behind: write beside the target, sync, rename.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CoreError, Result};

/// A temporary sibling of `path` that keeps its extension (libtorch picks formats by it). The
/// process id and a counter keep concurrent writers of one path (threads or processes) apart.
fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".tmp-{}-{n}-{name}", std::process::id()))
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    }
    let tmp = temp_sibling(path);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CoreError::io(path, e)
    })
}

/// Saves `vs` to `path` atomically and returns the SHA-256 of what was written.
pub fn save_var_store(vs: &tch::nn::VarStore, path: &Path) -> Result<String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
    }
    let tmp = temp_sibling(path);
    vs.save(&tmp).map_err(|e| CoreError::ModelLoad {
        path: path.into(),
        source: Box::new(e),
    })?;
    let digest =
        crate::models::sha256_hex(&std::fs::read(&tmp).map_err(|e| CoreError::io(&tmp, e))?);
    std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
    Ok(digest)
}
