//! Damaged and careless model folders through the real binary (issue 20, defects 2, 3, 7 and
//! 10, and the FIFO): every one stops with a one-line error naming the file and what is wrong,
//! quickly, on every backend, and never gives a label.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

mod support;
use support::{output_within, repo, sample};

/// A private copy of the shipped models folder.
fn models_copy() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("models");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    (tmp, dir)
}

/// `cxr classify` of one sample with the models in `dir` on `backend`, killed after a minute.
fn classify(dir: &Path, backend: &str) -> Output {
    output_within(
        Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args([
                "classify",
                "--device",
                "cpu",
                "--backend",
                backend,
                "--models",
            ])
            .arg(dir)
            .arg(sample("nih_00001299_000.png")),
        Duration::from_secs(60),
    )
}

/// The error `cxr classify` stops with on `backend`; it must give no label and not panic.
fn refused(dir: &Path, backend: &str) -> String {
    let out = classify(dir, backend);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{backend}: exit 0: {stdout} {stderr}"
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "{backend}: panicked: {stderr}"
    );
    assert!(
        !stdout.contains("\"label\""),
        "{backend}: labelled: {stdout}"
    );
    assert!(!stderr.contains("panicked"), "{backend}: {stderr}");
    stderr
}

/// The byte range of tensor `name` in a safetensors file.
fn tensor_range(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let offsets = &header[name]["data_offsets"];
    let start = 8 + header_len + offsets[0].as_u64().unwrap() as usize;
    let end = 8 + header_len + offsets[1].as_u64().unwrap() as usize;
    start..end
}

/// Rewrites the classifier's `fc.weight` with `value` at every position (`first_only`: at the
/// first), header intact.
fn damage_fc_weight(dir: &Path, value: f32, first_only: bool) {
    let path = dir.join("classifier.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let range = tensor_range(&bytes, "fc.weight");
    let end = if first_only {
        range.start + 4
    } else {
        range.end
    };
    for float in bytes[range.start..end].chunks_exact_mut(4) {
        float.copy_from_slice(&value.to_le_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
}

/// Edits the classifier's (or segmenter's) JSON.
fn edit_json(dir: &Path, name: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(format!("{name}.json"));
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut meta);
    std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
}

fn forget_digest(dir: &Path, name: &str) {
    edit_json(dir, name, |meta| {
        meta.as_object_mut().unwrap().remove("weights_sha256");
    });
}

/// Defect 2: one NaN in `fc.weight` gave label `normal`, probabilities `null`, exit 0. With the
/// digest `cxr train` records, the damaged file is refused as damaged; without it, the NaN is
/// found and named. On the automatic backend (which used to fall back to libtorch when the
/// export no longer matched) and on libtorch alike.
#[test]
fn a_nan_in_the_weights_is_refused_on_every_backend() {
    let (_tmp, dir) = models_copy();
    damage_fc_weight(&dir, f32::NAN, true);
    for backend in ["auto", "torch", "onnx"] {
        let e = refused(&dir, backend);
        assert!(
            e.contains("classifier.safetensors") && e.contains("damaged or was replaced"),
            "{backend}: {e}"
        );
    }
    forget_digest(&dir, "classifier");
    for backend in ["auto", "torch", "onnx"] {
        let e = refused(&dir, backend);
        assert!(
            e.contains("tensor \"fc.weight\" holds a non-finite value (NaN) at index 0"),
            "{backend}: {e}"
        );
    }
}

/// Defect 2, the rest of it: finite weights so large that the logits overflow make the
/// probabilities NaN; that is an error, never a label.
#[test]
fn a_non_finite_probability_is_an_error_not_a_label() {
    let (_tmp, dir) = models_copy();
    damage_fc_weight(&dir, 3.0e38, false);
    forget_digest(&dir, "classifier");
    let e = refused(&dir, "torch");
    assert!(e.contains("non-finite probability"), "{e}");
}

/// `--backend auto` falls back to libtorch for a missing export only: an export made from other
/// weights means the folder is not what it claims, and is an error.
#[test]
fn auto_refuses_a_mismatched_export_and_falls_back_for_a_missing_one() {
    let (_tmp, dir) = models_copy();
    damage_fc_weight(&dir, 0.25, true);
    forget_digest(&dir, "classifier");
    let e = refused(&dir, "auto");
    assert!(e.contains("exported from other weights"), "{e}");
    std::fs::remove_file(dir.join("classifier.onnx")).unwrap();
    let out = classify(&dir, "auto");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(line["label"].is_string(), "{line}");
}

/// Defect 3: weights linked to /dev/zero grew the process to all memory; a sparse file larger
/// than any model is refused from its size. Also: a FIFO was reported as "file not found".
#[test]
fn model_files_are_read_bounded_and_only_if_regular() {
    let (_tmp, dir) = models_copy();
    let weights = dir.join("classifier.safetensors");
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &weights).unwrap();
    for backend in ["auto", "torch", "onnx"] {
        let e = refused(&dir, backend);
        assert!(
            e.contains("is a device, not a regular file"),
            "{backend}: {e}"
        );
    }
    std::fs::remove_file(&weights).unwrap();
    let sparse = std::fs::File::create(&weights).unwrap();
    sparse.set_len(3 << 30).unwrap();
    let e = refused(&dir, "torch");
    assert!(
        e.contains("larger than the 2048 MiB this tool reads"),
        "{e}"
    );
    std::fs::remove_file(&weights).unwrap();
    let status = Command::new("mkfifo").arg(&weights).status().unwrap();
    assert!(status.success());
    let e = refused(&dir, "torch");
    assert!(
        e.contains("is a FIFO (named pipe), not a regular file"),
        "{e}"
    );
    assert!(!e.contains("not found"), "{e}");
}

/// Defect 7: widths of 100000 panicked inside tch (exit 101); defect 10: a threshold outside
/// [0, 1] was accepted and flipped every label. Also: classes that cannot be told apart.
#[test]
fn impossible_model_settings_are_refused_with_the_setting_named() {
    // (model, JSON pointer, value written there, words of the error)
    let cases = [
        (
            "classifier",
            "/architecture/widths",
            serde_json::json!([100_000, 100_000, 100_000, 100_000]),
            "architecture.widths holds 100000",
        ),
        (
            "segmenter",
            "/architecture/base",
            Value::from(100_000),
            "architecture.base is 100000",
        ),
        (
            "classifier",
            "/threshold",
            Value::from(1.5),
            "threshold is 1.5",
        ),
        (
            "classifier",
            "/threshold",
            Value::from(-0.2),
            "threshold is -0.2",
        ),
        (
            "classifier",
            "/classes",
            serde_json::json!(["covid", "covid"]),
            "class \"covid\" is listed twice",
        ),
        (
            "classifier",
            "/classes",
            serde_json::json!(["covid", " "]),
            "class name \" \"",
        ),
    ];
    for (model, pointer, value, expected) in cases {
        let (_tmp, dir) = models_copy();
        let what = format!("{pointer} = {value}");
        edit_json(&dir, model, |meta| {
            *meta.pointer_mut(pointer).unwrap() = value;
        });
        for backend in ["auto", "torch"] {
            let e = refused(&dir, backend);
            assert!(
                e.contains(&format!("{model}.json")) && e.contains(expected),
                "{what} on {backend}: {e}"
            );
        }
    }
}
