//! Deterministic mutation fuzzing of `Xray::decode` (the stable toolchain has no cargo-fuzz):
//! seeded bit flips, insertions, deletions, truncations, header rewrites and splices of every
//! input kind (PNG 8/16-bit, JPEG, DICOM uncompressed/RLE/JPEG, and the real DICOM files).
//! No input may panic, every error names the file on one line, and every decoded image is in
//! [0, 1]. Every file in `tests/fuzz-corpus/` (seeds and past crashes) is replayed first.
//! The long-running variant is `cargo run --release -p cxr-io --example fuzz_decode`.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

mod fuzz_support;

use fuzz_support::{Outcome, corpus_dir, dicom_synthesized, mutate, rng, run_one, seeds};

/// Cases per small seed, and per full-size DICOM file (JPEG 2000 takes ~1 s a decode).
const CASES_PER_SEED: usize = 500;
const CASES_PER_FULL_DICOM: usize = 12;
/// Cases per synthesised hostile DICOM seed (they are many; the example runs more).
const CASES_PER_SYNTHESIZED: usize = 40;

fn check(outcome: Outcome, what: &str, failures: &mut Vec<String>) {
    match outcome {
        Outcome::Decoded | Outcome::Refused => {}
        Outcome::DecoderPanicCaught(m) => failures.push(format!("{what}: decoder panic: {m}")),
        Outcome::BadMessage(m) => failures.push(format!("{what}: bad message: {m}")),
        Outcome::BadImage(m) => failures.push(format!("{what}: bad image: {m}")),
        Outcome::Panicked(m) => failures.push(format!("{what}: PANIC: {m}")),
    }
}

#[test]
fn corpus_replays_without_panics() {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus holds seeds");
    let mut failures = Vec::new();
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        check(run_one(&bytes, &name), &name, &mut failures);
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn mutated_inputs_never_panic() {
    let mut failures = Vec::new();
    let (mut decoded, mut refused, mut total) = (0, 0, 0);
    for (i, seed) in seeds(true).iter().enumerate() {
        let full = seed.bytes.len() > 100_000
            && std::path::Path::new(&seed.name)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("dcm"));
        let synthesized = i >= 7 && !full;
        let cases = if full {
            CASES_PER_FULL_DICOM
        } else if synthesized {
            CASES_PER_SYNTHESIZED
        } else {
            CASES_PER_SEED
        };
        let mut rng = rng(0x00C0_FFEE + i as u64);
        for case in 0..cases {
            let bytes = mutate(&seed.bytes, &mut rng);
            let what = format!("{} case {case}", seed.name);
            let outcome = run_one(&bytes, &seed.name);
            match outcome {
                Outcome::Decoded => decoded += 1,
                Outcome::Refused => refused += 1,
                _ => {}
            }
            total += 1;
            check(outcome, &what, &mut failures);
        }
    }
    println!("{total} mutated inputs: {decoded} decoded, {refused} refused");
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        decoded > 0 && refused > 0,
        "the mutator should produce both"
    );
}

/// The synthesised hostile DICOM files themselves (they are also mutation seeds above): each is
/// decoded or refused with a one-line error naming the file, never a panic, and extreme
/// rescale values are refused as non-finite rather than decoded to NaN.
#[test]
fn synthesized_dicom_files_are_decoded_or_refused_cleanly() {
    let mut failures = Vec::new();
    let mut refused = 0;
    for (name, bytes, expect) in dicom_synthesized() {
        let result = std::panic::catch_unwind(|| cxr_io::xray::Xray::decode(&bytes, &name));
        match (result, expect) {
            (Err(_), _) => failures.push(format!("{name}: PANIC")),
            (Ok(Ok(x)), None) => {
                if !x.gray.pixels().all(|p| (0.0..=1.0).contains(&p.0[0])) {
                    failures.push(format!("{name}: values outside [0, 1]"));
                }
            }
            (Ok(Ok(_)), Some(why)) => failures.push(format!("{name}: decoded, expected {why}")),
            (Ok(Err(e)), expect) => {
                refused += 1;
                let text = e.to_string();
                if !text.contains(&name) || text.contains('\n') {
                    failures.push(format!("{name}: bad message {text}"));
                }
                if let Some(why) = expect
                    && !text.contains(why)
                {
                    failures.push(format!("{name}: {text}, expected {why}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(refused >= 5, "huge sizes and extreme rescales are refused");
}
