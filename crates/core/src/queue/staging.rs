//! An entry built whole in `.staging/` and renamed into the queue in one step.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{STATE_FILE, durable, sync_dir};
use crate::{CoreError, Result};

/// An entry being built in `.staging/`; dropped without [`Staging::commit`], it is removed.
pub(crate) struct Staging {
    pub(super) dir: PathBuf,
    pub(super) target: PathBuf,
    pub(super) committed: bool,
}

/// What [`Staging::commit`] found.
pub(crate) enum Commit {
    /// The entry is in place, at this folder.
    Created(PathBuf),
    /// An entry with this id was already there (made by someone else meanwhile); nothing was
    /// changed.
    Exists,
}

impl Staging {
    /// Writes one file of the entry, synced.
    pub(crate) fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        durable::write_new(&self.dir.join(name), bytes)
    }

    pub(crate) fn write_json(&mut self, name: &str, value: &impl Serialize) -> Result<()> {
        let text = serde_json::to_vec_pretty(value)
            .map_err(|e| CoreError::data(self.dir.join(name), e.to_string()))?;
        self.write(name, &text)
    }

    /// Renames the finished entry into the queue in one step.
    pub(crate) fn commit(mut self) -> Result<Commit> {
        sync_dir(&self.dir)?;
        if self.target.exists() {
            return Ok(Commit::Exists);
        }
        let entries = self.target.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(entries).map_err(|e| CoreError::io(entries, e))?;
        match std::fs::rename(&self.dir, &self.target) {
            Ok(()) => {
                self.committed = true;
                sync_dir(entries)?;
                if let Some(staging) = self.dir.parent() {
                    sync_dir(staging)?;
                }
                Ok(Commit::Created(self.target.clone()))
            }
            // Renaming a folder onto a non-empty one fails: another process won the race.
            Err(_) if self.target.join(STATE_FILE).exists() => Ok(Commit::Exists),
            Err(e) => Err(CoreError::io(&self.target, e)),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
