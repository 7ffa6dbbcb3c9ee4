//! What a shard of `cxr batch` leaves in `--out`:
//!
//! - `.STEM.journal.jsonl`: one line per finished image, appended (and flushed) as each one
//!   finishes. It is the resume state: a re-run reuses every entry whose file, content hash,
//!   model fingerprint and explainers match, and a kill mid-write leaves at most a torn last
//!   line, which is cut off when the journal is opened again.
//! - `STEM.parquet`, then `STEM.jsonl`: every row of the shard, each file written whole to a
//!   temporary name and renamed into place, so a reader sees the whole shard or nothing; the
//!   JSON lines file, renamed last, marks the shard done.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use color_eyre::eyre::{Result, WrapErr, bail};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::manifest::Row;

/// What became of one image: kept in the journal, and joined with its manifest row for output.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outcome {
    /// The file read (the manifest's path resolved).
    pub file: String,
    /// Of the bytes read; `None` when the file could not be read.
    pub sha256: Option<String>,
    pub fingerprint: String,
    /// The explainers asked for, canonical (`grad-cam:;lime:samples=300`); empty for none.
    pub explain: String,
    /// The service's classification ([`cxr_core::answer::Classification`]).
    pub classification: Option<Value>,
    /// One per explainer: its [`cxr_core::answer::Explanation`] and overlay path, or
    /// `{"method", "error"}`.
    pub explanations: Option<Vec<Value>>,
    pub error: Option<String>,
}

/// What makes an outcome reusable for a row: same file, same bytes, same models, same
/// explainers.
pub type Key = (String, String, String, String);

impl Outcome {
    /// Its key; `None` for a file that could not be read (retried on every run).
    #[must_use]
    pub fn key(&self) -> Option<Key> {
        Some((
            self.file.clone(),
            self.sha256.clone()?,
            self.fingerprint.clone(),
            self.explain.clone(),
        ))
    }
}

/// The journal of one shard, open for appending.
pub struct Journal {
    file: File,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and locks it (`flock`, released by the kernel
    /// however the process ends), so that two runs of one shard cannot both write it; returns
    /// the outcomes it already holds by key (a later entry for a key replaces an earlier one).
    /// A torn last line is cut off.
    pub fn open(path: &Path) -> Result<(Self, HashMap<Key, Outcome>)> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .wrap_err_with(|| format!("opening {}", path.display()))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => bail!(
                "{}: another run of this shard holds its journal; one run per shard at a time",
                path.display()
            ),
            Err(e) => return Err(e).wrap_err_with(|| format!("locking {}", path.display())),
        }
        let text = std::fs::read(path).wrap_err_with(|| format!("reading {}", path.display()))?;
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut done = HashMap::new();
        for line in text[..whole].split(|&b| b == b'\n') {
            // Only the last line can be torn (appends are whole lines), and it is cut off
            // below; anything else unreadable is skipped, its image simply done again.
            if let Ok(outcome) = serde_json::from_slice::<Outcome>(line)
                && let Some(key) = outcome.key()
            {
                done.insert(key, outcome);
            }
        }
        if whole < text.len() {
            file.set_len(whole as u64)
                .wrap_err_with(|| format!("cutting the torn line off {}", path.display()))?;
        }
        Ok((Self { file }, done))
    }

    /// Appends `outcome` as one line, in one write.
    pub fn append(&mut self, outcome: &Outcome) -> Result<()> {
        let mut line = serde_json::to_vec(outcome)?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.flush())
            .wrap_err("appending to the journal")
    }
}

/// A shard's output files.
pub struct ShardFiles {
    pub journal: PathBuf,
    pub jsonl: PathBuf,
    pub parquet: PathBuf,
}

impl ShardFiles {
    #[must_use]
    pub fn new(out: &Path, stem: &str) -> Self {
        Self {
            journal: out.join(format!(".{stem}.journal.jsonl")),
            jsonl: out.join(format!("{stem}.jsonl")),
            parquet: out.join(format!("{stem}.parquet")),
        }
    }
}

/// One output row: the manifest row with its outcome.
pub fn row_json(columns: &[String], row: &Row, outcome: &Outcome) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("row".into(), row.index.into());
    object.insert("path".into(), row.path.clone().into());
    for (column, value) in columns.iter().zip(&row.values) {
        object.insert(column.clone(), value.clone());
    }
    object.insert("sha256".into(), outcome.sha256.clone().into());
    object.insert("fingerprint".into(), outcome.fingerprint.clone().into());
    object.insert(
        "classification".into(),
        outcome.classification.clone().unwrap_or(Value::Null),
    );
    if let Some(explanations) = &outcome.explanations {
        object.insert("explanations".into(), Value::Array(explanations.clone()));
    }
    object.insert("error".into(), outcome.error.clone().into());
    object
}

/// The rows as JSON lines.
pub fn jsonl(rows: &[Map<String, Value>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The rows as Parquet: `row`, `path`, the carried columns (text; JSON text for a JSON lines
/// manifest's non-string values), `sha256`, `fingerprint`, `predicted`, `probability_CLASS`
/// per class, `flags` (comma-separated), `familiarity`, `classification` (the whole answer as
/// JSON text), `explanations` (JSON text, with `--explain`) and `error`.
pub fn parquet(
    columns: &[String],
    classes: &[String],
    explain: bool,
    rows: &[Map<String, Value>],
) -> Result<Vec<u8>> {
    let text = |name: &str| -> ArrayRef {
        Arc::new(strings(rows.iter().map(|r| match r.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        })))
    };
    let mut fields = vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, false),
    ];
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| {
            r.get("row").and_then(Value::as_u64).unwrap_or_default()
        }))),
        text("path"),
    ];
    for name in columns
        .iter()
        .map(String::as_str)
        .chain(["sha256", "fingerprint"])
    {
        fields.push(Field::new(name, DataType::Utf8, true));
        arrays.push(text(name));
    }
    fields.push(Field::new("predicted", DataType::Utf8, true));
    arrays.push(Arc::new(strings(rows.iter().map(|r| {
        classification(r)?.get("label")?.as_str().map(str::to_owned)
    }))));
    for class in classes {
        fields.push(Field::new(
            format!("probability_{class}"),
            DataType::Float32,
            true,
        ));
        arrays.push(Arc::new(floats(rows.iter().map(|r| {
            classification(r)?
                .get("probabilities")?
                .get(class)?
                .as_f64()
                .map(|p| p as f32)
        }))));
    }
    fields.push(Field::new("flags", DataType::Utf8, true));
    arrays.push(Arc::new(strings(rows.iter().map(|r| {
        let flags = classification(r)?.get("trust")?.get("flags")?.as_array()?;
        Some(
            flags
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        )
    }))));
    fields.push(Field::new("familiarity", DataType::Float32, true));
    arrays.push(Arc::new(floats(rows.iter().map(|r| {
        classification(r)?
            .get("trust")?
            .get("familiarity")?
            .as_f64()
            .map(|f| f as f32)
    }))));
    let mut rest = vec!["classification"];
    if explain {
        rest.push("explanations");
    }
    rest.push("error");
    for name in rest {
        fields.push(Field::new(name, DataType::Utf8, true));
        arrays.push(text(name));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

fn strings(values: impl Iterator<Item = Option<String>>) -> StringArray {
    values.collect()
}

fn floats(values: impl Iterator<Item = Option<f32>>) -> Float32Array {
    values.collect()
}

/// A row's classification, unless it failed.
fn classification(row: &Map<String, Value>) -> Option<&Value> {
    row.get("classification").filter(|c| !c.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(file: &str, sha: Option<&str>) -> Outcome {
        Outcome {
            file: file.into(),
            sha256: sha.map(str::to_owned),
            fingerprint: "f".into(),
            explain: String::new(),
            classification: Some(serde_json::json!({"label": "covid"})),
            explanations: None,
            error: None,
        }
    }

    #[test]
    fn a_torn_journal_line_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".j.jsonl");
        {
            let (mut journal, done) = Journal::open(&path).unwrap();
            assert!(done.is_empty());
            journal.append(&outcome("a.png", Some("1"))).unwrap();
            journal.append(&outcome("b.png", Some("2"))).unwrap();
            // Unreadable files are journaled nowhere useful: they have no key.
            journal.append(&outcome("c.png", None)).unwrap();
        }
        // A kill in the middle of a write.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"file\":\"d.png\",\"sha2").unwrap();
        drop(file);
        let (mut journal, done) = Journal::open(&path).unwrap();
        let second = Journal::open(&path).err().map(|e| e.to_string());
        assert!(
            second.is_some_and(|e| e.contains("another run")),
            "a second run of the shard is refused"
        );
        let mut files: Vec<&str> = done.values().map(|o| o.file.as_str()).collect();
        files.sort_unstable();
        assert_eq!(files, ["a.png", "b.png"]);
        journal.append(&outcome("d.png", Some("4"))).unwrap();
        drop(journal);
        let (_, done) = Journal::open(&path).unwrap();
        assert_eq!(done.len(), 3, "the line after the cut is whole");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok())
        );
    }
}
