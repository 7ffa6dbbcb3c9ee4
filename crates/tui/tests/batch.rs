//! `cxr batch` end to end on the shared data: shards run at once (by flag and by the batch
//! schedulers' environment variables) give the rows of one whole run, and those equal `cxr
//! classify`'s; unreadable files are rows with an error; a run killed mid-way and run again
//! gives every image exactly once, redoing none that were done.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// A manifest in `dir` of every `step`th row of the shared `cxr/manifest.csv` (absolute paths,
/// its other columns carried), up to `limit` rows; `extra` lines appended as they are.
fn manifest(dir: &Path, step: usize, limit: usize, extra: &[&str]) -> PathBuf {
    let source = std::fs::read_to_string(data().join("cxr/manifest.csv")).unwrap();
    let mut lines = source.lines();
    let mut text = format!("{}\n", lines.next().unwrap());
    let root = data().canonicalize().unwrap();
    for line in lines.step_by(step).take(limit) {
        writeln!(text, "{}/{line}", root.display()).unwrap();
    }
    for line in extra {
        text.push_str(line);
        text.push('\n');
    }
    let path = dir.join("manifest.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn batch(manifest: &Path, out: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxr"));
    command
        .args(["--quiet", "batch", "--device", "cpu"])
        .arg(manifest)
        .arg("--out")
        .arg(out)
        .args(args)
        .env_remove("CXR_MODELS")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    command
}

fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout} {}", String::from_utf8_lossy(&output.stderr)))
}

fn rows(jsonl: &Path) -> Vec<Value> {
    std::fs::read_to_string(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What must not depend on how the work was split: per manifest row, its path, carried label,
/// content hash, predicted label, probabilities and error.
fn essence(row: &Value) -> (u64, String) {
    let c = &row["classification"];
    let fact = serde_json::json!([
        row["path"],
        row["label"],
        row["sha256"],
        c["label"],
        c["probabilities"],
        row["error"].is_string()
    ]);
    (row["row"].as_u64().unwrap(), fact.to_string())
}

/// The Parquet file's row numbers and predicted labels.
fn parquet_rows(path: &Path) -> Vec<(u64, Option<String>)> {
    use arrow_array::{Array, StringArray, UInt64Array};
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let row = batch.column_by_name("row").unwrap();
        let row = row.as_any().downcast_ref::<UInt64Array>().unwrap();
        let predicted = batch.column_by_name("predicted").unwrap();
        let predicted = predicted.as_any().downcast_ref::<StringArray>().unwrap();
        for i in 0..batch.num_rows() {
            let label = (!predicted.is_null(i)).then(|| predicted.value(i).to_owned());
            out.push((row.value(i), label));
        }
    }
    out
}

#[test]
fn shards_run_at_once_give_the_whole_runs_rows_and_classifys_answers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.png"), b"not an image").unwrap();
    let manifest = manifest(
        dir.path(),
        25,
        24,
        &[
            "missing.png,covid,p1,PA,test,none",
            "bad.png,normal,p2,PA,test,none",
        ],
    );
    let whole = dir.path().join("whole");
    let output = batch(&manifest, &whole, &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "two rows failed");
    let summary_whole = summary(&output);
    assert_eq!(summary_whole["rows"], 26);
    assert_eq!(summary_whole["errors"], 2);
    let whole_rows = rows(&whole.join("shard-00000-of-00001.jsonl"));
    assert_eq!(whole_rows.len(), 26);
    let errors: Vec<&str> = whole_rows
        .iter()
        .filter_map(|r| r["error"].as_str())
        .collect();
    assert!(errors[0].contains("No such file"), "{errors:?}");
    assert!(errors[1].contains("not a PNG"), "{errors:?}");
    // The Parquet file holds the same rows.
    let mut expected: Vec<(u64, Option<String>)> = whole_rows
        .iter()
        .map(|r| {
            let label = r["classification"]["label"].as_str().map(str::to_owned);
            (r["row"].as_u64().unwrap(), label)
        })
        .collect();
    expected.sort();
    let mut stored = parquet_rows(&whole.join("shard-00000-of-00001.parquet"));
    stored.sort();
    assert_eq!(stored, expected);

    // The same images through `cxr classify`: the same labels and probabilities.
    let files: Vec<&str> = whole_rows
        .iter()
        .filter(|r| r["error"].is_null())
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    let classified = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["--quiet", "classify", "--device", "cpu"])
        .args(&files)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .output()
        .unwrap();
    assert!(classified.status.success());
    let by_sha: BTreeMap<String, Value> = String::from_utf8_lossy(&classified.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["sha256"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    for row in whole_rows.iter().filter(|r| r["error"].is_null()) {
        let theirs = &by_sha[row["sha256"].as_str().unwrap()];
        assert_eq!(row["classification"]["label"], theirs["label"]);
        assert_eq!(
            row["classification"]["probabilities"],
            theirs["probabilities"]
        );
    }

    // Three shards at once: by flag, by a Kubernetes index, by a Slurm array task.
    let sharded = dir.path().join("sharded");
    let mut children = [
        batch(&manifest, &sharded, &["--shard", "0/3"]),
        batch(&manifest, &sharded, &["--shards", "3"]),
        batch(&manifest, &sharded, &[]),
    ];
    children[1].env("JOB_COMPLETION_INDEX", "1");
    children[2]
        .env("SLURM_ARRAY_TASK_ID", "7")
        .env("SLURM_ARRAY_TASK_MIN", "5")
        .env("SLURM_ARRAY_TASK_COUNT", "3");
    let running: Vec<_> = children
        .iter_mut()
        .map(|c| {
            c.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut union = Vec::new();
    for (index, child) in running.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert_eq!(summary(&output)["shard"], format!("{index}/3"));
        union.extend(rows(
            &sharded.join(format!("shard-{index:05}-of-00003.jsonl")),
        ));
    }
    let mut union: Vec<_> = union.iter().map(essence).collect();
    union.sort();
    let mut single: Vec<_> = whole_rows.iter().map(essence).collect();
    single.sort();
    assert_eq!(
        union, single,
        "the shards' union is the whole run, each row once"
    );
}

#[test]
fn a_killed_run_resumes_with_every_image_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest(dir.path(), 7, 80, &[]);
    let out = dir.path().join("out");
    let journal = out.join(".shard-00000-of-00001.journal.jsonl");
    let mut child = batch(&manifest, &out, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let lines = |path: &Path| std::fs::read_to_string(path).map_or(0, |t| t.lines().count());
    while lines(&journal) < 5 {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no clean-up runs
    child.wait().unwrap();
    let done_before = lines(&journal);
    assert!(done_before < 80, "killed mid-run ({done_before} done)");
    assert!(
        !out.join("shard-00000-of-00001.jsonl").exists()
            && !out.join("shard-00000-of-00001.parquet").exists(),
        "a killed shard leaves no output, not a part of one"
    );

    let output = batch(&manifest, &out, &[]).output().unwrap();
    assert!(output.status.success());
    let summary = summary(&output);
    let reused = summary["reused"].as_u64().unwrap();
    assert!(
        reused >= done_before as u64 - 1,
        "{reused} reused of {done_before} journaled (the last may be torn)"
    );
    assert_eq!(reused + summary["processed"].as_u64().unwrap(), 80);
    let rows = rows(&out.join("shard-00000-of-00001.jsonl"));
    let mut indices: Vec<u64> = rows.iter().map(|r| r["row"].as_u64().unwrap()).collect();
    indices.sort_unstable();
    assert_eq!(
        indices,
        (0..80).collect::<Vec<_>>(),
        "every row exactly once"
    );
    assert!(
        rows.iter()
            .all(|r| r["classification"]["label"].is_string())
    );
    assert_eq!(
        parquet_rows(&out.join("shard-00000-of-00001.parquet")).len(),
        80
    );

    // Once more: everything is reused, nothing analysed, the same rows.
    let again = batch(&manifest, &out, &[]).output().unwrap();
    assert_eq!(summary_of(&again), (80, 0));
    assert_eq!(
        std::fs::read_to_string(out.join("shard-00000-of-00001.jsonl"))
            .unwrap()
            .lines()
            .count(),
        80
    );
}

fn summary_of(output: &Output) -> (u64, u64) {
    let s = summary(output);
    (
        s["reused"].as_u64().unwrap(),
        s["processed"].as_u64().unwrap(),
    )
}
