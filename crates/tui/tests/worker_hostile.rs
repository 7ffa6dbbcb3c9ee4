//! `cxr worker` against a hostile folder or client (issue 10): links in DIR, symbolic links as
//! output folders, ids too long for the overlay's file name, and a client that writes requests
//! faster than they are answered.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::{BufRead, BufReader, Write};

use hmac::Mac;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

fn worker(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxr"));
    command
        .args(["worker", "--device", "cpu", "--dir"])
        .arg(dir)
        .env_remove("CXR_MODELS")
        // The user's cache folder, private to this test.
        .env("XDG_CACHE_HOME", dir.join(".xdg"));
    command
}

fn run(dir: &Path, input: &str) -> Output {
    let mut child = worker(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn links_inside_the_folder_are_refused_too() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), tmp.path().join("real.png")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real.png"), tmp.path().join("alias.png")).unwrap();
    let out = run(tmp.path(), "classify alias.png\nclassify real.png\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    let alias = stdout.lines().find(|l| l.contains("alias.png")).unwrap();
    assert!(
        alias.starts_with("error classify alias.png") && alias.contains("symbolic link"),
        "{stdout}"
    );
    assert!(stdout.contains("classify real.png {"), "{stdout}");
}

#[test]
fn ids_too_long_for_the_overlay_name_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let id = format!("{}.png", "a".repeat(250));
    std::fs::copy(sample("nih_00001299_000.png"), tmp.path().join(&id)).unwrap();
    let out = run(
        tmp.path(),
        &format!("explain_gradcam {id}\nclassify {id}\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in lines {
        assert!(
            line.starts_with("error ") && line.contains("longer than the 200 bytes"),
            "{line}"
        );
    }
}

#[test]
fn symlinked_output_folders_are_refused() {
    for name in [".cxr-worker", ".cxr-cache"] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("in");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::copy(sample("nih_00001299_000.png"), dir.join("x.png")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(name)).unwrap();
        let out = run(&dir, "explain_gradcam x.png\n");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("symbolic link"), "{name}: {stderr}");
        assert_eq!(
            std::fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{name}: wrote through the link"
        );
    }
}

/// A client writing requests as fast as it can: the worker stops reading once a few are
/// pending, so the client is held back by the pipe instead of the worker's memory growing.
#[test]
fn a_fast_client_is_held_back() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), tmp.path().join("x.png")).unwrap();
    let mut child = worker(tmp.path())
        .arg("--no-cache")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let written = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&written);
    std::thread::spawn(move || {
        let line = b"classify x.png\n";
        for _ in 0..200_000 {
            if stdin.write_all(line).is_err() {
                break;
            }
            counter.fetch_add(line.len(), Ordering::Relaxed);
        }
    });
    // The first answer: models are loaded and requests are being read.
    let mut first = String::new();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    assert!(first.starts_with("classify x.png {"), "{first}");
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let taken = written.load(Ordering::Relaxed);
    let _ = child.kill();
    let _ = child.wait();
    // 200 000 requests are 3 MB; held back, the client gets no further than the pipe's
    // buffer and the few pending requests.
    assert!(
        taken < 1 << 20,
        "{taken} bytes of requests taken in {:?}",
        start.elapsed()
    );
}

/// The user's cache folder the worker on `dir` uses in these tests.
fn cache_dir(dir: &Path) -> PathBuf {
    dir.join(".xdg/cxr")
}

/// The one cache entry in the cache folder.
fn cache_entry(dir: &Path) -> PathBuf {
    let mut found = Vec::new();
    for sub in std::fs::read_dir(cache_dir(dir)).unwrap() {
        let sub = sub.unwrap().path();
        if !sub.is_dir() {
            continue; // the key file
        }
        for entry in std::fs::read_dir(sub).unwrap() {
            found.push(entry.unwrap().path());
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.remove(0)
}

/// Rewrites an entry with `payload` and the `written` time, checksum and length recomputed,
/// sealed with `key` (the user's own: an authentic entry; any other: a forger with write
/// access to the folder, who cannot read the user's key).
fn forge(entry: &Path, edit: impl Fn(&str) -> String, written: u64, key: &[u8]) {
    let sealed = std::fs::read(entry).unwrap();
    let mac_end = sealed.iter().position(|&b| b == b'\n').unwrap();
    assert!(sealed.starts_with(b"cxr-mac "));
    let bytes = &sealed[mac_end + 1..];
    let end = bytes.iter().position(|&b| b == b'\n').unwrap();
    let header = std::str::from_utf8(&bytes[..end]).unwrap();
    let fields: Vec<&str> = header.split(' ').collect();
    let payload = edit(std::str::from_utf8(&bytes[end + 1..]).unwrap());
    let sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(payload.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    let sha = sha.split_whitespace().next().unwrap();
    let forged = format!(
        "{} {} {} {} {sha} {written}\n{payload}",
        fields[0],
        fields[1],
        fields[2],
        payload.len()
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(forged.as_bytes());
    let code: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .fold(String::new(), |s, b| s + &format!("{b:02x}"));
    std::fs::remove_file(entry).unwrap();
    std::fs::write(entry, format!("cxr-mac {code}\n{forged}")).unwrap();
}

fn user_key(dir: &Path) -> Vec<u8> {
    std::fs::read(cache_dir(dir).join("key")).unwrap()
}

fn reply(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut child = worker(dir)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"classify x.png\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let json = line
        .strip_prefix("classify x.png ")
        .unwrap_or_else(|| panic!("{line}"));
    serde_json::from_str(json).unwrap()
}

#[test]
fn forged_and_future_cache_entries_are_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), tmp.path().join("x.png")).unwrap();
    let first = reply(tmp.path(), &[]);
    assert_eq!(first["cached"], false);
    let label = first["label"].as_str().unwrap().to_owned();
    let wrong = if label == "covid" { "normal" } else { "covid" };
    let entry = cache_entry(tmp.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    // Written "in ten years" (an authentic entry, from a clock that was wrong): with a
    // one-hour lifetime, it must count as expired.
    forge(
        &entry,
        str::to_owned,
        now + 10 * 365 * 24 * 3600,
        &user_key(tmp.path()),
    );
    let again = reply(tmp.path(), &["--cache-max-age-hours", "1"]);
    assert_eq!(again["cached"], false, "{again}");

    // The label changed and the checksum recomputed by someone who can write into the cache
    // folder but cannot read the user's key: the entry fails authentication.
    let entry = cache_entry(tmp.path());
    forge(&entry, |p| p.replace(&label, wrong), now, &[7u8; 32]);
    let served = reply(tmp.path(), &[]);
    assert_eq!(served["cached"], false, "{served}");
    assert_eq!(served["label"], label.as_str(), "{served}");

    // Another user's entry with the label changed and the checksum recomputed. Only root can
    // give a file away; elsewhere the forger's entry is simulated by one others can write.
    let entry = cache_entry(tmp.path());
    forge(
        &entry,
        |p| p.replace(&label, wrong),
        now,
        &user_key(tmp.path()),
    );
    let given_away = std::os::unix::fs::chown(&entry, Some(65_534), Some(65_534)).is_ok();
    if !given_away {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let served = reply(tmp.path(), &[]);
    assert_eq!(served["cached"], false, "{served}");
    assert_eq!(served["label"], label.as_str(), "{served}");
    // The cache folder is the user's, private, and not in the images' folder.
    let mode =
        std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(cache_dir(tmp.path())).unwrap());
    assert_eq!(mode & 0o777, 0o700);
    assert!(!tmp.path().join(".cxr-cache").exists());
}

/// Issue 20, defect 1: the deeply nested DICOM killed the worker, so later requests went
/// unanswered; issue 26: a colour screenshot of a viewer was classified. Each gets an error
/// reply and the next request its answer.
#[test]
fn a_nested_dicom_and_a_screenshot_get_errors_and_the_worker_answers_on() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/io/tests/fixtures");
    let refused = [
        ("nested-sequences.dcm", "nested.dcm", "too deeply nested"),
        ("screenshot.png", "screenshot.png", "a colour picture"),
    ];
    let mut requests = String::new();
    for (fixture, name, _) in refused {
        std::fs::copy(fixtures.join(fixture), tmp.path().join(name)).unwrap();
        for command in ["classify", "explain_gradcam"] {
            requests.extend([command, " ", name, "\n"]);
        }
    }
    std::fs::copy(sample("nih_00001299_000.png"), tmp.path().join("real.png")).unwrap();
    let out = run(tmp.path(), &format!("{requests}classify real.png\n"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{stdout}");
    for (_, name, why) in refused {
        for command in ["classify", "explain_gradcam"] {
            let line = lines
                .iter()
                .find(|l| l.starts_with(&format!("error {command} {name}")))
                .unwrap_or_else(|| panic!("no error for {command} {name}: {stdout}"));
            assert!(line.contains(why), "{line}");
        }
    }
    assert!(stdout.contains("classify real.png {"), "{stdout}");
}
