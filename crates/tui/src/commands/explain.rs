//! `cxr explain FILE... --method NAME[,NAME]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr};
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::explain::report::{ImageReport, MethodOutcome, QualityChecks};
use cxr_core::explain::{Method, MethodSpec};
use cxr_core::input::Gate;
use cxr_core::render::{Colormap, OverlayStyle};
use cxr_core::service::{Image, MethodFailure, Rendered, Report, Service, Settings, Target};

use crate::cli::{QualityArgs, RenderArgs};

fn build_methods(names: &[String], params: &[String]) -> Result<Vec<Method>> {
    let specs = MethodSpec::parse(names, params)?;
    Ok(specs
        .iter()
        .map(MethodSpec::build)
        .collect::<cxr_core::Result<_>>()?)
}

pub struct Request<'a> {
    pub files: &'a [PathBuf],
    pub methods: &'a [String],
    pub params: &'a [String],
    pub target: &'a str,
    pub out: &'a Path,
    pub render: &'a RenderArgs,
    pub checks: &'a QualityArgs,
    /// Include DICOM patient and study identifiers in the reports.
    pub identifiers: bool,
    /// Where to write the raw arrays (`--raw`), if asked.
    pub raw: Option<&'a Path>,
}

pub fn run(request: &Request<'_>, models: &Path, compute: Compute) -> Result<ExitCode> {
    let methods = build_methods(request.methods, request.params)?;
    let colormap = Colormap::from(request.render.colormap);
    let style = OverlayStyle {
        colormap,
        opacity: request.render.opacity.clamp(0.0, 1.0),
        legend: true,
    };
    let checks = QualityChecks {
        faithfulness: !request.checks.no_faithfulness,
        sanity: request.checks.sanity,
    };
    let service = Service::load(models, &compute, Cache::disabled())?;
    let settings = Settings {
        target: Target::parse(request.target),
        checks,
        style,
        outline: !request.render.no_outline,
    };
    service
        .check_target(&settings.target)
        .wrap_err("--target")?;
    std::fs::create_dir_all(request.out)
        .wrap_err_with(|| format!("creating {}", request.out.display()))?;
    let bar = super::progress(request.files.len(), "explaining");
    let mut failures = 0;
    for file in request.files {
        let analysed = Image::read(file, Gate::TRUSTED).and_then(|image| {
            let samples = |name: &str, done, total| bar.detail(name, done, total);
            let report = service.report(&image, &methods, &settings, Some(&samples))?;
            Ok((report, image))
        });
        let (report, image) = match analysed {
            Ok(done) => done,
            Err(e) => {
                failures += 1;
                super::report_failure(&bar, file, &e)?;
                bar.inc(1);
                continue;
            }
        };
        let stem = file
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy());
        let raw = match request.raw {
            Some(dir) => {
                match write_raw(&service, &image, &methods, &settings, &report, dir, &stem) {
                    Ok(index) => Some(index.display().to_string()),
                    Err(e) => {
                        failures += 1;
                        bar.suspend(|| eprintln!("cxr: {}: raw outputs: {e:#}", file.display()));
                        None
                    }
                }
            }
            None => None,
        };
        match write_dicom(&service, &image, file, &report, request.out, &stem) {
            Ok(written) if !written.is_empty() => bar.suspend(|| {
                let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
                super::note(&format!("DICOM results: {}", names.join(", ")));
            }),
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                bar.suspend(|| eprintln!("cxr: {}: DICOM results: {e}", file.display()));
            }
        }
        let explanations = write_overlays(report.methods, request.out, &stem, |failure| {
            failures += 1;
            bar.suspend(|| {
                eprintln!(
                    "cxr: {}: {}: {}",
                    file.display(),
                    failure.method,
                    failure.error
                );
            });
        });
        let mut classification = report.classification.report;
        if request.identifiers {
            classification.identifiers = image
                .analysed()
                .and_then(|analysis| analysis.xray.identifiers.clone());
        }
        let image_report = ImageReport {
            classification,
            explanations,
            raw,
        };
        let json = serde_json::to_string_pretty(&image_report)?;
        cxr_core::fsutil::write_atomic(&request.out.join(format!("{stem}.json")), json.as_bytes())?;
        bar.suspend(|| super::print_json(&image_report))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(super::exit_code(failures))
}

/// A DICOM input's results as DICOM too: `OUT/STEM.METHOD.sc.dcm` per overlay and
/// `OUT/STEM.sr.dcm`; nothing for another input.
fn write_dicom(
    service: &Service,
    image: &Image,
    file: &Path,
    report: &Report,
    out: &Path,
    stem: &str,
) -> cxr_core::Result<Vec<PathBuf>> {
    let results = cxr_core::dicom_out::for_image(
        image.bytes(),
        file,
        &report.classification.report,
        &report.methods,
        service.fingerprint(),
    )?;
    match results {
        Some(results) => cxr_core::dicom_out::write(&results, out, &format!("{stem}.")),
        None => Ok(Vec::new()),
    }
}

/// Writes the raw arrays of every explained method of `report` (and the lung mask) into `dir`
/// as `STEM.*.npy` (see [`cxr_core::explain::raw`]); returns the index's path.
fn write_raw(
    service: &Service,
    image: &Image,
    methods: &[Method],
    settings: &Settings,
    report: &cxr_core::service::Report,
    dir: &Path,
    stem: &str,
) -> Result<PathBuf> {
    let mut explanations = Vec::new();
    for (method, outcome) in methods.iter().zip(&report.methods) {
        if let Ok(rendered) = outcome {
            let explanation = service.arrays(image, method, settings, rendered)?;
            explanations.push((rendered.report.clone(), explanation));
        }
    }
    let analysis = service.analysis(image)?;
    let listed: Vec<_> = explanations
        .iter()
        .map(|(report, explanation)| (report.method.as_str(), report.target.as_str(), explanation))
        .collect();
    cxr_core::explain::raw::write(dir, stem, image.sha256(), analysis, &listed)?;
    Ok(dir.join(format!("{stem}.raw.json")))
}

/// Writes each explained method's overlay to `OUT/STEM.METHOD.png`; a failed method (or a
/// failed write) is reported to `on_failure` and recorded as failed in the outcomes.
fn write_overlays(
    methods: Vec<std::result::Result<Rendered, MethodFailure>>,
    out: &Path,
    stem: &str,
    mut on_failure: impl FnMut(&MethodFailure),
) -> Vec<MethodOutcome> {
    methods
        .into_iter()
        .map(|outcome| {
            let written = outcome.and_then(|rendered| {
                let overlay = out.join(format!("{stem}.{}.png", rendered.report.method));
                cxr_core::fsutil::write_atomic(&overlay, &rendered.overlay_png).map_err(|e| {
                    MethodFailure {
                        method: rendered.report.method.clone(),
                        error: e.to_string(),
                    }
                })?;
                Ok(MethodOutcome::Done {
                    overlay: overlay.display().to_string(),
                    report: rendered.report,
                })
            });
            written.unwrap_or_else(|failure| {
                on_failure(&failure);
                MethodOutcome::Failed {
                    method: failure.method,
                    error: failure.error,
                }
            })
        })
        .collect()
}
