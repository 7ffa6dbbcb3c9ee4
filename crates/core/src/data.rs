//! Labelled data: the two manifest formats of `../shared/data`, and the patient-wise split.
//!
//! Paths in a manifest are resolved against the manifest's folder first, then its parent (the
//! shared data's manifests name paths from the data root, e.g. `cxr/covid/x.png`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{CoreError, Result};

/// The seed of the project's split; `cxr train` and `cxr eval --split` use it unless told.
pub const DEFAULT_SEED: u64 = 2026;
/// Shares of patients held out for testing and for validation (model selection, threshold).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitShares {
    pub test: f64,
    pub validation: f64,
}

impl SplitShares {
    /// For the classifier's 300 patients: 70 / 15 / 15.
    pub const CLASSIFIER: Self = Self {
        test: 0.15,
        validation: 0.15,
    };
    /// The lung-mask set has only about 50 patients: a quarter is held out for testing so that
    /// the test Dice rests on more than a handful of patients.
    pub const SEGMENTER: Self = Self {
        test: 0.25,
        validation: 0.15,
    };
}

/// A row of a classification manifest (`path,label,patient,view,source,license`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    pub path: PathBuf,
    pub label: String,
    pub patient: String,
    /// Where the image comes from (see [`source_key`]); metrics are grouped by it.
    pub source: String,
    /// The projection, `AP` or `PA` (the first word of the manifest's `view` column, upper
    /// case: `AP Supine` is `AP`), where the manifest says.
    pub view: Option<String>,
}

/// A row of a lung-mask manifest (`image,mask,patient,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedImage {
    pub image: PathBuf,
    pub mask: PathBuf,
    pub patient: String,
    pub source: String,
}

/// A manifest, read by its header: labelled rows when it has `path,label` (or `image` with a
/// `finding` column, see [`label_of_finding`]), mask rows when it has `image,mask`. One file may
/// give both (the JSRT manifest does).
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub labels: Vec<LabelledImage>,
    pub masks: Vec<MaskedImage>,
}

/// The label a `finding` column stands for: "no nodule" and "no finding" are radiographs
/// without findings (`normal`); any other finding keeps its own name (`lung nodule`), a label
/// that is none of the classifier's classes, so training leaves it out and evaluation reports
/// it apart.
#[must_use]
pub fn label_of_finding(finding: &str) -> String {
    let f = finding.trim().to_lowercase();
    if f == "no nodule" || f == "no finding" || f == "normal" {
        "normal".to_owned()
    } else {
        f
    }
}

/// A short, stable key for a `source` column value: its first word, lowercased, cut at the
/// first `/` ("Hannover Medical School (...)" -> `hannover`, "ieee8023/covid-chestxray-dataset
/// (...)" -> `ieee8023`, "NIH Clinical Center ..." -> `nih`, "JSRT (...)" -> `jsrt`). The
/// ieee8023 rows name a different article in each source value; they are one collection.
#[must_use]
pub fn source_key(source: &str) -> String {
    let first = source.split_whitespace().next().unwrap_or("");
    let first = first.split('/').next().unwrap_or("");
    first
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-')
        .collect::<String>()
        .to_lowercase()
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Self> {
        let mut reader = csv::Reader::from_path(path).map_err(|e| csv_error(path, &e))?;
        let headers = reader.headers().map_err(|e| csv_error(path, &e))?.clone();
        let column = |name: &str| headers.iter().position(|h| h.trim() == name);
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &str| {
            let here = base.join(p);
            match base.parent() {
                Some(parent) if !here.exists() && parent.join(p).exists() => parent.join(p),
                _ => here,
            }
        };
        // Without a source column, the manifest's folder names the source (`lungseg`).
        let folder_source = base.file_name().map_or_else(
            || "unknown".to_owned(),
            |n| n.to_string_lossy().to_lowercase(),
        );
        let rows: Vec<csv::StringRecord> = reader
            .records()
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| csv_error(path, &e))?;
        let field = |row: &csv::StringRecord, i: usize| row.get(i).unwrap_or("").trim().to_owned();
        let source_of = |row: &csv::StringRecord| {
            column("source").map_or_else(|| folder_source.clone(), |i| source_key(&field(row, i)))
        };
        let (image, patient) = (column("path").or(column("image")), column("patient"));
        let view = column("view");
        let label = column("label")
            .map(|i| (i, false))
            .or(column("finding").map(|i| (i, true)));
        let masked = (column("image"), column("mask"));
        if (image.is_none() || label.is_none()) && (masked.0.is_none() || masked.1.is_none()) {
            return Err(CoreError::data(
                path,
                "unknown manifest: expected columns path,label[,patient,source] or \
                 image,mask[,patient,source] (or image,finding)",
            ));
        }
        let mut manifest = Self::default();
        if let (Some(p), Some((l, is_finding))) = (image, label) {
            manifest.labels = rows
                .iter()
                .map(|r| LabelledImage {
                    path: resolve(&field(r, p)),
                    label: if is_finding {
                        label_of_finding(&field(r, l))
                    } else {
                        field(r, l)
                    },
                    // Without a patient column every image is its own patient.
                    patient: patient.map_or_else(|| field(r, p), |i| field(r, i)),
                    source: source_of(r),
                    view: view.and_then(|i| {
                        let view = field(r, i);
                        let first = view.split_whitespace().next()?;
                        Some(first.to_uppercase())
                    }),
                })
                .collect();
        }
        if let (Some(i), Some(m)) = masked {
            manifest.masks = rows
                .iter()
                .map(|r| MaskedImage {
                    image: resolve(&field(r, i)),
                    mask: resolve(&field(r, m)),
                    patient: patient.map_or_else(|| field(r, i), |c| field(r, c)),
                    source: source_of(r),
                })
                .collect();
        }
        Ok(manifest)
    }

    /// Several manifests as one (rows in the order given).
    pub fn read_all(paths: &[PathBuf]) -> Result<Self> {
        let mut all = Self::default();
        for path in paths {
            let one = Self::read(path)?;
            all.labels.extend(one.labels);
            all.masks.extend(one.masks);
        }
        Ok(all)
    }
}

fn csv_error(path: &Path, e: &csv::Error) -> CoreError {
    match e.kind() {
        csv::ErrorKind::Io(io) => CoreError::data(path, io.to_string()),
        _ => CoreError::data(path, e.to_string()),
    }
}

/// Which side of the split a patient is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    /// The side of `patient` under `seed`: a hash of the two, read as a number in [0, 1), so a
    /// patient's side never depends on which other patients are present. Adding data (reviewed
    /// queue items, say) therefore never moves a test patient into training.
    #[must_use]
    pub fn of(patient: &str, seed: u64, shares: SplitShares) -> Self {
        let digest = Sha256::digest(format!("{seed}:{patient}").as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        let unit = u64::from_be_bytes(head) as f64 / 2f64.powi(64);
        if unit < shares.test {
            Self::Test
        } else if unit < shares.test + shares.validation {
            Self::Validation
        } else {
            Self::Train
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Validation => "validation",
            Self::Test => "test",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn split_is_by_patient_and_stable() {
        let images: Vec<(String, String)> = (0..600)
            .map(|i| (format!("img{i}"), format!("patient{}", i / 3)))
            .collect();
        let mut side_of: HashMap<&str, HashSet<Split>> = HashMap::new();
        for (_, patient) in &images {
            side_of.entry(patient).or_default().insert(Split::of(
                patient,
                DEFAULT_SEED,
                SplitShares::CLASSIFIER,
            ));
        }
        assert!(
            side_of.values().all(|sides| sides.len() == 1),
            "a patient on two sides"
        );
        let count = |s: Split| side_of.values().filter(|v| v.contains(&s)).count();
        assert_eq!(
            count(Split::Train) + count(Split::Validation) + count(Split::Test),
            200
        );
        assert!(
            (15..=45).contains(&count(Split::Test)),
            "test {}",
            count(Split::Test)
        );
        assert!((15..=45).contains(&count(Split::Validation)));
        // Another seed gives another split.
        let moved = side_of.keys().filter(|p| {
            Split::of(p, 7, SplitShares::CLASSIFIER)
                != Split::of(p, DEFAULT_SEED, SplitShares::CLASSIFIER)
        });
        assert!(moved.count() > 40);
    }

    #[test]
    fn sources_and_findings() {
        assert_eq!(
            source_key("Hannover Medical School (ml-workgroup/x)"),
            "hannover"
        );
        assert_eq!(
            source_key("ieee8023/covid-chestxray-dataset (https://a.b/c)"),
            "ieee8023"
        );
        assert_eq!(
            source_key("NIH Clinical Center ChestX-ray14 (via x/y)"),
            "nih"
        );
        assert_eq!(source_key("JSRT (Japanese Society), via z"), "jsrt");
        assert_eq!(label_of_finding("no nodule"), "normal");
        assert_eq!(label_of_finding("Lung nodule"), "lung nodule");

        // A manifest with masks and findings (the JSRT layout) gives both kinds of rows.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(
            &path,
            "image,mask,patient,finding,view,source,license\n\
             i/a.png,m/a.png,A,no nodule,PA,JSRT (x),y\n\
             i/b.png,m/b.png,B,lung nodule,PA,JSRT (x),y\n",
        )
        .unwrap();
        let m = Manifest::read(&path).unwrap();
        assert_eq!(m.masks.len(), 2);
        let labels: Vec<(&str, &str)> = m
            .labels
            .iter()
            .map(|r| (r.label.as_str(), r.source.as_str()))
            .collect();
        assert_eq!(labels, [("normal", "jsrt"), ("lung nodule", "jsrt")]);
        assert_eq!(m.labels[0].path, dir.path().join("i/a.png"));
    }

    #[test]
    fn reads_both_manifest_formats_and_resolves_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("set/img")).unwrap();
        std::fs::write(dir.path().join("set/img/a.png"), b"").unwrap();
        let labels = dir.path().join("set/labels.csv");
        std::fs::write(
            &labels,
            "path,label,patient\nimg/a.png,covid,p1\nset/img/b.png,normal,p2\n",
        )
        .unwrap();
        let rows = Manifest::read(&labels).unwrap().labels;
        assert_eq!(rows[0].path, dir.path().join("set/img/a.png"));
        assert_eq!(rows[1].path, dir.path().join("set/set/img/b.png"));
        assert_eq!(
            (rows[1].label.as_str(), rows[1].patient.as_str()),
            ("normal", "p2")
        );

        let masks = dir.path().join("masks.csv");
        std::fs::write(&masks, "image,mask\nx.png,y.png\n").unwrap();
        let rows = Manifest::read(&masks).unwrap().masks;
        assert_eq!(rows[0].patient, "x.png");
        // No source column: the manifest's folder is the source.
        assert_eq!(
            rows[0].source,
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_lowercase()
        );

        let bad = dir.path().join("bad.csv");
        std::fs::write(&bad, "a,b\n1,2\n").unwrap();
        assert!(
            Manifest::read(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown manifest")
        );
        let missing = Manifest::read(&dir.path().join("none.csv")).unwrap_err();
        assert!(missing.to_string().contains("none.csv"), "{missing}");
    }
}
