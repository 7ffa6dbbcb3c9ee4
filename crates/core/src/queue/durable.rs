//! File-system steps that survive a crash at any instant: files are written and synced before
//! they are renamed into place, and a folder is synced after an entry in it was added, renamed
//! or removed, so that a rename the caller saw succeed is still there after a power cut.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{CoreError, Result};

/// Flushes a folder's entries (new, renamed and removed names) to disk. Only Unix can open a
/// folder for this; elsewhere the rename itself is what we have.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| CoreError::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Creates `path` (which must not exist), writes `bytes` and syncs them.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| CoreError::io(path, e))
}

/// A name for a temporary file or folder that no other thread or process uses: it carries the
/// process id (so that leftovers of a dead process can be told from live work) and a counter.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Replaces `path` with `bytes`: written beside it under a hidden temporary name, synced, renamed
/// over it, and the folder synced. Readers see the old file or the new one, never a mix.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", unique_suffix()));
    let result = write_new(&tmp, bytes).and_then(|()| {
        std::fs::rename(&tmp, path).map_err(|e| CoreError::io(path, e))?;
        sync_dir(dir)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The process id a temporary name made with [`unique_suffix`] belongs to: `NAME.PID.N`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.rsplit('.');
    let _counter = parts.next()?.parse::<u64>().ok()?;
    parts.next()?.parse().ok()
}

/// Whether process `pid` is still running. Only Linux can tell (through `/proc`); elsewhere
/// every other process counts as gone, so a leftover is always cleaned.
#[must_use]
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    cfg!(target_os = "linux") && Path::new("/proc").join(pid.to_string()).exists()
}

/// A path's name as text, for messages and for the state file.
#[must_use]
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_is_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temporary_names_carry_their_owner() {
        let name = format!("abc.{}", unique_suffix());
        assert_eq!(owner_pid(&name), Some(std::process::id()));
        assert_eq!(owner_pid("abc"), None);
        assert!(process_alive(std::process::id()));
    }
}
