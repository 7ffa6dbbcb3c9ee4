//! `cxr`: explainable chest X-ray review. This file only parses the command line and dispatches;
//! each subcommand lives in `commands/`.

mod cli;
mod commands;
mod labels;
mod logging;
mod tui;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Keep the explainer crate linked: its explainers register themselves at link time.
    cxr_explainers::link();
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cxr: {e:#}");
            ExitCode::from(2)
        }
    }
}
