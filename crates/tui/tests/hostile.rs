//! Hostile and careless inputs through the real binary (issue 10): every one is refused with a
//! one-line error naming the file and the limit, quickly, without reading it whole, and never
//! classified.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod support;
use support::{dicom_with_rescale_slope_1e308, sample};

/// Runs `cxr --device cpu classify FILE` and kills it after `limit`: a hang is a failure, not a
/// stuck test run.
fn classify_within(file: &Path, limit: Duration) -> Output {
    support::output_within(
        Command::new(env!("CARGO_BIN_EXE_cxr"))
            .args(["classify", "--device", "cpu"])
            .arg(file)
            .env_remove("CXR_MODELS"),
        limit,
    )
}

/// The one error line printed for `file`, after checking the exit code and that no label came
/// out.
fn refused(file: &Path) -> String {
    let out = classify_within(file, Duration::from_secs(90));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0]["label"].is_null(), "classified: {stdout}");
    let error = lines[0]["error"].as_str().unwrap().to_owned();
    let name = file.file_name().unwrap().to_string_lossy();
    assert!(
        error.contains(&*name),
        "error does not name the file: {error}"
    );
    assert!(!error.contains('\n'), "{error}");
    error
}

fn jpeg_of(png: &Path) -> Vec<u8> {
    let picture = image::open(png).unwrap().to_luma8();
    let mut out = Cursor::new(Vec::new());
    picture
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn chunk(png: &mut Vec<u8>, kind: [u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap();
    png.extend_from_slice(&len.to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    png.extend_from_slice(&body);
    png.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A complete, small PNG whose IHDR claims `width` x `height` 8-bit gray pixels.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    chunk(&mut png, *b"IHDR", &ihdr);
    // An empty zlib stream: whatever the header says, there is almost nothing behind it.
    chunk(
        &mut png,
        *b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, *b"IEND", &[]);
    png
}

#[test]
fn a_fifo_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.png");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let error = refused(&fifo);
    assert!(
        error.contains("FIFO") && error.contains("not a regular file"),
        "{error}"
    );
}

#[test]
fn a_symlink_to_dev_zero_is_refused_without_reading() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("zero.png");
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let error = refused(&link);
    assert!(
        error.contains("device") && error.contains("not a regular file"),
        "{error}"
    );
}

#[test]
fn a_sparse_3_gb_file_is_refused_from_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.png");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(3 << 30).unwrap();
    drop(file);
    let start = Instant::now();
    let error = refused(&big);
    assert!(error.contains("256 MiB"), "{error}");
    // Refused from the size, not after reading 3 GB (model loading dominates).
    assert!(start.elapsed() < Duration::from_secs(60));
}

#[test]
fn truncated_jpeg_and_png_are_errors_not_labels() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = jpeg_of(&sample("nih_00001299_000.png"));
    for (name, keep) in [
        ("two-thirds.jpg", jpeg.len() * 2 / 3),
        ("no-eoi.jpg", jpeg.len() - 2),
    ] {
        let cut = dir.path().join(name);
        std::fs::write(&cut, &jpeg[..keep]).unwrap();
        let error = refused(&cut);
        assert!(error.contains("truncated"), "{error}");
    }
    let png = std::fs::read(sample("hannover_e1446fe8.png")).unwrap();
    for (name, keep) in [("half.png", png.len() / 2), ("no-iend.png", png.len() - 12)] {
        let cut = dir.path().join(name);
        std::fs::write(&cut, &png[..keep]).unwrap();
        let error = refused(&cut);
        assert!(error.contains("truncated"), "{error}");
    }
}

#[test]
fn a_1x1_png_is_refused_not_classified() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.png");
    image::GrayImage::from_pixel(1, 1, image::Luma([128]))
        .save(&tiny)
        .unwrap();
    let error = refused(&tiny);
    assert!(error.contains("1x1") && error.contains("64x64"), "{error}");
}

#[test]
fn a_small_png_claiming_a_huge_size_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    // 16000 x 16000 is within the side limit, 256 megapixels is not within the pixel budget.
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, png_claiming(16_000, 16_000)).unwrap();
    let error = refused(&bomb);
    assert!(error.contains("megapixels"), "{error}");
}

/// Peak resident memory of `cxr --device cpu classify FILE`, in KiB, measured by GNU time;
/// `None` where it is not installed.
fn peak_rss_kib(file: &Path) -> Option<(u64, Output)> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "peak-rss-kib=%M"])
        .arg(env!("CARGO_BIN_EXE_cxr"))
        .args(["classify", "--device", "cpu"])
        .arg(file)
        .env_remove("CXR_MODELS")
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let kib = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak-rss-kib="))?
        .trim()
        .parse()
        .ok()?;
    Some((kib, out))
}

/// A real 12000 x 12000 PNG of zeros: a few hundred KB that decode to 144 megapixels (about
/// 2 GB of memory before the gate, and a label). Refused from the header, the process stays
/// small.
#[test]
fn a_real_png_bomb_is_refused_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.png");
    image::GrayImage::new(12_000, 12_000).save(&bomb).unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let error = refused(&bomb);
    assert!(error.contains("144.0 megapixels"), "{error}");
    if let Some((kib, out)) = peak_rss_kib(&bomb) {
        assert_eq!(out.status.code(), Some(1));
        // The process with its models loaded is about 150 MiB; the bomb adds nothing.
        assert!(kib < 512 << 10, "peak RSS {kib} KiB");
    }
}

/// The uncompressed DICOM file with a Rescale Slope of 1e308 inserted after its window
/// (0028,1051): stored values times 1e308 overflow to infinity. Classified "normal", exit 0,
/// before the gate.
#[test]
fn dicom_rescale_slope_1e308_is_refused_not_classified() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slope.dcm");
    std::fs::write(&file, dicom_with_rescale_slope_1e308()).unwrap();
    let error = refused(&file);
    assert!(
        error.contains("Rescale Slope (1e308)") && error.contains("non-finite"),
        "{error}"
    );
}

/// Issue 20, defect 1: a 17 KB DICOM whose sequences nest 200,000 levels deep overflowed the
/// parser's stack and aborted `cxr classify` (exit 134); it is refused like any bad input.
#[test]
fn deeply_nested_dicom_is_refused_not_a_crash() {
    let error = refused(&support::nested_dicom());
    assert!(
        error.contains("too deeply nested") && error.contains("more than 64 levels"),
        "{error}"
    );
}

/// Issue 26: a colour screenshot of a viewer (a gray radiograph framed by coloured badges and
/// text; mean saturation 0.01) was classified "normal" with no flag; it is no chest radiograph.
#[test]
fn a_screenshot_of_a_viewer_is_refused_as_no_chest_radiograph() {
    let error = refused(&support::screenshot());
    assert!(
        error.contains("not a chest radiograph") && error.contains("1.9% of its pixels coloured"),
        "{error}"
    );
}
