//! The `cxr` binary as scripts use it: JSON lines on stdout, messages on stderr, exit codes
//! 0 (all good), 1 (some inputs failed, the rest processed), 2 (could not run).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sample(name: &str) -> PathBuf {
    repo().join("samples").join(name)
}

/// `cxr COMMAND --device cpu ARGS...` (`args[0]` is the command).
fn cxr(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(&args[..1])
        .args(["--device", "cpu"])
        .args(&args[1..])
        .env_remove("CXR_MODELS")
        .output()
        .unwrap()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn classify_prints_one_json_object_per_image() {
    let files = [
        sample("hannover_e1446fe8.png"),
        sample("nih_00001299_000.png"),
    ];
    let mut args = vec!["classify".as_ref()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let out = cxr(&args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    for (line, file) in lines.iter().zip(&files) {
        assert_eq!(line["file"].as_str().unwrap(), file.to_str().unwrap());
        assert_eq!(line["sha256"].as_str().unwrap().len(), 64);
        let p = line["probabilities"].as_object().unwrap();
        let total: f64 = p.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        // The label is the one the probability and threshold give (whatever the model says),
        // covid or normal also when the model learnt a third class.
        let positive = p["covid"].as_f64().unwrap() >= line["threshold"].as_f64().unwrap();
        assert_eq!(
            line["label"],
            if positive { "covid" } else { "normal" },
            "{line}"
        );
        // The stages that run models take time, and together they fit in the total.
        let ms = |stage: &str| line["timings"][stage].as_f64().unwrap();
        assert!(ms("segment_ms") > 0.0 && ms("classify_ms") > 0.0, "{line}");
        let stages = ["decode_ms", "segment_ms", "preprocess_ms", "classify_ms"]
            .iter()
            .map(|s| ms(s))
            .sum::<f64>();
        assert!(stages <= ms("total_ms") + 1e-3, "{line}");
        assert!(
            line["width"].as_u64().unwrap() > 0 && line["lung_fraction"].as_f64().unwrap() > 0.1
        );
        // The lungs' box lies inside the image and holds at least the lung's share of it.
        let lungs = &line["lung_box"];
        let at = |k: &str| lungs[k].as_u64().unwrap();
        assert!(
            at("x") + at("width") <= line["width"].as_u64().unwrap(),
            "{line}"
        );
        assert!(
            at("y") + at("height") <= line["height"].as_u64().unwrap(),
            "{line}"
        );
        let area = (at("width") * at("height")) as f64;
        let image = (line["width"].as_u64().unwrap() * line["height"].as_u64().unwrap()) as f64;
        assert!(
            area / image >= line["lung_fraction"].as_f64().unwrap(),
            "{line}"
        );
    }
}

#[test]
fn bad_files_fail_alone_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    let missing = dir.path().join("missing.png");
    let good = sample("nih_00002013_002.png");
    let out = cxr(&[
        "classify".as_ref(),
        text.as_os_str(),
        good.as_os_str(),
        missing.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "every input gets a line");
    assert!(
        lines[0]["error"]
            .as_str()
            .unwrap()
            .contains("not a PNG or JPEG")
    );
    assert!(lines[1]["label"].is_string());
    assert!(lines[2]["error"].as_str().unwrap().contains("missing.png"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("notes.png") && stderr.contains("missing.png"),
        "{stderr}"
    );
    assert!(text.exists(), "inputs are never touched");
}

#[test]
fn missing_models_exit_2_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample("nih_00002013_002.png");
    let out = cxr(&[
        "classify".as_ref(),
        "--models".as_ref(),
        dir.path().as_os_str(),
        good.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot load model") && stderr.contains("segmenter.json"),
        "{stderr}"
    );
    // One line, the OS error once, and where to look.
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    assert!(
        stderr.contains("hint:") && stderr.contains("CXR_MODELS"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_missing_models_folder_is_one_line_with_a_hint() {
    let out = cxr(&[
        "classify".as_ref(),
        "--models".as_ref(),
        "/nonexistent".as_ref(),
        sample("nih_00002013_002.png").as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "cxr: cannot load models from /nonexistent: no such folder (hint: run from the project \
         folder, pass --models DIR or set CXR_MODELS)\n"
    );
}

#[test]
fn the_old_spellings_still_work() {
    // `--device` before the command, and `queue list DIR`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queue")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["--device", "cpu", "queue", "list"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("id "));
    // Options that do nothing on a command are refused there.
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["explainers", "--device", "cpu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--device'"));
}

#[test]
fn the_watch_folder_comes_from_cxr_watch_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["queue", "list", "--json"])
        .env("CXR_WATCH_DIR", dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nowhere") && stderr.contains("no watch folder"),
        "{stderr}"
    );
}

#[test]
fn defaults_resolve_from_any_folder() {
    // Models: found beside the binary's project when ./models has none.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["classify", "--device", "cpu"])
        .arg(sample("nih_00002013_002.png"))
        .current_dir(elsewhere.path())
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Training data: `$CXR_DATA` or ../shared/data or ./data from the current folder, never the
    // source tree the binary was built from. (Two levels down: /tmp/shared/data may exist.)
    let deep = elsewhere.path().join("a/b");
    std::fs::create_dir_all(&deep).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["train", "segmenter", "--device", "cpu", "--epochs", "1"])
        .arg("--out")
        .arg(elsewhere.path().join("new"))
        .current_dir(&deep)
        .env_remove("CXR_DATA")
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no data folder") && stderr.contains("CXR_DATA"),
        "{stderr}"
    );
    // With CXR_DATA naming a folder without manifests, the manifest under it is what is missing.
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["train", "segmenter", "--device", "cpu", "--epochs", "1"])
        .arg("--out")
        .arg(elsewhere.path().join("new"))
        .current_dir(elsewhere.path())
        .env("CXR_DATA", elsewhere.path())
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = elsewhere.path().join("lungseg/manifest.csv");
    assert!(stderr.contains(&*expected.to_string_lossy()), "{stderr}");
}

#[test]
fn quiet_prints_only_results_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let good = sample("nih_00002013_002.png");
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args([
            "--quiet",
            "--progress",
            "always",
            "classify",
            "--device",
            "cpu",
        ])
        .arg(&good)
        .arg(&missing)
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_lines(&out).len(), 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "only the error: {stderr}");
    assert!(stderr.contains("missing.png"), "{stderr}");
}

#[test]
fn progress_always_reports_explanation_samples_without_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let good = sample("nih_00002013_002.png");
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["--progress", "always", "explain", "--device", "cpu"])
        .args([
            "-m",
            "lime",
            "-p",
            "lime:samples=120",
            "-p",
            "lime:batch=20",
        ])
        .arg("--no-faithfulness")
        .arg("--out")
        .arg(dir.path())
        .arg(&good)
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    // The first sample batch is reported at once, and the end.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("explaining 0/1") && l.contains("lime 20/120")),
        "{stderr}"
    );
    assert!(
        lines.iter().any(|l| l.contains("explaining 1/1")),
        "{stderr}"
    );
    // No estimate from the first batch alone (a sixth of the work is enough, one batch is not).
    let first = lines.iter().find(|l| l.contains("lime 20/120")).unwrap();
    assert!(!first.contains("left"), "{first}");
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no terminal codes: {stderr}"
    );
    // Without --progress always, nothing: stderr is not a terminal.
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args([
            "explain",
            "--device",
            "cpu",
            "-m",
            "grad-cam",
            "--no-faithfulness",
        ])
        .arg("--out")
        .arg(dir.path())
        .arg(&good)
        .env_remove("CXR_MODELS")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["classify", "watch-dir", "image-protocol", "export"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        if ["bash", "zsh", "fish"].contains(&shell) {
            assert!(script.contains("halfblocks"), "{shell}: no protocol values");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_manual_page() {
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .arg("man")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH cxr 1"),
        "{page}"
    );
    for word in ["cxr\\-tui", "cxr\\-queue", "\\-\\-progress", "\\-\\-quiet"] {
        assert!(page.contains(word), "no {word} in the page");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["man", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    for page in [
        "cxr.1",
        "cxr-tui.1",
        "cxr-queue-export.1",
        "cxr-train-classifier.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    let export = std::fs::read_to_string(dir.path().join("cxr-queue-export.1")).unwrap();
    assert!(export.contains("watch\\-dir") && export.contains("CXR_WATCH_DIR"));
}

#[test]
fn bad_device_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["--device", "tpu", "classify", "x.png"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected auto, cpu, cuda"));
}

/// `cxr segment IMAGE --out DIR`, which must succeed.
fn segment_into(image: &Path, dir: &Path) -> Output {
    let out = cxr(&[
        "segment".as_ref(),
        image.as_os_str(),
        "--out".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn segment_writes_same_size_binary_masks() {
    let dir = tempfile::tempdir().unwrap();
    let input = sample("hannover_2c35005f.png");
    let out = segment_into(&input, dir.path());
    let mask_path = dir.path().join("hannover_2c35005f.mask.png");
    assert_eq!(
        json_lines(&out)[0]["mask"].as_str().unwrap(),
        mask_path.to_str().unwrap()
    );
    let mask = image::open(&mask_path).unwrap().to_luma8();
    let original = image::open(&input).unwrap();
    assert_eq!(mask.dimensions(), (original.width(), original.height()));
    assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
    let lung = mask.pixels().filter(|p| p.0[0] == 255).count() as f64
        / f64::from(mask.width() * mask.height());
    assert!((0.1..0.6).contains(&lung), "lung share {lung}");
}

#[test]
fn eval_reports_metrics_on_a_manifest() {
    let out = cxr(&[
        "eval".as_ref(),
        repo().join("samples/manifest.csv").as_os_str(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = &json_lines(&out)[0];
    assert_eq!(report["images"], 6);
    assert_eq!(report["split"], "all");
    let c = &report["confusion"];
    let total: u64 = [
        "true_positive",
        "false_negative",
        "false_positive",
        "true_negative",
    ]
    .iter()
    .map(|k| c[k].as_u64().unwrap())
    .sum();
    assert_eq!(total, 6);
    assert!(report["roc_auc"].as_f64().unwrap() >= 0.5);
    // The samples are all test patients: nothing is left on the training side.
    let out = cxr(&[
        "eval".as_ref(),
        repo().join("samples/manifest.csv").as_os_str(),
        "--split".as_ref(),
        "train".as_ref(),
    ]);
    assert_eq!(json_lines(&out)[0]["images"], 0);
}

#[test]
fn eval_groups_by_source_and_writes_per_image_rows() {
    // The samples come from two sources, three images each; a second manifest adds one more
    // source (the same files under another name), which must get its own row.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.csv");
    std::fs::write(
        &other,
        format!(
            "path,label,patient,source\n{},normal,x1,Elsewhere Hospital (test)\n",
            sample("nih_00001385_000.png").display()
        ),
    )
    .unwrap();
    let per_image = dir.path().join("images.csv");
    let out = cxr(&[
        "eval".as_ref(),
        repo().join("samples/manifest.csv").as_os_str(),
        other.as_os_str(),
        "--per-image".as_ref(),
        per_image.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report = &json_lines(&out)[0];
    let by_source = report["by_source"].as_object().unwrap();
    let keys: Vec<&str> = by_source.keys().map(String::as_str).collect();
    assert_eq!(keys, ["elsewhere", "hannover", "nih"]);
    assert_eq!(by_source["hannover"]["positives"], 3);
    assert_eq!(by_source["hannover"]["negatives"], 0);
    assert_eq!(by_source["nih"]["negatives"], 3);
    assert_eq!(by_source["elsewhere"]["images"], 1);
    // One class per source: sensitivity for one, specificity for the other, no AUC.
    assert!(by_source["hannover"]["specificity"].is_null());
    assert!(by_source["nih"]["sensitivity"].is_null());
    assert!(by_source["nih"]["roc_auc"].is_null());
    assert!(report["worst_source"][0].is_string());
    assert!(stderr.contains("| hannover |"), "{stderr}");
    // One CSV row per image, with its source.
    let text = std::fs::read_to_string(&per_image).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "file,source,truth,probability,label,familiarity,flags,p_covid,p_normal,p_pneumonia"
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 7);
    // Every class's probability: p_covid is the probability column, and they add up to one.
    for row in &rows {
        let fields: Vec<&str> = row.split(',').collect();
        let p: Vec<f32> = fields[7..].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(fields[3], fields[7], "{row}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-4, "{row}");
    }
    assert!(
        rows.iter()
            .filter(|r| r.contains(",hannover,covid,"))
            .count()
            == 3
    );
}

/// `--per-image` on a lung-mask manifest: each image's Dice, `IoU` and shape flag against its
/// reference mask, or why it failed; beside a labelled manifest the mask rows get a file of
/// their own.
#[test]
fn eval_writes_each_masks_dice_and_failure_per_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = sample("hannover_2c35005f.png");
    segment_into(&image, dir.path());
    let own = dir.path().join("hannover_2c35005f.mask.png");
    let (w, h) = image::image_dimensions(&own).unwrap();
    let empty = dir.path().join("empty.png");
    image::GrayImage::new(w, h).save(&empty).unwrap();
    let manifest = dir.path().join("masks.csv");
    let rows = [
        (image.clone(), own.clone(), "p1"),
        (image.clone(), empty, "p2"),
        (dir.path().join("gone.png"), own, "p3"),
    ];
    let mut text = String::from("image,mask,patient\n");
    for (image, mask, patient) in &rows {
        writeln!(text, "{},{},{patient}", image.display(), mask.display()).unwrap();
    }
    std::fs::write(&manifest, text).unwrap();
    let per_image = dir.path().join("rows.csv");
    let eval = |manifests: &[&Path]| {
        let mut args: Vec<&std::ffi::OsStr> = vec!["eval".as_ref()];
        args.extend(manifests.iter().map(|m| m.as_os_str()));
        args.extend(["--per-image".as_ref(), per_image.as_os_str()]);
        cxr(&args)
    };
    let out = eval(&[&manifest]);
    // The missing image fails alone.
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_lines(&out)[0]["failed"], 1);
    let read = |path: &Path| -> Vec<Vec<String>> {
        csv::Reader::from_path(path)
            .unwrap()
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    };
    let header = csv::Reader::from_path(&per_image)
        .unwrap()
        .headers()
        .unwrap()
        .clone();
    assert_eq!(
        header.iter().collect::<Vec<_>>(),
        ["file", "source", "dice", "iou", "implausible", "error"]
    );
    let lines = read(&per_image);
    assert_eq!(lines.len(), 3);
    let dice = |line: &[String]| line[2].parse::<f64>().unwrap();
    // Its own mask: the same lungs (ONNX Runtime wrote it, libtorch measures it); none at all: 0.
    assert!(dice(&lines[0]) > 0.99, "{:?}", lines[0]);
    assert_eq!(lines[0][4], "false");
    assert_eq!(dice(&lines[1]), 0.0);
    assert!(lines[2][2].is_empty() && lines[2][2..5].iter().all(String::is_empty));
    assert!(lines[2][5].contains("gone.png"), "{:?}", lines[2]);

    // With labelled images too: those rows in FILE, the masks' in FILE.masks.csv.
    let out = eval(&[&repo().join("samples/manifest.csv"), &manifest]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(read(&per_image).len(), 6);
    assert_eq!(read(&dir.path().join("rows.masks.csv")), lines);
}

/// A copy of the shipped models (files only) whose segmenter thresholds its lung probability
/// at `threshold` instead of 0.5.
fn models_with_segmenter_threshold(dir: &Path, threshold: f64) -> PathBuf {
    let copy = dir.join("models-b");
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(repo().join("models")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    let json = copy.join("segmenter.json");
    let mut meta: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    meta["threshold"] = threshold.into();
    std::fs::write(&json, meta.to_string()).unwrap();
    copy
}

#[test]
fn eval_against_compares_two_model_folders_image_by_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut images: Vec<PathBuf> = std::fs::read_dir(repo().join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    images.sort();
    assert_eq!(images.len(), 6, "{images:?}");
    // The references: the shipped segmenter's own masks. Six rows, then each twice (twelve).
    let mut text = String::from("image,mask,patient\n");
    for (i, image) in images.iter().enumerate() {
        segment_into(image, dir.path());
        let stem = image.file_stem().unwrap().to_str().unwrap();
        let mask = dir.path().join(format!("{stem}.mask.png"));
        writeln!(text, "{},{},p{i}", image.display(), mask.display()).unwrap();
    }
    let six = dir.path().join("six.csv");
    std::fs::write(&six, &text).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let twice = rows.iter().chain(&rows).enumerate().fold(
        String::from("image,mask,patient\n"),
        |mut all, (i, row)| {
            let (files, _) = row.rsplit_once(',').unwrap();
            writeln!(all, "{files},p{i}").unwrap();
            all
        },
    );
    let masks = dir.path().join("masks.csv");
    std::fs::write(&masks, twice).unwrap();
    let shipped = repo().join("models");
    let against = |manifest: &Path, b: &Path| {
        let out = cxr(&[
            "eval".as_ref(),
            manifest.as_os_str(),
            "--models".as_ref(),
            shipped.as_os_str(),
            "--against".as_ref(),
            b.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let report = json_lines(&out).remove(0);
        (report["comparisons"].as_array().unwrap().clone(), stderr)
    };

    // B keeps only its surest lung pixels: smaller masks, a lower Dice on every image; on six
    // images the figures come without a verdict.
    let strict = models_with_segmenter_threshold(dir.path(), 0.97);
    let (_, table) = against(&six, &strict);
    assert!(
        table.contains("| dice | 6 |") && table.contains("too few images"),
        "{table}"
    );
    let (rows, table) = against(&masks, &strict);
    assert_eq!(
        rows.len(),
        1,
        "one source, no pooled row repeating it: {rows:?}"
    );
    let dice = &rows[0];
    assert_eq!(
        (dice["measure"].as_str(), dice["images"].as_u64()),
        (Some("dice"), Some(12))
    );
    assert!(dice["a"].as_f64().unwrap() > 0.99, "{dice}");
    assert!(
        dice["b"].as_f64().unwrap() < dice["a"].as_f64().unwrap() - 0.005,
        "{dice}"
    );
    assert!(dice["low"].as_f64().unwrap() > 0.0, "{dice}");
    assert_eq!(dice["a_higher_on"], 12);
    assert!(
        table.contains("| dice | 12 |") && table.contains("A ahead"),
        "{table}"
    );

    // The same models on both sides: no difference, and an interval that says so.
    let (rows, table) = against(&masks, &shipped);
    assert_eq!(
        (rows[0]["difference"].as_f64(), rows[0]["low"].as_f64()),
        (Some(0.0), Some(0.0))
    );
    assert!(table.contains("no difference shown"), "{table}");
    // Labelled images: every classifier measure of every source, all equal.
    let (rows, _) = against(&repo().join("samples/manifest.csv"), &shipped);
    let measures: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|r| r["measure"].as_str().unwrap())
        .collect();
    assert!(
        measures.contains("accuracy") && measures.contains("flagged_share"),
        "{measures:?}"
    );
    assert!(rows.iter().all(|r| r["difference"] == 0.0), "{rows:?}");
}

#[test]
fn photographs_and_drawings_are_refused_not_classified() {
    let fixtures = repo().join("crates/core/tests/fixtures");
    let out = cxr(&[
        "classify".as_ref(),
        fixtures.join("picture.png").as_os_str(),
        fixtures.join("gradient.png").as_os_str(),
        sample("nih_00001299_000.png").as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Two inputs refused, the radiograph classified.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for line in &lines[..2] {
        let error = line["error"].as_str().unwrap();
        assert!(error.contains("not a chest radiograph"), "{error}");
        assert!(line.get("label").is_none(), "{line}");
    }
    assert_eq!(lines[2]["label"], "normal");
    assert!(lines[2]["trust"]["familiarity"].as_f64().unwrap() > 0.0);
}

#[test]
fn eval_refuses_an_unknown_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("m.csv");
    std::fs::write(&manifest, "a,b\n1,2\n").unwrap();
    let out = cxr(&["eval".as_ref(), manifest.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown manifest"));
}

/// `cxr eval --leave-one-source-out` measures each shipped leave-one-source-out model on every
/// image of the source it was trained without, and on the other sources' images, exactly as
/// that model classifies them (the samples: three Hannover, three NIH radiographs).
#[test]
fn eval_measures_each_leave_one_source_out_model_on_its_source() {
    let folds = repo().join("models/leave-one-source-out");
    let manifest = repo().join("samples/manifest.csv");
    let out = cxr(&[
        "eval".as_ref(),
        manifest.as_os_str(),
        "--backend".as_ref(),
        "torch".as_ref(),
        "--leave-one-source-out".as_ref(),
        folds.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("| held-out source |"), "{stderr}");
    assert!(stderr.contains("no image of jsrt"), "{stderr}");
    let report = &json_lines(&out)[0]["leave_one_source_out"];
    let measured: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["source"].as_str().unwrap())
        .collect();
    assert_eq!(measured, ["hannover", "nih"]);
    let samples: Vec<(String, String, String)> = std::fs::read_to_string(&manifest)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            let source = cells[4].split(' ').next().unwrap().to_lowercase();
            (cells[0].to_owned(), cells[1].to_owned(), source)
        })
        .collect();
    for fold in report.as_array().unwrap() {
        let source = fold["source"].as_str().unwrap();
        let other = if source == "nih" { "hannover" } else { "nih" };
        assert_eq!(fold["images"], 3);
        assert_eq!(fold["seen"][other]["images"], 3);
        // The same model, classifying the source's images one by one.
        let models = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(repo().join("models")).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("segmenter.") {
                std::fs::copy(&path, models.path().join(&name)).unwrap();
            }
        }
        for ext in ["json", "safetensors"] {
            let name = format!("classifier.{ext}");
            std::fs::copy(folds.join(source).join(&name), models.path().join(&name)).unwrap();
        }
        let own: Vec<&(String, String, String)> =
            samples.iter().filter(|s| s.2 == source).collect();
        let mut args: Vec<std::ffi::OsString> = vec![
            "classify".into(),
            "--backend".into(),
            "torch".into(),
            "--models".into(),
            models.path().into(),
        ];
        args.extend(own.iter().map(|s| sample(&s.0).into_os_string()));
        let out = cxr(&args.iter().map(AsRef::as_ref).collect::<Vec<_>>());
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 3, "{}", String::from_utf8_lossy(&out.stderr));
        let right = lines
            .iter()
            .zip(&own)
            .filter(|(l, s)| l["label"] == s.1.as_str())
            .count();
        let flagged = lines
            .iter()
            .filter(|l| !l["trust"]["flags"].as_array().unwrap().is_empty())
            .count();
        let mean_covid = lines
            .iter()
            .map(|l| l["probabilities"]["covid"].as_f64().unwrap())
            .sum::<f64>()
            / 3.0;
        assert!(
            (fold["accuracy"].as_f64().unwrap() - right as f64 / 3.0).abs() < 1e-9,
            "{source}: {fold}"
        );
        assert_eq!(fold["flagged"], flagged, "{source}: {fold}");
        assert!(
            (fold["mean_positive_probability"].as_f64().unwrap() - mean_covid).abs() < 1e-4,
            "{source}: {fold}"
        );
        let threshold = lines[0]["threshold"].as_f64().unwrap();
        assert!((fold["threshold"].as_f64().unwrap() - threshold).abs() < 1e-6);
    }
}
