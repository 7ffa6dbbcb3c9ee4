//! cxr's two backends (libtorch, ONNX Runtime) against PyTorch eager and ONNX Runtime in Python,
//! on the same models and inputs, in one command:
//!
//!     cargo bench -p cxr-benches --bench backends
//!
//! Criterion times all four contenders the same way; the Python ones through `iter_custom`, by
//! asking `python/bench_backends.py` (a child process, idle while Rust runs) to time N
//! iterations. Measures: the classifier's forward pass, the U-Net's, one radiograph end to end
//! (decode, segment, preprocess, classify) and LIME with 1000 samples (for Python: its 1000
//! forward passes in batches of 100, the model's share). At the end it prints the medians, the
//! ratios the project's speed targets are stated in, and the largest differences between cxr's
//! two backends on this radiograph. Threads: `CXR_THREADS`, else all cores, for every contender.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use cxr_benches::{repo, sample};
use cxr_core::compute::{self, Backend, Compute};
use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::models::onnx::OnnxSegmenter;
use cxr_core::models::{ModelFiles, UNetSegmenter};
use cxr_core::pipeline::{Pipeline, SEGMENTER_NAME};
use cxr_core::preprocess::{self, SEGMENTER_SIDE, classifier_input};
use cxr_core::tch::{self, Device, Tensor};
use cxr_core::xray::Xray;

const IMAGE: &str = "nih_00001299_000.png";
const CONTENDERS: [&str; 4] = ["cxr-torch", "cxr-onnx", "pytorch-eager", "onnxruntime-python"];

/// The Python side: a child process that times what it is asked to.
struct Python {
    child: Child,
    ask: ChildStdin,
    answers: BufReader<ChildStdout>,
}

impl Python {
    fn start(models: &Path, inputs: &Path, image: &Path, threads: usize) -> Result<Self, String> {
        let python = repo().join(".venv/bin/python");
        let mut child = Command::new(&python)
            .arg(repo().join("python/bench_backends.py"))
            .args([models, inputs, image])
            .args(["--threads", &threads.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", python.display()))?;
        let ask = child.stdin.take().ok_or("no stdin")?;
        let mut answers = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut ready = String::new();
        answers.read_line(&mut ready).map_err(|e| e.to_string())?;
        if ready.trim() != "ready" {
            return Err("python/bench_backends.py did not start (see its error above)".into());
        }
        Ok(Self {
            child,
            ask,
            answers,
        })
    }

    fn time(&mut self, contender: &str, measure: &str, iterations: u64) -> Duration {
        writeln!(self.ask, "{contender} {measure} {iterations}").expect("python is running");
        let mut line = String::new();
        self.answers.read_line(&mut line).expect("python answers");
        Duration::from_secs_f64(line.trim().parse().expect("seconds"))
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Adds the two Python contenders of `measure` to `group`.
fn python_side(group: &mut BenchmarkGroup<'_, WallTime>, python: Option<&mut Python>, measure: &str) {
    let Some(python) = python else { return };
    for (name, contender) in [("pytorch-eager", "pytorch"), ("onnxruntime-python", "onnxruntime")] {
        group.bench_function(name, |b| b.iter_custom(|n| python.time(contender, measure, n)));
    }
}

fn main() {
    cxr_explainers::link();
    let threads = compute::threads_for(1, std::env::var("CXR_THREADS").ok().and_then(|t| t.parse().ok()));
    let compute = Compute::on(Device::Cpu).with_threads(Some(threads));
    compute.apply();
    let models = repo().join("models");
    let torch = Pipeline::load_with(&models, &compute.with_backend(Backend::Torch)).expect("models");
    let onnx = Pipeline::load_with(&models, &compute.with_backend(Backend::Onnx))
        .expect("ONNX exports of the models (python python/export_onnx.py models)");
    let segmenter_files = ModelFiles::new(&models, SEGMENTER_NAME);
    let unet = UNetSegmenter::load(&segmenter_files, Device::Cpu).expect("segmenter");
    let unet_onnx = OnnxSegmenter::load(&segmenter_files, threads).expect("segmenter export");

    let path = sample(IMAGE);
    let bytes = std::fs::read(&path).expect("sample");
    let xray = Xray::decode(&bytes, &path).expect("decodes");
    let mask = torch.segmenter.segment(&xray.gray).expect("segments");
    let side = i64::from(SEGMENTER_SIDE);
    let unet_input =
        Tensor::from_slice(&preprocess::segmenter_input(&xray.gray)).view([1, 1, side, side]);
    let input = classifier_input(&xray.gray, &mask, torch.classifier.input_style());
    let classifier_input = input.to_tensor(Device::Cpu);
    let lime = registry::find("lime")
        .and_then(|entry| entry.build(&ExplainerConfig::default()))
        .expect("lime");
    let explain_input = ExplainInput {
        input: &classifier_input,
        lung_mask: &input.mask,
        target: 0,
        progress: None,
    };

    let scratch = tempfile::tempdir().expect("temp dir");
    let inputs = scratch.path().join("inputs.safetensors");
    Tensor::write_safetensors(
        &[("segmenter", &unet_input), ("classifier", &classifier_input)],
        &inputs,
    )
    .expect("inputs written");
    let mut python = Python::start(&models, &inputs, &path, threads)
        .map_err(|e| eprintln!("python side skipped: {e}"))
        .ok();

    let output = repo().join("target/criterion");
    let mut c = Criterion::default()
        .output_directory(&output)
        .configure_from_args();

    let mut group = c.benchmark_group("classifier_forward");
    group.sample_size(50);
    for (name, pipeline) in [("cxr-torch", &torch), ("cxr-onnx", &onnx)] {
        let model = pipeline.classifier.as_ref();
        group.bench_function(name, |b| {
            b.iter(|| tch::no_grad(|| model.logits(black_box(&classifier_input))));
        });
    }
    python_side(&mut group, python.as_mut(), "classifier");
    group.finish();

    let mut group = c.benchmark_group("unet_forward");
    group.sample_size(30);
    group.bench_function("cxr-torch", |b| {
        b.iter(|| tch::no_grad(|| unet.forward_t(black_box(&unet_input), false)));
    });
    group.bench_function("cxr-onnx", |b| b.iter(|| unet_onnx.logits(black_box(&unet_input))));
    python_side(&mut group, python.as_mut(), "unet");
    group.finish();

    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(30);
    for (name, pipeline) in [("cxr-torch", &torch), ("cxr-onnx", &onnx)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let xray = Xray::decode(black_box(&bytes), &path).expect("decodes");
                pipeline.analyze(xray).expect("analyses")
            });
        });
    }
    python_side(&mut group, python.as_mut(), "end_to_end");
    group.finish();

    let mut group = c.benchmark_group("lime_1000");
    group.sample_size(10);
    for (name, pipeline) in [("cxr-torch", &torch), ("cxr-onnx", &onnx)] {
        let model = pipeline.classifier.as_ref();
        group.bench_function(name, |b| {
            b.iter(|| lime.explain(model, black_box(&explain_input)).expect("explains"));
        });
    }
    python_side(&mut group, python.as_mut(), "forward1000");
    group.finish();
    drop(python);
    c.final_summary();

    summary(&output, threads);
    agreement(&torch, &onnx, &unet, &unet_onnx, &unet_input, &classifier_input, &explain_input, lime.as_ref());
}

/// Criterion's median for one benchmark, in milliseconds.
fn median_ms(output: &Path, group: &str, name: &str) -> Option<f64> {
    let file: PathBuf = output.join(group).join(name).join("new/estimates.json");
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    Some(json["median"]["point_estimate"].as_f64()? / 1e6)
}

fn summary(output: &Path, threads: usize) {
    let cell = |v: Option<f64>| v.map_or_else(|| format!("{:>12}", "-"), |v| format!("{v:>12.2}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:>9.2}x", a / b),
        _ => format!("{:>10}", "-"),
    };
    println!("\nmedians in ms, {threads} intra-op threads each");
    print!("{:<20}", "");
    for name in CONTENDERS {
        print!("{name:>12.12}");
    }
    println!("{:>10}{:>10}", "onnx/ORT", "torch/PT");
    for group in ["classifier_forward", "unet_forward", "end_to_end", "lime_1000"] {
        let m = CONTENDERS.map(|name| median_ms(output, group, name));
        print!("{group:<20}");
        for v in m {
            print!("{}", cell(v));
        }
        println!("{}{}", ratio(m[1], m[3]), ratio(m[0], m[2]));
    }
    println!("(lime_1000 in Python: the 1000 forward passes in batches of 100 only)");
}

/// The largest differences between the two backends' outputs on this radiograph.
#[allow(clippy::too_many_arguments)]
fn agreement(
    torch: &Pipeline,
    onnx: &Pipeline,
    unet: &UNetSegmenter,
    unet_onnx: &OnnxSegmenter,
    unet_input: &Tensor,
    classifier_input: &Tensor,
    explain_input: &ExplainInput<'_>,
    lime: &dyn cxr_core::explain::Explainer,
) {
    let max_diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).expect("scalar");
    let unet_torch = tch::no_grad(|| unet.forward_t(unet_input, false));
    let unet_ort = unet_onnx.logits(unet_input).expect("forward");
    let logits = |p: &Pipeline| tch::no_grad(|| p.classifier.logits(classifier_input)).expect("forward");
    let heat = |p: &Pipeline| {
        let map = lime.explain(p.classifier.as_ref(), explain_input).expect("explains");
        Tensor::from_slice(&map.heatmap.values)
    };
    println!(
        "max |torch - onnx|: U-Net logits {:.2e}, classifier logits {:.2e}, LIME heatmap {:.2e}",
        max_diff(&unet_torch, &unet_ort),
        max_diff(&logits(torch), &logits(onnx)),
        max_diff(&heat(torch), &heat(onnx)),
    );
}
