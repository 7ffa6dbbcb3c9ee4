//! The process-wide memory budget through the real binary (issue 10): small hostile files that
//! decode to large images (decompression bombs: a PNG, a JPEG and a deflated DICOM of a few
//! hundred KB that each decode to tens of megapixels) sent to `cxr worker --jobs 4` at once must
//! not multiply memory by the number of jobs.
//!
//! Peak memory is the worker's own high-water mark (`VmHWM` in `/proc/PID/status`), read while
//! it is still running (it stays up until its input ends) after it has answered every request:
//! no `/usr/bin/time` needed, and nothing timed. libtorch and four sets of models take memory
//! of their own, so the same worker with the same jobs on ordinary radiographs is the baseline,
//! and the hostile run is bounded relative to it.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::{BufRead, BufReader, Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb, Rgba};

const MIB: u64 = 1 << 20;
/// The budget the hostile runs get (`CXR_MEMORY_BUDGET`).
const BUDGET_MIB: u64 = 600;
/// Each bomb decodes to this many pixels (20 megapixels, under the 64 MP per-image limit, so
/// the header check lets it through and only the memory budget stands in the way).
const WIDTH: u32 = 5000;
const HEIGHT: u32 = 4000;
const JOBS: usize = 4;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples")
        .join(name)
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// A 16-bit RGBA PNG of one colour: 160 MB decoded, a few hundred KB on disk.
fn png_bomb() -> Vec<u8> {
    let image = ImageBuffer::from_pixel(WIDTH, HEIGHT, Rgba([9000u16, 9000, 9000, 65535]));
    encode(&DynamicImage::ImageRgba16(image), ImageFormat::Png)
}

/// An RGB JPEG of one colour.
fn jpeg_bomb() -> Vec<u8> {
    let image = ImageBuffer::from_pixel(WIDTH, HEIGHT, Rgb([40u8, 40, 40]));
    encode(&DynamicImage::ImageRgb8(image), ImageFormat::Jpeg)
}

/// One explicit-VR little-endian element with a short length.
fn element(out: &mut Vec<u8>, group: u16, number: u16, vr: [u8; 2], value: &[u8]) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&number.to_le_bytes());
    out.extend_from_slice(&vr);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

/// A deflated-transfer-syntax DICOM of a 16-bit MONOCHROME2 image of one value: 40 MB of
/// pixel data that deflate to a few tens of KB.
fn dicom_bomb() -> Vec<u8> {
    let syntax = b"1.2.840.10008.1.2.1.99\0\0"; // deflated explicit VR LE, even length
    let mut meta = Vec::new();
    // (0002,0001) is OB: two reserved bytes and a 4-byte length.
    meta.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
    element(
        &mut meta,
        0x0002,
        0x0002,
        *b"UI",
        b"1.2.840.10008.5.1.4.1.1.1\0",
    );
    element(&mut meta, 0x0002, 0x0003, *b"UI", b"1.2.3.4\0");
    element(&mut meta, 0x0002, 0x0010, *b"UI", syntax);
    let mut group_length = Vec::new();
    element(
        &mut group_length,
        0x0002,
        0x0000,
        *b"UL",
        &(meta.len() as u32).to_le_bytes(),
    );

    let mut data = Vec::new();
    element(&mut data, 0x0028, 0x0002, *b"US", &1u16.to_le_bytes());
    element(&mut data, 0x0028, 0x0004, *b"CS", b"MONOCHROME2 ");
    element(
        &mut data,
        0x0028,
        0x0010,
        *b"US",
        &(HEIGHT as u16).to_le_bytes(),
    );
    element(
        &mut data,
        0x0028,
        0x0011,
        *b"US",
        &(WIDTH as u16).to_le_bytes(),
    );
    element(&mut data, 0x0028, 0x0100, *b"US", &16u16.to_le_bytes());
    element(&mut data, 0x0028, 0x0101, *b"US", &12u16.to_le_bytes());
    element(&mut data, 0x0028, 0x0102, *b"US", &11u16.to_le_bytes());
    element(&mut data, 0x0028, 0x0103, *b"US", &0u16.to_le_bytes());
    let pixels = WIDTH as usize * HEIGHT as usize * 2;
    data.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    data.extend_from_slice(&(pixels as u32).to_le_bytes());
    // A gradient row repeated: a real image range, still tiny once deflated.
    let row: Vec<u8> = (0..WIDTH)
        .flat_map(|x| ((x % 4096) as u16).to_le_bytes())
        .collect();
    for _ in 0..HEIGHT {
        data.extend_from_slice(&row);
    }
    let mut deflater = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflater.write_all(&data).unwrap();
    let deflated = deflater.finish().unwrap();

    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend_from_slice(&group_length);
    out.extend_from_slice(&meta);
    out.extend_from_slice(&deflated);
    out
}

/// A PNG whose header claims 100000 x 100000 pixels: refused before any allocation.
fn png_header_bomb() -> Vec<u8> {
    let mut png = encode(
        &DynamicImage::ImageLuma8(ImageBuffer::from_pixel(64, 64, image::Luma([0u8]))),
        ImageFormat::Png,
    );
    png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// Runs `cxr worker --jobs JOBS --no-cache` on `ids` in `dir` and returns its replies and its
/// peak resident memory, read from the live process once every reply is in.
fn worker_peak(dir: &Path, ids: &[String], budget: Option<&str>) -> (Vec<String>, u64) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cxr"));
    command
        .args(["--device", "cpu", "worker", "--no-cache", "--jobs"])
        .arg(JOBS.to_string())
        .arg("--dir")
        .arg(dir)
        .env_remove("CXR_MODELS")
        .env("OMP_NUM_THREADS", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    match budget {
        Some(b) => command.env("CXR_MEMORY_BUDGET", b),
        None => command.env_remove("CXR_MEMORY_BUDGET"),
    };
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for id in ids {
        writeln!(stdin, "classify {id}").unwrap();
    }
    stdin.flush().unwrap();
    let mut replies = Vec::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    while replies.len() < ids.len() {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the worker ended after {} of {} replies: {replies:#?}",
            replies.len(),
            ids.len()
        );
        replies.push(line.trim_end().to_owned());
    }
    // Still running (its input is open): its high-water mark covers every request.
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success());
    (replies, kib * 1024)
}

#[test]
fn decompression_bombs_with_four_jobs_stay_within_the_memory_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let bombs: [(&str, Vec<u8>); 4] = [
        ("bomb16.png", png_bomb()),
        ("bomb.jpg", jpeg_bomb()),
        ("bomb.dcm", dicom_bomb()),
        ("claims.png", png_header_bomb()),
    ];
    for (name, bytes) in &bombs {
        assert!(
            bytes.len() < 2 * MIB as usize,
            "{name}: {} bytes",
            bytes.len()
        );
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    // Two of each real bomb: eight large decodes offered to four jobs at once.
    for name in ["bomb16.png", "bomb.jpg", "bomb.dcm"] {
        std::fs::copy(dir.join(name), dir.join(format!("again-{name}"))).unwrap();
    }
    let ordinary = [
        "nih_00001299_000.png",
        "nih_00001385_000.png",
        "hannover_2c35005f.png",
        "hannover_b343e657.png",
    ];
    for name in ordinary {
        std::fs::copy(sample(name), dir.join(name)).unwrap();
    }
    let ids = |names: &[&str]| names.iter().map(|&n| n.to_owned()).collect::<Vec<_>>();

    let (replies, baseline) = worker_peak(dir, &ids(&ordinary), None);
    for reply in &replies {
        assert!(reply.starts_with("classify "), "{reply}");
    }

    let hostile = ids(&[
        "bomb16.png",
        "bomb.jpg",
        "bomb.dcm",
        "again-bomb16.png",
        "again-bomb.jpg",
        "again-bomb.dcm",
        "claims.png",
    ]);
    if std::env::var_os("CXR_TEST_UNLIMITED").is_some() {
        // For comparison by hand: the same run without a budget.
        let (_, unlimited) = worker_peak(dir, &hostile, Some("unlimited"));
        println!("peak RSS, bombs without a budget: {} MiB", unlimited / MIB);
    }
    let budget = format!("{BUDGET_MIB}M");
    let (replies, peak) = worker_peak(dir, &hostile, Some(&budget));
    println!(
        "peak RSS: ordinary radiographs {} MiB, bombs with a {BUDGET_MIB} MiB budget {} MiB",
        baseline / MIB,
        peak / MIB
    );
    for reply in &replies {
        println!("  {}", reply.chars().take(160).collect::<String>());
    }
    // Every request is answered: a decode waits for memory, it is not dropped.
    assert_eq!(replies.len(), hostile.len());
    let claims = replies.iter().find(|r| r.contains("claims.png")).unwrap();
    assert!(
        claims.starts_with("error classify claims.png") && claims.contains("px per side"),
        "{claims}"
    );
    for reply in &replies {
        assert!(
            !reply.contains("memory budget exhausted"),
            "worker threads hold no image when they decode, so they wait: {reply}"
        );
    }
    // The budget covers decoded pixels; the analysis of each image in flight (its lung mask and
    // resized copies at full resolution) comes on top. Measured with the lung mask cleaned at
    // full resolution: baseline 262 MiB, bombs 999-1170 MiB (over this bound in CI); cleaned on
    // the segmenter's grid: 794-860 MiB.
    let allowance = BUDGET_MIB * MIB + 300 * MIB;
    assert!(
        peak <= baseline + allowance,
        "peak {} MiB, more than the baseline {} MiB + {} MiB",
        peak / MIB,
        baseline / MIB,
        allowance / MIB
    );
}

/// `cxr classify FILE` with `CXR_MEMORY_BUDGET` set to `budget`: exit code and the error.
fn classify_with_budget(file: &Path, budget: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["--device", "cpu", "classify"])
        .arg(file)
        .env_remove("CXR_MODELS")
        .env("CXR_MEMORY_BUDGET", budget)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert!(line["label"].is_null(), "classified: {stdout}");
    (
        out.status.code(),
        line["error"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn an_image_larger_than_the_whole_budget_is_refused_and_a_bad_budget_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("bomb16.png");
    std::fs::write(&file, png_bomb()).unwrap();
    let (code, error) = classify_with_budget(&file, "64M");
    assert_eq!(code, Some(1));
    assert!(
        error.contains("bomb16.png")
            && error.contains("refused: decoding this image needs about")
            && error.contains("more than the whole memory budget of 64 MiB (CXR_MEMORY_BUDGET)"),
        "{error}"
    );
    let (code, error) = classify_with_budget(&file, "lots");
    assert_eq!(code, Some(1));
    assert!(
        error.contains("CXR_MEMORY_BUDGET=\"lots\": not a size"),
        "{error}"
    );
}
