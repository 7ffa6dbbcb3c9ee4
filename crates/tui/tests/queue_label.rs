//! `cxr queue label` under contention and against bad input (issue 10): concurrent labellers
//! of one entry keep every review, labels must be the model's classes or `skip`, and a
//! `state.json` whose image leaves its entry is refused.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

fn cxr(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxr"));
    command
        .args(args)
        .args(["--device", "cpu", "--watch-dir"])
        .arg(dir)
        .env_remove("CXR_MODELS");
    command
}

/// A watch folder with one entry (a sample labelled `normal` by `setup`); returns its id.
fn one_entry(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let file = sample("nih_00001299_000.png");
    let out = cxr(
        dir,
        &[
            "queue",
            "label",
            file.to_str().unwrap(),
            "normal",
            "--reviewer",
            "setup",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    listed["id"].as_str().unwrap().to_owned()
}

fn state(dir: &Path, id: &str) -> Value {
    let text = std::fs::read(dir.join("queue").join(id).join("state.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn twenty_concurrent_labellers_keep_every_review() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let id = one_entry(&dir);
    let children: Vec<_> = (0..20)
        .map(|i| {
            let label = if i % 2 == 0 { "covid" } else { "normal" };
            let reviewer = format!("r{i:02}");
            cxr(
                &dir,
                &["queue", "label", &id, label, "--reviewer", &reviewer],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let state = state(&dir, &id);
    let mut reviewers: Vec<String> = state["history"]
        .as_array()
        .unwrap()
        .iter()
        .chain(std::iter::once(&state["review"]))
        .map(|r| r["reviewer"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(reviewers.len(), 21, "{state}");
    reviewers.sort();
    let expected: BTreeSet<String> = (0..20)
        .map(|i| format!("r{i:02}"))
        .chain(["setup".to_owned()])
        .collect();
    assert_eq!(reviewers.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(state["state"], "reviewed");
}

#[test]
fn a_misspelt_label_is_an_error_listing_the_valid_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let id = one_entry(&dir);
    let before = state(&dir, &id);
    let out = cxr(&dir, &["queue", "label", &id, "nromal", "--reviewer", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = stderr(&out);
    assert!(
        text.contains("nromal") && text.contains("covid, normal, pneumonia, skip"),
        "{text}"
    );
    assert_eq!(state(&dir, &id), before, "the entry changed");
    // `skip` and the real classes are accepted.
    for label in ["skip", "covid"] {
        let out = cxr(&dir, &["queue", "label", &id, label, "--reviewer", "x"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{label}: {}", stderr(&out));
    }
}

#[test]
fn a_state_whose_image_leaves_its_entry_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let id = one_entry(&dir);
    let state_file = dir.join("queue").join(&id).join("state.json");
    let secret = tmp.path().join("secret.png");
    std::fs::copy(sample("nih_00002013_002.png"), &secret).unwrap();
    for image in ["../../../secret.png", "/etc/passwd", "link.png"] {
        if image == "link.png" {
            std::os::unix::fs::symlink(&secret, dir.join("queue").join(&id).join(image)).unwrap();
        }
        let mut state = state(&dir, &id);
        state["image"] = Value::from(image);
        std::fs::write(&state_file, serde_json::to_vec(&state).unwrap()).unwrap();

        let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args(["queue", "list", "--json"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).trim().is_empty(),
            "{image}: listed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr(&out).contains("refused"),
            "{image}: {}",
            stderr(&out)
        );
        let out = cxr(&dir, &["queue", "label", &id, "normal", "--reviewer", "x"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{image}: labelled");
    }
}

/// Issue 20, defect 8: a reviewer name a spreadsheet would run as a formula is refused when
/// labelling, and cells that start like a formula (an older entry's reviewer, a dropped file's
/// name) are exported as text (a leading `'`, OWASP's rule), never verbatim.
#[test]
fn formula_cells_are_refused_and_neutralised_in_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let id = one_entry(&dir);
    let before = state(&dir, &id);
    for name in [
        "=HYPERLINK(\"http://x\",\"y\")",
        "+1",
        "-2+3",
        "@SUM(A1)",
        "a\tb",
    ] {
        let flag = format!("--reviewer={name}");
        let out = cxr(&dir, &["queue", "label", &id, "normal", &flag])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{name:?} accepted");
        assert!(stderr(&out).contains("reviewer"), "{}", stderr(&out));
    }
    assert_eq!(state(&dir, &id), before, "the entry changed");

    // An entry written before the rule, or by hand: the export makes its cells inert.
    let mut written = before.clone();
    written["review"]["reviewer"] = Value::from("=HYPERLINK(\"http://x\",\"y\")");
    written["source_name"] = Value::from("@cmd.png");
    let state_file = dir.join("queue").join(&id).join("state.json");
    std::fs::write(&state_file, serde_json::to_vec(&written).unwrap()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["queue", "export", "--format", "csv", "--watch-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut reader = csv::Reader::from_reader(&out.stdout[..]);
    let row = reader.records().next().unwrap().unwrap();
    let cells: Vec<&str> = row.iter().collect();
    assert!(
        cells.contains(&"'=HYPERLINK(\"http://x\",\"y\")"),
        "{cells:?}"
    );
    assert!(cells.contains(&"'@cmd.png"), "{cells:?}");
    assert!(
        cells.iter().all(|c| !c.starts_with(['=', '+', '-', '@'])),
        "{cells:?}"
    );
}

#[test]
fn one_reviewer_rule_on_the_command_line_and_in_the_viewer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    let id = one_entry(&dir);
    // A file labelled from the command line keeps the fingerprint of the models that predicted.
    let model = state(&dir, &id)["model"].as_str().map(str::len);
    assert_eq!(model, Some(64), "{}", state(&dir, &id));
    let log = tmp.path().join("viewer.log");
    let log = log.to_str().unwrap();
    // No --reviewer: $CXR_REVIEWER, before the login name.
    let out = cxr(&dir, &["queue", "label", &id, "covid"])
        .env("CXR_REVIEWER", "  carol ")
        .env("USER", "login-name")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&dir, &id)["review"]["reviewer"], "carol");
    let out = cxr(&dir, &["queue", "label", &id, "normal"])
        .env_remove("CXR_REVIEWER")
        .env("USER", "login-name")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&dir, &id)["review"]["reviewer"], "login-name");
    // The viewer checks its reviewer with the queue's rule before it takes the screen.
    let out = cxr(
        &dir,
        &["tui", "--reviewer", "=HYPERLINK(\"x\")", "--log", log],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let error = stderr(&out);
    assert!(error.contains("reviewer"), "{error}");
    let out = cxr(&dir, &["tui", "--log", log])
        .env("CXR_REVIEWER", "a\nb")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a two-line name from the environment"
    );
    assert!(stderr(&out).contains("reviewer"), "{}", stderr(&out));
}

/// `cxr queue undo ID` takes the current review back: it stays in the history with who undid
/// it, the entry is pending again (nothing before it), and a second undo is an error.
#[test]
fn undo_takes_back_a_review_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let id = one_entry(dir.path());
    // No models needed: undo only edits the queue.
    let undo = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args(["queue", "undo", &id, "--watch-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = undo(&["--reviewer", "dr-kim"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["state"], "pending_review");
    let on_disk = state(dir.path(), &id);
    assert_eq!(on_disk["review"], Value::Null);
    assert_eq!(on_disk["history"][0]["label"], "normal");
    assert_eq!(on_disk["history"][0]["reviewer"], "setup");
    assert_eq!(on_disk["history"][0]["undone"]["reviewer"], "dr-kim");
    let again = undo(&[]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("no review to undo"),
        "{}",
        stderr(&again)
    );
    assert_eq!(state(dir.path(), &id), on_disk, "nothing changed");
}
