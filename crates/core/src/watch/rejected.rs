//! Refused inbox files: moved out of the inbox into the watch folder's `rejected/`, each with
//! its reason beside it (`NAME.reason.txt`), never overwriting another.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::queue::{file_name, replace, rfc3339_utc, sync_dir};

/// Moves `file` out of the inbox into `rejected` (the watch folder's `rejected/`, see
/// [`crate::queue::Queue::rejected`]), with `reason` written beside it first (a crash in between
/// leaves the file in the inbox, to be rejected again). Returns where it went; `Ok(None)` when
/// the file was gone already.
///
/// Names never collide (two `a.png` from different sub-folders become `a.png` and
/// `a-2.png`): the workers of a watcher choose and take names one at a time, the move never
/// replaces an existing file (`RENAME_NOREPLACE`), and one watcher per folder is enforced
/// by its lock. A symbolic link is moved as the link, never followed.
pub(super) fn reject(
    rejected: &Path,
    file: &Path,
    reason: &str,
) -> std::io::Result<Option<PathBuf>> {
    static NAMING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    std::fs::create_dir_all(rejected)?;
    let _naming = NAMING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let text = format!(
        "{reason}\n\nfile: {}\nrejected: {}\n",
        file.display(),
        rfc3339_utc(SystemTime::now())
    );
    let mut target = free_name(rejected, &file_name(file));
    let moved = loop {
        replace(&reason_path(&target), text.as_bytes()).map_err(std::io::Error::other)?;
        match move_no_replace(file, &target) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Taken since it was chosen (not by this watcher): the next free name.
                let _ = std::fs::remove_file(reason_path(&target));
                let next = free_name(rejected, &file_name(file));
                if next == target {
                    break Err(e);
                }
                target = next;
            }
            other => break other,
        }
    };
    match moved {
        Ok(()) => {
            let _ = sync_dir(rejected);
            if let Some(parent) = file.parent() {
                let _ = sync_dir(parent);
            }
            Ok(Some(target))
        }
        Err(e) => {
            let _ = std::fs::remove_file(reason_path(&target));
            if e.kind() == ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Renames `from` to `to` unless `to` exists (`AlreadyExists` then).
fn move_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(std::io::Error::from)
}

/// `dir/NAME`, or `dir/STEM-2.EXT`, `dir/STEM-3.EXT`... : the first name not taken. A reason
/// file without its file (left by a crash between the two steps of a rejection) does not take
/// the name: the next rejection of that name overwrites it.
#[must_use]
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, format!(".{e}")),
        _ => (name, String::new()),
    };
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (2..=u32::MAX)
        .map(|n| dir.join(format!("{stem}-{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Where the reason for rejecting `file` is written: `NAME.reason.txt` beside it.
#[must_use]
pub fn reason_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".reason.txt");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Queue;

    #[test]
    fn rejecting_moves_the_file_with_its_reason_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::create(dir.path()).unwrap();
        for round in 0..2 {
            let file = queue.inbox().join("bad.png");
            std::fs::write(&file, format!("garbage {round}")).unwrap();
            let to = reject(&queue.rejected(), &file, "corrupt image")
                .unwrap()
                .unwrap();
            assert!(!file.exists());
            assert_eq!(
                std::fs::read_to_string(&to).unwrap(),
                format!("garbage {round}")
            );
            let reason = std::fs::read_to_string(reason_path(&to)).unwrap();
            assert!(reason.starts_with("corrupt image"), "{reason}");
        }
        assert!(queue.rejected().join("bad-2.png").exists());
        assert_eq!(
            reject(
                &queue.rejected(),
                &queue.inbox().join("gone.png"),
                "whatever"
            )
            .unwrap(),
            None
        );
        assert_eq!(std::fs::read_dir(queue.rejected()).unwrap().count(), 4);
    }

    #[test]
    fn free_names_skip_taken_files_but_not_orphan_reasons() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(free_name(dir.path(), "a.png"), dir.path().join("a.png"));
        std::fs::write(dir.path().join("a.png"), b"").unwrap();
        assert_eq!(free_name(dir.path(), "a.png"), dir.path().join("a-2.png"));
        std::fs::write(dir.path().join("a-2.png"), b"").unwrap();
        std::fs::write(dir.path().join("a-3.png.reason.txt"), b"").unwrap();
        assert_eq!(free_name(dir.path(), "a.png"), dir.path().join("a-3.png"));
        assert_eq!(free_name(dir.path(), "noext"), dir.path().join("noext"));
    }
}
