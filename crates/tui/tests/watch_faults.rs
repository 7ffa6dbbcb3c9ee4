//! `cxr watch` under faults, with the real binary and real radiographs: killed (SIGKILL) and
//! restarted at random moments, fed files that are corrupt, empty, not images, duplicated,
//! written slowly or under temporary names, and an inbox it cannot write to. Afterwards every
//! dropped file must be in exactly one queue entry or in `rejected/`: none lost, none processed
//! twice, no half-built entry visible.
//!
//! The kill schedule is seeded; set `CXR_FAULT_SEED` to replay another one.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{Rng, names_in, repo, sha256, with_text};

/// The six committed sample radiographs (PNG).
fn samples() -> Vec<Vec<u8>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(repo().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

/// A running `cxr watch`, its JSON events read on a thread.
struct Watcher {
    child: Child,
    events: Receiver<Value>,
    seen: Vec<Value>,
}

impl Watcher {
    fn start(dir: &Path, args: &[&str], log: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args(["watch", "--device", "cpu", "--watch-dir"])
            .arg(dir)
            .args(args)
            .env_remove("CXR_MODELS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                File::options().create(true).append(true).open(log).unwrap(),
            ))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            events,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `pred`, keeping every event seen.
    fn wait_for(&mut self, timeout: Duration, what: &str, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + timeout;
        if self.seen.iter().any(&pred) {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    let hit = pred(&event);
                    self.seen.push(event);
                    if hit {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; events: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!(
                        "cxr watch exited waiting for {what}; events: {:#?}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Waits until `count` events satisfy `pred`.
    fn wait_count(
        &mut self,
        count: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while self.seen.iter().filter(|e| pred(e)).count() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self.events.recv_timeout(left).unwrap_or_else(|e| {
                panic!(
                    "waiting for {count} {what} ({e}): got {}; events: {:#?}",
                    self.seen.iter().filter(|e| pred(e)).count(),
                    self.seen
                )
            });
            self.seen.push(event);
        }
    }

    fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event);
        }
    }

    /// SIGKILL, then collect what it printed before dying.
    fn kill(mut self) -> Vec<Value> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        while let Ok(event) = self.events.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(event);
        }
        std::mem::take(&mut self.seen)
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(event: &Value, kind: &str) -> bool {
    event["event"] == kind
}

fn file_name(event: &Value) -> String {
    Path::new(event["file"].as_str().unwrap_or_default())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Drops a file: written under a hidden temporary name and renamed (what producers should
/// do), or written in place (what a plain copy does).
fn drop_file(inbox: &Path, name: &str, bytes: &[u8], rename: bool) {
    if rename {
        let tmp = inbox.join(format!(".{name}.part"));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, inbox.join(name)).unwrap();
    } else {
        std::fs::write(inbox.join(name), bytes).unwrap();
    }
}

/// Checks every entry: complete, named by its content, holding exactly that content. Returns
/// the entries' SHA-256s.
fn check_entries(dir: &Path, methods: &[&str]) -> BTreeSet<String> {
    let mut shas = BTreeSet::new();
    for id in names_in(&dir.join("queue")) {
        let entry = dir.join("queue").join(&id);
        assert_eq!(id.len(), 16, "not an entry name: {id}");
        let state: Value =
            serde_json::from_slice(&std::fs::read(entry.join("state.json")).unwrap()).unwrap();
        assert_eq!(state["id"], id.as_str());
        assert_eq!(state["state"], "pending_review");
        let image = std::fs::read(entry.join(state["image"].as_str().unwrap())).unwrap();
        let sha = sha256(&image);
        assert_eq!(
            state["sha256"],
            sha.as_str(),
            "{id}: image differs from its hash"
        );
        assert!(sha.starts_with(&id));
        assert!(state["predicted"]["label"].is_string());
        let report: Value =
            serde_json::from_slice(&std::fs::read(entry.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["sha256"], sha.as_str());
        for method in methods {
            assert!(
                entry.join(format!("{method}.png")).is_file(),
                "{id}: no {method} overlay"
            );
        }
        let names = names_in(&entry);
        assert!(
            names.iter().all(|n| !n.starts_with('.')),
            "{id}: temporary files left: {names:?}"
        );
        assert!(shas.insert(sha), "two entries hold one content");
    }
    shas
}

#[test]
fn killed_and_restarted_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let seed: u64 = std::env::var("CXR_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    eprintln!("kill schedule seed {seed} (CXR_FAULT_SEED)");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let log = tmp.path().join("watch.log");

    let files = radiographs();
    let mut order: Vec<usize> = (0..files.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let distinct: BTreeSet<String> = files.iter().map(|(_, b)| sha256(b)).collect();

    let args = ["--method", "grad-cam", "--jobs", "1"];
    let mut events: Vec<Value> = Vec::new();
    let mut next = 0;
    let kills = 16;
    // Kills that left work behind: files still in the inbox, an entry half-built in staging.
    let (mut interrupted, mut mid_build) = (0, 0);
    for round in 0..kills {
        // Some files arrive while no watcher runs: the next start must find them.
        if rng.below(3) == 0 && next < order.len() {
            let (name, bytes) = &files[order[next]];
            drop_file(&inbox, name, bytes, rng.below(2) == 0);
            next += 1;
        }
        let jobs = if rng.below(3) == 0 { "2" } else { "1" };
        let mut watcher = Watcher::start(&dir, &[args[0], args[1], "--jobs", jobs], &log);
        // Most runs get going before files arrive; some are killed while loading or cleaning.
        if rng.below(4) != 0 {
            watcher.wait_for(Duration::from_secs(60), "watching", |e| is(e, "watching"));
        }
        let batch = 2 + rng.below(5) as usize;
        for _ in 0..batch {
            if next < order.len() {
                let (name, bytes) = &files[order[next]];
                drop_file(&inbox, name, bytes, rng.below(2) == 0);
                next += 1;
            }
        }
        let pause = 300 + rng.below(1000);
        std::thread::sleep(Duration::from_millis(pause));
        events.extend(watcher.kill());
        let waiting = names_in(&inbox).len();
        let staged = names_in(&dir.join(".staging")).len();
        interrupted += usize::from(waiting > 0);
        mid_build += usize::from(staged > 0);
        eprintln!(
            "round {round}: dropped {next}/{}, killed after {pause} ms with {waiting} files \
             waiting and {staged} entries half-built",
            files.len()
        );
    }
    // The rest arrive; a last run processes everything and exits.
    for &i in &order[next..] {
        let (name, bytes) = &files[i];
        drop_file(&inbox, name, bytes, true);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["watch", "--device", "cpu", "--watch-dir"])
        .arg(&dir)
        .args(args)
        .arg("--once")
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    let last: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{last:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    events.extend(last);

    assert!(
        interrupted > 0,
        "no kill interrupted any work: the test tested nothing"
    );
    check_after_faults(&dir, &events, &distinct);
    eprintln!(
        "{} files, {} distinct; {kills} kills, {interrupted} with work pending, {mid_build} \
         mid-build; {} duplicate events, {} already-queued events",
        files.len(),
        distinct.len(),
        events.iter().filter(|e| is(e, "duplicate")).count(),
        events.iter().filter(|e| is(e, "already_queued")).count()
    );
}

/// 36 distinct contents (6 pictures x 6 encodings) and 6 exact copies under other names.
fn radiographs() -> Vec<(String, Vec<u8>)> {
    let pictures = samples();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    for variant in 0..6 {
        for (p, png) in pictures.iter().enumerate() {
            let bytes = if variant == 0 {
                png.clone()
            } else {
                with_text(png, &format!("variant {variant}"))
            };
            files.push((format!("r{p}-{variant}.png"), bytes));
        }
    }
    for i in 0..6 {
        let (_, bytes) = files[i * 5].clone();
        files.push((format!("copy-{i}.png"), bytes));
    }
    files
}

/// Every dropped content in exactly one complete entry, nothing else anywhere.
fn check_after_faults(dir: &Path, events: &[Value], distinct: &BTreeSet<String>) {
    let inbox = dir.join("inbox");
    // Nothing left behind, nothing rejected (every file was a good radiograph).
    assert_eq!(names_in(&inbox), BTreeSet::new(), "files left in the inbox");
    assert_eq!(names_in(&dir.join("rejected")), BTreeSet::new());
    assert_eq!(names_in(&dir.join(".staging")), BTreeSet::new());
    // Exactly one entry per distinct content, each complete and true to its content.
    let shas = check_entries(dir, &["grad-cam"]);
    assert_eq!(
        &shas, distinct,
        "entries differ from the distinct contents dropped"
    );
    // No content was processed into an entry twice over all the runs.
    let mut queued: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.iter().filter(|e| is(e, "queued")) {
        *queued
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(
        queued.values().all(|&n| n == 1),
        "processed twice: {queued:?}"
    );
    // The listing shows exactly the entries.
    let list = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["queue", "list", "--json"])
        .arg(dir)
        .output()
        .unwrap();
    assert_eq!(list.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&list.stdout).lines().count(),
        distinct.len()
    );
}

#[test]
fn slow_temporary_corrupt_empty_foreign_and_duplicate_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    let log = tmp.path().join("watch.log");
    let mut watcher = Watcher::start(&dir, &["--method", "none", "--jobs", "1"], &log);
    watcher.wait_for(Duration::from_secs(60), "watching", |e| is(e, "watching"));
    let writer = drop_odd_files(&inbox);

    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        inbox.join("late.png.part").exists(),
        "a .part file was taken"
    );
    std::fs::rename(inbox.join("late.png.part"), inbox.join("late.png")).unwrap();
    writer.join().unwrap();

    // Four to reject (after their retries), four entries, one duplicate.
    watcher.wait_count(4, Duration::from_secs(60), "rejections", |e| {
        is(e, "rejected")
    });
    watcher.wait_count(4, Duration::from_secs(60), "entries", |e| is(e, "queued"));
    watcher.wait_for(Duration::from_secs(30), "duplicate", |e| is(e, "duplicate"));
    std::thread::sleep(Duration::from_millis(500));
    watcher.drain();
    assert!(watcher.alive());
    let seen = watcher.seen.clone();
    drop(watcher);
    check_odd_outcomes(&dir, &seen);
}

/// Drops one of each awkward kind; returns the thread still writing `slow.png`.
fn drop_odd_files(inbox: &Path) -> std::thread::JoinHandle<()> {
    let pictures = samples();
    // Written in six chunks 700 ms apart, longer than the quiet time: it must wait, not fail.
    let slow = with_text(&pictures[0], "slow");
    let slow_inbox = inbox.to_path_buf();
    let slow_bytes = slow.clone();
    let writer = std::thread::spawn(move || {
        let mut file = File::create(slow_inbox.join("slow.png")).unwrap();
        for chunk in slow_bytes.chunks(slow_bytes.len().div_ceil(6)) {
            file.write_all(chunk).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(700));
        }
    });
    // A temporary name is left alone until renamed.
    std::fs::write(inbox.join("late.png.part"), with_text(&pictures[1], "late")).unwrap();
    std::fs::write(inbox.join(".hidden.png"), &pictures[2]).unwrap();
    std::fs::write(inbox.join("notes.txt"), "ward 3 handover").unwrap();
    std::fs::write(
        inbox.join("truncated.png"),
        &pictures[3][..pictures[3].len() / 2],
    )
    .unwrap();
    let mut garbled = pictures[4].clone();
    let middle = garbled.len() / 2;
    for b in &mut garbled[middle..middle + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(inbox.join("garbled.png"), &garbled).unwrap();
    std::fs::write(inbox.join("empty.png"), b"").unwrap();
    std::fs::write(inbox.join("fake.png"), "this is not an image").unwrap();
    // A JPEG, re-encoded from a sample.
    let jpeg = {
        let picture = image::load_from_memory(&pictures[5]).unwrap().to_luma8();
        let mut out = std::io::Cursor::new(Vec::new());
        picture
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    };
    std::fs::write(inbox.join("film.JPG"), &jpeg).unwrap();
    // The same content twice.
    let twin = with_text(&pictures[2], "twin");
    std::fs::write(inbox.join("twin-a.png"), &twin).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(inbox.join("twin-b.png"), &twin).unwrap();
    writer
}

/// Each awkward file ended where it should, for the reason it should.
fn check_odd_outcomes(dir: &Path, seen: &[Value]) {
    let inbox = dir.join("inbox");
    let queued: BTreeSet<String> = seen
        .iter()
        .filter(|e| is(e, "queued"))
        .map(file_name)
        .collect();
    let twin_queued = if queued.contains("twin-a.png") {
        "twin-a.png"
    } else {
        "twin-b.png"
    };
    assert_eq!(
        queued,
        ["slow.png", "late.png", "film.JPG", twin_queued]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let duplicate = seen.iter().find(|e| is(e, "duplicate")).unwrap();
    let queued_twin = seen
        .iter()
        .find(|e| is(e, "queued") && file_name(e) == twin_queued)
        .unwrap();
    assert_eq!(duplicate["id"], queued_twin["id"]);
    assert_eq!(duplicate["of"], twin_queued);
    // The slow file was retried, never rejected.
    assert!(
        !seen
            .iter()
            .any(|e| is(e, "rejected") && file_name(e) == "slow.png")
    );

    let reasons: BTreeMap<String, String> = seen
        .iter()
        .filter(|e| is(e, "rejected"))
        .map(|e| (file_name(e), e["reason"].as_str().unwrap().to_lowercase()))
        .collect();
    assert_eq!(
        reasons.keys().cloned().collect::<Vec<_>>(),
        ["empty.png", "fake.png", "garbled.png", "truncated.png"]
    );
    assert!(reasons["empty.png"].contains("empty"), "{reasons:?}");
    assert!(reasons["fake.png"].contains("not a png"), "{reasons:?}");
    assert!(
        reasons["truncated.png"].contains("truncated"),
        "{reasons:?}"
    );
    assert!(reasons["garbled.png"].contains("corrupt"), "{reasons:?}");
    for name in reasons.keys() {
        let reason =
            std::fs::read_to_string(dir.join("rejected").join(format!("{name}.reason.txt")))
                .unwrap();
        assert!(reason.contains("attempts"), "{name}: {reason}");
    }
    assert_eq!(
        seen.iter()
            .filter(|e| is(e, "ignored"))
            .map(file_name)
            .collect::<Vec<_>>(),
        ["notes.txt"]
    );
    // Left in the inbox: only what is not the watcher's to take.
    assert_eq!(
        names_in(&inbox),
        [".hidden.png", "notes.txt"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let shas = check_entries(dir, &[]);
    assert_eq!(shas.len(), 4);
}

/// Makes a folder read-only even for root (`chattr +i`), or by permissions otherwise, and
/// undoes it on drop. `None` when neither works here.
struct ReadOnly(PathBuf, bool);

impl ReadOnly {
    fn set(dir: &Path) -> Option<Self> {
        let immutable = Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !immutable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let guard = Self(dir.to_path_buf(), immutable);
        let probe = dir.join("probe");
        if std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(&probe);
            return None;
        }
        Some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
#[ignore = "needs a folder that can be made read-only (not root, or chattr); scripts/test.sh runs it where it can"]
fn a_read_only_inbox_is_reported_and_nothing_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let pictures = samples();
    for (i, png) in pictures.iter().enumerate().take(3) {
        std::fs::write(inbox.join(format!("ro-{i}.png")), with_text(png, "ro")).unwrap();
    }
    std::fs::write(inbox.join("broken.png"), &pictures[3][..1000]).unwrap();
    let read_only = ReadOnly::set(&inbox)
        .expect("cannot make a folder read-only here (no chattr, and running as root)");
    let log = tmp.path().join("watch.log");
    let mut watcher = Watcher::start(&dir, &["--method", "none", "--jobs", "1"], &log);
    // The content is queued, but the files cannot leave the inbox: reported, not lost.
    watcher.wait_count(3, Duration::from_secs(60), "entries", |e| is(e, "queued"));
    watcher.wait_count(3, Duration::from_secs(30), "removal errors", |e| {
        is(e, "error") && e["error"].as_str().unwrap().contains("cannot remove")
    });
    watcher.wait_for(Duration::from_secs(30), "rejection error", |e| {
        is(e, "error") && e["error"].as_str().unwrap().contains("cannot move it to")
    });
    assert!(watcher.alive(), "the watcher gave up");
    assert_eq!(names_in(&inbox).len(), 4);
    assert_eq!(names_in(&dir.join("queue")).len(), 3);

    // Writable again: the watcher notices and finishes the job.
    drop(read_only);
    watcher.wait_count(3, Duration::from_secs(30), "removals", |e| {
        is(e, "already_queued")
    });
    watcher.wait_for(Duration::from_secs(30), "rejection", |e| is(e, "rejected"));
    assert_eq!(names_in(&inbox), BTreeSet::new());
    assert_eq!(
        names_in(&dir.join("rejected")),
        ["broken.png", "broken.png.reason.txt"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(check_entries(&dir, &[]).len(), 3);
    // Every error was said once, not on every retry.
    let removal_errors = watcher
        .seen
        .iter()
        .filter(|e| is(e, "error") && e["error"].as_str().unwrap().contains("cannot remove"))
        .count();
    assert_eq!(removal_errors, 3);
}

#[test]
fn polling_takes_files_too() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let log = tmp.path().join("watch.log");
    let mut watcher = Watcher::start(&dir, &["--method", "none", "--poll"], &log);
    watcher.wait_for(Duration::from_secs(60), "watching", |e| is(e, "watching"));
    assert_eq!(watcher.seen[0]["watcher"], "poll");
    let pictures = samples();
    drop_file(&dir.join("inbox"), "a.png", &pictures[0], true);
    drop_file(&dir.join("inbox"), "b.png", &pictures[1], false);
    watcher.wait_count(2, Duration::from_secs(30), "entries", |e| is(e, "queued"));
    assert_eq!(names_in(&dir.join("inbox")), BTreeSet::new());
}

/// Runs `cxr watch DIR --once --method none` and returns its events.
fn watch_once(dir: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["watch", "--device", "cpu", "--watch-dir"])
        .arg(dir)
        .args(["--method", "none", "--once"])
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "{}\n{events:#?}",
        String::from_utf8_lossy(&out.stderr)
    );
    events
}

/// The states a kill can leave between two steps, made on purpose (the random kills above
/// rarely land in the narrowest windows): each must resolve on the next start.
#[test]
fn every_crash_point_resumes_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let pictures = samples();
    std::fs::write(inbox.join("first.png"), &pictures[0]).unwrap();
    let events = watch_once(&dir);
    let queued = events.iter().find(|e| is(e, "queued")).unwrap();
    let id = queued["id"].as_str().unwrap().to_owned();

    // Killed after the entry was renamed into place, before the file left the inbox.
    std::fs::write(inbox.join("first.png"), &pictures[0]).unwrap();
    // Killed while building an entry: a staging folder of a process that is gone.
    let stale = dir.join(".staging/0123456789abcdef.4194305.7");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("image.png"), &pictures[1][..500]).unwrap();
    // Killed while relabelling: a temporary state file beside the real one.
    let entry = dir.join("queue").join(&id);
    std::fs::write(entry.join(".state.json.tmp-4194305.3"), b"{\"half").unwrap();
    // Killed between writing a rejection's reason and moving the file.
    std::fs::create_dir_all(dir.join("rejected")).unwrap();
    std::fs::write(dir.join("rejected/bad.png.reason.txt"), "old reason").unwrap();
    std::fs::write(inbox.join("bad.png"), b"not a picture").unwrap();
    // Work of a live process (this test) in staging is left alone.
    let live = dir.join(format!(
        ".staging/fedcba9876543210.{}.0",
        std::process::id()
    ));
    std::fs::create_dir_all(&live).unwrap();

    let events = watch_once(&dir);
    let watching = events.iter().find(|e| is(e, "watching")).unwrap();
    assert_eq!(watching["cleaned"], 2, "{events:#?}");
    let again = events.iter().find(|e| is(e, "already_queued")).unwrap();
    assert_eq!(again["id"], id.as_str());
    assert!(!events.iter().any(|e| is(e, "queued")), "processed twice");
    let rejected = events.iter().find(|e| is(e, "rejected")).unwrap();
    assert_eq!(file_name(rejected), "bad.png");
    assert!(
        rejected["to"]
            .as_str()
            .unwrap()
            .ends_with("rejected/bad.png")
    );
    let reason = std::fs::read_to_string(dir.join("rejected/bad.png.reason.txt")).unwrap();
    assert!(reason.contains("not a PNG"), "{reason}");

    assert_eq!(names_in(&inbox), BTreeSet::new());
    assert!(!stale.exists());
    assert!(live.exists());
    assert_eq!(
        names_in(&entry),
        ["image.png", "report.json", "state.json"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(check_entries(&dir, &[]).len(), 1);
}
