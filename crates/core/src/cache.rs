//! An on-disk cache of results: classification reports, explanation reports and heatmaps,
//! overlays. An entry is found by a [`CacheKey`]: the SHA-256 of the image's bytes, the
//! pipeline's model fingerprint, the method, its canonical parameters and [`FORMAT_VERSION`], so
//! a different image, model, method or parameter is a different entry and never served for
//! another.
//!
//! Each entry is one file written atomically, a one-line header then the payload:
//!
//! ```text
//! cxr-cache 1 <key, 64 hex> <payload bytes> <payload SHA-256, 64 hex> <written, unix seconds>\n
//! <payload>
//! ```
//!
//! A read checks all of it: an entry that is truncated, corrupt, of another format version or
//! filed under the wrong key is removed and reported as a miss, so the caller recomputes it;
//! an entry older than the cache's lifetime is a miss too, and so is one written in the future
//! (more than [`CLOCK_SKEW`] ahead: a forged time must not make an entry live for ever).
//!
//! Entries are trusted only if this user wrote them: the folders are created with mode 700, and
//! an entry that is a symbolic link, not a regular file, owned by another user, or writable by
//! group or others is a miss (not removed: it is not ours), so a forged entry with a
//! recomputed checksum in a shared folder is never served. A disabled cache
//! ([`Cache::disabled`], for `--no-cache`) misses every read and stores nothing.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::xray::hex;
use crate::{CoreError, Result};

/// Version of the entry layout and of what is cached in it; bumping it retires every entry.
pub const FORMAT_VERSION: u32 = 1;

/// How far in the future a `written` time may be (clocks of one machine) before the entry
/// counts as expired.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

const MAGIC: &str = "cxr-cache";
/// Longest header line: magic, version, key, length, checksum, time and separators.
const MAX_HEADER: usize = 200;

/// The identity of one cached result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `method` (an explainer name, or a fixed name like `classify`) with canonical
    /// parameters `params`, on the image whose bytes hash to `image_sha256`, under the models
    /// whose fingerprint is `model_fingerprint` ([`crate::pipeline::Pipeline::fingerprint`]).
    #[must_use]
    pub fn new(image_sha256: &str, model_fingerprint: &str, method: &str, params: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(MAGIC.as_bytes());
        hasher.update(FORMAT_VERSION.to_le_bytes());
        // Length prefixes: ("ab", "c") and ("a", "bc") must not collide.
        for part in [image_sha256, model_fingerprint, method, params] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        Self(hex(&hasher.finalize()))
    }

    /// The key as 64 lower-case hex digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A folder of cache entries.
#[derive(Debug, Clone)]
pub struct Cache {
    /// None: disabled.
    dir: Option<PathBuf>,
    max_age: Option<Duration>,
}

/// Why an entry was not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    Absent,
    Expired,
    /// Truncated, corrupt, another format, or filed under another key: removed.
    Invalid,
    Disabled,
}

impl Cache {
    /// A cache in `dir` (created on the first write) whose entries never expire.
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: Some(dir.into()),
            max_age: None,
        }
    }

    /// A cache that stores nothing and misses every lookup (`--no-cache`).
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            dir: None,
            max_age: None,
        }
    }

    /// Entries written longer than `max_age` ago are ignored (and removed when read).
    #[must_use]
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    #[must_use]
    pub fn is_enabled(&self) -> bool {
        self.dir.is_some()
    }

    #[must_use]
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Where `key`'s entry lives (None when disabled).
    #[must_use]
    pub fn entry_path(&self, key: &CacheKey) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(&key.0[..2]).join(format!("{}.entry", key.0)))
    }

    /// The payload stored under `key`, or why there is none. Invalid and expired entries are
    /// removed.
    pub fn lookup(&self, key: &CacheKey) -> std::result::Result<Vec<u8>, Miss> {
        let path = self.entry_path(key).ok_or(Miss::Disabled)?;
        let bytes = match read_own(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(Miss::Absent),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                tracing::warn!("cache entry {}: {e}: ignored", path.display());
                return Err(Miss::Invalid);
            }
            Err(e) => {
                tracing::warn!("cache entry {}: {e}", path.display());
                return Err(Miss::Absent);
            }
        };
        let Some((written, payload)) = parse_entry(&bytes, key) else {
            tracing::warn!("cache entry {} is corrupt: removed", path.display());
            let _ = std::fs::remove_file(&path);
            return Err(Miss::Invalid);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let written = Duration::from_secs(written);
        let age = now.saturating_sub(written);
        if written > now + CLOCK_SKEW || self.max_age.is_some_and(|max| age > max) {
            let _ = std::fs::remove_file(&path);
            return Err(Miss::Expired);
        }
        Ok(payload.to_vec())
    }

    /// The payload stored under `key`, if a valid, fresh one exists.
    #[must_use]
    pub fn get(&self, key: &CacheKey) -> Option<Vec<u8>> {
        self.lookup(key).ok()
    }

    /// Stores `payload` under `key`, atomically (a reader sees the old entry or the new one).
    pub fn put(&self, key: &CacheKey, payload: &[u8]) -> Result<()> {
        let Some(path) = self.entry_path(key) else {
            return Ok(());
        };
        if let Some(parent) = path.parent() {
            // Private to this user from the start: mode 700, the root included.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| CoreError::io(parent, e))?;
        }
        let written = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut bytes = format!(
            "{MAGIC} {FORMAT_VERSION} {} {} {} {written}\n",
            key.0,
            payload.len(),
            hex(&Sha256::digest(payload)),
        )
        .into_bytes();
        bytes.extend_from_slice(payload);
        crate::fsutil::write_atomic(&path, &bytes)
    }

    /// Removes `key`'s entry, if any.
    pub fn remove(&self, key: &CacheKey) -> Result<()> {
        let Some(path) = self.entry_path(key) else {
            return Ok(());
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(CoreError::Io { path, source: e }),
            _ => Ok(()),
        }
    }

    /// A JSON value stored with [`Cache::put_json`]; one that no longer parses as `T` (a type
    /// changed without a [`FORMAT_VERSION`] bump) is removed and missed.
    #[must_use]
    pub fn get_json<T: DeserializeOwned>(&self, key: &CacheKey) -> Option<T> {
        let bytes = self.get(key)?;
        serde_json::from_slice(&bytes).ok().or_else(|| {
            let _ = self.remove(key);
            None
        })
    }

    pub fn put_json<T: Serialize>(&self, key: &CacheKey, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            CoreError::Invalid(format!("cannot serialise a cache entry for {key}: {e}"))
        })?;
        self.put(key, &bytes)
    }

    /// The cached value of `key`, else `compute()`'s, stored for next time. Returns whether it
    /// came from the cache. A failure to store is logged, not returned: the value is good.
    pub fn get_or_compute<T, F>(&self, key: &CacheKey, compute: F) -> Result<(T, bool)>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Result<T>,
    {
        if let Some(value) = self.get_json(key) {
            return Ok((value, true));
        }
        let value = compute()?;
        if let Err(e) = self.put_json(key, &value) {
            tracing::warn!("cache: {e}");
        }
        Ok((value, false))
    }
}

/// Reads an entry this user wrote: opened without following a link, and refused
/// (`PermissionDenied`) unless it is a regular file owned by this user that group and others
/// cannot write.
fn read_own(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::new(ErrorKind::PermissionDenied, "a symbolic link")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    let me = rustix::process::geteuid().as_raw();
    let why = if !meta.file_type().is_file() {
        Some("not a regular file".to_owned())
    } else if meta.uid() != me {
        Some(format!(
            "owned by user {}, not by this user ({me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "writable by others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    if let Some(why) = why {
        return Err(std::io::Error::new(ErrorKind::PermissionDenied, why));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The write time and payload of a valid entry for `key`.
fn parse_entry<'a>(bytes: &'a [u8], key: &CacheKey) -> Option<(u64, &'a [u8])> {
    let end = bytes.iter().take(MAX_HEADER).position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..end]).ok()?;
    let payload = &bytes[end + 1..];
    let fields: Vec<&str> = header.split(' ').collect();
    let [magic, version, stored_key, len, checksum, written] = fields[..] else {
        return None;
    };
    let valid = magic == MAGIC
        && version.parse::<u32>().ok()? == FORMAT_VERSION
        && stored_key == key.0
        && len.parse::<usize>().ok()? == payload.len()
        && checksum == hex(&Sha256::digest(payload));
    valid.then_some((written.parse().ok()?, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unambiguous() {
        let a = CacheKey::new("ab", "c", "m", "");
        let b = CacheKey::new("a", "bc", "m", "");
        assert_ne!(a, b);
        assert_eq!(a, CacheKey::new("ab", "c", "m", ""));
        assert_eq!(a.as_str().len(), 64);
    }

    #[test]
    fn header_fields_are_all_checked() {
        let key = CacheKey::new("img", "model", "m", "p");
        let payload = b"{\"x\":1}";
        let good = format!(
            "{MAGIC} {FORMAT_VERSION} {key} {} {} 5\n",
            payload.len(),
            hex(&Sha256::digest(payload))
        );
        let entry = [good.as_bytes(), payload].concat();
        assert_eq!(parse_entry(&entry, &key), Some((5, &payload[..])));
        let other = CacheKey::new("img", "model", "m", "q");
        assert_eq!(parse_entry(&entry, &other), None, "another key's entry");
        let old = entry.clone();
        let text = String::from_utf8(old).unwrap_or_default();
        let v0 = text.replacen(
            &format!("{MAGIC} {FORMAT_VERSION} "),
            &format!("{MAGIC} 0 "),
            1,
        );
        assert_eq!(parse_entry(v0.as_bytes(), &key), None, "another version");
        assert_eq!(parse_entry(b"no header at all", &key), None);
    }
}
