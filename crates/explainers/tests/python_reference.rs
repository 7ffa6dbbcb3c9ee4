//! Side-by-side check against the Python reference implementations: cxr's Grad-CAM and
//! Integrated Gradients on real radiographs must agree (Pearson >= 0.99) with pytorch-grad-cam's
//! `GradCAM` and captum's `IntegratedGradients` on the `PyTorch` twin of the shipped classifier.
//!
//! The Rust side writes its inputs and results to a safetensors file; `python/compare_explainers.py`
//! recomputes them in Python and compares. The reference packages are optional (install them with
//! `scripts/setup-reference.sh`); without them the test says so and passes.
//!
//! With `CXR_REFERENCE_CASES=PATH` set, the cases file is also copied to PATH, e.g. as the input of
//! `python/bench_reference.py`.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::pipeline::Pipeline;
use cxr_core::tch::{Device, Kind, Tensor};
use cxr_explainers::integrated_gradients::IntegratedGradients;

const SAMPLES: [&str; 3] = [
    "hannover_e1446fe8.png",
    "nih_00001299_000.png",
    "hannover_b343e657.png",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python() -> PathBuf {
    repo().join(".venv/bin/python")
}

fn reference_packages_installed() -> bool {
    Command::new(python())
        .args(["-c", "import pytorch_grad_cam, captum"])
        .current_dir(repo())
        .output()
        .is_ok_and(|out| out.status.success())
}

#[test]
#[ignore = "needs the Python reference explainers (scripts/setup-reference.sh); scripts/test.sh runs it when installed"]
fn grad_cam_and_integrated_gradients_match_the_python_references() {
    cxr_explainers::link();
    assert!(
        reference_packages_installed(),
        "reference packages not installed (scripts/setup-reference.sh)"
    );

    let pipeline = Pipeline::load(&repo().join("models"), Device::Cpu).unwrap();
    let classifier = pipeline.classifier.as_ref();
    let grad_cam = registry::find("grad-cam")
        .unwrap()
        .build(&ExplainerConfig::default())
        .unwrap();
    // The registry's defaults: 32 midpoint-Riemann steps, 16 path points per pass.
    let integrated_gradients = IntegratedGradients::new(32, 16);

    let (mut inputs, mut targets, mut cams, mut igs) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for sample in SAMPLES {
        let analysis = pipeline
            .analyse_file(&repo().join("samples").join(sample))
            .unwrap();
        let target = classifier
            .classes()
            .iter()
            .position(|c| *c == analysis.prediction.label)
            .unwrap();
        let input = analysis.input.to_tensor(Device::Cpu);

        let explain_input = ExplainInput {
            input: &input,
            lung_mask: &analysis.input.mask,
            target,
            progress: None,
        };
        let heatmap = grad_cam
            .explain(classifier, &explain_input)
            .unwrap()
            .heatmap;
        assert_eq!((heatmap.width, heatmap.height), (224, 224), "{sample}");
        assert!(
            heatmap.values.iter().any(|&v| v > 0.0),
            "{sample}: empty Grad-CAM map"
        );
        let (attributions, _, _) = integrated_gradients
            .attributions(classifier, &input, target)
            .unwrap();
        println!("{sample}: target {target} ({})", analysis.prediction.label);

        inputs.push(input);
        targets.push(target as i64);
        cams.push(Tensor::from_slice(&heatmap.values).view([224, 224]));
        igs.push(
            attributions
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .detach(),
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.safetensors");
    let tensors = [
        ("input", Tensor::cat(&inputs, 0).contiguous()),
        ("target", Tensor::from_slice(&targets)),
        ("grad_cam", Tensor::stack(&cams, 0).contiguous()),
        ("ig", Tensor::cat(&igs, 0).contiguous()),
    ];
    Tensor::write_safetensors(&tensors, &cases).unwrap();
    if let Some(keep) = std::env::var_os("CXR_REFERENCE_CASES") {
        std::fs::copy(&cases, &keep).unwrap();
        println!("cases written to {}", Path::new(&keep).display());
    }

    let out = Command::new(python())
        .arg("python/compare_explainers.py")
        .arg("models")
        .arg(&cases)
        .current_dir(repo())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "compare_explainers.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains("\"pearson\"")).count(),
        2 * SAMPLES.len(),
        "{stdout}"
    );
}
