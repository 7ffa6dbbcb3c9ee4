//! One module per subcommand. Conventions shared by all: results as JSON on stdout, progress and
//! messages on stderr, exit 0 when everything succeeded, 1 when some input failed (the others
//! are still processed), 2 when nothing could run (bad arguments, missing models).

mod audit;
mod classify;
mod eval;
mod explain;
mod explainers;
mod queue;
mod segment;
mod serve;
mod train;
mod watch;
mod worker;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Cli, Command};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let device = cxr_core::device::parse_device(&cli.global.device)?;
    let models = models_dir(cli.global.models.as_deref());
    let Some(command) = cli.command else {
        return tui(
            &crate::cli::TuiArgs {
                image_protocol: "auto".into(),
                watch_dir: "watch".into(),
                ..Default::default()
            },
            &models,
            device,
        );
    };
    match command {
        Command::Tui(args) => tui(&args, &models, device),
        Command::Classify { files, identifiers } => {
            classify::run(&files, identifiers, &models, device)
        }
        Command::Worker {
            dir,
            jobs,
            out,
            cache,
            no_cache,
            cache_max_age_hours,
            compat,
        } => {
            let options = worker::Options {
                dir: &dir,
                jobs,
                out: out.as_deref(),
                cache: cache.as_deref(),
                no_cache,
                cache_max_age: cache_max_age_hours
                    .map(|h| std::time::Duration::from_secs_f64(h.max(0.0) * 3600.0)),
                compat: compat.into(),
            };
            worker::run(&options, &models, device)
        }
        Command::Segment { files, out } => segment::run(&files, &out, &models, device),
        Command::Eval {
            manifests,
            per_image,
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
                per_image: per_image.as_deref(),
            };
            eval::run(&manifests, &options, &models, device)
        }
        Command::Train { model } => train::run(model, &models, device),
        Command::Watch(args) => watch::run(&args, &models, device),
        Command::Queue { command } => queue::run(command, &models, device),
        Command::Serve(args) => serve::run(&args, &models, device),
        Command::Explainers { json } => explainers::run(json),
        Command::Audit {
            manifests,
            seed,
            gradcam_per_source,
        } => {
            let options = audit::Options {
                seed,
                gradcam_per_source,
            };
            audit::run(&manifests, &options, &models, device)
        }
        Command::Explain {
            files,
            method,
            params,
            target,
            out,
            render,
            checks,
            identifiers,
        } => {
            let request = explain::Request {
                files: &files,
                methods: &method,
                params: &params,
                target: &target,
                out: &out,
                render: &render,
                checks: &checks,
                identifiers,
            };
            explain::run(&request, &models, device)
        }
    }
}

/// `cxr tui`: logs go to a file (never to the screen while the viewer is open).
fn tui(
    args: &crate::cli::TuiArgs,
    models: &Path,
    device: cxr_core::tch::Device,
) -> Result<ExitCode> {
    let log = args.log.clone().unwrap_or_else(default_log);
    let _guard = crate::logging::to_file(&log)?;
    let path = args.path.clone().unwrap_or_else(|| {
        let queue = args.watch_dir.join("queue");
        if queue.is_dir() {
            queue
        } else {
            PathBuf::from(".")
        }
    });
    let cache = if args.no_cache {
        cxr_core::cache::Cache::disabled()
    } else {
        let dir = args
            .cache_dir
            .clone()
            .unwrap_or_else(|| home_folder("XDG_CACHE_HOME", ".cache").join("cxr"));
        let cache = cxr_core::cache::Cache::new(dir);
        match args.cache_max_age_hours {
            Some(hours) if hours.is_finite() && hours >= 0.0 => {
                cache.with_max_age(std::time::Duration::from_secs_f64(hours * 3600.0))
            }
            Some(hours) => color_eyre::eyre::bail!(
                "--cache-max-age-hours {hours}: expected a number of hours >= 0"
            ),
            None => cache,
        }
    };
    let options = crate::tui::Options {
        path,
        image_protocol: args.image_protocol.clone(),
        watch_dir: args.watch_dir.clone(),
        cache,
    };
    crate::tui::run(&options, models, device)?;
    Ok(ExitCode::SUCCESS)
}

fn default_log() -> PathBuf {
    home_folder("XDG_STATE_HOME", ".local/state").join("cxr/cxr.log")
}

/// `$VAR`, else `$HOME/fallback`, else the temporary folder (XDG base directories).
fn home_folder(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(std::env::temp_dir)
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
fn report_failure(bar: &ProgressBar, file: &Path, error: &cxr_core::CoreError) -> Result<()> {
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
