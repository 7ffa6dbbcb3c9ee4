//! Shared by the binary's integration tests: where the repository's files are, inputs derived
//! from them, a seeded generator, and the flags of a headless Chromium.

#![allow(dead_code)] // each includer uses its own part
#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A committed sample radiograph.
pub fn sample(name: &str) -> PathBuf {
    repo().join("samples").join(name)
}

/// The content hash the watch folder and the queue key files by.
pub fn sha256(bytes: &[u8]) -> String {
    cxr_core::xray::Xray::decode(bytes, "test").unwrap().sha256
}

/// The same picture with a `tEXt` chunk after the header: other bytes, so another hash.
pub fn with_text(png: &[u8], text: &str) -> Vec<u8> {
    const AFTER_IHDR: usize = 8 + 4 + 4 + 13 + 4;
    let mut chunk = b"tEXt".to_vec();
    chunk.extend_from_slice(b"cxr-test\0");
    chunk.extend_from_slice(text.as_bytes());
    let mut out = png[..AFTER_IHDR].to_vec();
    out.extend_from_slice(&((chunk.len() - 4) as u32).to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32fast::hash(&chunk).to_be_bytes());
    out.extend_from_slice(&png[AFTER_IHDR..]);
    out
}

/// The names in a folder; none when it does not exist.
pub fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| BTreeSet::new(),
        |listing| {
            listing
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

/// The uncompressed DICOM sample from the shared data with a Rescale Slope of 1e308 inserted
/// after its window width (0028,1051): its stored values times 1e308 overflow to infinity.
pub fn dicom_with_rescale_slope_1e308() -> Vec<u8> {
    let original =
        std::fs::read(repo().join("../shared/data/dicom/pydicom-data_RG1_UNCR.dcm")).unwrap();
    let width = original
        .windows(6)
        .position(|w| w == b"\x28\x00\x51\x10DS")
        .unwrap();
    let at = width
        + 8
        + usize::from(u16::from_le_bytes([
            original[width + 6],
            original[width + 7],
        ]));
    let mut patched = original[..at].to_vec();
    patched.extend_from_slice(b"\x28\x00\x53\x10DS\x06\x001e308 ");
    patched.extend_from_slice(&original[at..]);
    patched
}

/// A small seeded generator (xorshift64*), enough for a schedule of faults or operations.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Headless Chromium as the browser tests run it: no sandbox (containers), no GPU, and none of
/// the first-run, network and update work that would make a run slow or flaky.
pub const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
];

/// The committed poisoned DICOM file: a sequence nested 200,000 levels deep (issue 20).
pub fn nested_dicom() -> PathBuf {
    repo().join("crates/io/tests/fixtures/nested-sequences.dcm")
}

/// The committed colour screenshot of a radiograph viewer (issue 26): a gray radiograph framed
/// by coloured furniture, no chest radiograph itself.
pub fn screenshot() -> PathBuf {
    repo().join("crates/io/tests/fixtures/screenshot.png")
}

/// The committed files every surface must refuse, each with its name in a folder and a part of
/// the reason it must give.
pub fn refused_fixtures() -> [(PathBuf, &'static str, &'static str); 2] {
    [
        (nested_dicom(), "nested.dcm", "too deeply nested"),
        (screenshot(), "screenshot.png", "a colour picture"),
    ]
}

/// Runs `command` with its output captured, killing it after `limit`: a hang is a failure
/// (the panic shows what it printed), not a stuck test run.
pub fn output_within(
    command: &mut std::process::Command,
    limit: std::time::Duration,
) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
