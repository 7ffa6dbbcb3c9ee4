//! `cxr ... | head -1`: a reader that goes away ends the command quietly, with status 0 or the
//! conventional 141, never a panic (status 101 and a backtrace) (issue 10).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

fn spawn(args: &[&std::ffi::OsStr]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(args)
        .env_remove("CXR_MODELS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (at most a minute) and checks the quiet ending; returns stderr.
fn ends_quietly(mut child: Child, what: &str) -> String {
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        err.read_to_string(&mut stderr).unwrap();
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        matches!(status.code(), Some(0 | 141)),
        "{what}: {status:?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    stderr
}

#[test]
fn explainers_into_a_closed_pipe() {
    for json in [true, false] {
        let args: &[&std::ffi::OsStr] = if json {
            &["explainers".as_ref(), "--json".as_ref()]
        } else {
            &["explainers".as_ref()]
        };
        let mut child = spawn(args);
        // Closed before the first line is written.
        drop(child.stdout.take());
        ends_quietly(child, &format!("explainers json={json}"));
    }
}

#[test]
fn classify_into_head_1() {
    let files = [
        sample("nih_00001299_000.png"),
        sample("nih_00002013_002.png"),
        sample("nih_00001385_000.png"),
        sample("hannover_e1446fe8.png"),
    ];
    let mut args: Vec<&std::ffi::OsStr> = vec!["classify".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let mut child = spawn(&args);
    // `head -1`: read one line, then go away.
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"label\""), "{first}");
    ends_quietly(child, "classify | head -1");
}

#[test]
fn messages_into_a_closed_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let mut child = spawn(&["classify".as_ref(), missing.as_os_str()]);
    drop(child.stderr.take());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The JSON line for scripts still came out; the message for people had nowhere to go.
    assert!(out.contains("missing.png"), "{out}");
    assert!(matches!(status.code(), Some(1 | 141)), "{status:?}");
}
