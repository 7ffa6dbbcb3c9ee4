//! `cxr serve`: the HTTP API and web page of `cxr-server`, with this command line's models,
//! cache and watch folder. Logs go to stderr (`RUST_LOG`, default `info`).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use color_eyre::eyre::{Result, eyre};
use cxr_core::compute::Compute;
use tracing_subscriber::EnvFilter;

use crate::cli::ServeArgs;

pub fn run(args: &ServeArgs, models: &Path, compute: Compute) -> Result<ExitCode> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .try_init();
    let cache = args.cache.cache();
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        cxr_core::fsutil::user_folder(cxr_core::fsutil::UserFolder::Data).join("serve")
    });
    let config = cxr_server::Config {
        addr: args.addr,
        models: models.to_path_buf(),
        compute,
        jobs: args.jobs.max(1),
        pending: args.backlog.max(1),
        cache,
        data_dir,
        watch_dir: args.watch.watch_dir.clone(),
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        max_body: args.max_upload_mib.max(1) << 20,
        limits: cxr_server::Limits {
            body_budget: args.body_budget_mib.max(1) << 20,
            uploads_max: args.uploads_max_mib.max(1) << 20,
            ..cxr_server::Limits::default()
        },
    };
    let jobs = config.jobs;
    cxr_server::run(
        config,
        |addr| {
            // The line scripts and tests wait for (port 0 picks the port).
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "cxr serve: listening on http://{addr}");
            let _ = out.flush();
            eprintln!("cxr serve: loading the models into {jobs} worker(s)...");
        },
        |workers| eprintln!("cxr serve: ready ({workers} model workers)"),
    )
    .map_err(|e| eyre!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}
