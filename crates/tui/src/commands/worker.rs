//! `cxr worker --dir DIR`: the line protocol for scripts that drive many images.
//!
//! # Protocol
//!
//! Requests on stdin, one per line (UTF-8, `\n` or `\r\n`, at most 4096 bytes; blank lines
//! are ignored): `COMMAND ID`, two words separated by spaces or tabs.
//!
//! - `classify ID`: segment and classify.
//! - `explain_NAME ID`: explain the predicted class with the registered explainer NAME, where
//!   `_` and `-` are the same (`explain_lime`, `explain_grad_cam`, `explain_grad-cam`,
//!   `explain_integrated_gradients`); `explain_gradcam` is `grad-cam`.
//!
//! ID names a file directly inside DIR: not empty, at most 255 bytes, no `/` or `\`, no `..`,
//! no whitespace or control characters, not starting with `.`, and after resolving symbolic
//! links it must still be inside DIR.
//!
//! Replies on stdout, one line per request, in the order the requests complete (up to
//! `--jobs` run at once):
//!
//! - success: `COMMAND ID RESULT`, with COMMAND and ID as received and RESULT compact JSON:
//!   - classify: `{"label":..,"probabilities":{..},"threshold":..,"lung_fraction":..,"cached":..}`
//!   - explain: `{"method":..,"target":..,"label":..,"probabilities":{..},"overlay":PATH,`
//!     `"heatmap":{"mean","max","above_half"},"quality":{"deletion_auc","insertion_auc",`
//!     `"lung_mass_share"},"cached":..}`, the overlay PNG written to
//!     `OUT/ID.METHOD.png` (OUT: `--out`, default `DIR/.cxr-worker`).
//! - failure: `error COMMAND ID MESSAGE`, MESSAGE one line of text. An ID that cannot be
//!   echoed safely (whitespace or control characters) is written `-`.
//! - a line that is not `COMMAND ID` (one word, three words, not UTF-8, too long):
//!   `error - - MESSAGE`.
//!
//! Every request gets exactly one reply. At end of input the pending requests finish, then the
//! worker exits 0. Models that cannot be loaded, or a DIR that is not a folder, exit 2 before
//! any request is read. Results are cached in the user's own cache folder
//! (`$XDG_CACHE_HOME/cxr` or `~/.cache/cxr`, not in DIR, which others may write; `--cache`,
//! `--no-cache`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use color_eyre::eyre::{Result, WrapErr, bail, eyre};
use cxr_core::cache::{Cache, CacheKey};
use cxr_core::explain::report::{self, QualityChecks};
use cxr_core::explain::{ExplainerConfig, registry};
use cxr_core::input::Gate;
use cxr_core::pipeline::{Analysis, Pipeline};
use cxr_core::render::{self, OverlayStyle};
use cxr_core::tch::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest request line accepted.
const MAX_LINE: usize = 4096;

/// `cxr worker` options.
pub struct Options<'a> {
    pub dir: &'a Path,
    pub jobs: usize,
    pub out: Option<&'a Path>,
    pub cache: Option<&'a Path>,
    pub no_cache: bool,
    pub cache_max_age: Option<Duration>,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Task {
    Classify,
    Explain(&'static str),
}

/// A validated request, with its file already opened: what is read is what was checked, even
/// if the name is replaced (by a link, say) before the request runs.
struct Job {
    command: String,
    id: String,
    path: PathBuf,
    file: File,
    task: Task,
}

/// Requests read but not yet finished, per worker thread: once this many wait, stdin is not
/// read until one finishes (a fast client cannot make the worker hold an unbounded list).
const PENDING_PER_JOB: usize = 4;

/// Longest id: the overlay `ID.EXPLAINER.png` must still fit a 255-byte file name.
const MAX_ID: usize = 200;

/// Everything a worker thread shares with the others.
struct Shared {
    out: PathBuf,
    cache: Cache,
}

pub fn run(options: &Options<'_>, models: &Path, device: Device) -> Result<ExitCode> {
    let dir = options
        .dir
        .canonicalize()
        .wrap_err_with(|| format!("--dir {}", options.dir.display()))?;
    if !dir.is_dir() {
        bail!("--dir {}: not a folder", options.dir.display());
    }
    let jobs = options.jobs.max(1);
    // The default output folders lie in DIR, which others may write: a link there could send
    // overlays and cache entries anywhere.
    for name in [".cxr-worker", ".cxr-cache"] {
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            bail!(
                "{}: is a symbolic link; refusing to write through it (remove it, or choose \
                 the folder with --out/--cache)",
                path.display()
            );
        }
    }
    let out = options
        .out
        .map_or_else(|| dir.join(".cxr-worker"), Path::to_path_buf);
    std::fs::create_dir_all(&out).wrap_err_with(|| format!("creating {}", out.display()))?;
    let cache = if options.no_cache {
        Cache::disabled()
    } else {
        let cache = Cache::new(
            options
                .cache
                .map_or_else(cxr_core::cache::default_dir, Path::to_path_buf),
        );
        match options.cache_max_age {
            Some(age) => cache.with_max_age(age),
            None => cache,
        }
    };
    // Each worker owns a pipeline; split the cores between them rather than oversubscribe.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    cxr_core::tch::set_num_threads((cores / jobs).max(1) as i32);

    let shared = Arc::new(Shared { out, cache });
    let (job_tx, job_rx) = mpsc::sync_channel::<Job>(jobs * PENDING_PER_JOB);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut workers = Vec::new();
    for _ in 0..jobs {
        let (job_rx, ready_tx, shared) =
            (Arc::clone(&job_rx), ready_tx.clone(), Arc::clone(&shared));
        let models = models.to_path_buf();
        workers.push(std::thread::spawn(move || {
            // libtorch modules are not Sync: every thread loads its own.
            let pipeline = match Pipeline::load(&models, device) {
                Ok(p) => {
                    let _ = ready_tx.send(Ok(()));
                    p
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            drop(ready_tx);
            loop {
                // The lock is held only while taking a job, not while running it.
                let next = job_rx
                    .lock()
                    .map_err(|_| ())
                    .and_then(|rx| rx.recv().map_err(|_| ()));
                let Ok(job) = next else { break };
                // A panic inside libtorch or a decoder must still answer the request.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run_job(&pipeline, &shared, &job)
                }))
                .unwrap_or_else(|_| Err("internal error while processing the request".into()));
                let reply = match outcome {
                    Ok(result) => format!("{} {} {result}", job.command, job.id),
                    Err(message) => error_line(&job.command, &job.id, &message),
                };
                emit(&reply);
            }
        }));
    }
    drop(ready_tx);
    for ready in ready_rx {
        if let Err(e) = ready {
            drop(job_tx);
            for w in workers {
                let _ = w.join();
            }
            return Err(eyre!("{e}"));
        }
    }

    serve(&dir, &job_tx)?;
    drop(job_tx);
    for w in workers {
        if w.join().is_err() {
            bail!("a worker thread panicked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads requests until end of input, answering bad ones at once and queueing the others.
fn serve(dir: &Path, jobs: &mpsc::SyncSender<Job>) -> Result<()> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut input, &mut line).wrap_err("reading stdin")? {
            Line::End => return Ok(()),
            Line::TooLong => emit(&error_line(
                "-",
                "-",
                &format!("request longer than {MAX_LINE} bytes"),
            )),
            Line::Whole => match parse_request(&line, dir) {
                Ok(None) => {}
                Ok(Some(job)) => {
                    if jobs.send(job).is_err() {
                        bail!("every worker thread stopped");
                    }
                }
                Err(reply) => emit(&reply),
            },
        }
    }
}

enum Line {
    Whole,
    TooLong,
    End,
}

/// One line into `line` (at most `MAX_LINE` bytes kept; the rest of a longer one is skipped
/// without being stored, however long it is).
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> std::io::Result<Line> {
    let n = input.take(MAX_LINE as u64 + 1).read_until(b'\n', line)?;
    if n == 0 {
        return Ok(Line::End);
    }
    if line.len() <= MAX_LINE || line.last() == Some(&b'\n') {
        return Ok(Line::Whole);
    }
    loop {
        let mut rest = Vec::new();
        let n = input.take(MAX_LINE as u64).read_until(b'\n', &mut rest)?;
        if n == 0 || rest.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
    }
}

/// Writes one reply line to stdout; the lock keeps lines whole between threads.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the client went away) leaves nothing to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `error COMMAND ID MESSAGE`, on one line.
fn error_line(command: &str, id: &str, message: &str) -> String {
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("error {command} {id} {message}")
}

/// A request line as a job, None for a blank line, or the error reply.
fn parse_request(line: &[u8], dir: &Path) -> std::result::Result<Option<Job>, String> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Err(error_line("-", "-", "request is not UTF-8"));
    };
    let text = text.trim_end_matches(['\n', '\r']);
    let words: Vec<&str> = text.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    let (command, id) = match words[..] {
        [] => return Ok(None),
        [command, id] => (command, id),
        _ => {
            return Err(error_line(
                "-",
                "-",
                &format!(
                    "malformed request {:?}: expected COMMAND ID (two words)",
                    text.chars().take(80).collect::<String>()
                ),
            ));
        }
    };
    let echo_command = if echoable(command) { command } else { "-" };
    let echo_id = if echoable(id) { id } else { "-" };
    let task = parse_command(command).map_err(|e| error_line(echo_command, echo_id, &e))?;
    let path = resolve_id(dir, id).map_err(|e| error_line(echo_command, echo_id, &e))?;
    // Opened now, without following a link, and read later from this handle.
    let file = Gate::UNTRUSTED
        .open_file(&path)
        .map_err(|e| error_line(echo_command, echo_id, &e.to_string()))?;
    Ok(Some(Job {
        command: command.to_owned(),
        id: id.to_owned(),
        path,
        file,
        task,
    }))
}

/// Safe to write back as one word of a reply line.
fn echoable(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 255
        && !word.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn parse_command(command: &str) -> std::result::Result<Task, String> {
    if command == "classify" {
        return Ok(Task::Classify);
    }
    let Some(name) = command.strip_prefix("explain_") else {
        return Err(format!(
            "unknown command {command:?}: expected classify or explain_NAME (see `cxr explainers`)"
        ));
    };
    let wanted = match name.replace('_', "-").to_lowercase().as_str() {
        "gradcam" => "grad-cam".to_owned(),
        other => other.to_owned(),
    };
    let entries = registry::all().map_err(|e| e.to_string())?;
    entries
        .iter()
        .find(|e| e.name == wanted)
        .map(|e| Task::Explain(e.name))
        .ok_or_else(|| {
            let known: Vec<String> = entries
                .iter()
                .map(|e| format!("explain_{}", e.name.replace('-', "_")))
                .collect();
            format!(
                "unknown explainer {name:?}: expected one of {}",
                known.join(", ")
            )
        })
}

/// The file `id` names inside `dir` (already canonical), refusing anything that could reach
/// outside it.
fn resolve_id(dir: &Path, id: &str) -> std::result::Result<PathBuf, String> {
    let refuse = |why: &str| Err(format!("invalid id: {why}"));
    if id.is_empty() {
        return refuse("empty");
    }
    if id.len() > MAX_ID {
        return Err(format!(
            "invalid id: {} bytes, longer than the {MAX_ID} bytes ids may have",
            id.len()
        ));
    }
    if id.contains(['/', '\\']) {
        return refuse("contains a path separator");
    }
    if id.contains("..") {
        return refuse("contains \"..\"");
    }
    if id.starts_with('.') {
        return refuse("starts with '.'");
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return refuse("contains whitespace or control characters");
    }
    let path = dir.join(id);
    let real = path.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{}: no such file", path.display()),
        _ => format!("{}: {e}", path.display()),
    })?;
    if !real.starts_with(dir) {
        return refuse("resolves outside the folder (symbolic link?)");
    }
    if !real.is_file() {
        return Err(format!("{}: not a file", path.display()));
    }
    Ok(path)
}

/// The classification part of every result.
#[derive(Serialize, Deserialize)]
struct ClassifyResult {
    label: String,
    probabilities: BTreeMap<String, f32>,
    threshold: f32,
    lung_fraction: f32,
}

/// An explanation's result, as cached (the overlay PNG is a second entry).
#[derive(Serialize, Deserialize)]
struct ExplainResult {
    method: String,
    target: String,
    label: String,
    probabilities: BTreeMap<String, f32>,
    heatmap: cxr_core::explain::HeatmapSummary,
    quality: QualitySummary,
}

#[derive(Serialize, Deserialize)]
struct QualitySummary {
    deletion_auc: Option<f64>,
    insertion_auc: Option<f64>,
    lung_mass_share: Option<f64>,
}

/// Reads the request's opened file through the input gate (bounded) and hashes it: the cache
/// key needs the hash before any decoding.
fn read_input(job: &Job) -> std::result::Result<(Vec<u8>, String), String> {
    let bytes = Gate::UNTRUSTED
        .read_file(&job.file, &job.path)
        .map_err(|e| e.to_string())?;
    let sha = cxr_core::xray::hex(&Sha256::digest(&bytes));
    Ok((bytes, sha))
}

fn analyse(
    pipeline: &Pipeline,
    bytes: &[u8],
    path: &Path,
) -> std::result::Result<Analysis, String> {
    let xray = Gate::UNTRUSTED
        .decode(bytes, path)
        .map_err(|e| e.to_string())?;
    pipeline.analyze(xray).map_err(|e| e.to_string())
}

fn classify_result(analysis: &Analysis) -> ClassifyResult {
    let report = analysis.report();
    ClassifyResult {
        label: report.label,
        probabilities: report.probabilities,
        threshold: report.threshold,
        lung_fraction: report.lung_fraction,
    }
}

/// Adds `"cached": hit` to a result object.
fn with_cached(value: &impl Serialize, hit: bool, extra: Option<(&str, String)>) -> String {
    let mut json = serde_json::to_value(value).unwrap_or_default();
    if let Some(object) = json.as_object_mut() {
        if let Some((key, v)) = extra {
            object.insert(key.into(), v.into());
        }
        object.insert("cached".into(), hit.into());
    }
    json.to_string()
}

/// Runs one request: the RESULT JSON, or the error MESSAGE.
fn run_job(pipeline: &Pipeline, shared: &Shared, job: &Job) -> std::result::Result<String, String> {
    let (bytes, sha) = read_input(job)?;
    match job.task {
        Task::Classify => {
            let key = CacheKey::new(&sha, &pipeline.fingerprint, "classify", "");
            if let Some(hit) = shared.cache.get_json::<ClassifyResult>(&key) {
                return Ok(with_cached(&hit, true, None));
            }
            let result = classify_result(&analyse(pipeline, &bytes, &job.path)?);
            if let Err(e) = shared.cache.put_json(&key, &result) {
                tracing::warn!("{e}");
            }
            Ok(with_cached(&result, false, None))
        }
        Task::Explain(name) => explain(pipeline, shared, job, name, &bytes, &sha),
    }
}

fn explain(
    pipeline: &Pipeline,
    shared: &Shared,
    job: &Job,
    name: &'static str,
    bytes: &[u8],
    sha: &str,
) -> std::result::Result<String, String> {
    let overlay_path = shared.out.join(format!("{}.{name}.png", job.id));
    let overlay_text = overlay_path.display().to_string();
    let style = OverlayStyle::default();
    // Everything that shapes the result: parameters, target, quality checks, overlay style.
    let params = format!(
        "params=;target=predicted;checks=faithfulness;overlay={},{},outline",
        style.colormap.name(),
        style.opacity
    );
    let key = CacheKey::new(sha, &pipeline.fingerprint, name, &params);
    let overlay_key = CacheKey::new(
        sha,
        &pipeline.fingerprint,
        &format!("{name}:overlay"),
        &params,
    );
    if let (Some(result), Some(png)) = (
        shared.cache.get_json::<ExplainResult>(&key),
        shared.cache.get(&overlay_key),
    ) {
        cxr_core::fsutil::write_atomic(&overlay_path, &png).map_err(|e| e.to_string())?;
        return Ok(with_cached(&result, true, Some(("overlay", overlay_text))));
    }
    let analysis = analyse(pipeline, bytes, &job.path)?;
    let entry = registry::find(name).map_err(|e| e.to_string())?;
    let config = ExplainerConfig::default();
    let explainer = entry.build(&config).map_err(|e| e.to_string())?;
    let classes = pipeline.classifier.classes();
    let target = analysis.prediction.label_index(classes);
    let checks = QualityChecks {
        faithfulness: true,
        sanity: false,
    };
    let (explanation, method_report) = report::explain(
        pipeline.classifier.as_ref(),
        &analysis,
        entry,
        explainer.as_ref(),
        &config.canonical(),
        target,
        checks,
    )
    .map_err(|e| format!("{}: {name}: {e}", job.path.display()))?;
    let picture = report::overlay(&analysis, &explanation, &style, true);
    let png = render::encode_png(&picture).map_err(|e| e.to_string())?;
    cxr_core::fsutil::write_atomic(&overlay_path, &png).map_err(|e| e.to_string())?;
    let classification = classify_result(&analysis);
    let result = ExplainResult {
        method: name.to_owned(),
        target: method_report.target.clone(),
        label: classification.label,
        probabilities: classification.probabilities,
        heatmap: method_report.heatmap,
        quality: QualitySummary {
            deletion_auc: method_report.quality.deletion_auc,
            insertion_auc: method_report.quality.insertion_auc,
            lung_mass_share: method_report.quality.lung_mass_share,
        },
    };
    for stored in [
        shared.cache.put_json(&key, &result),
        shared.cache.put(&overlay_key, &png),
    ] {
        if let Err(e) = stored {
            tracing::warn!("{e}");
        }
    }
    Ok(with_cached(&result, false, Some(("overlay", overlay_text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_leave_the_folder_are_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        for id in [
            "", "..", "../x.png", "a/b.png", "a\\b", ".hidden", "x..png", "a\0b", "a b",
        ] {
            assert!(resolve_id(&root, id).is_err(), "{id:?} accepted");
        }
        std::fs::write(root.join("ok.png"), b"x").unwrap_or_else(|e| panic!("{e}"));
        assert!(resolve_id(&root, "ok.png").is_ok());
        assert!(
            resolve_id(&root, "missing.png")
                .unwrap_err()
                .contains("no such file")
        );
    }

    #[test]
    fn unknown_commands_are_refused() {
        assert_eq!(parse_command("classify"), Ok(Task::Classify));
        assert!(
            parse_command("explode")
                .unwrap_err()
                .contains("unknown command")
        );
    }
}

#[cfg(test)]
mod race_tests;
