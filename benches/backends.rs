//! cxr's backends (libtorch; ONNX Runtime in FP32 and, where `python/quantise_onnx.py` made INT8
//! exports, in INT8) against PyTorch eager and ONNX Runtime in Python, in one command:
//!
//!     cargo bench -p cxr-benches --bench backends
//!
//! Criterion times every contender the same way; the Python ones through `iter_custom`, by
//! asking `python/bench_backends.py` (a child process, idle while Rust runs) to time N
//! iterations. The Python side runs the models in `CXR_BENCH_PEER_MODELS` (today's shipped
//! ones, to measure a change against them), else the same models as cxr. Measures: the
//! classifier's forward pass, the U-Net's, one radiograph end to end (decode, segment,
//! preprocess, classify, trust checks) and LIME with 1000 samples (for Python: its 1000 forward
//! passes in batches of 100, the model's share). Then it runs every contender in turn, in
//! `CXR_BENCH_ROUNDS` (15) interleaved rounds, and prints their medians and the ratios the
//! project's speed targets are stated in, and the largest differences between cxr's libtorch
//! and FP32 ONNX backends on this radiograph. Threads: `CXR_THREADS`, else all cores, for every
//! contender. `CXR_BENCH_MEASURES` (names, comma-separated) limits the rounds to some measures;
//! the argument `skip-criterion` (a filter no benchmark matches) leaves out criterion's runs.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use cxr_benches::{cpu, repo, sample};
use cxr_core::compute::{Backend, Precision};
use cxr_core::explain::{ExplainInput, ExplainerConfig, registry};
use cxr_core::models::onnx::OnnxSegmenter;
use cxr_core::models::{ModelFiles, UNetSegmenter};
use cxr_core::pipeline::{Pipeline, SEGMENTER_NAME};
use cxr_core::preprocess::{self, classifier_input};
use cxr_core::tch::{self, Device, Tensor};
use cxr_core::xray::Xray;

const IMAGE: &str = "nih_00001299_000.png";
const CONTENDERS: [&str; 5] = [
    "cxr-torch",
    "cxr-onnx",
    "cxr-onnx-int8",
    "pytorch-eager",
    "onnxruntime-python",
];

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

/// Times `iterations` runs of one contender on one measure.
type Timed<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// `iterations` runs of `work`, timed.
fn timed<'a, T>(mut work: impl FnMut() -> T + 'a) -> Timed<'a> {
    Box::new(move |iterations| {
        let start = Instant::now();
        for _ in 0..iterations {
            black_box(work());
        }
        start.elapsed()
    })
}

/// One measure: its contenders, and how many runs make one interleaved round.
struct Measure<'a> {
    name: &'static str,
    per_round: u64,
    contenders: Vec<(&'static str, Timed<'a>)>,
}

#[allow(clippy::too_many_lines)] // the set-up, then one list of every measure and contender
fn main() {
    cxr_explainers::link();
    let requested = std::env::var("CXR_THREADS")
        .ok()
        .and_then(|t| t.parse().ok());
    let compute = cpu().with_threads(requested);
    let threads = compute.threads();
    compute.apply();
    let models = repo().join("models");
    let torch =
        Pipeline::load_with(&models, &compute.with_backend(Backend::Torch)).expect("models");
    let onnx_compute = compute.with_backend(Backend::Onnx);
    let onnx = Pipeline::load_with(&models, &onnx_compute.with_precision(Precision::Fp32))
        .expect("ONNX exports of the models (python python/export_onnx.py models)");
    // The INT8 exports, where python/quantise_onnx.py made them.
    let int8 = Pipeline::load_with(&models, &onnx_compute.with_precision(Precision::Int8))
        .map_err(|e| eprintln!("INT8 contender skipped: {e}"))
        .ok();
    // The Python side may run other models, today's shipped ones say: CXR_BENCH_PEER_MODELS.
    let peer_models = std::env::var_os("CXR_BENCH_PEER_MODELS")
        .map_or_else(|| models.clone(), std::path::PathBuf::from);
    let segmenter_files = ModelFiles::new(&models, SEGMENTER_NAME);
    let unet = UNetSegmenter::load(&segmenter_files, Device::Cpu).expect("segmenter");
    let unet_onnx =
        OnnxSegmenter::load(&segmenter_files, threads, Precision::Fp32).expect("segmenter export");
    let unet_int8 = OnnxSegmenter::load(&segmenter_files, threads, Precision::Int8)
        .ok()
        .filter(|s| s.precision == Precision::Int8);

    let path = sample(IMAGE);
    let bytes = std::fs::read(&path).expect("sample");
    let xray = Xray::decode(&bytes, &path).expect("decodes");
    let mask = torch.segmenter.segment(&xray.gray).expect("segments");
    let side = unet.meta.input_side;
    let unet_input = Tensor::from_slice(&preprocess::segmenter_input(&xray.gray, side)).view([
        1,
        1,
        i64::from(side),
        i64::from(side),
    ]);
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
        &[
            ("segmenter", &unet_input),
            ("classifier", &classifier_input),
        ],
        &inputs,
    )
    .expect("inputs written");
    let python = Python::start(&peer_models, &inputs, &path, threads)
        .map_err(|e| eprintln!("python side skipped: {e}"))
        .ok()
        .map(RefCell::new);
    let python = python.as_ref();
    // The Python contenders of one measure (none when Python could not start).
    let python_side = |measure: &'static str| -> Vec<(&'static str, Timed<'_>)> {
        let Some(python) = python else {
            return Vec::new();
        };
        [
            ("pytorch-eager", "pytorch"),
            ("onnxruntime-python", "onnxruntime"),
        ]
        .into_iter()
        .map(|(name, contender)| -> (&'static str, Timed<'_>) {
            (
                name,
                Box::new(move |n| python.borrow_mut().time(contender, measure, n)),
            )
        })
        .collect()
    };

    let backends: Vec<(&'static str, &Pipeline)> = [("cxr-torch", &torch), ("cxr-onnx", &onnx)]
        .into_iter()
        .chain(int8.as_ref().map(|p| ("cxr-onnx-int8", p)))
        .collect();
    let (bytes, path, lime, x) = (&bytes, &path, &lime, &classifier_input);
    let explain_input = &explain_input;
    let mut measures = vec![
        Measure {
            name: "classifier_forward",
            per_round: 20,
            contenders: backends
                .iter()
                .map(|&(name, p)| {
                    (
                        name,
                        timed(move || tch::no_grad(|| p.classifier.logits(x)).expect("forward")),
                    )
                })
                .chain(python_side("classifier"))
                .collect(),
        },
        Measure {
            name: "unet_forward",
            per_round: 5,
            contenders: [
                (
                    "cxr-torch",
                    timed(|| tch::no_grad(|| unet.forward_t(&unet_input, false))),
                ),
                (
                    "cxr-onnx",
                    timed(|| unet_onnx.logits(&unet_input).expect("forward")),
                ),
            ]
            .into_iter()
            .chain(unet_int8.as_ref().map(|u| -> (&'static str, Timed<'_>) {
                (
                    "cxr-onnx-int8",
                    timed(|| u.logits(&unet_input).expect("forward")),
                )
            }))
            .chain(python_side("unet"))
            .collect(),
        },
        Measure {
            name: "end_to_end",
            per_round: 5,
            contenders: backends
                .iter()
                .map(|&(name, p)| {
                    let run = move || {
                        p.analyse(Xray::decode(bytes, path).expect("decodes"))
                            .expect("analyses")
                    };
                    (name, timed(run))
                })
                .chain(python_side("end_to_end"))
                .collect(),
        },
        Measure {
            name: "lime_1000",
            per_round: 1,
            contenders: backends
                .iter()
                .map(|&(name, p)| {
                    let run = move || {
                        lime.explain(p.classifier.as_ref(), explain_input)
                            .expect("explains")
                    };
                    (name, timed(run))
                })
                .chain(python_side("forward1000"))
                .collect(),
        },
    ];

    let mut c = Criterion::default()
        .output_directory(&repo().join("target/criterion"))
        .configure_from_args();
    for measure in &mut measures {
        let mut group = c.benchmark_group(measure.name);
        group.sample_size(if measure.per_round > 1 { 20 } else { 10 });
        for (name, run) in &mut measure.contenders {
            group.bench_function(*name, |b| b.iter_custom(&mut *run));
        }
        group.finish();
    }
    c.final_summary();

    let rounds = std::env::var("CXR_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    // `CXR_BENCH_MEASURES=unet_forward,end_to_end` keeps those measures' rounds only.
    let chosen = std::env::var("CXR_BENCH_MEASURES").unwrap_or_default();
    measures.retain(|m| chosen.is_empty() || chosen.split(',').any(|c| c.trim() == m.name));
    interleaved(&mut measures, rounds, threads);
    drop(measures);
    agreement(
        &torch,
        &onnx,
        &unet,
        &unet_onnx,
        &unet_input,
        x,
        explain_input,
        lime.as_ref(),
    );
}

/// Every contender of every measure in turn, `rounds` times: the medians of these interleaved
/// rounds share whatever else this machine was doing, so their ratios are the fair ones.
fn interleaved(measures: &mut [Measure<'_>], rounds: usize, threads: usize) {
    let mut samples: Vec<Vec<Vec<f64>>> = measures
        .iter()
        .map(|m| vec![Vec::with_capacity(rounds); m.contenders.len()])
        .collect();
    for round in 0..rounds {
        for (measure, times) in measures.iter_mut().zip(&mut samples) {
            // Each round starts with another contender, and each contender starts after a
            // pause: threads a runtime leaves spinning after its last run (OpenMP's for
            // milliseconds, ONNX Runtime's in Python until they time out) would otherwise
            // always slow down the same next contender.
            let k = measure.contenders.len();
            for i in (0..k).map(|i| (i + round) % k) {
                std::thread::sleep(Duration::from_millis(50));
                let elapsed = (measure.contenders[i].1)(measure.per_round);
                times[i].push(elapsed.as_secs_f64() * 1e3 / measure.per_round as f64);
            }
        }
    }
    println!("\nmedians of {rounds} interleaved rounds, ms ({threads} intra-op threads each)");
    print!("{:<20}", "");
    for name in CONTENDERS {
        print!("{name:>20}");
    }
    println!("{:>11}{:>11}{:>11}", "onnx/ORT", "int8/ORT", "torch/PT");
    for (measure, times) in measures.iter().zip(&samples) {
        let median = |name: &str| {
            let i = measure.contenders.iter().position(|(n, _)| *n == name)?;
            let mut t = times[i].clone();
            t.sort_by(f64::total_cmp);
            Some(t[t.len() / 2])
        };
        let m = CONTENDERS.map(median);
        print!("{:<20}", measure.name);
        for v in m {
            print!(
                "{}",
                v.map_or_else(|| format!("{:>20}", "-"), |v| format!("{v:>20.2}"))
            );
        }
        let ratio = |a: Option<f64>, b: Option<f64>| {
            a.zip(b).map_or_else(
                || format!("{:>11}", "-"),
                |(a, b)| format!("{:>10.2}x", a / b),
            )
        };
        println!(
            "{}{}{}",
            ratio(m[1], m[4]),
            ratio(m[2], m[4]),
            ratio(m[0], m[3])
        );
    }
    println!("(lime_1000 in Python: its 1000 forward passes in batches of 100 only)");
    if let Some(peer) = std::env::var_os("CXR_BENCH_PEER_MODELS") {
        println!("(Python ran the models in {})", Path::new(&peer).display());
    }
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
    let logits =
        |p: &Pipeline| tch::no_grad(|| p.classifier.logits(classifier_input)).expect("forward");
    let heat = |p: &Pipeline| {
        let map = lime
            .explain(p.classifier.as_ref(), explain_input)
            .expect("explains");
        Tensor::from_slice(&map.heatmap.values)
    };
    println!(
        "max |torch - onnx|: U-Net logits {:.2e}, classifier logits {:.2e}, LIME heatmap {:.2e}",
        max_diff(&unet_torch, &unet_ort),
        max_diff(&logits(torch), &logits(onnx)),
        max_diff(&heat(torch), &heat(onnx)),
    );
}
