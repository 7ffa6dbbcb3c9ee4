//! The result cache: round trips, corrupt entries detected, removed and recomputed, expiry,
//! keys that change with every input, and the disabled cache.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::cell::Cell;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cxr_core::cache::{Cache, CacheKey, Miss};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Report {
    label: String,
    probability: f32,
    heatmap: Vec<f32>,
}

fn report() -> Report {
    Report {
        label: "covid".into(),
        probability: 0.93,
        heatmap: (0..1000).map(|i| i as f32 / 1000.0).collect(),
    }
}

fn key() -> CacheKey {
    CacheKey::new(&"ab".repeat(32), "model-fingerprint", "grad-cam", "layer=4")
}

/// Computes through the cache, counting how often the computation really ran.
fn compute(cache: &Cache, key: &CacheKey, runs: &Cell<u32>) -> (Report, bool) {
    cache
        .get_or_compute(key, || {
            runs.set(runs.get() + 1);
            Ok(report())
        })
        .unwrap()
}

fn entry(cache: &Cache, key: &CacheKey) -> std::path::PathBuf {
    cache.entry_path(key).unwrap()
}

#[test]
fn values_and_bytes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path().join("cache"));
    let (key, runs) = (key(), Cell::new(0));
    assert_eq!(cache.lookup(&key), Err(Miss::Absent));
    assert_eq!(compute(&cache, &key, &runs), (report(), false));
    assert_eq!(compute(&cache, &key, &runs), (report(), true));
    assert_eq!(runs.get(), 1, "the second call is served from disk");
    // Raw bytes (an overlay PNG) too, including empty payloads.
    let png = CacheKey::new("img", "model", "grad-cam:overlay", "");
    cache.put(&png, &[0x89, b'P', b'N', b'G', 0, 1, 2]).unwrap();
    assert_eq!(
        cache.get(&png).unwrap(),
        vec![0x89, b'P', b'N', b'G', 0, 1, 2]
    );
    let empty = CacheKey::new("img", "model", "empty", "");
    cache.put(&empty, b"").unwrap();
    assert_eq!(cache.get(&empty).unwrap(), Vec::<u8>::new());
    // No temporary files are left behind by the atomic writes.
    let leftovers = walk(&dir.path().join("cache"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".entry") && !p.ends_with("cache/key"))
        .count();
    assert_eq!(leftovers, 0);
    // The key that authenticates entries is this user's alone.
    let key_mode = std::os::unix::fs::MetadataExt::mode(
        &std::fs::metadata(dir.path().join("cache/key")).unwrap(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn corrupt_entries_are_removed_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let (key, runs) = (key(), Cell::new(0));
    compute(&cache, &key, &runs);
    let path = entry(&cache, &key);
    let good = std::fs::read(&path).unwrap();
    let header_end = good.iter().position(|&b| b == b'\n').unwrap();
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("payload byte flipped", {
            let mut b = good.clone();
            let i = header_end + 1 + (b.len() - header_end) / 2;
            b[i] ^= 0x01;
            b
        }),
        ("header byte flipped", {
            let mut b = good.clone();
            b[20] ^= 0x01;
            b
        }),
        ("truncated payload", good[..good.len() - 10].to_vec()),
        ("truncated header", good[..header_end / 2].to_vec()),
        ("empty file", Vec::new()),
        ("extra bytes", [good.clone(), b"junk".to_vec()].concat()),
    ];
    for (what, bytes) in damages {
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.lookup(&key), Err(Miss::Invalid), "{what}");
        assert!(!path.exists(), "{what}: the corrupt entry is removed");
        let before = runs.get();
        assert_eq!(compute(&cache, &key, &runs), (report(), false), "{what}");
        assert_eq!(runs.get(), before + 1, "{what}: recomputed");
        assert_eq!(std::fs::read(&path).unwrap().len(), good.len(), "{what}");
    }
    // An entry copied under another key's name is not served for it.
    let other = CacheKey::new("other image", "model-fingerprint", "grad-cam", "layer=4");
    let other_path = entry(&cache, &other);
    std::fs::create_dir_all(other_path.parent().unwrap()).unwrap();
    std::fs::copy(&path, &other_path).unwrap();
    assert_eq!(cache.lookup(&other), Err(Miss::Invalid));
    // JSON of the wrong shape is a miss too, and removed.
    let shape = CacheKey::new("img", "model", "shape", "");
    cache.put(&shape, br#"{"label": 3}"#).unwrap();
    assert!(cache.get_json::<Report>(&shape).is_none());
    assert_eq!(cache.lookup(&shape), Err(Miss::Absent));
}

/// An entry's authentication line and the rest.
fn unseal(bytes: &[u8]) -> (&[u8], &[u8]) {
    let end = bytes.iter().position(|&b| b == b'\n').unwrap();
    assert!(bytes.starts_with(b"cxr-mac "));
    (&bytes[..end], &bytes[end + 1..])
}

/// `body` sealed with `secret`, as the cache writes entries.
fn seal(secret: &[u8], body: &[u8]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    let code = mac.finalize().into_bytes();
    let hex = format!("{code:x}");
    [format!("cxr-mac {hex}\n").into_bytes(), body.to_vec()].concat()
}

/// Rewrites an entry's body with `edit`, recomputing its length and checksum, and seals it
/// with `secret`: the user's own key (an authentic entry, say from a clock that was wrong) or
/// another one (a forger without the user's key).
fn rewrite(path: &Path, secret: &[u8], edit: impl Fn(&str, &[u8]) -> (String, Vec<u8>)) {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    let (_, body) = unseal(&bytes);
    let end = body.iter().position(|&b| b == b'\n').unwrap();
    let header = std::str::from_utf8(&body[..end]).unwrap();
    let (header, payload) = edit(header, &body[end + 1..]);
    let fields: Vec<&str> = header.split(' ').collect();
    let sha = format!("{:x}", sha2::Sha256::digest(&payload));
    let header = format!(
        "{} {} {} {} {sha} {}\n",
        fields[0],
        fields[1],
        fields[2],
        payload.len(),
        fields[5]
    );
    let body = [header.into_bytes(), payload].concat();
    std::fs::write(path, seal(secret, &body)).unwrap();
}

fn user_key(root: &Path) -> Vec<u8> {
    std::fs::read(root.join(cxr_core::cache::KEY_FILE)).unwrap()
}

/// Rewrites the write time in an entry's header (an authentic entry: sealed with the key).
fn backdate(root: &Path, path: &Path, seconds: u64) {
    rewrite(path, &user_key(root), |header, payload| {
        let (front, written) = header.rsplit_once(' ').unwrap();
        let old = written.parse::<u64>().unwrap() - seconds;
        (format!("{front} {old}"), payload.to_vec())
    });
}

#[test]
fn old_entries_expire() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let runs = Cell::new(0);
    let forever = Cache::new(dir.path());
    compute(&forever, &key, &runs);
    backdate(dir.path(), &entry(&forever, &key), 3 * 3600);
    let day = Cache::new(dir.path()).with_max_age(Duration::from_secs(24 * 3600));
    assert!(day.get(&key).is_some(), "3 hours old, lifetime a day");
    assert!(forever.get(&key).is_some(), "no lifetime: never expires");
    let hour = Cache::new(dir.path()).with_max_age(Duration::from_secs(3600));
    assert_eq!(hour.lookup(&key), Err(Miss::Expired));
    assert_eq!(compute(&hour, &key, &runs), (report(), false));
    assert_eq!(runs.get(), 2);
    assert_eq!(compute(&hour, &key, &runs), (report(), true), "fresh again");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now > 3600);
}

#[test]
fn every_part_of_the_key_matters() {
    let image = "ab".repeat(32);
    let base = CacheKey::new(&image, "model-a", "grad-cam", "layer=4");
    let variants = [
        CacheKey::new(&"cd".repeat(32), "model-a", "grad-cam", "layer=4"),
        CacheKey::new(&image, "model-b", "grad-cam", "layer=4"),
        CacheKey::new(&image, "model-a", "lime", "layer=4"),
        CacheKey::new(&image, "model-a", "grad-cam", "layer=3"),
        CacheKey::new(&image, "model-a", "grad-cam", ""),
    ];
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    cache.put_json(&base, &report()).unwrap();
    for variant in &variants {
        assert_ne!(variant, &base);
        assert_eq!(cache.lookup(variant), Err(Miss::Absent), "{variant}");
    }
    assert_eq!(cache.get_json::<Report>(&base), Some(report()));
    assert_eq!(
        base,
        CacheKey::new(&image, "model-a", "grad-cam", "layer=4"),
        "keys are deterministic"
    );
}

#[test]
fn a_disabled_cache_stores_nothing() {
    let cache = Cache::disabled();
    let (key, runs) = (key(), Cell::new(0));
    assert!(!cache.is_enabled());
    cache.put(&key, b"x").unwrap();
    assert_eq!(cache.lookup(&key), Err(Miss::Disabled));
    compute(&cache, &key, &runs);
    compute(&cache, &key, &runs);
    assert_eq!(runs.get(), 2, "every call computes");
}

#[test]
fn entries_forged_without_the_users_key_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(dir.path());
    let (key, runs) = (key(), Cell::new(0));
    compute(&cache, &key, &runs);
    let path = entry(&cache, &key);
    let forged_label = |header: &str, payload: &[u8]| {
        let text = String::from_utf8(payload.to_vec()).unwrap();
        (
            header.to_owned(),
            text.replace("covid", "normal").into_bytes(),
        )
    };
    // The label changed, length and checksum recomputed, sealed with another key: what another
    // user who can write into the folder, but not read the key, can produce.
    rewrite(&path, &[7u8; 32], forged_label);
    assert_eq!(cache.lookup(&key), Err(Miss::Invalid), "another key");
    assert!(!path.exists(), "a forged entry is removed");
    compute(&cache, &key, &runs);
    // The same change with the old authentication line kept.
    let sealed = std::fs::read(&path).unwrap();
    let (line, _) = unseal(&sealed);
    let line = line.to_vec();
    rewrite(&path, &[0u8; 32], forged_label);
    let resealed = std::fs::read(&path).unwrap();
    let body = unseal(&resealed).1.to_vec();
    std::fs::write(&path, [line, b"\n".to_vec(), body].concat()).unwrap();
    assert_eq!(cache.lookup(&key), Err(Miss::Invalid), "old code, new body");
    // No authentication line at all (the layout before keys).
    compute(&cache, &key, &runs);
    let sealed = std::fs::read(&path).unwrap();
    std::fs::write(&path, unseal(&sealed).1).unwrap();
    assert_eq!(cache.lookup(&key), Err(Miss::Invalid), "unsealed");
    // The same edit sealed with the user's own key is served: the key is what is checked.
    compute(&cache, &key, &runs);
    rewrite(&path, &user_key(dir.path()), forged_label);
    let served: Report = cache.get_json(&key).unwrap();
    assert_eq!(served.label, "normal");
    assert_eq!(runs.get(), 4);
}

#[test]
fn a_key_or_folder_that_is_not_the_users_own_is_not_trusted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let cache = Cache::new(&root);
    let (key, runs) = (key(), Cell::new(0));
    compute(&cache, &key, &runs);
    let key_file = root.join(cxr_core::cache::KEY_FILE);
    // A key others can read could be used to forge: nothing sealed with it is trusted, and
    // nothing new is written with it.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let fresh = Cache::new(&root);
    assert_eq!(fresh.lookup(&key), Err(Miss::Invalid));
    let e = fresh.put(&key, b"x").unwrap_err().to_string();
    assert!(
        e.contains("cache key not usable") && e.contains("mode 644"),
        "{e}"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A key replaced by someone else's (a symbolic link to theirs) is refused too.
    let theirs = dir.path().join("their-key");
    std::fs::write(&theirs, [7u8; 32]).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&key_file, dir.path().join("saved-key")).unwrap();
    std::os::unix::fs::symlink(&theirs, &key_file).unwrap();
    let fresh = Cache::new(&root);
    assert_eq!(fresh.lookup(&key), Err(Miss::Invalid));
    assert!(fresh.put(&key, b"x").is_err());
    // A cache folder that is a symbolic link is not used.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&root, &link).unwrap();
    let e = Cache::new(&link).put(&key, b"x").unwrap_err().to_string();
    assert!(
        e.contains("not used as a cache folder: is a symbolic link"),
        "{e}"
    );
    // A folder owned by another user (only root can give one away).
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    if std::os::unix::fs::chown(&other, Some(65_534), Some(65_534)).is_ok() {
        let e = Cache::new(&other).put(&key, b"x").unwrap_err().to_string();
        assert!(e.contains("is owned by user 65534"), "{e}");
    }
}
