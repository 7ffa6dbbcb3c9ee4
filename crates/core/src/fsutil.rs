//! Writes that never leave a half-written file behind: write beside the target, sync, rename;
//! and where this user's own files go ([`user_folder`]).

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

/// `values` as a `NumPy` `.npy` file (version 1.0, little-endian `f32`, C order) of `shape`.
#[must_use]
pub fn npy_f32(values: &[f32], shape: [usize; 2]) -> Vec<u8> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        shape[0], shape[1]
    );
    // Magic (6) + version (2) + length (2) + header + newline: a multiple of 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + 4 * values.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(
        &u16::try_from(header.len())
            .unwrap_or(u16::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The kinds of per-user folder (XDG base directories) cxr keeps files in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserFolder {
    /// Results that can be made again (`$XDG_CACHE_HOME`, `~/.cache`).
    Cache,
    /// Logs (`$XDG_STATE_HOME`, `~/.local/state`).
    State,
    /// Data kept for the user (`$XDG_DATA_HOME`, `~/.local/share`): the server's uploads.
    Data,
}

/// This user's `cxr` folder of `kind`, one rule for all: the XDG base directory (as the `dirs`
/// crate finds it: the variable when it is an absolute path, else under `$HOME`), else a folder
/// named after the user id in the temporary folder. Never a folder other users share.
#[must_use]
pub fn user_folder(kind: UserFolder) -> PathBuf {
    let (base, name) = match kind {
        UserFolder::Cache => (dirs::cache_dir(), "cache"),
        UserFolder::State => (dirs::state_dir(), "state"),
        UserFolder::Data => (dirs::data_dir(), "data"),
    };
    base.map_or_else(
        || {
            let uid = rustix::process::geteuid().as_raw();
            std::env::temp_dir().join(format!("cxr-{name}-{uid}"))
        },
        |base| base.join("cxr"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn npy_files_have_numpys_header_and_the_values_after_it() {
        let bytes = super::npy_f32(&[1.0, -2.5, 0.0, 4.0, 5.0, 6.0], [2, 3]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!((10 + header_len) % 64, 0, "the data starts 64-byte aligned");
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 3)"));
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 6 * 4);
        assert_eq!(f32::from_le_bytes(data[4..8].try_into().unwrap()), -2.5);
    }
}
