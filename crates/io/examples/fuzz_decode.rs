//! Long-running mutation fuzzer of `Xray::decode`, the same mutator as the test
//! `tests/fuzz_decode.rs`, for as long as asked:
//!
//! ```text
//! cargo run --release -p cxr-io --example fuzz_decode -- --seconds 600 [--seed N] [--full]
//!     [--emit-seeds N]
//! ```
//!
//! Any input that panics, gives an error that does not name the file on one line, decodes to
//! values outside [0, 1], or makes a third-party decoder panic (caught inside `Xray::decode`) is
//! saved as `tests/fuzz-corpus/crash-HASH.bin`; the test replays every file there. `--full`
//! also mutates the full-size DICOM files (slow); `--emit-seeds N` saves up to N small inputs
//! with distinct error messages as `seed-HASH.bin`. Exits 1 when anything was found.

#![allow(clippy::unwrap_used)] // a developer tool: a failure to write a finding should stop it

#[path = "../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fuzz_support::{Outcome, Seed, corpus_dir, mutate, rng, run_one, seeds};
use rand::Rng;
use sha2::{Digest, Sha256};

struct Args {
    seconds: u64,
    seed: u64,
    full: bool,
    emit_seeds: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        seed: 1,
        full: false,
        emit_seeds: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match flag.as_str() {
            "--seconds" => args.seconds = value("--seconds")?,
            "--seed" => args.seed = value("--seed")?,
            "--emit-seeds" => args.emit_seeds = value("--emit-seeds")? as usize,
            "--full" => args.full = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn short_hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))[..16].to_owned()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz_decode: {e}");
            return ExitCode::from(2);
        }
    };
    // Panics are counted and saved, not printed by the default hook.
    std::panic::set_hook(Box::new(|_| {}));
    let mut pool: Vec<Seed> = seeds(args.full);
    // Past findings and emitted seeds are mutated too.
    for entry in std::fs::read_dir(corpus_dir()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "bin") {
            pool.push(Seed {
                name: format!("corpus-{}", path.file_name().unwrap().to_string_lossy()),
                bytes: std::fs::read(&path).unwrap(),
            });
        }
    }
    let mut rng = rng(args.seed);
    let start = Instant::now();
    let deadline = Duration::from_secs(args.seconds);
    let (mut executions, mut decoded, mut findings) = (0u64, 0u64, 0u64);
    let mut classes = BTreeSet::new();
    let mut emitted = 0;
    let mut last_report = Instant::now();
    while start.elapsed() < deadline {
        let seed = &pool[rng.random_range(0..pool.len())];
        let bytes = mutate(&seed.bytes, &mut rng);
        let name = "fuzz-input.dcm";
        let outcome = run_one(&bytes, name);
        executions += 1;
        let problem = match outcome {
            Outcome::Decoded => {
                decoded += 1;
                None
            }
            Outcome::Refused => {
                if emitted < args.emit_seeds && bytes.len() <= 16 * 1024 {
                    let text = run_error(&bytes, name);
                    // The message without numbers: one seed per kind of refusal.
                    let class: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
                    if classes.insert(class) {
                        let path = corpus_dir().join(format!("seed-{}.bin", short_hash(&bytes)));
                        std::fs::write(&path, &bytes).unwrap();
                        emitted += 1;
                    }
                }
                None
            }
            Outcome::DecoderPanicCaught(m) => Some(format!("decoder panic caught: {m}")),
            Outcome::BadMessage(m) => Some(format!("bad message: {m}")),
            Outcome::BadImage(m) => Some(format!("bad image: {m}")),
            Outcome::Panicked(m) => Some(format!("PANIC: {m}")),
        };
        if let Some(problem) = problem {
            findings += 1;
            let path = corpus_dir().join(format!("crash-{}.bin", short_hash(&bytes)));
            std::fs::write(&path, &bytes).unwrap();
            println!("from {}: {problem} -> {}", seed.name, path.display());
        }
        if last_report.elapsed() > Duration::from_secs(60) {
            last_report = Instant::now();
            eprintln!(
                "{:>5.0} s: {executions} executions, {decoded} decoded, {findings} findings",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{executions} executions in {secs:.0} s ({:.0}/s): {decoded} decoded, {} refused, \
         {findings} findings, {emitted} seeds emitted",
        executions as f64 / secs,
        executions - decoded - findings
    );
    if findings == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn run_error(bytes: &[u8], name: &str) -> String {
    cxr_io::xray::Xray::decode(bytes, name)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
}
