//! One module per subcommand. Conventions shared by all: results as JSON on stdout, progress and
//! messages on stderr, exit 0 when everything succeeded, 1 when some input failed (the others
//! are still processed), 2 when nothing could run (bad arguments, missing models).

mod classify;
mod eval;
mod explain;
mod explainers;
mod segment;
mod train;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let device = cxr_core::device::parse_device(&cli.global.device)?;
    let models = models_dir(cli.global.models.as_deref());
    match cli.command {
        Command::Classify { files } => classify::run(&files, &models, device),
        Command::Segment { files, out } => segment::run(&files, &out, &models, device),
        Command::Eval {
            manifest,
            split,
            seed,
            explainers,
            explain_limit,
            sanity,
        } => {
            let options = eval::Options {
                split,
                seed,
                explainers: &explainers,
                explain_limit,
                sanity,
            };
            eval::run(&manifest, &options, &models, device)
        }
        Command::Train { model } => train::run(model, &models, device),
        Command::Explainers { json } => explainers::run(json),
        Command::Explain {
            files,
            method,
            params,
            target,
            out,
            render,
            checks,
        } => {
            let request = explain::Request {
                files: &files,
                methods: &method,
                params: &params,
                target: &target,
                out: &out,
                render: &render,
                checks: &checks,
            };
            explain::run(&request, &models, device)
        }
    }
}

/// The repository this binary was built from (for the shipped models and the shared data).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `--models`, else `$CXR_MODELS`, else `./models` when it holds a classifier, else the
/// repository's `models/`.
fn models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    if let Some(dir) = std::env::var_os("CXR_MODELS") {
        return dir.into();
    }
    let local = PathBuf::from("models");
    if local.join("classifier.json").exists() {
        return local;
    }
    repository().join("models")
}

/// `$CXR_DATA`, else `../shared/data` beside the working directory, else beside the repository.
fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CXR_DATA") {
        return dir.into();
    }
    let local = PathBuf::from("../shared/data");
    if local.exists() {
        local
    } else {
        repository().join("../shared/data")
    }
}

/// A progress bar on stderr; indicatif hides it when stderr is not a terminal.
fn progress(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed} < {eta}]")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    if len < 2 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// Prints one JSON value as a line on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// The JSON line printed for an input that failed.
#[derive(serde::Serialize)]
struct Failure<'a> {
    file: &'a Path,
    error: String,
}

/// Reports a per-file failure on stdout (for scripts) and stderr (for people).
fn report_failure(bar: &ProgressBar, file: &Path, error: &cxr_core::CoreError) -> Result<()> {
    bar.suspend(|| eprintln!("cxr: {error}"));
    print_json(&Failure {
        file,
        error: error.to_string(),
    })
}

fn exit_code(failures: usize) -> ExitCode {
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
