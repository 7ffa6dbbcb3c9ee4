//! `cxr batch MANIFEST --out DIR [--shard I/N] [--explain METHODS]`: a manifest's images (or one
//! shard of them) classified, and explained if asked, into JSON lines and Parquet, resumably.
//!
//! Each image is read once on the main thread (its content hash decides whether the journal
//! already holds its result) and, when not done, analysed by a pool of `--jobs` services. A
//! shard's rows are the manifest rows whose path hashes to it ([`manifest::Shard::takes`]).
//! See [`output`] for the files and why a killed run loses and repeats nothing.

mod manifest;
mod output;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use color_eyre::eyre::{Result, WrapErr, eyre};
use cxr_core::answer;
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::explain::MethodSpec;
use cxr_core::input::Gate;
use cxr_core::pool::{Answer, ModelPool};
use cxr_core::service::{Image, Service, Settings};
use serde::Serialize;
use serde_json::Value;

use manifest::{Manifest, Row, Shard};
use output::{Journal, Key, Outcome, ShardFiles};

/// `cxr batch` options.
pub struct Options<'a> {
    pub manifest: &'a Path,
    pub out: &'a Path,
    pub shard: Option<&'a str>,
    pub shards: Option<u64>,
    pub explain: &'a [String],
    pub jobs: usize,
}

/// The end-of-run summary, printed as one JSON line on stdout.
#[derive(Debug, Serialize)]
struct Summary {
    shard: String,
    /// Where the shard came from: `--shard`, an environment variable, or the whole manifest.
    shard_from: String,
    manifest_rows: usize,
    /// Rows of this shard (all of them are in its output).
    rows: usize,
    /// Rows whose result an earlier run had already made.
    reused: usize,
    /// Rows analysed by this run.
    processed: usize,
    /// Rows with an error (unreadable or undecodable file, failed explainer).
    errors: usize,
    /// Rows per predicted label, and per trust flag.
    labels: BTreeMap<String, usize>,
    flags: BTreeMap<String, usize>,
    seconds: f64,
    /// Images analysed by this run per second of its wall time.
    images_per_second: f64,
    jsonl: PathBuf,
    parquet: PathBuf,
}

impl Summary {
    /// Adds the errors, labels and flags of `outcomes`.
    fn count(&mut self, outcomes: &[Outcome]) {
        for outcome in outcomes {
            let failed_method = outcome
                .explanations
                .iter()
                .flatten()
                .any(|e| e.get("error").is_some());
            if outcome.error.is_some() || failed_method {
                self.errors += 1;
            }
            let Some(classification) = &outcome.classification else {
                continue;
            };
            if let Some(label) = classification.get("label").and_then(Value::as_str) {
                *self.labels.entry(label.to_owned()).or_default() += 1;
            }
            let flags = classification
                .pointer("/trust/flags")
                .and_then(Value::as_array);
            for flag in flags.into_iter().flatten().filter_map(Value::as_str) {
                *self.flags.entry(flag.to_owned()).or_default() += 1;
            }
        }
    }
}

pub fn run(options: &Options<'_>, models: &Path, compute: Compute) -> Result<ExitCode> {
    let start = Instant::now();
    let (shard, shard_from) = Shard::choose(options.shard, options.shards, |name| {
        std::env::var(name).ok()
    })?;
    let manifest = Manifest::read(options.manifest)?;
    let specs = MethodSpec::parse(options.explain, &[])?;
    let methods = specs
        .iter()
        .map(MethodSpec::build)
        .collect::<cxr_core::Result<Vec<_>>>()?;
    let explain = methods
        .iter()
        .map(|m| format!("{}:{}", m.entry.name, m.params))
        .collect::<Vec<_>>()
        .join(";");
    std::fs::create_dir_all(options.out)
        .wrap_err_with(|| format!("creating {}", options.out.display()))?;
    let files = ShardFiles::new(options.out, &shard.stem());
    let (mut journal, done) = Journal::open(&files.journal)?;
    let rows: Vec<&Row> = manifest
        .rows
        .iter()
        .filter(|row| shard.takes(&row.path))
        .collect();

    let jobs = options.jobs.max(1);
    let compute = compute.for_workers(jobs);
    let models = models.to_path_buf();
    // A batch run's journal is its memory: the user's result cache is neither read nor filled.
    let pool = ModelPool::start(jobs, jobs * 2, "cxr-batch", move |_| {
        Service::load(&models, &compute, Cache::disabled())
    })?;
    let (fingerprint, classes) = pool
        .submit(|service: &Service| {
            (
                service.fingerprint().to_owned(),
                service.pipeline().classifier.classes().to_vec(),
            )
        })
        .recv()
        .map_err(|_| eyre!("the model workers stopped"))?
        .map_err(|e| eyre!("{e}"))?;
    let overlays = options.out.join("overlays");
    let job = Job {
        fingerprint: fingerprint.clone(),
        explain: explain.clone(),
        specs,
        overlays,
    };

    let bar = super::progress(rows.len(), &format!("batch {shard}"));
    let (outcomes, reused, processed) =
        analyse_rows(&rows, &pool, &job, &done, &mut journal, &bar)?;
    drop(pool);
    bar.finish_and_clear();

    let mut table = Vec::with_capacity(rows.len());
    for (row, outcome) in rows.iter().zip(&outcomes) {
        table.push(output::row_json(&manifest.columns, row, outcome));
    }
    // Parquet first: the JSON lines file, renamed into place last, marks the shard done.
    let parquet = output::parquet(&manifest.columns, &classes, !methods.is_empty(), &table)?;
    cxr_core::fsutil::write_atomic(&files.parquet, &parquet)?;
    cxr_core::fsutil::write_atomic(&files.jsonl, &output::jsonl(&table)?)?;

    let seconds = start.elapsed().as_secs_f64();
    let mut summary = Summary {
        shard: shard.to_string(),
        shard_from,
        manifest_rows: manifest.rows.len(),
        rows: rows.len(),
        reused,
        processed,
        errors: 0,
        labels: BTreeMap::new(),
        flags: BTreeMap::new(),
        seconds,
        images_per_second: if seconds > 0.0 {
            processed as f64 / seconds
        } else {
            0.0
        },
        jsonl: files.jsonl,
        parquet: files.parquet,
    };
    summary.count(&outcomes);
    super::note(&format!(
        "shard {shard}: {} rows ({} reused, {} analysed, {} errors) in {:.1} s, {:.2} images/s; \
         labels {:?}, flags {:?}",
        summary.rows,
        summary.reused,
        summary.processed,
        summary.errors,
        summary.seconds,
        summary.images_per_second,
        summary.labels,
        summary.flags
    ));
    super::print_json(&summary)?;
    Ok(super::exit_code(summary.errors))
}

/// Each row's outcome: from `done` when its file, content, models and explainers match, else
/// analysed on the pool (journaled as each one finishes). Also how many were reused and how
/// many analysed.
fn analyse_rows(
    rows: &[&Row],
    pool: &ModelPool<Service>,
    job: &Job,
    done: &HashMap<Key, Outcome>,
    journal: &mut Journal,
    bar: &super::Progress,
) -> Result<(Vec<Outcome>, usize, usize)> {
    let ahead = pool.workers() * 2;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];
    let mut in_flight: VecDeque<(usize, Answer<Outcome>)> = VecDeque::new();
    let (mut reused, mut processed) = (0, 0);
    let mut finish = |at: usize, answer: Answer<Outcome>, outcomes: &mut Vec<Option<Outcome>>| {
        let outcome = answer.recv().map_or_else(
            |_| job.failed(&rows[at].file, None, "the model workers stopped".into()),
            |answered| {
                answered.unwrap_or_else(|panic| {
                    job.failed(&rows[at].file, None, format!("internal error: {panic}"))
                })
            },
        );
        // Failures without a content hash (unreadable, a panic) are left out: retried next time.
        if outcome.key().is_some() {
            journal.append(&outcome)?;
        }
        outcomes[at] = Some(outcome);
        bar.inc(1);
        Ok::<_, color_eyre::Report>(())
    };
    for (at, row) in rows.iter().enumerate() {
        let bytes = match Gate::TRUSTED.read(&row.file) {
            Ok(bytes) => bytes,
            Err(e) => {
                outcomes[at] = Some(job.failed(&row.file, None, e.to_string()));
                bar.inc(1);
                continue;
            }
        };
        let sha256 = cxr_core::files::sha256_hex(&bytes);
        let key: Key = (
            row.file.display().to_string(),
            sha256,
            job.fingerprint.clone(),
            job.explain.clone(),
        );
        if let Some(outcome) = done.get(&key) {
            outcomes[at] = Some(outcome.clone());
            reused += 1;
            bar.inc(1);
            continue;
        }
        let (job, file) = (job.clone(), row.file.clone());
        in_flight.push_back((
            at,
            pool.submit(move |service: &Service| job.analyse(service, bytes, &file)),
        ));
        processed += 1;
        while in_flight.len() > ahead {
            if let Some((at, answer)) = in_flight.pop_front() {
                finish(at, answer, &mut outcomes)?;
            }
        }
    }
    while let Some((at, answer)) = in_flight.pop_front() {
        finish(at, answer, &mut outcomes)?;
    }

    let outcomes = outcomes
        .into_iter()
        .zip(rows)
        .map(|(outcome, row)| outcome.ok_or_else(|| eyre!("row {}: no outcome", row.index)))
        .collect::<Result<_>>()?;
    Ok((outcomes, reused, processed))
}

/// What every analysis of the run shares.
#[derive(Clone)]
struct Job {
    fingerprint: String,
    explain: String,
    specs: Vec<MethodSpec>,
    overlays: PathBuf,
}

impl Job {
    fn failed(&self, file: &Path, sha256: Option<String>, error: String) -> Outcome {
        Outcome {
            file: file.display().to_string(),
            sha256,
            fingerprint: self.fingerprint.clone(),
            explain: self.explain.clone(),
            classification: None,
            explanations: None,
            error: Some(error),
        }
    }

    /// Classifies (and explains) the image `bytes` read from `file`.
    fn analyse(&self, service: &Service, bytes: Vec<u8>, file: &Path) -> Outcome {
        let image = Image::from_bytes(bytes, file, Gate::TRUSTED);
        let sha256 = image.sha256().to_owned();
        let classified = match service.classify(&image) {
            Ok(classified) => classified,
            Err(e) => return self.failed(file, Some(sha256), e.to_string()),
        };
        let classification = as_json(&answer::Classification::from(&classified));
        let explanations = (!self.specs.is_empty()).then(|| {
            self.specs
                .iter()
                .map(|spec| self.explanation(service, &image, &classified, spec))
                .collect()
        });
        Outcome {
            file: file.display().to_string(),
            sha256: Some(sha256),
            fingerprint: self.fingerprint.clone(),
            explain: self.explain.clone(),
            classification: Some(classification),
            explanations,
            error: None,
        }
    }

    /// One explainer's answer with its overlay's path, or `{"method", "error"}`.
    fn explanation(
        &self,
        service: &Service,
        image: &Image,
        classified: &cxr_core::service::Classified,
        spec: &MethodSpec,
    ) -> Value {
        let explained = spec.build().and_then(|method| {
            let rendered = service.explain(image, &method, &Settings::default())?;
            let overlay =
                self.overlays
                    .join(format!("{}.{}.png", image.sha256(), method.entry.name));
            cxr_core::fsutil::write_atomic(&overlay, &rendered.overlay_png)?;
            let mut value = as_json(&answer::Explanation::new(classified, &rendered));
            if let Value::Object(object) = &mut value {
                object.insert("overlay".into(), overlay.display().to_string().into());
            }
            Ok(value)
        });
        explained
            .unwrap_or_else(|e| serde_json::json!({"method": spec.name, "error": e.to_string()}))
    }
}

/// `answer` as a JSON value, through its text: an `f32` keeps its shortest form (0.93709654,
/// as `cxr classify` prints it) instead of its `f64` widening (0.9370965361595154).
fn as_json(answer: &impl Serialize) -> Value {
    serde_json::to_string(answer)
        .and_then(|text| serde_json::from_str(&text))
        .unwrap_or(Value::Null)
}
