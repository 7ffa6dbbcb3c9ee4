//! One module per subcommand. Conventions shared by all: results as JSON on stdout, progress and
//! messages on stderr, exit 0 when everything succeeded, 1 when some input failed (the others
//! are still processed), 2 when nothing could run (bad arguments, missing models).

mod audit;
mod batch;
mod classify;
mod eval;
mod explain;
mod explainers;
mod export;
mod queue;
mod segment;
mod serve;
mod train;
mod watch;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use color_eyre::eyre::{Result, WrapErr, bail};

use cxr_core::compute::Compute;
use cxr_core::pipeline::CLASSIFIER_NAME;

use crate::cli::{Cli, Command, Global, ModelArgs};

pub use progress::{Progress, note, progress, quiet, set_output};

mod progress;

/// Resolves `--device`/`--models`/`--backend`/`--threads` of a command (the old spelling before
/// the command still works) into the models folder, which must exist, and how they run.
struct Models {
    dir: PathBuf,
    /// For one worker; commands with `--jobs` share the cores out with
    /// [`Compute::for_workers`].
    compute: Compute,
}

fn models(global: &Global, args: &ModelArgs) -> Result<Models> {
    let spec = args
        .device
        .as_ref()
        .or(global.device.as_ref())
        .map_or("auto", |d| d.0.as_str());
    let device = cxr_core::device::parse_device(spec)?;
    let dir = models_dir(args.models.as_deref().or(global.models.as_deref()));
    if !dir.is_dir() {
        bail!(
            "cannot load models from {}: no such folder ({MODELS_HINT})",
            dir.display()
        );
    }
    // The cores other work leaves idle, measured once for the command: its models share them.
    let compute = Compute::on(device)
        .with_idle_cores(cxr_core::host::idle_cores())
        .with_backend(args.backend.into())
        .with_precision(args.precision.into())
        .with_threads(args.threads.map(usize::from));
    Ok(Models { dir, compute })
}

/// What to do about models that cannot be loaded.
pub const MODELS_HINT: &str =
    "hint: run from the project folder, pass --models DIR or set CXR_MODELS";

#[allow(clippy::too_many_lines)] // one arm per command, each only unpacking its arguments
pub fn run(cli: Cli) -> Result<ExitCode> {
    let global = &cli.global;
    set_output(global.progress, global.quiet);
    let command = cli.command.unwrap_or_else(|| {
        // `cxr` alone: the viewer, with the old top-level --device/--models if given.
        Command::Tui(crate::cli::TuiArgs::default())
    });
    match command {
        Command::Tui(args) => {
            let m = models(global, &args.model)?;
            tui(&args, &m.dir, m.compute)
        }
        Command::Classify {
            files,
            identifiers,
            model,
        } => {
            let m = models(global, &model)?;
            classify::run(&files, identifiers, &m.dir, m.compute)
        }
        Command::Batch {
            manifest,
            out,
            shard,
            shards,
            explain,
            jobs,
            model,
        } => {
            let m = models(global, &model)?;
            let options = batch::Options {
                manifest: &manifest,
                out: &out,
                shard: shard.as_deref(),
                shards,
                explain: &explain,
                jobs,
            };
            batch::run(&options, &m.dir, m.compute)
        }
        Command::Worker {
            dir,
            model,
            jobs,
            out,
            cache,
            compat,
            subfolders,
        } => {
            let m = models(global, &model)?;
            let options = worker::Options {
                subfolders,
                dir: &dir,
                jobs,
                out: out.as_deref(),
                cache: cache.cache(),
                compat: compat.into(),
            };
            worker::run(&options, &m.dir, m.compute)
        }
        Command::Segment {
            files,
            model,
            out,
            inputs_out,
        } => {
            let m = models(global, &model)?;
            segment::run(&files, &out, inputs_out.as_deref(), &m.dir, m.compute)
        }
        Command::Eval {
            manifests,
            model,
            per_image,
            plots,
            split,
            seed,
            explainers,
            explain_limit,
            sanity,
            leave_one_source_out,
            against,
        } => {
            let m = models(global, &model)?;
            let options = eval::Options {
                split,
                seed,
                explainers: &explainers,
                explain_limit,
                sanity,
                per_image: per_image.as_deref(),
                plots: plots.as_deref(),
                folds: leave_one_source_out.as_deref(),
                against: against.as_deref(),
            };
            eval::run(&manifests, &options, &m.dir, m.compute)
        }
        Command::Train { model } => {
            let m = models(global, train::model_args(&model))?;
            train::run(model, &m.dir, m.compute)
        }
        Command::Watch(args) => {
            let m = models(global, &args.model)?;
            watch::run(&args, &m.dir, m.compute)
        }
        Command::Queue { command } => queue::run(command, global),
        Command::Serve(args) => {
            let m = models(global, &args.model)?;
            serve::run(&args, &m.dir, m.compute)
        }
        Command::Explainers { json } => explainers::run(json),
        Command::Audit {
            manifests,
            model,
            seed,
            gradcam_per_source,
        } => {
            let m = models(global, &model)?;
            let options = audit::Options {
                seed,
                gradcam_per_source,
            };
            audit::run(&manifests, &options, &m.dir, m.compute)
        }
        Command::Explain {
            files,
            model,
            method,
            params,
            target,
            out,
            render,
            checks,
            identifiers,
            raw,
        } => {
            let m = models(global, &model)?;
            let request = explain::Request {
                raw: raw.as_deref(),
                files: &files,
                methods: &method,
                params: &params,
                target: &target,
                out: &out,
                render: &render,
                checks: &checks,
                identifiers,
            };
            explain::run(&request, &m.dir, m.compute)
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command, "cxr", &mut out);
            write_stdout(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out } => man(out.as_deref()),
    }
}

/// `cxr man [--out DIR]`: the manual page on stdout, or one page per command into DIR.
fn man(out: Option<&Path>) -> Result<ExitCode> {
    let command = Cli::command();
    let Some(dir) = out else {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).render(&mut page)?;
        write_stdout(&page)?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(dir).wrap_err_with(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(command, dir)
        .wrap_err_with(|| format!("writing manual pages into {}", dir.display()))?;
    note(&format!("wrote the manual pages into {}", dir.display()));
    Ok(ExitCode::SUCCESS)
}

/// Bytes to stdout; a reader that went away ends quietly, like [`print_line`].
fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_STATUS)
        }
        other => Ok(other?),
    }
}

/// `cxr tui`: logs go to a file (never to the screen while the viewer is open).
fn tui(args: &crate::cli::TuiArgs, models: &Path, compute: Compute) -> Result<ExitCode> {
    let log = args.log.clone().unwrap_or_else(default_log);
    let _guard = crate::logging::to_file(&log)?;
    let path = args.path.clone().unwrap_or_else(|| {
        let queue = args.watch.watch_dir.join("queue");
        if queue.is_dir() {
            queue
        } else {
            PathBuf::from(".")
        }
    });
    // Checked before the screen is taken: a name the queue refuses fails here, not per label.
    let reviewer = cxr_core::queue::check_reviewer(
        &args
            .reviewer
            .clone()
            .unwrap_or_else(cxr_core::queue::local_reviewer),
    )?;
    let options = crate::tui::Options {
        path,
        image_protocol: args.image_protocol.name().to_owned(),
        watch_dir: args.watch.watch_dir.clone(),
        cache: args.cache.cache(),
        reviewer,
    };
    crate::tui::run(&options, models, compute)?;
    Ok(ExitCode::SUCCESS)
}

fn default_log() -> PathBuf {
    cxr_core::fsutil::user_folder(cxr_core::fsutil::UserFolder::State).join("cxr.log")
}

/// `--models` (or `$CXR_MODELS`, through clap), else `./models` when it holds a classifier,
/// else the `models/` folder of the project the running binary sits in (`target/release/cxr`
/// -> `models/`), found from the executable at run time, not from where it was compiled.
fn models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    let local = PathBuf::from("models");
    if local.join("classifier.json").exists() {
        return local;
    }
    beside_executable(|dir| dir.join("models/classifier.json").exists())
        .map_or(local, |project| project.join("models"))
}

/// The nearest folder above the running executable for which `found` holds.
fn beside_executable(found: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
    exe.ancestors()
        .skip(1)
        .find(|d| found(d))
        .map(Path::to_path_buf)
}

/// The data folder of `train`'s default manifests: `$CXR_DATA`, else `../shared/data` or
/// `./data` from the current folder, whichever exists.
fn data_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CXR_DATA") {
        return Ok(dir.into());
    }
    ["../shared/data", "data"]
        .iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .ok_or_else(|| {
            color_eyre::eyre::eyre!(
                "no data folder for the default manifests: neither ../shared/data nor ./data \
                 exists here (hint: set CXR_DATA or pass --manifest FILE)"
            )
        })
}

/// Prints one JSON value as a line on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    print_line(&serde_json::to_string(value)?)
}

/// Status of a command whose reader went away (`cxr classify ... | head -1`): 128 + SIGPIPE, what
/// shells report for a program ended by a broken pipe.
pub const BROKEN_PIPE_STATUS: i32 = 141;

/// Writes one line to stdout. A reader that went away ends the command quietly with
/// [`BROKEN_PIPE_STATUS`]: there is nobody left to tell, and no reason to go on.
pub fn print_line(line: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            std::process::exit(BROKEN_PIPE_STATUS)
        }
        other => Ok(other?),
    }
}

/// True for the panic `println!`/`eprintln!` raise on a closed pipe: the safety net in `main`
/// turns it into a quiet exit instead of a backtrace and status 101.
pub fn is_broken_pipe_panic(message: &str) -> bool {
    message.starts_with("failed printing to std")
        && (message.contains("Broken pipe") || message.contains("os error 32"))
}

/// The JSON line printed for an input that failed.
#[derive(serde::Serialize)]
struct Failure<'a> {
    file: &'a Path,
    error: String,
}

/// Reports a per-file failure on stdout (for scripts) and stderr (for people).
fn report_failure(bar: &Progress, file: &Path, error: &cxr_core::CoreError) -> Result<()> {
    // For people, best effort: a closed stderr must not lose the line for scripts.
    bar.suspend(|| {
        use std::io::Write;
        let _ = writeln!(std::io::stderr().lock(), "cxr: {error}");
    });
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

/// The leave-one-source-out models in `dir`: each `SOURCE/` holding a classifier, by source.
pub fn fold_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut folds: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .wrap_err_with(|| format!("reading {}", dir.display()))?
        .filter_map(std::result::Result::ok)
        .filter(|e| e.path().join(format!("{CLASSIFIER_NAME}.json")).is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    folds.sort();
    if folds.is_empty() {
        color_eyre::eyre::bail!(
            "{} holds no leave-one-source-out model (SOURCE/{CLASSIFIER_NAME}.json); \
             cxr train classifier --leave-one-source-out writes them",
            dir.display()
        );
    }
    Ok(folds)
}
