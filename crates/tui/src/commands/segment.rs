//! `cxr segment FILE... --out DIR`

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use color_eyre::eyre::{Result, WrapErr};
use cxr_core::compute::Compute;
use cxr_core::models::{ModelFiles, Segmenter};
use cxr_core::pipeline::{CLASSIFIER_NAME, Pipeline};
use cxr_core::preprocess::{self, InputStyle};
use cxr_core::xray::Xray;
use cxr_core::{CoreError, mask};

#[derive(serde::Serialize)]
struct Written<'a> {
    file: &'a Path,
    mask: PathBuf,
    lung_fraction: f32,
    segment_ms: f64,
}

pub fn run(
    files: &[PathBuf],
    out: &Path,
    inputs_out: Option<&Path>,
    models: &Path,
    compute: Compute,
) -> Result<ExitCode> {
    let segmenter = Pipeline::load_segmenter(models, &compute)?;
    std::fs::create_dir_all(out).wrap_err_with(|| format!("creating {}", out.display()))?;
    let inputs = match inputs_out {
        Some(dir) => {
            std::fs::create_dir_all(dir).wrap_err_with(|| format!("creating {}", dir.display()))?;
            let classifier = ModelFiles::new(models, CLASSIFIER_NAME);
            let style = classifier.read_meta::<serde_json::Value>()?.input;
            Some((dir, style))
        }
        None => None,
    };
    let bar = super::progress(files.len(), "segmenting");
    let mut failures = 0;
    for file in files {
        match segment_one(segmenter.as_ref(), file, out, inputs) {
            Ok(written) => bar.suspend(|| super::print_json(&written))?,
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

fn segment_one<'a>(
    segmenter: &dyn Segmenter,
    file: &'a Path,
    out: &Path,
    inputs: Option<(&Path, InputStyle)>,
) -> cxr_core::Result<Written<'a>> {
    let xray = Xray::open(file)?;
    let start = Instant::now();
    let lungs = segmenter.segment(&xray.gray)?;
    let segment_ms = start.elapsed().as_secs_f64() * 1000.0;
    let stem = file
        .file_stem()
        .map_or_else(|| "image".into(), |s| s.to_string_lossy());
    if let Some((dir, style)) = inputs {
        let side = segmenter.input_side();
        let unet = preprocess::segmenter_input(&xray.gray, side);
        let classifier = preprocess::classifier_input(&xray.gray, &lungs, style).pixels;
        let square = preprocess::CLASSIFIER_SIDE;
        for (name, values, side) in [
            ("segmenter", unet, side),
            ("classifier", classifier, square),
        ] {
            let npy = cxr_core::fsutil::npy_f32(&values, [side as usize, side as usize]);
            cxr_core::fsutil::write_atomic(&dir.join(format!("{stem}.{name}.npy")), &npy)?;
        }
    }
    let path = out.join(format!("{stem}.mask.png"));
    let mut png = Vec::new();
    lungs
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| CoreError::internal("encoding the mask", e))?;
    cxr_core::fsutil::write_atomic(&path, &png)?;
    Ok(Written {
        file,
        mask: path,
        lung_fraction: mask::coverage(&lungs),
        segment_ms,
    })
}
