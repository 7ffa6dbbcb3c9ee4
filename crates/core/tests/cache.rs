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
        .filter(|p| !p.to_string_lossy().ends_with(".entry"))
        .count();
    assert_eq!(leftovers, 0);
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

/// Rewrites the write time in an entry's header.
fn backdate(path: &Path, seconds: u64) {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.iter().position(|&b| b == b'\n').unwrap();
    let header = std::str::from_utf8(&bytes[..end]).unwrap();
    let (front, written) = header.rsplit_once(' ').unwrap();
    let old = written.parse::<u64>().unwrap() - seconds;
    let mut out = format!("{front} {old}").into_bytes();
    out.extend_from_slice(&bytes[end..]);
    std::fs::write(path, out).unwrap();
}

#[test]
fn old_entries_expire() {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let runs = Cell::new(0);
    let forever = Cache::new(dir.path());
    compute(&forever, &key, &runs);
    backdate(&entry(&forever, &key), 3 * 3600);
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
