//! `cxr`: explainable chest X-ray review. This file only parses the command line and dispatches;
//! each subcommand lives in `commands/`.

mod cli;
mod commands;
mod format;
mod logging;
mod plots;
mod tui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Keep the explainer crate linked: its explainers register themselves at link time.
    cxr_explainers::link();
    // The process's allocator keeps what libtorch frees for its next forward pass (a quarter
    // of the U-Net's time otherwise): a whole-process setting, so the program makes it, once.
    cxr_core::host::reuse_freed_memory();
    quiet_on_broken_pipe();
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cxr: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes on one line, each cause once: `CoreError`s already name their
/// source in their own message, so eyre's `{:#}` would print the OS error twice. A model file
/// that is missing gets a hint on where models are looked for.
fn one_line(error: &color_eyre::eyre::Report) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    // Where models are looked for helps when one is missing, not when one is damaged.
    let model_missing = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<cxr_core::CoreError>(),
            Some(cxr_core::CoreError::ModelLoad { .. })
        )
    }) && error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    });
    if model_missing && !line.contains("hint:") {
        line = format!("{line} ({})", commands::MODELS_HINT);
    }
    line
}

/// Rust ignores SIGPIPE, so a `println!` or `eprintln!` into a closed pipe panics (status 101
/// and a backtrace). Output goes through `commands::print_line`, which ends quietly; this hook
/// is the safety net for any other print: the same quiet exit, with the status a broken pipe
/// gives C programs. Other panics keep the default report.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if commands::is_broken_pipe_panic(message) {
            std::process::exit(commands::BROKEN_PIPE_STATUS);
        }
        default(info);
    }));
}
