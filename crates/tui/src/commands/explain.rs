//! `cxr explain FILE... --method NAME[,NAME]`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr, bail};
use cxr_core::explain::report::{self, ImageReport, MethodOutcome, QualityChecks};
use cxr_core::explain::{Method, MethodSpec};
use cxr_core::pipeline::Pipeline;
use cxr_core::render::{self, Colormap, OverlayStyle};
use cxr_core::tch::Device;

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
}

pub fn run(request: &Request<'_>, models: &Path, device: Device) -> Result<ExitCode> {
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
    let pipeline = Pipeline::load(models, device)?;
    let classes = pipeline.classifier.classes().to_vec();
    if request.target != "predicted" && !classes.iter().any(|c| c == request.target) {
        bail!(
            "--target {}: expected predicted or one of {}",
            request.target,
            classes.join(", ")
        );
    }
    std::fs::create_dir_all(request.out)
        .wrap_err_with(|| format!("creating {}", request.out.display()))?;
    let bar = super::progress(request.files.len(), "explaining");
    let mut failures = 0;
    for file in request.files {
        let analysis = match pipeline.analyze_file(file) {
            Ok(a) => a,
            Err(e) => {
                failures += 1;
                super::report_failure(&bar, file, &e)?;
                bar.inc(1);
                continue;
            }
        };
        let target_name = if request.target == "predicted" {
            &analysis.prediction.label
        } else {
            request.target
        };
        let target = cxr_core::models::class_index(&classes, target_name);
        let stem = file
            .file_stem()
            .map_or_else(|| "image".into(), |s| s.to_string_lossy());
        let mut explanations = Vec::new();
        for method in &methods {
            let name = method.entry.name;
            let samples = |done, total| bar.detail(name, done, total);
            let outcome = report::explain_reporting(
                pipeline.classifier.as_ref(),
                &analysis,
                method.entry,
                method.explainer.as_ref(),
                &method.params,
                target,
                checks,
                Some(&samples),
            )
            .and_then(|(explanation, report)| {
                let picture = report::overlay(
                    &analysis,
                    &explanation,
                    &report,
                    &style,
                    !request.render.no_outline,
                );
                let png = render::encode_png(&picture)
                    .map_err(|e| cxr_core::CoreError::Invalid(e.to_string()))?;
                let overlay = request
                    .out
                    .join(format!("{stem}.{}.png", method.entry.name));
                cxr_core::fsutil::write_atomic(&overlay, &png)?;
                Ok(MethodOutcome::Done {
                    overlay: overlay.display().to_string(),
                    report,
                })
            });
            explanations.push(outcome.unwrap_or_else(|e| {
                failures += 1;
                bar.suspend(|| eprintln!("cxr: {}: {}: {e}", file.display(), method.entry.name));
                MethodOutcome::Failed {
                    method: method.entry.name.to_owned(),
                    error: e.to_string(),
                }
            }));
        }
        let image_report = ImageReport {
            classification: analysis.report_with_identifiers(request.identifiers),
            explanations,
        };
        let json = serde_json::to_string_pretty(&image_report)?;
        cxr_core::fsutil::write_atomic(&request.out.join(format!("{stem}.json")), json.as_bytes())?;
        bar.suspend(|| super::print_json(&image_report))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(super::exit_code(failures))
}
