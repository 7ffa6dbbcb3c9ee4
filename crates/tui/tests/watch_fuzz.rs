//! Property test of the watch folder (issue 10): seeded random sequences of what happens to an
//! inbox (files created, written in two parts with the watcher looking in between, renamed in,
//! deleted, symbolic links to a radiograph outside the folder, FIFOs, duplicate content, and
//! the watcher killed and restarted) run against the real `cxr watch` on real radiographs.
//! Afterwards:
//!
//! - nothing is lost: the inbox is empty, every regular file that was not deleted is in exactly
//!   one queue entry (by content) and was not rejected, every link and FIFO is in `rejected/`
//!   with its reason;
//! - nothing is processed twice: no content is in two entries;
//! - links and FIFOs are never followed: the file a link points to is untouched and its
//!   content is in no entry;
//! - no hang: the final `cxr watch --once` ends (the harness kills it after a generous bound
//!   and fails; no timing is asserted).
//!
//! The seeds are fixed; `CXR_WATCH_FUZZ_SEEDS=N` runs N more, from seed 1000 on.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;

use cxr_core::queue::{Order, Queue};

mod support;
use support::{Rng, sample, sha256, with_text};

const SEEDS: [u64; 2] = [7, 42];
const OPS: usize = 14;

/// A running `cxr watch`, its JSON events read on a thread.
struct Watcher {
    child: Child,
    events: Receiver<Value>,
}

impl Watcher {
    fn start(dir: &Path) -> Self {
        let mut child = watcher(dir, false);
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(value) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let mut watcher = Self { child, events };
        let _ = watcher.wait_for("watching", |e| e["event"] == "watching");
        watcher
    }

    /// Waits for an event matching `pred`. The bound only turns a hang into a failure.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if pred(&event) => return event,
                Ok(_) => {}
                Err(e) => panic!("waiting for {what}: {e} (hung or exited)"),
            }
        }
    }

    /// Waits until the watcher has done something final with `name`.
    fn wait_outcome(&mut self, name: &str) {
        let _ = self.wait_for(&format!("the outcome of {name}"), |e| {
            ["queued", "duplicate", "already_queued", "rejected"]
                .contains(&e["event"].as_str().unwrap_or_default())
                && e["file"].as_str().is_some_and(|f| f.ends_with(name))
        });
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn watcher(dir: &Path, once: bool) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxr"));
    command
        .args(["--device", "cpu", "watch"])
        .arg(dir)
        .args(["--method", "none", "--jobs", "1", "--debounce-ms", "300"])
        .env_remove("CXR_MODELS")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(if once { Stdio::null() } else { Stdio::piped() })
        .stderr(Stdio::null());
    if once {
        command.arg("--once");
    }
    command.spawn().unwrap()
}

/// What must have become of a name put into the inbox.
#[derive(Debug, Clone)]
enum Expect {
    /// A complete radiograph: its content in exactly one entry.
    Queued(String),
    /// Removed by the test; its content may or may not have been queued before.
    Deleted(String),
    /// In `rejected/`, with a reason containing this.
    Rejected(&'static str),
}

struct Run {
    dir: PathBuf,
    inbox: PathBuf,
    outside: PathBuf,
    expect: BTreeMap<String, Expect>,
    /// Files written in part: name, open handle, the rest, the content's hash.
    partial: Vec<(String, File, Vec<u8>, String)>,
    contents: Vec<(Vec<u8>, String)>,
    log: Vec<String>,
}

impl Run {
    fn fresh_content(&mut self, tag: &str, rng: &mut Rng) -> (Vec<u8>, String) {
        let names = [
            "nih_00001299_000.png",
            "nih_00001385_000.png",
            "hannover_2c35005f.png",
        ];
        let base = std::fs::read(sample(names[rng.below(3) as usize])).unwrap();
        let bytes = with_text(&base, tag);
        let sha = sha256(&bytes);
        self.contents.push((bytes.clone(), sha.clone()));
        (bytes, sha)
    }

    #[allow(clippy::too_many_lines)] // one arm per kind of step reads best as one match
    /// One step; sometimes waits for the watcher to deal with what it just did, so that it
    /// runs between steps (and is killed in the middle of work), not only at the end.
    fn op(&mut self, i: usize, rng: &mut Rng, watcher: &mut Option<Watcher>) {
        let settle = rng.below(2) == 0;
        let name = match rng.below(10) {
            0 | 1 => {
                let name = format!("create-{i}.png");
                let (bytes, sha) = self.fresh_content(&name, rng);
                std::fs::write(self.inbox.join(&name), bytes).unwrap();
                self.log.push(format!("create {name}"));
                self.expect.insert(name.clone(), Expect::Queued(sha));
                Some(name)
            }
            2 => {
                let name = format!("partial-{i}.png");
                let (bytes, sha) = self.fresh_content(&name, rng);
                let mut file = File::create(self.inbox.join(&name)).unwrap();
                let half = bytes.len() / 2;
                file.write_all(&bytes[..half]).unwrap();
                file.flush().unwrap();
                self.log.push(format!("partial {name}"));
                if settle && let Some(w) = watcher.as_mut() {
                    // The watcher reads it half-written: it must retry, not queue or reject.
                    let seen = w.wait_for(&format!("a retry of {name}"), |e| {
                        e["file"].as_str().is_some_and(|f| f.ends_with(&name))
                    });
                    assert_eq!(seen["event"], "retrying", "half-written {name}: {seen}");
                    self.log.push(format!("watcher looked at {name}"));
                }
                self.partial.push((name, file, bytes[half..].to_vec(), sha));
                None
            }
            3 => {
                self.complete_one();
                None
            }
            4 => {
                let name = format!("renamed-{i}.png");
                let (bytes, sha) = self.fresh_content(&name, rng);
                let staging = self.dir.join("outgoing").join(&name);
                std::fs::write(&staging, bytes).unwrap();
                std::fs::rename(&staging, self.inbox.join(&name)).unwrap();
                self.log.push(format!("rename in {name}"));
                self.expect.insert(name.clone(), Expect::Queued(sha));
                Some(name)
            }
            5 => {
                let queued: Vec<String> = self
                    .expect
                    .iter()
                    .filter(|(_, e)| matches!(e, Expect::Queued(_)))
                    .map(|(n, _)| n.clone())
                    .collect();
                if queued.is_empty() {
                    return;
                }
                let settle = false;
                let name = queued[rng.below(queued.len() as u64) as usize].clone();
                let _ = std::fs::remove_file(self.inbox.join(&name));
                let Some(Expect::Queued(sha)) = self.expect.get(&name).cloned() else {
                    unreachable!()
                };
                self.log.push(format!("delete {name}"));
                self.expect.insert(name, Expect::Deleted(sha));
                let _ = settle;
                None
            }
            6 => {
                let name = format!("link-{i}.png");
                std::os::unix::fs::symlink(&self.outside, self.inbox.join(&name)).unwrap();
                self.log.push(format!("symlink {name}"));
                self.expect
                    .insert(name.clone(), Expect::Rejected("symbolic link"));
                Some(name)
            }
            7 => {
                let name = format!("fifo-{i}.png");
                assert!(
                    Command::new("mkfifo")
                        .arg(self.inbox.join(&name))
                        .status()
                        .unwrap()
                        .success()
                );
                self.log.push(format!("fifo {name}"));
                self.expect.insert(name.clone(), Expect::Rejected("FIFO"));
                Some(name)
            }
            8 => {
                // Restart: killed at any moment (maybe in the middle of a file), started again.
                if let Some(w) = watcher.take() {
                    w.kill();
                }
                *watcher = Some(Watcher::start(&self.dir));
                self.log.push("restart".into());
                None
            }
            _ => {
                if self.contents.is_empty() {
                    return;
                }
                let name = format!("duplicate-{i}.png");
                let (bytes, sha) =
                    self.contents[rng.below(self.contents.len() as u64) as usize].clone();
                std::fs::write(self.inbox.join(&name), bytes).unwrap();
                self.log.push(format!("duplicate {name}"));
                self.expect.insert(name.clone(), Expect::Queued(sha));
                Some(name)
            }
        };
        if let (Some(name), true, Some(w)) = (name, settle, watcher.as_mut()) {
            // Half-written files are finished first: a writer that stalls for longer than the
            // retries is another test (`a_jpeg_written_in_two_parts_is_queued_whole`).
            while !self.partial.is_empty() {
                self.complete_one();
            }
            w.wait_outcome(&name);
            self.log.push(format!("watcher done with {name}"));
        }
    }

    fn complete_one(&mut self) {
        if self.partial.is_empty() {
            return;
        }
        let (name, mut file, rest, sha) = self.partial.remove(0);
        file.write_all(&rest).unwrap();
        drop(file);
        self.log.push(format!("complete {name}"));
        self.expect.insert(name, Expect::Queued(sha));
    }
}

#[allow(clippy::too_many_lines)] // the steps, then every invariant, in one place
fn one_sequence(seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(dir.join("outgoing")).unwrap();
    // A radiograph outside the folder that a link points at.
    let outside = tmp.path().join("private.png");
    let private = with_text(
        &std::fs::read(sample("hannover_b343e657.png")).unwrap(),
        "private",
    );
    std::fs::write(&outside, &private).unwrap();
    let mut run = Run {
        dir: dir.clone(),
        inbox: inbox.clone(),
        outside: outside.clone(),
        expect: BTreeMap::new(),
        partial: Vec::new(),
        contents: Vec::new(),
        log: Vec::new(),
    };
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut running = Some(Watcher::start(&dir));
    for i in 0..OPS {
        run.op(i, &mut rng, &mut running);
    }
    while !run.partial.is_empty() {
        run.complete_one();
    }
    if let Some(w) = running.take() {
        w.kill();
    }

    // Whatever was left half done is finished by one more watcher, which must end.
    let mut once = watcher(&dir, true);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = once.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(600) {
            let _ = once.kill();
            panic!(
                "seed {seed}: `cxr watch --once` hung; steps: {:#?}",
                run.log
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // 1: something was rejected (the links and FIFOs are).
    assert!(
        matches!(status.code(), Some(0 | 1)),
        "seed {seed}: `cxr watch --once` failed: {status}"
    );
    let context = format!("seed {seed}, steps {:#?}", run.log);

    // Nothing left in the inbox.
    let left: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the inbox: {left:?}; {context}");

    // Entries by content: none twice.
    let queue = Queue::open(&dir).unwrap();
    let mut entries: BTreeMap<String, usize> = BTreeMap::new();
    for item in queue.list(Order::Uncertainty).unwrap() {
        *entries.entry(item.state.sha256.clone()).or_default() += 1;
    }
    for (sha, count) in &entries {
        assert_eq!(*count, 1, "{sha} processed {count} times; {context}");
    }
    let rejected = dir.join("rejected");
    let rejected_names: BTreeSet<String> = std::fs::read_dir(&rejected)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut allowed = BTreeSet::new();
    for (name, expect) in &run.expect {
        match expect {
            Expect::Queued(sha) => {
                assert!(
                    entries.contains_key(sha),
                    "{name}: lost (its content is in no entry); {context}"
                );
                assert!(
                    !rejected_names.contains(name),
                    "{name}: a complete radiograph was rejected: {}; {context}",
                    std::fs::read_to_string(rejected.join(format!("{name}.reason.txt")))
                        .unwrap_or_default()
                );
                allowed.insert(sha.clone());
            }
            Expect::Deleted(sha) => {
                assert!(!rejected_names.contains(name), "{name}; {context}");
                allowed.insert(sha.clone());
            }
            Expect::Rejected(why) => {
                let meta = std::fs::symlink_metadata(rejected.join(name))
                    .unwrap_or_else(|e| panic!("{name}: not in rejected/ ({e}); {context}"));
                assert!(!meta.is_file(), "{name}: followed and copied; {context}");
                let reason =
                    std::fs::read_to_string(rejected.join(format!("{name}.reason.txt"))).unwrap();
                assert!(reason.contains(why), "{name}: {reason}; {context}");
            }
        }
    }
    // Every entry came from a file put into the inbox; the linked file is untouched and was
    // never queued.
    for sha in entries.keys() {
        assert!(allowed.contains(sha), "entry {sha} from nowhere; {context}");
    }
    assert_eq!(std::fs::read(&outside).unwrap(), private, "{context}");
    assert!(!entries.contains_key(&sha256(&private)), "{context}");
    println!(
        "seed {seed}: {} steps, {} entries, {} rejected: {:?}",
        run.log.len(),
        entries.len(),
        rejected_names.len() / 2,
        run.log
    );
}

#[test]
fn random_inbox_event_sequences_lose_nothing_and_process_nothing_twice() {
    let extra: u64 = std::env::var("CXR_WATCH_FUZZ_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    for seed in SEEDS.into_iter().chain(1000..1000 + extra) {
        one_sequence(seed);
    }
}
