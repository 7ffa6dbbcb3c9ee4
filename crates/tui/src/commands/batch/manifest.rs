//! The manifest `cxr batch` reads, and which of its rows a shard takes.
//!
//! A manifest is CSV with a header, or JSON lines (`.jsonl`, `.ndjson`: one object per line), with
//! a `path` column; every other column is carried through to the results. A relative path is
//! resolved against the manifest's folder, else its parent, as `cxr train` and `cxr eval` do
//! (the shared data's manifests name paths from the data root, e.g. `cxr/covid/x.png`).

use std::path::{Path, PathBuf};

use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Column names the results use themselves: a manifest column by one of these names would be
/// ambiguous, so it is refused (`probability_*` too).
pub const RESULT_COLUMNS: [&str; 9] = [
    "row",
    "sha256",
    "fingerprint",
    "predicted",
    "flags",
    "familiarity",
    "classification",
    "explanations",
    "error",
];

/// A manifest's rows, in file order.
#[derive(Debug)]
pub struct Manifest {
    /// The carried columns (all but `path`), in header order (JSON lines: first-seen order).
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

/// One manifest row.
#[derive(Debug, Clone)]
pub struct Row {
    /// 0-based, in file order (header and blank lines not counted).
    pub index: usize,
    /// The path as written in the manifest: what shards and results are keyed by.
    pub path: String,
    /// The file it names.
    pub file: PathBuf,
    /// The carried columns' values, one per [`Manifest::columns`] (`Null` where absent).
    pub values: Vec<Value>,
}

impl Manifest {
    /// Reads `path`: JSON lines for `.jsonl`/`.ndjson`, CSV otherwise.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .wrap_err_with(|| format!("reading manifest {}", path.display()))?;
        let json_lines = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl") || e.eq_ignore_ascii_case("ndjson"));
        let (columns, records) = if json_lines {
            parse_json_lines(&text)
        } else {
            parse_csv(&text)
        }
        .wrap_err_with(|| format!("manifest {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rows = records
            .into_iter()
            .enumerate()
            .map(|(index, (path, values))| Row {
                index,
                file: resolve(base, &path),
                path,
                values,
            })
            .collect();
        Ok(Self { columns, rows })
    }
}

/// `path` against the manifest's folder `base`, else its parent when only that has it.
fn resolve(base: &Path, path: &str) -> PathBuf {
    let here = base.join(path);
    match base.parent() {
        Some(parent) if !here.exists() && parent.join(path).exists() => parent.join(path),
        _ => here,
    }
}

type Records = (Vec<String>, Vec<(String, Vec<Value>)>);

fn check_columns(columns: &[String]) -> Result<()> {
    for column in columns {
        if RESULT_COLUMNS.contains(&column.as_str()) || column.starts_with("probability_") {
            bail!(
                "column {column:?} has the name of a result column ({}, probability_CLASS); \
                 rename it",
                RESULT_COLUMNS.join(", ")
            );
        }
    }
    Ok(())
}

fn parse_csv(text: &str) -> Result<Records> {
    let mut reader = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let Some(path_at) = headers.iter().position(|h| h == "path") else {
        bail!("no `path` column (columns: {})", headers.join(", "));
    };
    let columns: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != path_at)
        .map(|(_, h)| h.clone())
        .collect();
    check_columns(&columns)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        let path = record.get(path_at).unwrap_or("").trim().to_owned();
        let values = (0..headers.len())
            .filter(|i| *i != path_at)
            .map(|i| Value::String(record.get(i).unwrap_or("").to_owned()))
            .collect();
        rows.push((path, values));
    }
    Ok((columns, rows))
}

fn parse_json_lines(text: &str) -> Result<Records> {
    let mut objects = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_str(line).map_err(|e| eyre!("line {}: not JSON: {e}", number + 1))?;
        let Value::Object(object) = value else {
            bail!("line {}: not a JSON object", number + 1);
        };
        let Some(Value::String(path)) = object.get("path") else {
            bail!("line {}: no string `path`", number + 1);
        };
        objects.push((path.trim().to_owned(), object));
    }
    let mut columns: Vec<String> = Vec::new();
    for (_, object) in &objects {
        for key in object.keys() {
            if key != "path" && !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    check_columns(&columns)?;
    let rows = objects
        .into_iter()
        .map(|(path, object)| {
            let values = columns
                .iter()
                .map(|c| object.get(c).cloned().unwrap_or(Value::Null))
                .collect();
            (path, values)
        })
        .collect();
    Ok((columns, rows))
}

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub const WHOLE: Self = Self { index: 0, count: 1 };

    /// `I/N`, with I below N.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = text
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if index < count => Ok(Self { index, count }),
            _ => bail!("--shard {text:?}: expected I/N with 0 <= I < N (e.g. 0/4)"),
        }
    }

    /// The shard to run: `--shard I/N` if given; else the index from a batch scheduler's
    /// environment (Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX`; Slurm job arrays:
    /// `SLURM_ARRAY_TASK_ID` less `SLURM_ARRAY_TASK_MIN`) and the count from `--shards`, else
    /// `SLURM_ARRAY_TASK_COUNT`; else the whole manifest. Also says where it came from.
    pub fn choose(
        flag: Option<&str>,
        shards: Option<u64>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, String)> {
        if let Some(text) = flag {
            return Ok((Self::parse(text)?, "--shard".to_owned()));
        }
        let number = |name: &str| -> Result<Option<u64>> {
            env(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| eyre!("{name}={v:?}: not a whole number"))
                })
                .transpose()
        };
        let (index, from, count) = if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            (index, "JOB_COMPLETION_INDEX", shards)
        } else if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let Some(index) = id.checked_sub(min) else {
                bail!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}");
            };
            let count = shards.or(number("SLURM_ARRAY_TASK_COUNT")?);
            (index, "SLURM_ARRAY_TASK_ID", count)
        } else {
            return match shards {
                Some(_) => bail!(
                    "--shards without an index: give --shard I/N, or run under a Kubernetes \
                     Indexed Job (JOB_COMPLETION_INDEX) or a Slurm job array (SLURM_ARRAY_TASK_ID)"
                ),
                None => Ok((Self::WHOLE, "whole manifest".to_owned())),
            };
        };
        let Some(count) = count else {
            bail!("{from} is set but the number of shards is not: pass --shards N");
        };
        if index >= count {
            bail!("{from} gives shard {index}, but there are only {count} shards");
        }
        Ok((Self { index, count }, from.to_owned()))
    }

    /// Whether this shard takes the row whose manifest path is `path`. By a hash of the path
    /// (the first 8 bytes of its SHA-256), not the row number: a row stays in its shard when
    /// rows are added, removed or reordered, so a re-run after editing the manifest finds its
    /// finished rows in the same shard's output.
    #[must_use]
    pub fn takes(self, path: &str) -> bool {
        let digest = Sha256::digest(path.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first) % self.count == self.index
    }

    /// `shard-00003-of-00008`: the stem of this shard's output files.
    #[must_use]
    pub fn stem(self) -> String {
        format!("shard-{:05}-of-{:05}", self.index, self.count)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn shards_come_from_the_flag_then_the_schedulers_environment() {
        let none = env(&[]);
        assert_eq!(Shard::choose(None, None, &none).unwrap().0, Shard::WHOLE);
        let (shard, from) = Shard::choose(Some("2/5"), None, &none).unwrap();
        assert_eq!((shard.index, shard.count, from.as_str()), (2, 5, "--shard"));
        for bad in ["5/5", "1", "a/b", "-1/3", "1/0"] {
            assert!(Shard::choose(Some(bad), None, &none).is_err(), "{bad}");
        }
        let k8s = env(&[("JOB_COMPLETION_INDEX", "3")]);
        assert_eq!(
            Shard::choose(None, Some(4), &k8s).unwrap().0,
            Shard { index: 3, count: 4 }
        );
        let missing_count = Shard::choose(None, None, &k8s).unwrap_err().to_string();
        assert!(missing_count.contains("--shards"), "{missing_count}");
        assert!(Shard::choose(None, Some(3), &k8s).is_err(), "index 3 of 3");
        // The flag wins over the environment.
        assert_eq!(
            Shard::choose(Some("0/2"), Some(4), &k8s).unwrap().0,
            Shard { index: 0, count: 2 }
        );
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "11"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert_eq!(
            Shard::choose(None, None, &slurm).unwrap().0,
            Shard { index: 1, count: 3 }
        );
        let garbled = env(&[("SLURM_ARRAY_TASK_ID", "x")]);
        assert!(Shard::choose(None, Some(2), &garbled).is_err());
        assert!(
            Shard::choose(None, Some(2), &none).is_err(),
            "--shards alone"
        );
    }

    #[test]
    fn every_path_lands_in_exactly_one_shard() {
        let paths: Vec<String> = (0..500).map(|i| format!("covid/{i}.png")).collect();
        for count in [1, 2, 3, 7] {
            let mut sizes = vec![0; count as usize];
            for path in &paths {
                let takers: Vec<u64> = (0..count)
                    .filter(|&index| Shard { index, count }.takes(path))
                    .collect();
                assert_eq!(takers.len(), 1, "{path} in {takers:?} of {count}");
                sizes[takers[0] as usize] += 1;
            }
            // A hash spreads 500 paths within a few standard deviations of even.
            let even = 500 / count as i32;
            for size in sizes {
                assert!((size - even).abs() < even / 3 + 10, "{size} vs {even}");
            }
        }
    }

    #[test]
    fn manifests_carry_their_columns_and_refuse_result_names() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("m.csv");
        std::fs::write(
            &csv,
            "label,path,site\ncovid,a.png,x\nnormal,/abs/b.png,y\n",
        )
        .unwrap();
        let manifest = Manifest::read(&csv).unwrap();
        assert_eq!(manifest.columns, ["label", "site"]);
        assert_eq!(manifest.rows[0].file, dir.path().join("a.png"));
        assert_eq!(manifest.rows[1].file, Path::new("/abs/b.png"));
        assert_eq!(manifest.rows[1].values[1], Value::String("y".into()));
        let jsonl = dir.path().join("m.jsonl");
        std::fs::write(
            &jsonl,
            "{\"path\":\"a.png\",\"age\":3}\n\n{\"path\":\"b.png\",\"site\":\"s\"}\n",
        )
        .unwrap();
        let manifest = Manifest::read(&jsonl).unwrap();
        assert_eq!(manifest.columns, ["age", "site"]);
        assert_eq!(manifest.rows[1].index, 1);
        assert_eq!(manifest.rows[1].values, [Value::Null, Value::from("s")]);
        std::fs::write(&csv, "path,error\na.png,x\n").unwrap();
        assert!(format!("{:?}", Manifest::read(&csv).unwrap_err()).contains("result column"));
        std::fs::write(&csv, "file,label\na.png,x\n").unwrap();
        assert!(format!("{:?}", Manifest::read(&csv).unwrap_err()).contains("no `path`"));
        std::fs::write(&jsonl, "{\"path\":\"a.png\"}\n[1]\n").unwrap();
        assert!(format!("{:?}", Manifest::read(&jsonl).unwrap_err()).contains("line 2"));
    }
}
