//! `cxr audit MANIFEST...`: does the classifier see the disease or the hospital? Linear probes
//! on its frozen pooled features (source, class, and source within each class, trained on the
//! training and validation patients, measured on the test patients), and the share of Grad-CAM
//! mass inside the lungs per source.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::{Result, bail};
use cxr_core::audit::{ProbeResult, probe};
use cxr_core::cache::Cache;
use cxr_core::compute::Compute;
use cxr_core::data::{LabelledImage, Manifest, Split, SplitShares};
use cxr_core::explain::MethodSpec;
use cxr_core::explain::report::QualityChecks;
use cxr_core::input::Gate;
use cxr_core::models::class_index;
use cxr_core::service::{Image, Service, Settings, Target};
use serde::Serialize;

pub struct Options {
    pub seed: u64,
    /// Grad-CAM on at most this many test images per source.
    pub gradcam_per_source: usize,
}

#[derive(Serialize)]
struct Audit<'a> {
    manifests: &'a [PathBuf],
    images: usize,
    refused: usize,
    failed: usize,
    probes: Vec<ProbeResult>,
    /// Mean share of Grad-CAM mass (true class) inside the lungs, per source, test patients.
    gradcam_lung_share: BTreeMap<String, f64>,
    gradcam_lung_share_mean: f64,
    gradcam_images: usize,
}

pub fn run(
    manifests: &[PathBuf],
    options: &Options,
    models: &Path,
    compute: Compute,
) -> Result<ExitCode> {
    let rows = Manifest::read_all(manifests)?.labels;
    if rows.is_empty() {
        bail!("no labelled rows in {manifests:?} (expected path,label,patient,source columns)");
    }
    let service = Service::load(models, &compute, Cache::disabled())?;
    let classes = service.pipeline().classifier.classes().to_vec();
    let gradcam = MethodSpec {
        name: "grad-cam".into(),
        params: String::new(),
    }
    .build()?;
    let checks = QualityChecks {
        faithfulness: false,
        sanity: false,
    };
    let bar = super::progress(rows.len(), "auditing");
    let (mut features, mut kept): (Vec<f32>, Vec<&LabelledImage>) = (Vec::new(), Vec::new());
    let (mut refused, mut failed, mut dim) = (0, 0, 0);
    let mut shares: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for row in &rows {
        let analysed = Image::read(&row.path, Gate::TRUSTED).and_then(|image| {
            service.analysis(&image)?;
            Ok(image)
        });
        match analysed {
            Ok(image) => {
                let analysis = service.analysis(&image)?; // made above: no work again
                let Some(f) = &analysis.features else {
                    bail!("this classifier does not expose its features; the audit needs them");
                };
                dim = f.len();
                features.extend_from_slice(f);
                kept.push(row);
                let test =
                    Split::of(&row.patient, options.seed, SplitShares::CLASSIFIER) == Split::Test;
                let done = shares.get(&row.source).map_or(0, Vec::len);
                if test && done < options.gradcam_per_source {
                    // The image's own class; the positive one for labels of neither.
                    let target = classes[class_index(&classes, &row.label)].clone();
                    let settings = Settings {
                        target: Target::Class(target),
                        checks,
                        ..Settings::default()
                    };
                    match service.explain_report(&image, &gradcam, &settings) {
                        Ok(r) => shares
                            .entry(row.source.clone())
                            .or_default()
                            .push(r.quality.lung_mass_share.unwrap_or(0.0)),
                        Err(e) => {
                            bar.suspend(|| eprintln!("cxr: {}: grad-cam: {e}", row.path.display()));
                        }
                    }
                }
            }
            Err(cxr_core::CoreError::NotARadiograph { .. }) => refused += 1,
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("cxr: {e}"));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();

    let probes = probes(&kept, &features, dim, &classes, options.seed)?;
    let gradcam_images: usize = shares.values().map(Vec::len).sum();
    let gradcam_lung_share: BTreeMap<String, f64> = shares
        .iter()
        .map(|(s, v)| (s.clone(), v.iter().sum::<f64>() / v.len().max(1) as f64))
        .collect();
    let gradcam_lung_share_mean =
        shares.values().flatten().sum::<f64>() / gradcam_images.max(1) as f64;
    eprintln!(
        "{}",
        table(&probes, &gradcam_lung_share, gradcam_lung_share_mean)
    );
    super::print_json(&Audit {
        manifests,
        images: kept.len(),
        refused,
        failed,
        probes,
        gradcam_lung_share,
        gradcam_lung_share_mean,
        gradcam_images,
    })?;
    Ok(super::exit_code(failed))
}

/// The linear probes over the analysed rows `kept` and their pooled `features`: source, class,
/// and source among each class. Probes train on the training and validation patients and are
/// measured on the test patients.
fn probes(
    kept: &[&LabelledImage],
    features: &[f32],
    dim: usize,
    classes: &[String],
    seed: u64,
) -> Result<Vec<ProbeResult>> {
    let is_test =
        |r: &LabelledImage| Split::of(&r.patient, seed, SplitShares::CLASSIFIER) == Split::Test;
    let mut probes = Vec::new();
    // One probe over the rows `subset` (indices into `kept`) predicting `value` of each row.
    let mut run_probe = |target: String,
                         subset: Vec<usize>,
                         value: &dyn Fn(&LabelledImage) -> String|
     -> Result<()> {
        let mut values: Vec<String> = subset.iter().map(|&i| value(kept[i])).collect();
        values.sort();
        values.dedup();
        if values.len() < 2 {
            return Ok(());
        }
        let labels: Vec<usize> = (0..kept.len())
            .map(|i| {
                values
                    .iter()
                    .position(|v| *v == value(kept[i]))
                    .unwrap_or(0)
            })
            .collect();
        let (test, train): (Vec<usize>, Vec<usize>) =
            subset.iter().partition(|&&i| is_test(kept[i]));
        if train.is_empty() || test.is_empty() {
            return Ok(());
        }
        probes.push(probe(
            &target,
            features,
            dim,
            &labels,
            &values,
            (&train, &test),
            seed,
        )?);
        Ok(())
    };
    let all: Vec<usize> = (0..kept.len()).collect();
    run_probe("source".into(), all.clone(), &|r| r.source.clone())?;
    let in_classes: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| classes.contains(&kept[i].label))
        .collect();
    run_probe("class".into(), in_classes, &|r| r.label.clone())?;
    for class in classes {
        let of_class: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| &kept[i].label == class)
            .collect();
        run_probe(format!("source among {class}"), of_class, &|r| {
            r.source.clone()
        })?;
    }

    Ok(probes)
}

fn table(probes: &[ProbeResult], shares: &BTreeMap<String, f64>, mean: f64) -> String {
    let mut out = String::from(
        "| linear probe on frozen features | values | test images | accuracy | balanced accuracy | majority baseline |\n|---|---|---|---|---|---|\n",
    );
    for p in probes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            p.target,
            p.classes.join(", "),
            p.test_images,
            p.accuracy,
            p.balanced_accuracy,
            p.majority_baseline
        );
    }
    let _ = writeln!(
        out,
        "\n| source | Grad-CAM mass inside the lungs |\n|---|---|"
    );
    for (source, share) in shares {
        let _ = writeln!(out, "| {source} | {share:.3} |");
    }
    let _ = write!(out, "| **mean over images** | {mean:.3} |");
    out
}
