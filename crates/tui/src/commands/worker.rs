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
//! With `--subfolders`, ID may also be `FOLDER/.../NAME`, a file in a subfolder of DIR (how
//! the Spark job of docs/scale-out.md sends manifest paths under one root): each folder part
//! is checked as an ID is, and the folder must still be inside DIR after resolving links.
//! Otherwise ID names a file directly inside DIR: not empty, at most 255 bytes, no `/` or `\`, no `..`,
//! no whitespace or control characters, not starting with `.`, and after resolving symbolic
//! links it must still be inside DIR. As in the seed system, an ID without its extension works:
//! when DIR/ID does not exist, ID means DIR/ID.png, else the one file DIR/ID.EXT (two or more
//! such files are an error that lists them).
//!
//! Replies on stdout, one line per request, in the order the requests complete (up to
//! `--jobs` run at once):
//!
//! - success: `COMMAND ID RESULT`, with COMMAND and ID as received and RESULT compact JSON:
//!   - classify: the service's classification ([`cxr_core::answer::Classification`]:
//!     `{"sha256","width","height","label","probabilities","threshold","lung_fraction",`
//!     `"trust","timings","cached"}`), as the HTTP API answers it;
//!   - explain: the service's explanation ([`cxr_core::answer::Explanation`]: `{"method",`
//!     `"params","target","label","probabilities","heatmap","quality","details","explain_ms",`
//!     `"quality_ms","cached"}`) and `"overlay":PATH`, the overlay PNG written to
//!     `OUT/ID.METHOD.png` (OUT: `--out`, default `DIR/.cxr-worker`).
//! - with `--compat seed`, the seed system's shapes instead: classify answers
//!   `{"COVID-19":p,"NO FINDING":q}` (the classes under the seed's names) and explain the
//!   overlay PNG's path, so that the seed's server can drive this worker unchanged.
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

use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use color_eyre::eyre::{Result, WrapErr, bail};
use cxr_core::answer;
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::explain::{MethodSpec, registry};
use cxr_core::input::Gate;
use cxr_core::pool::ModelPool;
use cxr_core::service::{Image, Service, Settings};
use serde::Serialize;

/// Longest request line accepted.
const MAX_LINE: usize = 4096;

/// `cxr worker` options.
pub struct Options<'a> {
    pub dir: &'a Path,
    pub jobs: usize,
    pub out: Option<&'a Path>,
    pub cache: Cache,
    pub compat: Compat,
    /// Ids may name files in subfolders of `dir` (see [`resolve_nested`]).
    pub subfolders: bool,
}

/// The shape of the replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// This project's results (with label, threshold, heatmap and quality measures).
    #[default]
    Native,
    /// The seed system's: `{"COVID-19": p, "NO FINDING": q}`, and the overlay path.
    Seed,
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Task {
    Classify,
    Explain(&'static str),
}

impl From<crate::cli::CompatArg> for Compat {
    fn from(arg: crate::cli::CompatArg) -> Self {
        match arg {
            crate::cli::CompatArg::Native => Self::Native,
            crate::cli::CompatArg::Seed => Self::Seed,
        }
    }
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
    subfolders: bool,
    compat: Compat,
}

pub fn run(options: &Options<'_>, models: &Path, compute: Compute) -> Result<ExitCode> {
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
    let shared = Arc::new(Shared {
        out,
        subfolders: options.subfolders,
        compat: options.compat,
    });
    // Each worker thread loads its own models (libtorch modules are not Sync).
    let models = models.to_path_buf();
    let compute = compute.for_workers(jobs);
    let cache = options.cache.clone();
    let pool = ModelPool::start(jobs, jobs * PENDING_PER_JOB, "cxr-worker", move |_| {
        Service::load(&models, &compute, cache.clone())
    })?;
    serve(&dir, &pool, &shared)?;
    drop(pool); // the pending requests finish and are answered first
    Ok(ExitCode::SUCCESS)
}

/// Reads requests until end of input, answering bad ones at once and queueing the others.
fn serve(dir: &Path, pool: &ModelPool<Service>, shared: &Arc<Shared>) -> Result<()> {
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
            Line::Whole => match parse_request(&line, dir, shared.subfolders) {
                Ok(None) => {}
                Ok(Some(job)) => {
                    let shared = Arc::clone(shared);
                    // Waits while `--jobs` x 4 requests are pending: stdin is not read meanwhile.
                    pool.submit(move |service: &Service| {
                        // A panic inside libtorch or a decoder must still answer the request.
                        let outcome = cxr_core::pool::catching(|| run_job(service, &shared, &job))
                            .unwrap_or_else(|_| {
                                Err("internal error while processing the request".into())
                            });
                        let reply = match outcome {
                            Ok(result) => format!("{} {} {result}", job.command, job.id),
                            Err(message) => error_line(&job.command, &job.id, &message),
                        };
                        emit(&reply);
                    });
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
fn parse_request(
    line: &[u8],
    dir: &Path,
    subfolders: bool,
) -> std::result::Result<Option<Job>, String> {
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
    let resolved = if subfolders {
        resolve_nested(dir, id)
    } else {
        resolve_id(dir, id)
    };
    let path = resolved.map_err(|e| error_line(echo_command, echo_id, &e))?;
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
    match registry::lookup(name) {
        Ok(entry) => Ok(Task::Explain(entry.name)),
        Err(cxr_core::CoreError::UnknownExplainer { known, .. }) => {
            let known: Vec<String> = known
                .iter()
                .map(|e| format!("explain_{}", e.replace('-', "_")))
                .collect();
            Err(format!(
                "unknown explainer {name:?}: expected one of {}",
                known.join(", ")
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// With `--subfolders`, the file `id` names in `dir` or a subfolder of it (`covid/x.png`):
/// each folder part is checked as an id is, the folder it leads to must still lie inside `dir`
/// after resolving links, and the last part is an id in that folder ([`resolve_id`]).
fn resolve_nested(dir: &Path, id: &str) -> std::result::Result<PathBuf, String> {
    let Some((folders, name)) = id.rsplit_once('/') else {
        return resolve_id(dir, id);
    };
    if id.len() > MAX_ID {
        return Err(format!(
            "invalid id: {} bytes, longer than the {MAX_ID} bytes ids may have",
            id.len()
        ));
    }
    let mut folder = dir.to_path_buf();
    for part in folders.split('/') {
        if part.is_empty() {
            return Err("invalid id: an empty folder part".into());
        }
        if part.contains('\\') || part.contains("..") || part.starts_with('.') {
            return Err(format!("invalid id: folder part {part:?}"));
        }
        if part.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("invalid id: contains whitespace or control characters".into());
        }
        folder.push(part);
    }
    let real = folder.canonicalize().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("{}: no such folder", folder.display()),
        _ => format!("{}: {e}", folder.display()),
    })?;
    if !real.starts_with(dir) {
        return Err("invalid id: resolves outside the folder (symbolic link?)".into());
    }
    resolve_id(&real, name)
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
    let mut path = dir.join(id);
    if std::fs::symlink_metadata(&path).is_err() {
        path = bare_id(dir, id)?;
    }
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

/// The seed's ids without extension: DIR/ID.png, else the only DIR/ID.EXT (a visible entry,
/// one extension). `dir/id` itself does not exist.
fn bare_id(dir: &Path, id: &str) -> std::result::Result<PathBuf, String> {
    let png = dir.join(format!("{id}.png"));
    if std::fs::symlink_metadata(&png).is_ok() {
        return Ok(png);
    }
    let prefix = format!("{id}.");
    let listing = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut candidates: Vec<String> = listing
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.strip_prefix(&prefix)
                .is_some_and(|ext| !ext.is_empty() && !ext.contains('.'))
        })
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [one] => Ok(dir.join(one)),
        [] => Err(format!(
            "{}: no such file (nor {id}.png or {id}.* beside it)",
            dir.join(id).display()
        )),
        many => Err(format!(
            "ambiguous id {id}: {} files match ({}); name one with its extension",
            many.len(),
            many.join(", ")
        )),
    }
}

/// An explanation's result: the service's answer and the overlay's path.
#[derive(Serialize)]
struct Explained<'a> {
    #[serde(flatten)]
    answer: answer::Explanation<'a>,
    overlay: String,
}

/// `value` as one line of JSON.
fn line(value: &impl Serialize) -> std::result::Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

/// The request's image, read from the handle opened when the request was checked (what is read
/// is what was checked, even if the name now points elsewhere), through the input gate.
fn read_input(job: &Job) -> std::result::Result<Image, String> {
    let bytes = Gate::UNTRUSTED
        .read_file(&job.file, &job.path)
        .map_err(|e| e.to_string())?;
    Ok(Image::from_bytes(bytes, &job.path, Gate::UNTRUSTED))
}

/// Runs one request: the RESULT JSON, or the error MESSAGE.
fn run_job(service: &Service, shared: &Shared, job: &Job) -> std::result::Result<String, String> {
    let image = read_input(job)?;
    let classified = service.classify(&image).map_err(|e| e.to_string())?;
    let name = match job.task {
        Task::Classify if shared.compat == Compat::Seed => {
            return line(&cxr_server::seed::probabilities(
                &classified.report.probabilities,
            ));
        }
        Task::Classify => return line(&answer::Classification::from(&classified)),
        Task::Explain(name) => name,
    };
    let method = MethodSpec {
        name: name.to_owned(),
        params: String::new(),
    }
    .build()
    .map_err(|e| e.to_string())?;
    let rendered = service
        .explain(&image, &method, &Settings::default())
        .map_err(|e| format!("{}: {name}: {e}", job.path.display()))?;
    let overlay_path = shared.out.join(format!("{}.{name}.png", job.id));
    cxr_core::fsutil::write_atomic(&overlay_path, &rendered.overlay_png)
        .map_err(|e| e.to_string())?;
    if shared.compat == Compat::Seed {
        return Ok(overlay_path.display().to_string());
    }
    line(&Explained {
        answer: answer::Explanation::new(&classified, &rendered),
        overlay: overlay_path.display().to_string(),
    })
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
    fn bare_ids_name_the_png_else_the_one_file_with_an_extension() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let touch = |name: &str| {
            std::fs::write(root.join(name), b"x").unwrap_or_else(|e| panic!("{e}"));
        };
        touch("a.png");
        touch("a.jpg");
        touch("b.dcm");
        touch("c.jpg");
        touch("c.dcm");
        touch("d.grad-cam.png");
        let name = |id: &str| {
            resolve_id(&root, id).map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
        };
        assert_eq!(name("a").as_deref(), Ok("a.png"), "ID.png comes first");
        assert_eq!(
            name("a.jpg").as_deref(),
            Ok("a.jpg"),
            "a full name is itself"
        );
        assert_eq!(name("b").as_deref(), Ok("b.dcm"));
        let ambiguous = name("c").unwrap_err();
        assert!(
            ambiguous.contains("ambiguous") && ambiguous.contains("c.dcm, c.jpg"),
            "{ambiguous}"
        );
        assert!(
            name("d").unwrap_err().contains("no such file"),
            "two dots are not ID.EXT"
        );
        assert!(name("e").unwrap_err().contains("no such file"));
    }

    #[test]
    fn subfolder_ids_stay_inside_the_folder() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = dir.path().canonicalize().unwrap_or_else(|e| panic!("{e}"));
        let inner = root.join("in");
        std::fs::create_dir_all(inner.join("deep")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(inner.join("deep/ok.png"), b"x").unwrap_or_else(|e| panic!("{e}"));
        let outside = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(outside.path().join("x.png"), b"x").unwrap_or_else(|e| panic!("{e}"));
        #[cfg(unix)]
        std::os::unix::fs::symlink(outside.path(), root.join("out"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            resolve_nested(&root, "in/deep/ok.png"),
            Ok(inner.join("deep/ok.png"))
        );
        assert!(resolve_nested(&root, "in/deep/ok").is_ok(), "bare ids too");
        for id in [
            "in//ok.png",
            "/in/deep/ok.png",
            "in/../in/deep/ok.png",
            "in/.deep/ok.png",
            "in/deep/",
            "out/x.png",
            "in/de ep/ok.png",
        ] {
            assert!(resolve_nested(&root, id).is_err(), "{id:?} accepted");
        }
        assert!(
            resolve_id(&root, "in/deep/ok.png").is_err(),
            "only with --subfolders"
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
