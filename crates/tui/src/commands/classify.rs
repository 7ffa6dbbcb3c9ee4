//! `cxr classify FILE... [--identifiers]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::input::Gate;
use cxr_core::service::{Image, Service};

/// `identifiers`: add DICOM patient and study identifiers to the JSON.
pub fn run(
    files: &[PathBuf],
    identifiers: bool,
    models: &Path,
    compute: Compute,
) -> Result<ExitCode> {
    // No cache: a command line run is asked for fresh answers (and timings).
    let service = Service::load(models, &compute, Cache::disabled())?;
    let bar = super::progress(files.len(), "classifying");
    let mut failures = 0;
    for file in files {
        let classified = Image::read(file, Gate::TRUSTED)
            .and_then(|image| service.classify_with_identifiers(&image, identifiers));
        match classified {
            Ok(classified) => bar.suspend(|| super::print_json(&classified.report))?,
            Err(e) => {
                failures += 1;
                super::report_failure(&bar, file, &e)?;
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(super::exit_code(failures))
}
