//! The watch folder under attack (issue 10): FIFOs, symbolic links and tiny images in the inbox,
//! rejected names that collide, and a second watcher on the same folder.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{dicom_with_rescale_slope_1e308, names_in, sample};

fn watch(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxr"));
    command
        .args(["watch", "--device", "cpu", "--watch-dir"])
        .arg(dir)
        .args(["--method", "none"])
        .args(args)
        .env_remove("CXR_MODELS")
        .stdin(Stdio::null());
    command
}

/// `cxr watch DIR --once ...`, killed after two minutes: a hang is a failure.
fn watch_once(dir: &Path, args: &[&str]) -> (Output, Vec<Value>) {
    let out = support::output_within(
        &mut watch(dir, &[&["--once"], args].concat()),
        Duration::from_secs(120),
    );
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out, events)
}

fn reason(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join("rejected").join(format!("{name}.reason.txt")))
        .unwrap_or_else(|e| panic!("{name}: no reason ({e})"))
}

#[test]
fn fifos_links_and_tiny_images_are_rejected_never_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // A private file elsewhere on the disk that a link would copy into the queue.
    let secret = tmp.path().join("secret.png");
    std::fs::copy(sample("nih_00002013_002.png"), &secret).unwrap();
    std::os::unix::fs::symlink(&secret, inbox.join("link.png")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", inbox.join("zero.png")).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(inbox.join("pipe.png"))
            .status()
            .unwrap()
            .success()
    );
    image::GrayImage::from_pixel(1, 1, image::Luma([128]))
        .save(inbox.join("tiny.png"))
        .unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), inbox.join("good.png")).unwrap();

    let (out, events) = watch_once(&dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let queued: Vec<&Value> = events.iter().filter(|e| e["event"] == "queued").collect();
    assert_eq!(queued.len(), 1, "{events:#?}\n{stderr}");
    assert!(queued[0]["file"].as_str().unwrap().ends_with("good.png"));
    assert_eq!(names_in(&dir.join("queue")).len(), 1);
    assert_eq!(names_in(&inbox), BTreeSet::new(), "{stderr}");

    let link = reason(&dir, "link.png");
    assert!(link.contains("symbolic link"), "{link}");
    assert!(reason(&dir, "zero.png").contains("symbolic link"));
    assert!(reason(&dir, "pipe.png").contains("FIFO"));
    assert!(reason(&dir, "tiny.png").contains("64x64"));
    // The link was moved as a link: the file it pointed to is where it was, untouched.
    let moved = std::fs::symlink_metadata(dir.join("rejected/link.png")).unwrap();
    assert!(moved.file_type().is_symlink());
    assert!(secret.is_file());
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

/// A PNG header claiming 20000 x 20000 (rejected at once, without retries), then `tag`.
fn too_large_png(tag: u8) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&20_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0d".to_vec();
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png.push(tag);
    png
}

#[test]
fn rejected_names_from_sub_folders_never_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    let count = 8u8;
    for i in 0..count {
        let sub = inbox.join(format!("ward-{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("a.png"), too_large_png(i)).unwrap();
    }
    let (out, events) = watch_once(&dir, &["--recursive", "--jobs", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rejected = events.iter().filter(|e| e["event"] == "rejected").count();
    assert_eq!(rejected, usize::from(count), "{events:#?}\n{stderr}");
    let names = names_in(&dir.join("rejected"));
    let images: BTreeSet<&String> = names
        .iter()
        .filter(|n| !n.ends_with(".reason.txt"))
        .collect();
    assert_eq!(images.len(), usize::from(count), "{names:?}");
    // Every file is there, each with its own reason naming where it came from.
    let mut tags = BTreeSet::new();
    for name in images {
        let bytes = std::fs::read(dir.join("rejected").join(name)).unwrap();
        tags.insert(*bytes.last().unwrap());
        let why = reason(&dir, name);
        let from = format!("ward-{}", bytes.last().unwrap());
        assert!(why.contains(&from), "{name}: {why}");
    }
    assert_eq!(tags, (0..count).collect());
}

#[test]
fn a_second_watcher_on_the_same_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let mut first: Child = watch(&dir, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = first.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap();
        if line.contains("\"watching\"") {
            break;
        }
    }
    let (out, _) = watch_once(&dir, &[]);
    let _ = first.kill();
    let _ = first.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("already watching") && stderr.contains(&format!("pid {}", first.id())),
        "{stderr}"
    );
    // Once the first is gone, the folder is free again.
    let (out, _) = watch_once(&dir, &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A JPEG written in two parts with a pause longer than the quiet time: the first part is
/// truncated (no end-of-image marker), so it is retried, not queued padded with gray; the
/// complete file is what ends up in the queue.
#[test]
fn a_jpeg_written_in_two_parts_is_queued_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let jpeg = {
        let picture = image::open(sample("nih_00001299_000.png"))
            .unwrap()
            .to_luma8();
        let mut out = std::io::Cursor::new(Vec::new());
        picture
            .write_to(&mut out, image::ImageFormat::Jpeg)
            .unwrap();
        out.into_inner()
    };
    let mut child = watch(&dir, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
    };
    while next("watching")["event"] != "watching" {}
    {
        use std::io::Write;
        let mut file = std::fs::File::create(inbox.join("film.jpg")).unwrap();
        file.write_all(&jpeg[..jpeg.len() / 2]).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        file.write_all(&jpeg[jpeg.len() / 2..]).unwrap();
    }
    let outcome = loop {
        let event = next("the JPEG's outcome");
        if ["queued", "rejected", "duplicate"].contains(&event["event"].as_str().unwrap()) {
            break event;
        }
    };
    // Anything else within a few seconds (a second entry, a rejection) is wrong too.
    let later: Vec<Value> = rx
        .recv_timeout(Duration::from_secs(3))
        .into_iter()
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(outcome["event"], "queued", "{outcome}");
    assert!(later.is_empty(), "{later:?}");
    let entries = names_in(&dir.join("queue"));
    assert_eq!(entries.len(), 1);
    let stored = std::fs::read(
        dir.join("queue")
            .join(entries.iter().next().unwrap())
            .join("image.jpg"),
    )
    .unwrap();
    assert!(stored == jpeg, "the queued file is not the complete JPEG");
}

/// A 2.5 GB sparse file and a DICOM whose Rescale Slope is 1e308 dropped into the inbox: the
/// first is refused from its size without being read, the second as non-finite, each rejected
/// once with its reason (never queued with `"confidence": null`, never retried for ever), and
/// the queue stays readable.
#[test]
fn a_sparse_file_and_a_nan_dicom_are_rejected_once_and_the_queue_stays_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let sparse = File::create(inbox.join("sparse.png")).unwrap();
    sparse.set_len(2_500_000_000).unwrap();
    drop(sparse);
    std::fs::write(inbox.join("slope.dcm"), dicom_with_rescale_slope_1e308()).unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), inbox.join("good.png")).unwrap();

    let (out, events) = watch_once(&dir, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let of = |name: &str, kind: &str| {
        events
            .iter()
            .filter(|e| e["event"] == kind && e["file"].as_str().is_some_and(|f| f.ends_with(name)))
            .count()
    };
    assert_eq!(of("sparse.png", "rejected"), 1, "{events:#?}\n{stderr}");
    assert_eq!(of("slope.dcm", "rejected"), 1, "{events:#?}\n{stderr}");
    assert_eq!(of("slope.dcm", "queued"), 0);
    assert_eq!(of("good.png", "queued"), 1, "{events:#?}");
    assert!(reason(&dir, "sparse.png").contains("larger than the 256 MiB this tool reads"));
    let slope = reason(&dir, "slope.dcm");
    assert!(
        slope.contains("Rescale Slope (1e308)") && slope.contains("non-finite"),
        "{slope}"
    );
    assert_eq!(names_in(&inbox), BTreeSet::new());
    // The queue lists and labels as usual.
    let list = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["queue", "list", "--json"])
        .arg(&dir)
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listed = String::from_utf8_lossy(&list.stdout);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(!listed.contains("\"confidence\":null"), "{listed}");
}

/// Issue 20, defect 1: the deeply nested DICOM crash-looped the watcher (it never reached
/// rejected/); issue 26: a colour screenshot was queued as COVID-19. Each is rejected with its
/// reason once, and the good file beside them is queued.
#[test]
fn a_nested_dicom_and_a_screenshot_are_rejected_and_the_watcher_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    for (fixture, name, _) in support::refused_fixtures() {
        std::fs::copy(fixture, inbox.join(name)).unwrap();
    }
    std::fs::copy(sample("nih_00001299_000.png"), inbox.join("good.png")).unwrap();
    let (out, events) = watch_once(&dir, &[]);
    // A run that rejected a file exits 1; a crash would be 134 (SIGABRT) or a signal.
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds = |name: &str| -> Vec<&str> {
        events
            .iter()
            .filter(|e| e["file"].as_str().is_some_and(|f| f.ends_with(name)))
            .filter_map(|e| e["event"].as_str())
            .collect()
    };
    for (_, name, why) in support::refused_fixtures() {
        assert!(kinds(name).contains(&"rejected"), "{events:#?}");
        assert!(!kinds(name).contains(&"queued"), "{events:#?}");
        assert!(reason(&dir, name).contains(why), "{}", reason(&dir, name));
    }
    assert!(kinds("good.png").contains(&"queued"), "{events:#?}");
    assert_eq!(names_in(&inbox), BTreeSet::new());
}
