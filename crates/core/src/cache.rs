//! An on-disk cache of results: classification reports, explanation reports and heatmaps,
//! overlays. An entry is found by a [`CacheKey`]: the SHA-256 of the image's bytes, the
//! pipeline's model fingerprint, the method, its canonical parameters and [`FORMAT_VERSION`], so
//! a different image, model, method or parameter is a different entry and never served for
//! another.
//!
//! Each entry is one file written atomically: a line with its authentication code, a one-line
//! header, then the payload:
//!
//! ```text
//! cxr-mac <HMAC-SHA-256 of everything after this line under the user's key, 64 hex>\n
//! cxr-cache 1 <key, 64 hex> <payload bytes> <payload SHA-256, 64 hex> <written, unix seconds>\n
//! <payload>
//! ```
//!
//! A read checks all of it: an entry that is truncated, corrupt, of another format version or
//! filed under the wrong key is removed and reported as a miss, so the caller recomputes it;
//! an entry older than the cache's lifetime is a miss too, and so is one written in the future
//! (more than [`CLOCK_SKEW`] ahead: a forged time must not make an entry live for ever).
//!
//! Entries are trusted only if this user wrote them. The default folder is per user
//! ([`default_dir`]: `$XDG_CACHE_HOME/cxr`, else `~/.cache/cxr`), never beside the images;
//! folders are created with mode 700, and a cache folder that is a symbolic link or owned by
//! another user is not used. An entry that is a symbolic link, not a regular file, owned by
//! another user, or writable by group or others is a miss (not removed: it is not ours). And
//! every entry carries an HMAC under a random per-user key kept in the cache folder (`key`,
//! mode 600, owner-checked), so an entry written by anyone without that key (a recomputed
//! checksum, a changed label, a `written` time moved) fails authentication, is removed and
//! recomputed. A disabled cache ([`Cache::disabled`], for `--no-cache`) misses every read and
//! stores nothing.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

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
        Self(format!("{:x}", hasher.finalize()))
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
    /// The user's entry key, once read or created.
    secret: Arc<Secret>,
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
            secret: Arc::default(),
        }
    }

    /// A cache that stores nothing and misses every lookup (`--no-cache`).
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            dir: None,
            max_age: None,
            secret: Arc::default(),
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
        let signed = match read_own(&path) {
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
        let Some(secret) = self.secret_for_reading() else {
            // No key of this user's to check with: not served, and left alone.
            return Err(Miss::Invalid);
        };
        let Some(bytes) = open_sealed(&secret, &signed) else {
            tracing::warn!(
                "cache entry {} fails authentication (not written by this user): removed",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            return Err(Miss::Invalid);
        };
        let Some((written, payload)) = parse_entry(bytes, key) else {
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
        let secret = self.secret_for_writing()?;
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
            "{MAGIC} {FORMAT_VERSION} {} {} {:x} {written}\n",
            key.0,
            payload.len(),
            Sha256::digest(payload),
        )
        .into_bytes();
        bytes.extend_from_slice(payload);
        crate::fsutil::write_atomic(&path, &seal(&secret, &bytes))
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
        let bytes = serde_json::to_vec(value)
            .map_err(|e| CoreError::internal(&format!("serialising the cache entry {key}"), e))?;
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

// ---------------------------------------------------------------------------------------------
// Location, permissions and entry authentication (separate from the key scheme above)
// ---------------------------------------------------------------------------------------------

/// The per-user cache folder: `$XDG_CACHE_HOME/cxr`, else `$HOME/.cache/cxr`, else a folder
/// named after the user id in the temporary folder ([`crate::fsutil::user_folder`]). Never a
/// folder beside the images: those are often shared, and whoever can write there could plant
/// entries.
#[must_use]
pub fn default_dir() -> PathBuf {
    crate::fsutil::user_folder(crate::fsutil::UserFolder::Cache)
}

/// The file in a cache folder holding its owner's entry key.
pub const KEY_FILE: &str = "key";
const KEY_LEN: usize = 32;
const MAC_TAG: &str = "cxr-mac";

/// The user's entry key; never printed.
#[derive(Default)]
struct Secret(Mutex<Option<[u8; KEY_LEN]>>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

fn mac(secret: &[u8; KEY_LEN], body: &[u8]) -> HmacSha256 {
    use hmac::Mac;
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    mac
}

/// `body` with its authentication line in front.
fn seal(secret: &[u8; KEY_LEN], body: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let code = mac(secret, body).finalize().into_bytes();
    let mut out = format!("{MAC_TAG} {code:x}\n").into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body of a sealed entry whose code matches `secret` (compared in constant time).
fn open_sealed<'a>(secret: &[u8; KEY_LEN], sealed: &'a [u8]) -> Option<&'a [u8]> {
    use hmac::Mac;
    let end = sealed.iter().take(MAX_HEADER).position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&sealed[..end]).ok()?;
    let code = line.strip_prefix(MAC_TAG)?.strip_prefix(' ')?;
    if code.len() != 2 * 32 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let code: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&code[2 * i..2 * i + 2], 16))
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    let body = &sealed[end + 1..];
    mac(secret, body).verify_slice(&code).ok()?;
    Some(body)
}

/// Checks that `dir`, if it exists, is a real folder owned by this user.
fn check_own_folder(dir: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.file_type().is_symlink() {
        "is a symbolic link".to_owned()
    } else if !meta.is_dir() {
        "is not a folder".to_owned()
    } else if meta.uid() != me {
        format!("is owned by user {}, not by this user ({me})", meta.uid())
    } else {
        return Ok(());
    };
    Err(std::io::Error::new(ErrorKind::PermissionDenied, why))
}

/// Reads the key file: this user's, regular, readable and writable by no one else, 32 bytes.
fn read_key(path: &Path) -> std::io::Result<[u8; KEY_LEN]> {
    let bytes = read_own(path)?;
    let mode = std::fs::symlink_metadata(path)?.mode();
    if mode & 0o077 != 0 {
        return Err(std::io::Error::new(
            ErrorKind::PermissionDenied,
            format!("readable by others (mode {:o})", mode & 0o777),
        ));
    }
    bytes
        .try_into()
        .map_err(|_| std::io::Error::new(ErrorKind::InvalidData, "not a cache key (wrong length)"))
}

/// Creates a fresh random key file, mode 600, without replacing one another process created
/// first (link, which never overwrites), and returns the key in the file.
fn create_key(dir: &Path) -> std::io::Result<[u8; KEY_LEN]> {
    use rand::Rng;
    use std::io::Write;
    let path = dir.join(KEY_FILE);
    let mut secret = [0u8; KEY_LEN];
    rand::rng().fill(&mut secret[..]);
    let temp = dir.join(format!(
        ".key.{}.{:016x}",
        std::process::id(),
        rand::rng().random::<u64>()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)?;
    file.write_all(&secret)?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&temp, &path);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => read_key(&path),
        Err(e) => Err(e),
    }
}

impl Cache {
    /// The key for checking entries: None when the folder or its key file is missing or not
    /// this user's (then nothing in it can be trusted).
    fn secret_for_reading(&self) -> Option<[u8; KEY_LEN]> {
        let mut slot = self.secret.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(secret) = *slot {
            return Some(secret);
        }
        let dir = self.dir.as_ref()?;
        let checked = check_own_folder(dir).and_then(|()| read_key(&dir.join(KEY_FILE)));
        match checked {
            Ok(secret) => {
                *slot = Some(secret);
                Some(secret)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                tracing::warn!("cache {}: {e}: nothing in it is trusted", dir.display());
                None
            }
        }
    }

    /// The key for new entries, created (with the folder, mode 700) on the first write.
    fn secret_for_writing(&self) -> Result<[u8; KEY_LEN]> {
        if let Some(secret) = self.secret_for_reading() {
            return Ok(secret);
        }
        let dir = self
            .dir
            .as_ref()
            .ok_or_else(|| CoreError::Internal("the cache is disabled".into()))?;
        let refuse = |e: std::io::Error| CoreError::Refused {
            path: dir.clone(),
            reason: format!("not used as a cache folder: {e}"),
        };
        check_own_folder(dir).map_err(refuse)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CoreError::io(dir, e))?;
        check_own_folder(dir).map_err(refuse)?;
        let key_path = dir.join(KEY_FILE);
        let secret = match read_key(&key_path) {
            Ok(secret) => secret,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                create_key(dir).map_err(|e| CoreError::io(&key_path, e))?
            }
            Err(e) => {
                return Err(CoreError::Refused {
                    path: key_path,
                    reason: format!("cache key not usable: {e}"),
                });
            }
        };
        *self.secret.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(secret);
        Ok(secret)
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
        && checksum == format!("{:x}", Sha256::digest(payload));
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
            "{MAGIC} {FORMAT_VERSION} {key} {} {:x} 5\n",
            payload.len(),
            Sha256::digest(payload)
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
