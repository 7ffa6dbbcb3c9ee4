//! DICOM out (issue 22): for a DICOM input, `cxr explain --out` and the watch folder write the
//! overlay as a Secondary Capture and the results as a Structured Report, read back here by
//! independent readers: dcmtk's `dcmdump` and pydicom (`python/read_dicom_results.py`).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

mod support;
use support::{names_in, output_within, repo};

const SOURCE: &str = "../shared/data/dicom/pydicom-data_RG1_UNCR.dcm";
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";
const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

fn source() -> PathBuf {
    repo().join(SOURCE)
}

/// `cxr explain SOURCE --method grad-cam --out OUT`: its JSON report.
fn explain(out: &Path) -> Value {
    let run = output_within(
        Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args([
                "explain", "--device", "cpu", "--method", "grad-cam", "--out",
            ])
            .arg(out)
            .arg(source())
            .env_remove("CXR_MODELS"),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("DICOM results:"), "{stderr}");
    serde_json::from_slice(&std::fs::read(out.join("pydicom-data_RG1_UNCR.json")).unwrap()).unwrap()
}

/// pydicom's reading of a file (see `python/read_dicom_results.py`).
fn pydicom(args: &[&Path], kind: &str) -> Value {
    let venv = std::env::var("VENV").map_or_else(|_| repo().join(".venv"), PathBuf::from);
    let run = Command::new(venv.join("bin/python"))
        .arg(repo().join("python/read_dicom_results.py"))
        .arg(kind)
        .args(args)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    serde_json::from_slice(&run.stdout).unwrap()
}

/// The SR content item named `concept` (depth first).
fn find<'a>(items: &'a [Value], concept: &str) -> Vec<&'a Value> {
    let mut found = Vec::new();
    for item in items {
        if item["concept"] == concept {
            found.push(item);
        }
        if let Some(children) = item["children"].as_array() {
            found.extend(find(children, concept));
        }
    }
    found
}

#[test]
#[ignore = "needs dcmtk and pydicom"]
#[allow(clippy::too_many_lines)] // one walk through both files, attribute by attribute
fn explain_writes_a_secondary_capture_and_an_sr_that_dcmtk_and_pydicom_read() {
    let tmp = tempfile::tempdir().unwrap();
    let report = explain(tmp.path());
    let sc = tmp.path().join("pydicom-data_RG1_UNCR.grad-cam.sc.dcm");
    let sr = tmp.path().join("pydicom-data_RG1_UNCR.sr.dcm");
    let png = tmp.path().join("pydicom-data_RG1_UNCR.grad-cam.png");

    // dcmtk parses both completely (+E: errors on any parse problem) and names their classes.
    for (file, class) in [
        (&sc, "SecondaryCaptureImageStorage"),
        (&sr, "ComprehensiveSRStorage"),
    ] {
        let dump = Command::new("dcmdump")
            .arg("-E")
            .arg(file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&dump.stdout);
        assert!(
            dump.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&dump.stderr)
        );
        assert!(text.contains(&format!("(0008,0016) UI ={class}")), "{text}");
    }

    // dcmtk's SR reader renders the document tree.
    let tree = Command::new("dsrdump").arg(&sr).output().unwrap();
    let tree = String::from_utf8_lossy(&tree.stdout);
    assert!(tree.contains("Comprehensive SR Document"), "{tree}");
    let label = report["label"].as_str().unwrap();
    assert!(
        tree.contains(&format!("\"Finding\")=\"{label}\"")),
        "{tree}"
    );

    let original = pydicom(&[&source()], "source");
    let capture = pydicom(&[&sc, &png], "sc");
    assert_eq!(capture["sop_class_uid"], SECONDARY_CAPTURE);
    assert_eq!(
        capture["study_instance_uid"],
        original["study_instance_uid"]
    );
    assert_ne!(
        capture["series_instance_uid"],
        original["series_instance_uid"]
    );
    assert_eq!(capture["patient_id"], original["patient_id"]);
    assert_eq!(capture["photometric"], "RGB");
    let (w, h) = (&report["width"], &report["height"]);
    assert_eq!(capture["shape"], serde_json::json!([h, w, 3]));
    // The pixels are the overlay PNG's, exactly.
    assert_eq!(capture["max_difference_from_png"], 0, "{capture}");
    assert_eq!(
        capture["source"][0],
        serde_json::json!([original["sop_class_uid"], original["sop_instance_uid"]])
    );
    for uid in [
        &capture["sop_instance_uid"],
        &capture["series_instance_uid"],
    ] {
        assert!(uid.as_str().unwrap().starts_with("2.25."), "{uid}");
    }

    let sr = pydicom(&[&sr], "sr");
    assert_eq!(sr["sop_class_uid"], COMPREHENSIVE_SR);
    assert_eq!(sr["modality"], "SR");
    assert_eq!(sr["study_instance_uid"], original["study_instance_uid"]);
    assert_ne!(sr["series_instance_uid"], original["series_instance_uid"]);
    assert_ne!(sr["series_instance_uid"], capture["series_instance_uid"]);
    assert_eq!(
        sr["evidence"],
        serde_json::json!([
            original["study_instance_uid"],
            original["series_instance_uid"],
            original["sop_instance_uid"]
        ])
    );
    let content = sr["content"].as_array().unwrap();
    assert_eq!(find(content, "Finding")[0]["value"], report["label"]);
    let source_ref = &find(content, "Source of Measurement")[0]["value"];
    assert_eq!(source_ref[1], original["sop_instance_uid"]);
    // One probability per class, each with its class, equal to the JSON's to 6 decimals.
    let probabilities = find(content, "Probability");
    let expected = report["probabilities"].as_object().unwrap();
    assert_eq!(probabilities.len(), expected.len());
    for item in probabilities {
        let class = item["children"][0]["value"].as_str().unwrap();
        let want = expected[class].as_f64().unwrap();
        assert!(
            (item["value"].as_f64().unwrap() - want).abs() < 1e-6,
            "{class}: {item}"
        );
    }
    let flags: Vec<&str> = find(content, "Flag")
        .iter()
        .map(|f| f["value"].as_str().unwrap())
        .collect();
    let want_flags = report["trust"]["flags"].as_array().unwrap();
    if want_flags.is_empty() {
        assert_eq!(flags, ["none"]);
    } else {
        assert_eq!(flags.len(), want_flags.len());
        for (got, want) in flags.iter().zip(want_flags) {
            assert!(got.starts_with(want.as_str().unwrap()), "{got} / {want}");
        }
    }
    // The explanation: its method, its metrics, and a reference to the capture.
    let explanation = &find(content, "Explanation")[0];
    let children = explanation["children"].as_array().unwrap();
    assert_eq!(find(children, "Explainer")[0]["value"], "grad-cam");
    let quality = &report["explanations"][0]["quality"];
    for (concept, key) in [
        ("Heatmap mass inside the lungs", "lung_mass_share"),
        ("Deletion AUC", "deletion_auc"),
        ("Insertion AUC", "insertion_auc"),
    ] {
        let got = find(children, concept)[0]["value"].as_f64().unwrap();
        let want = quality[key].as_f64().unwrap();
        assert!((got - want).abs() < 1e-6, "{concept}: {got} vs {want}");
    }
    assert_eq!(
        find(children, "Explanation overlay")[0]["value"][1],
        capture["sop_instance_uid"]
    );
}

#[test]
fn a_dicom_queue_entry_holds_its_secondary_capture_and_sr() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("watch");
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    std::fs::copy(source(), dir.join("inbox/cr.dcm")).unwrap();
    std::fs::copy(
        repo().join("samples/nih_00001299_000.png"),
        dir.join("inbox/plain.png"),
    )
    .unwrap();
    let run = output_within(
        Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args(["watch", "--device", "cpu", "--once", "--watch-dir"])
            .arg(&dir)
            .args(["--method", "grad-cam"])
            .env_remove("CXR_MODELS"),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let entries: Vec<PathBuf> = names_in(&dir.join("queue"))
        .iter()
        .map(|n| dir.join("queue").join(n))
        .collect();
    assert_eq!(entries.len(), 2, "{stderr}");
    let study = b"1.3.6.1.4.1.5962.1.2.9.20040826185059.5457";
    for entry in entries {
        let names = names_in(&entry);
        if names.contains("image.dcm") {
            for name in ["grad-cam.sc.dcm", "sr.dcm"] {
                let bytes = std::fs::read(entry.join(name)).unwrap();
                assert_eq!(&bytes[128..132], b"DICM", "{name}");
                assert!(bytes.windows(study.len()).any(|w| w == study), "{name}");
            }
            assert!(!names.contains("dicom-error.txt"), "{names:?}");
        } else {
            // A PNG has no study to join: no DICOM results.
            assert!(
                !names
                    .iter()
                    .any(|n| Path::new(n).extension().is_some_and(|e| e == "dcm")),
                "{names:?}"
            );
        }
    }
}
