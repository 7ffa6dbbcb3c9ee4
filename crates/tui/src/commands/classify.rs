//! `cxr classify FILE... [--identifiers]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::Result;
use cxr_core::compute::Compute;
use cxr_core::pipeline::Pipeline;

/// `identifiers`: add DICOM patient and study identifiers to the JSON.
pub fn run(
    files: &[PathBuf],
    identifiers: bool,
    models: &Path,
    compute: Compute,
) -> Result<ExitCode> {
    let pipeline = Pipeline::load_with(models, &compute)?;
    let bar = super::progress(files.len(), "classifying");
    let mut failures = 0;
    for file in files {
        match pipeline.analyze_file(file) {
            Ok(analysis) => {
                bar.suspend(|| super::print_json(&analysis.report_with_identifiers(identifiers)))?;
            }
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
