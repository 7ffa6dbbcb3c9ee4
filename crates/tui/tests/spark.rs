//! The Spark job (`python/spark_batch.py`) in local mode on the shared data: its rows equal `cxr
//! classify`'s, each manifest row exactly once, also when an executor's `cxr worker` is killed
//! mid-partition (Spark runs the task again). Needs Java 17 and pyspark in .venv (.ci/run
//! installs both); scripts/test.sh runs it in its `needs` group.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::{Array, Float32Array, StringArray, UInt64Array};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A manifest of 16 shared images (absolute paths, two of them listed twice) and a missing file.
fn manifest(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let data = repo().join("../shared/data").canonicalize().unwrap();
    let source = std::fs::read_to_string(data.join("cxr/manifest.csv")).unwrap();
    let mut lines = source.lines();
    let mut text = format!("{}\n", lines.next().unwrap());
    let chosen: Vec<&str> = lines.step_by(37).take(16).collect();
    let mut files = Vec::new();
    for line in chosen.iter().chain(&chosen[..2]) {
        writeln!(text, "{}/{line}", data.display()).unwrap();
        files.push(data.join(line.split(',').next().unwrap()));
    }
    writeln!(text, "{}/cxr/missing.png,covid,p,PA,s,l", data.display()).unwrap();
    let path = dir.join("manifest.csv");
    std::fs::write(&path, text).unwrap();
    (path, files)
}

/// Runs the Spark job with `extra` arguments; its summary line.
fn spark(manifest: &Path, out: &Path, extra: &[&str]) -> Value {
    let python = repo().join(".venv/bin/python");
    let output = Command::new(&python)
        .arg(repo().join("python/spark_batch.py"))
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(["--partitions", "4", "--cxr", env!("CARGO_BIN_EXE_cxr")])
        .args(extra)
        .env("PYSPARK_PYTHON", &python)
        .env("CXR_MODELS", repo().join("models"))
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// One output row: its path, predicted label, probabilities and error.
#[derive(Debug, PartialEq)]
struct Written {
    path: String,
    predicted: Option<String>,
    probabilities: BTreeMap<String, f32>,
    error: Option<String>,
    /// The `explanations` column (with `--explain`), parsed.
    explanations: Option<Value>,
}

/// Spark's Parquet part files in `out`, by manifest row.
fn read(out: &Path) -> BTreeMap<u64, Vec<Written>> {
    let mut rows: BTreeMap<u64, Vec<Written>> = BTreeMap::new();
    for entry in std::fs::read_dir(out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (paths, predicted, errors) = (text("path"), text("predicted"), text("error"));
            let index = batch.column_by_name("row").unwrap();
            let index = index
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .map_or_else(
                    || {
                        let unsigned = index.as_any().downcast_ref::<UInt64Array>().unwrap();
                        (0..batch.num_rows())
                            .map(|i| unsigned.value(i))
                            .collect::<Vec<_>>()
                    },
                    |signed| {
                        (0..batch.num_rows())
                            .map(|i| signed.value(i) as u64)
                            .collect()
                    },
                );
            for (i, &index) in index.iter().enumerate() {
                let mut probabilities = BTreeMap::new();
                for field in batch.schema().fields() {
                    if let Some(class) = field.name().strip_prefix("probability_") {
                        let column = batch.column_by_name(field.name()).unwrap();
                        let column = column.as_any().downcast_ref::<Float32Array>().unwrap();
                        if !column.is_null(i) {
                            probabilities.insert(class.to_owned(), column.value(i));
                        }
                    }
                }
                let optional = |a: &StringArray| (!a.is_null(i)).then(|| a.value(i).to_owned());
                let explanations = batch
                    .column_by_name("explanations")
                    .map(|_| text("explanations"))
                    .and_then(|column| optional(&column))
                    .map(|json| serde_json::from_str(&json).unwrap());
                rows.entry(index).or_default().push(Written {
                    path: paths.value(i).to_owned(),
                    predicted: optional(&predicted),
                    probabilities,
                    error: optional(&errors),
                    explanations,
                });
            }
        }
    }
    rows
}

/// `cxr --quiet ARGS --device cpu FILES...`'s JSON lines, by their `file`.
fn cxr_by_file(args: &[&str], files: &[PathBuf]) -> BTreeMap<PathBuf, Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .arg("--quiet")
        .args(&args[..1])
        .args(["--device", "cpu"])
        .args(&args[1..])
        .args(files)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (PathBuf::from(v["file"].as_str().unwrap()), v)
        })
        .collect()
}

/// `cxr classify`'s label and probabilities per file.
fn classify(files: &[PathBuf]) -> BTreeMap<PathBuf, (String, BTreeMap<String, f32>)> {
    cxr_by_file(&["classify"], files)
        .into_iter()
        .map(|(file, v)| {
            let probabilities = v["probabilities"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, p)| (k.clone(), p.as_f64().unwrap() as f32))
                .collect();
            (
                file,
                (v["label"].as_str().unwrap().to_owned(), probabilities),
            )
        })
        .collect()
}

/// Every manifest row once; the images' rows equal `cxr classify`'s; the missing file a row with
/// its error.
fn check(out: &Path, files: &[PathBuf]) {
    let rows = read(out);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        (0..19).collect::<Vec<_>>()
    );
    assert!(
        rows.values().all(|r| r.len() == 1),
        "a row written twice: {rows:?}"
    );
    let expected = classify(files);
    for (index, file) in files.iter().enumerate() {
        let row = &rows[&(index as u64)][0];
        let (label, probabilities) = &expected[file];
        assert_eq!(row.error, None, "{}", file.display());
        assert_eq!(row.predicted.as_ref(), Some(label), "{}", file.display());
        assert_eq!(&row.probabilities, probabilities, "{}", file.display());
    }
    let missing = &rows[&18][0];
    assert!(missing.path.ends_with("missing.png"));
    assert!(
        missing
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("no such"),
        "{missing:?}"
    );
}

#[test]
#[ignore = "needs Java and pyspark (.ci/run installs them)"]
fn spark_job_rows_equal_classify_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, files) = manifest(dir.path());
    let out = dir.path().join("out");
    let summary = spark(&manifest, &out, &["--master", "local[2]"]);
    assert_eq!(summary["rows"], 19);
    assert_eq!(
        summary["images"], 17,
        "16 distinct images and the missing file's id"
    );
    assert_eq!(summary["errors"], 1);
    check(&out, &files);
}

/// Runs `cxr worker` with its arguments; the first one started (of any task) is killed with
/// SIGKILL after its second reply, and that is recorded in MARKER/killed.
const KILLER: &str = r#"
import os, subprocess, sys
marker, command = sys.argv[1], sys.argv[2:]
try:
    os.mkdir(marker)
    first = True
except FileExistsError:
    first = False
with open(os.path.join(marker, f"started-{os.getpid()}"), "w"):
    pass
worker = subprocess.Popen(command, stdout=subprocess.PIPE)
replies = 0
for line in worker.stdout:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()
    replies += 1
    if first and replies == 2:
        worker.kill()
        with open(os.path.join(marker, "killed"), "w") as f:
            f.write(str(replies))
        break
code = worker.wait()
sys.exit(128 - code if code < 0 else code)
"#;

#[test]
#[ignore = "needs Java and pyspark (.ci/run installs them)"]
fn a_killed_worker_is_retried_and_every_row_appears_once() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, files) = manifest(dir.path());
    let killer = dir.path().join("killer.py");
    std::fs::write(&killer, KILLER).unwrap();
    let marker = dir.path().join("marker");
    let worker = format!(
        "{} {} {} {} worker",
        repo().join(".venv/bin/python").display(),
        killer.display(),
        marker.display(),
        env!("CARGO_BIN_EXE_cxr")
    );
    let out = dir.path().join("out");
    // local[2,4]: two threads, a task tried up to 4 times.
    let summary = spark(
        &manifest,
        &out,
        &["--master", "local[2,4]", "--worker-command", &worker],
    );
    assert_eq!(
        std::fs::read_to_string(marker.join("killed")).unwrap(),
        "2",
        "a worker was killed mid-partition"
    );
    let started = std::fs::read_dir(&marker)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("started-")
        })
        .count();
    assert!(started >= 5, "4 partitions and a retry: {started} workers");
    assert_eq!(summary["rows"], 19);
    check(&out, &files);
}

/// `cxr explain --method grad-cam`'s heatmap summary per file.
fn grad_cam_heatmaps(files: &[PathBuf], out: &Path) -> BTreeMap<PathBuf, Value> {
    let out = out.to_str().unwrap();
    cxr_by_file(&["explain", "--method", "grad-cam", "--out", out], files)
        .into_iter()
        .map(|(file, v)| (file, v["explanations"][0]["heatmap"].clone()))
        .collect()
}

#[test]
#[ignore = "needs Java and pyspark (.ci/run installs them)"]
fn spark_job_explains_every_image_as_cxr_explain_does() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, files) = manifest(dir.path());
    let out = dir.path().join("out");
    let summary = spark(
        &manifest,
        &out,
        &["--master", "local[2]", "--explain", "grad-cam"],
    );
    assert_eq!(summary["explainers"], serde_json::json!(["grad-cam"]));
    assert_eq!(summary["explanation_errors"], 0);
    check(&out, &files);
    let rows = read(&out);
    let expected = grad_cam_heatmaps(&files, &dir.path().join("explain"));
    let overlays = dir.path().join("out.overlays");
    for (index, file) in files.iter().enumerate() {
        let row = &rows[&(index as u64)][0];
        let explanations = row.explanations.as_ref().unwrap().as_array().unwrap();
        assert_eq!(explanations.len(), 1, "{explanations:?}");
        let grad_cam = &explanations[0];
        assert_eq!(grad_cam["method"], "grad-cam");
        assert_eq!(grad_cam["label"].as_str(), row.predicted.as_deref());
        for measure in ["mean", "max", "above_half"] {
            let value = |v: &Value| v[measure].as_f64().unwrap();
            let (spark, explain) = (value(&grad_cam["heatmap"]), value(&expected[file]));
            assert!(
                (spark - explain).abs() < 1e-4,
                "{measure}: {spark} {explain}"
            );
        }
        let overlay = PathBuf::from(grad_cam["overlay"].as_str().unwrap());
        assert!(overlay.starts_with(&overlays), "{}", overlay.display());
        let png = std::fs::read(&overlay).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{}", overlay.display());
    }
    // The missing file: its error, and no explanations.
    assert_eq!(rows[&18][0].explanations, None);

    // An explainer no one registered stops the job before Spark starts.
    let output = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("python/spark_batch.py"))
        .arg(&manifest)
        .args(["--out"])
        .arg(dir.path().join("never"))
        .args([
            "--cxr",
            env!("CARGO_BIN_EXE_cxr"),
            "--explain",
            "grad-cam,crystal-ball",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown explainers ['crystal-ball']"),
        "{stderr}"
    );
    assert!(!dir.path().join("never").exists());
}
