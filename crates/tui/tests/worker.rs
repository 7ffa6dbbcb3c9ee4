//! `cxr worker` end to end through a real child process: the line protocol, concurrency, hostile
//! ids, malformed lines, end of input with work pending, and the result cache.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A folder with three radiographs (two PNGs, one DICOM) and a symbolic link leading out.
fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["hannover_e1446fe8.png", "nih_00001299_000.png"] {
        std::fs::copy(repo().join("samples").join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        repo().join(
            "../shared/data/dicom/torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        ),
        dir.path().join("scan.dcm"),
    )
    .unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(
        repo().join("samples/nih_00002013_002.png"),
        dir.path().join("outside.png"),
    )
    .unwrap();
    dir
}

struct Run {
    code: Option<i32>,
    lines: Vec<String>,
    stderr: String,
}

/// Runs `cxr worker` on `dir` with `input` on stdin (then end of input), at most 5 minutes.
fn worker(dir: &Path, extra: &[&str], input: &[u8]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["worker", "--device", "cpu", "--dir"])
        .arg(dir)
        .args(extra)
        .env_remove("CXR_MODELS")
        // The user's cache folder, private to this test.
        .env("XDG_CACHE_HOME", dir.join(".xdg"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    // stdin is dropped here: end of input with the requests still pending.
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(300) {
            child.kill().unwrap();
            panic!("the worker hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code(),
        lines: String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Splits `COMMAND ID {json}`.
fn reply(line: &str) -> (String, String, Value) {
    let mut parts = line.splitn(3, ' ');
    let (command, id, rest) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let json = serde_json::from_str(rest).unwrap_or_else(|e| panic!("{line}: {e}"));
    (command.to_owned(), id.to_owned(), json)
}

#[test]
fn concurrent_requests_are_all_answered_after_end_of_input() {
    let dir = folder();
    let requests = [
        "classify hannover_e1446fe8.png",
        "classify nih_00001299_000.png",
        "classify scan.dcm",
        "explain_gradcam hannover_e1446fe8.png",
        "explain_grad_cam nih_00001299_000.png",
        "explain_grad-cam-plus-plus scan.dcm",
        "explain_lime nih_00001299_000.png",
    ];
    let input = requests.join("\n") + "\n";
    let run = worker(dir.path(), &["--jobs", "3"], input.as_bytes());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), requests.len(), "{:#?}", run.lines);
    let answered: BTreeSet<(String, String)> = run
        .lines
        .iter()
        .map(|l| {
            let (c, i, _) = reply(l);
            (c, i)
        })
        .collect();
    let asked: BTreeSet<(String, String)> = requests
        .iter()
        .map(|r| {
            let (c, i) = r.split_once(' ').unwrap();
            (c.to_owned(), i.to_owned())
        })
        .collect();
    assert_eq!(answered, asked);
    for line in &run.lines {
        let (command, id, json) = reply(line);
        let p = json["probabilities"].as_object().unwrap();
        let total: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-4, "{line}");
        assert!(["covid", "normal"].contains(&json["label"].as_str().unwrap()));
        assert_eq!(json["cached"], false);
        if command == "classify" {
            assert!(json["lung_fraction"].as_f64().unwrap() > 0.05, "{line}");
        } else {
            let overlay = PathBuf::from(json["overlay"].as_str().unwrap());
            assert!(overlay.starts_with(dir.path().canonicalize().unwrap().join(".cxr-worker")));
            assert!(
                overlay
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&id)
            );
            let png = image::open(&overlay).unwrap();
            assert!(png.width() > 100, "{line}");
            assert!(json["quality"]["deletion_auc"].is_number(), "{line}");
            assert!(json["heatmap"]["max"].as_f64().unwrap() <= 1.0);
        }
    }
    let method = |c: &str| {
        let line = run.lines.iter().find(|l| l.starts_with(c)).unwrap();
        reply(line).2["method"].as_str().unwrap().to_owned()
    };
    assert_eq!(method("explain_gradcam "), "grad-cam");
    assert_eq!(method("explain_grad_cam "), "grad-cam");
    assert_eq!(method("explain_grad-cam-plus-plus "), "grad-cam-plus-plus");
    assert_eq!(method("explain_lime "), "lime");
}

#[test]
fn bad_requests_get_one_error_line_each() {
    let dir = folder();
    let mut input = b"classify\n\
        classify a.png b.png\n\
        \n\
        classify ../x.png\n\
        classify /etc/passwd\n\
        classify outside.png\n\
        classify .cxr-cache\n\
        classify x..png\n\
        classify missing.png\n\
        frobnicate nih_00001299_000.png\n\
        explain_nothing nih_00001299_000.png\n\
        classify nih_00001299_000.png\r\n"
        .to_vec();
    input.extend_from_slice(b"classify \xff\xfe.png\n");
    input.extend_from_slice(&[b'x'; 5000]);
    input.extend_from_slice(b"\nclassify scan.dcm");
    let run = worker(dir.path(), &["--no-cache"], &input);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected_errors = [
        "error - - malformed request \"classify\"",
        "error - - malformed request \"classify a.png b.png\"",
        "error classify ../x.png invalid id: contains a path separator",
        "error classify /etc/passwd invalid id: contains a path separator",
        #[cfg(unix)]
        "error classify outside.png invalid id: resolves outside the folder",
        "error classify .cxr-cache invalid id: starts with '.'",
        "error classify x..png invalid id: contains \"..\"",
        "error classify missing.png ",
        "error frobnicate nih_00001299_000.png unknown command \"frobnicate\"",
        "error explain_nothing nih_00001299_000.png unknown explainer \"nothing\"",
        "error - - request is not UTF-8",
        "error - - request longer than 4096 bytes",
    ];
    for prefix in expected_errors {
        let hits = run.lines.iter().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(hits, 1, "{prefix:?} in {:#?}", run.lines);
    }
    let missing = run
        .lines
        .iter()
        .find(|l| l.starts_with("error classify missing.png"))
        .unwrap();
    assert!(missing.contains("no such file"), "{missing}");
    // The good requests around them still work, the last one without a final newline.
    let good: Vec<_> = run
        .lines
        .iter()
        .filter(|l| !l.starts_with("error"))
        .collect();
    assert_eq!(good.len(), 2, "{:#?}", run.lines);
    assert!(
        good.iter()
            .any(|l| l.starts_with("classify nih_00001299_000.png {"))
    );
    assert!(good.iter().any(|l| l.starts_with("classify scan.dcm {")));
    assert_eq!(
        run.lines.len(),
        expected_errors.len() + 2,
        "{:#?}",
        run.lines
    );
}

#[test]
fn broken_images_are_errors_naming_the_file() {
    let dir = folder();
    std::fs::write(dir.path().join("notes.png"), "not an image").unwrap();
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM\x02\x00");
    std::fs::write(dir.path().join("cut.dcm"), dicom).unwrap();
    let run = worker(
        dir.path(),
        &["--no-cache", "--jobs", "1"],
        b"classify notes.png\nexplain_lime cut.dcm\n",
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), 2, "{:#?}", run.lines);
    assert!(
        run.lines
            .iter()
            .any(|l| l.starts_with("error classify notes.png ")
                && l.contains("notes.png: not a PNG or JPEG"))
    );
    assert!(
        run.lines
            .iter()
            .any(|l| l.starts_with("error explain_lime cut.dcm ") && l.contains("cut.dcm: DICOM"))
    );
}

#[test]
fn repeated_requests_come_from_the_cache_and_corrupt_entries_are_recomputed() {
    let dir = folder();
    let input = b"classify nih_00001299_000.png\nexplain_gradcam scan.dcm\n";
    let first = worker(dir.path(), &["--jobs", "1"], input);
    assert_eq!(first.lines.len(), 2, "{:#?} {}", first.lines, first.stderr);
    let second = worker(dir.path(), &["--jobs", "1"], input);
    let by_command = |run: &Run, command: &str| {
        let line = run.lines.iter().find(|l| l.starts_with(command)).unwrap();
        reply(line).2
    };
    for command in ["classify", "explain_gradcam"] {
        let (a, b) = (by_command(&first, command), by_command(&second, command));
        assert_eq!(a["cached"], false);
        assert_eq!(b["cached"], true, "{command}");
        assert_eq!(a["probabilities"], b["probabilities"], "{command}");
    }
    // The overlay is written again from the cache even if it was deleted.
    let overlay = PathBuf::from(
        by_command(&second, "explain_gradcam")["overlay"]
            .as_str()
            .unwrap(),
    );
    std::fs::remove_file(&overlay).unwrap();
    // Damage every cache entry: nothing corrupt may be served.
    let cache = dir.path().join(".xdg/cxr");
    let mut damaged = 0;
    for shard in std::fs::read_dir(&cache).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue; // the key file
        }
        for entry in std::fs::read_dir(shard).unwrap() {
            let path = entry.unwrap().path();
            let mut bytes = std::fs::read(&path).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 0x20;
            std::fs::write(&path, bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(
        damaged, 4,
        "two classifications (an explanation needs one), an explanation and its overlay"
    );
    let third = worker(dir.path(), &["--jobs", "1"], input);
    for command in ["classify", "explain_gradcam"] {
        let c = by_command(&third, command);
        assert_eq!(c["cached"], false, "{command}: recomputed");
        assert_eq!(
            c["probabilities"],
            by_command(&first, command)["probabilities"]
        );
    }
    assert!(overlay.exists());
    let bypass = worker(dir.path(), &["--jobs", "1", "--no-cache"], input);
    assert_eq!(by_command(&bypass, "classify")["cached"], false);
}

#[test]
fn a_folder_that_does_not_exist_exits_2() {
    let run = worker(Path::new("/nonexistent/folder"), &[], b"classify x.png\n");
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("/nonexistent/folder"), "{}", run.stderr);
    assert!(run.lines.is_empty());
}

/// The seed's requests: ids without extension (`ID` is `ID.png`, else the one `ID.*`), and with
/// `--compat seed` its reply shapes: `{"COVID-19": p, "NO FINDING": q}` and the overlay path.
#[test]
fn seed_ids_without_extension_and_seed_replies() {
    let dir = folder();
    let d = dir.path();
    std::fs::copy(d.join("hannover_e1446fe8.png"), d.join("abc.png")).unwrap();
    std::fs::copy(d.join("nih_00001299_000.png"), d.join("two.jpg")).unwrap();
    std::fs::copy(d.join("nih_00001299_000.png"), d.join("two.dcm")).unwrap();
    let input = "classify abc\nclassify scan\nexplain_gradcam abc\nclassify two\nclassify gone\n";
    let run = worker(d, &["--jobs", "2", "--compat", "seed"], input.as_bytes());
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.lines.len(), 5, "{:#?}", run.lines);
    let line = |prefix: &str| {
        run.lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no reply {prefix:?} in {:#?}", run.lines))
            .clone()
    };
    // The same image under its own name, in the native shape, for comparison.
    let native = worker(d, &[], b"classify hannover_e1446fe8.png\n");
    let (_, _, native) = reply(&native.lines[0]);
    for id in ["abc", "scan"] {
        let (_, _, json) = reply(&line(&format!("classify {id} ")));
        let object = json.as_object().unwrap();
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["COVID-19", "NO FINDING"],
            "{json}"
        );
        let total = json["COVID-19"].as_f64().unwrap() + json["NO FINDING"].as_f64().unwrap();
        assert!((total - 1.0).abs() < 1e-4, "{json}");
        if id == "abc" {
            assert_eq!(json["COVID-19"], native["probabilities"]["covid"]);
        }
    }
    let explain = line("explain_gradcam abc ");
    let overlay = PathBuf::from(explain.trim_start_matches("explain_gradcam abc "));
    assert!(overlay.ends_with("abc.grad-cam.png"), "{explain}");
    let picture = image::open(&overlay).unwrap();
    assert_eq!(
        (picture.width(), picture.height()),
        image::image_dimensions(d.join("abc.png")).unwrap()
    );
    let ambiguous = line("error classify two ");
    assert!(ambiguous.contains("two.dcm, two.jpg"), "{ambiguous}");
    let gone = line("error classify gone ");
    assert!(gone.contains("no such file"), "{gone}");
}
