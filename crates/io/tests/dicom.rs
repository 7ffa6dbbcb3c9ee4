//! DICOM input on the four real files in `../shared/data/dicom`: MONOCHROME1 inversion, window,
//! 15-bit depth, JPEG baseline and JPEG 2000, identifiers; and clear errors for broken files.
//! (That each classifies like its 16-bit PNG equivalent is checked in cxr-core's `dicom` test.)

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

mod fuzz_support;

use std::path::{Path, PathBuf};

use cxr_io::Error;
use cxr_io::dicom::{self, Voi, WindowFunction};
use cxr_io::xray::Xray;
use image::DynamicImage;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data(name: &str) -> PathBuf {
    repo().join("../shared/data/dicom").join(name)
}

const UNCOMPRESSED: &str = "pydicom-data_RG1_UNCR.dcm";
const JPEG2000: &str = "pydicom-data_RG1_J2KI.dcm";
const JPEG: &str = "torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm";
const RELABELLED: &str = "torchxrayvision_Fake_MONOHR1.dcm";

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

fn decode_err(bytes: &[u8], name: &str) -> String {
    let Err(err) = Xray::decode(bytes, name) else {
        panic!("{name}: {} bytes decoded without error", bytes.len())
    };
    let text = err.to_string();
    assert!(text.contains(name), "error does not name the file: {text}");
    assert!(!text.contains('\n'), "error is not one line: {text}");
    text
}

/// Offset of the value of an explicit-VR little-endian US element `(group,element)`.
fn us_value_offset(bytes: &[u8], group: u16, element: u16) -> usize {
    let mut needle = Vec::new();
    needle.extend_from_slice(&group.to_le_bytes());
    needle.extend_from_slice(&element.to_le_bytes());
    needle.extend_from_slice(b"US\x02\x00");
    bytes.windows(8).position(|w| w == needle).unwrap() + 8
}

#[test]
fn relabelled_monochrome1_is_the_exact_inverse() {
    let original = Xray::open(data(JPEG)).unwrap();
    let relabelled = Xray::open(data(RELABELLED)).unwrap();
    assert_eq!((original.width(), original.height()), (1024, 1024));
    assert_eq!(relabelled.gray.dimensions(), original.gray.dimensions());
    assert!(matches!(original.original, DynamicImage::ImageLuma16(_)));
    for (a, b) in original.gray.pixels().zip(relabelled.gray.pixels()) {
        assert!(
            (a.0[0] - (1.0 - b.0[0])).abs() < 1e-6,
            "{} vs {}",
            a.0[0],
            b.0[0]
        );
    }
    // An 8-bit image without a window is stretched over its own range: both ends are used.
    let (lo, hi) = original
        .gray
        .pixels()
        .fold((1f32, 0f32), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
    assert!(lo == 0.0 && hi == 1.0, "{lo}..{hi}");
    let info = dicom::decode(&read(JPEG), &data(JPEG)).unwrap().info;
    assert_eq!(info.transfer_syntax, "1.2.840.10008.1.2.4.50");
    assert_eq!((info.bits_allocated, info.bits_stored), (8, 8));
    assert!(matches!(info.voi, Voi::MinMax { .. }), "{:?}", info.voi);
}

#[test]
fn fifteen_bit_monochrome1_is_windowed_then_inverted() {
    let bytes = read(UNCOMPRESSED);
    let image = dicom::decode(&bytes, &data(UNCOMPRESSED)).unwrap();
    let info = &image.info;
    assert_eq!(info.photometric, "MONOCHROME1");
    assert_eq!((info.columns, info.rows), (1841, 1955));
    assert_eq!((info.bits_allocated, info.bits_stored), (16, 15));
    assert_eq!(
        info.voi,
        Voi::Window {
            center: 15000.0,
            width: 30000.0,
            function: WindowFunction::Linear
        }
    );
    // The stored values follow the Pixel Data header (OW, 4-byte length), little endian.
    let n = 1841 * 1955;
    let start = bytes
        .windows(6)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'W'])
        .unwrap()
        + 12;
    let raw = &bytes[start..start + n * 2];
    let mut distinct_raw = std::collections::BTreeSet::new();
    for i in (0..n).step_by(997) {
        let x = f64::from(u16::from_le_bytes([raw[i * 2], raw[i * 2 + 1]]) & 0x7FFF);
        distinct_raw.insert(x as u32);
        let linear = ((x - 14_999.5) / 29_999.0 + 0.5).clamp(0.0, 1.0);
        let expected = 1.0 - linear;
        let (col, row) = ((i % 1841) as u32, (i / 1841) as u32);
        let got = f64::from(image.gray.get_pixel(col, row).0[0]);
        assert!(
            (got - expected).abs() < 1e-6,
            "pixel {i}: {got} vs {expected}"
        );
        let shown = f64::from(image.original.get_pixel(col, row).0[0]) / 65535.0;
        assert!(
            (shown - expected).abs() <= 0.5 / 65535.0 + 1e-6,
            "{shown} vs {expected}"
        );
    }
    // Finer than 8 bits survives to the f32 image: far more than 256 levels.
    let levels: std::collections::BTreeSet<u32> = image
        .gray
        .pixels()
        .map(|p| (p.0[0] * 65535.0).round() as u32)
        .collect();
    assert!(levels.len() > 1000, "{} levels", levels.len());
    assert!(distinct_raw.len() > 256);
}

/// Tolerance between the lossy (10:1) JPEG 2000 copy and the uncompressed original, in display
/// units [0, 1]: the mean absolute difference below 0.005 (about 1 grey level of 255) and 99.9%
/// of pixels within 0.03.
#[test]
fn jpeg2000_copy_closely_matches_the_uncompressed_original() {
    let uncompressed = Xray::open(data(UNCOMPRESSED)).unwrap();
    let lossy = Xray::open(data(JPEG2000)).unwrap();
    assert_eq!(lossy.gray.dimensions(), uncompressed.gray.dimensions());
    let mut diffs: Vec<f32> = uncompressed
        .gray
        .pixels()
        .zip(lossy.gray.pixels())
        .map(|(a, b)| (a.0[0] - b.0[0]).abs())
        .collect();
    let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
    diffs.sort_by(f32::total_cmp);
    let p999 = diffs[diffs.len() * 999 / 1000];
    println!("J2K vs uncompressed: mean {mean:.5}, 99.9th percentile {p999:.5}");
    assert!(mean < 0.005, "mean difference {mean}");
    assert!(p999 < 0.03, "99.9th percentile {p999}");
}

#[test]
fn identifiers_are_read_but_not_reported_by_default() {
    let x = Xray::open(data(UNCOMPRESSED)).unwrap();
    let ids = x.identifiers.clone().unwrap();
    assert_eq!(ids.patient_id.as_deref(), Some("9RG1"));
    assert_eq!(ids.patient_name.as_deref(), Some("CompressedSamples^RG1"));
    assert_eq!(ids.study_date.as_deref(), Some("20040826"));
    assert_eq!(ids.accession_number.as_deref(), Some("exam Number"));
    assert_eq!(
        ids.study_instance_uid.as_deref(),
        Some("1.3.6.1.4.1.5962.1.2.9.20040826185059.5457")
    );
    let png = Xray::open(repo().join("samples/nih_00001299_000.png")).unwrap();
    assert!(png.identifiers.is_none());
}

#[test]
fn dicom_without_pixel_data_is_refused() {
    let bytes = read(UNCOMPRESSED);
    let pixel_data = bytes
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap();
    let text = decode_err(&bytes[..pixel_data], "nopixels.dcm");
    assert!(text.contains("no pixel data"), "{text}");
}

#[test]
fn truncated_and_garbage_dicom_are_refused() {
    for name in [UNCOMPRESSED, JPEG2000, JPEG] {
        let bytes = read(name);
        for cut in [bytes.len() / 2, bytes.len() - 1, 300] {
            let text = decode_err(&bytes[..cut], "cut.dcm");
            assert!(
                text.contains("truncated") || text.contains("corrupt"),
                "{name} cut at {cut}: {text}"
            );
        }
    }
    let mut garbage = vec![0u8; 128];
    garbage.extend_from_slice(b"DICM");
    garbage.extend((0..500u32).map(|i| (i * 7919 % 251) as u8));
    let text = decode_err(&garbage, "garbage.dcm");
    assert!(text.contains("DICOM"), "{text}");
    let mut bare = vec![0u8; 128];
    bare.extend_from_slice(b"DICM\x02\x00");
    let text = decode_err(&bare, "scan.dcm");
    assert!(text.contains("DICOM"), "{text}");
}

#[test]
fn huge_rows_and_columns_are_refused_from_the_header() {
    let mut bytes = read(UNCOMPRESSED);
    let rows = us_value_offset(&bytes, 0x0028, 0x0010);
    bytes[rows..rows + 2].copy_from_slice(&60_000u16.to_le_bytes());
    let err = Xray::decode(&bytes, "huge.dcm").unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 1841,
                height: 60_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("huge.dcm"));
}

#[test]
fn a_compressed_frame_must_match_the_header() {
    // JPEG says 1024x1024; a header claiming 512 rows would make the decoder overrun its buffer.
    let mut bytes = read(JPEG);
    let rows = us_value_offset(&bytes, 0x0028, 0x0010);
    bytes[rows..rows + 2].copy_from_slice(&512u16.to_le_bytes());
    let text = decode_err(&bytes, "liar.dcm");
    assert!(text.contains("header says"), "{text}");
    let mut bytes = read(JPEG2000);
    let columns = us_value_offset(&bytes, 0x0028, 0x0011);
    bytes[columns..columns + 2].copy_from_slice(&100u16.to_le_bytes());
    let text = decode_err(&bytes, "liar2.dcm");
    assert!(text.contains("header says"), "{text}");
}

/// RLE Lossless is decoded by this crate: a real image re-encoded as RLE decodes to exactly the
/// uncompressed one, and a damaged RLE stream is an error.
#[test]
fn rle_lossless_decodes_exactly() {
    let plain = Xray::decode(&fuzz_support::small_uncompressed(64), "plain.dcm").unwrap();
    let rle_bytes = fuzz_support::small_rle(64);
    let rle = Xray::decode(&rle_bytes, "rle.dcm").unwrap();
    assert_eq!(rle.gray.dimensions(), (64, 64));
    assert_eq!(rle.gray, plain.gray);
    let info = dicom::decode(&rle_bytes, Path::new("rle.dcm"))
        .unwrap()
        .info;
    assert_eq!(info.transfer_syntax, "1.2.840.10008.1.2.5");
    // Cut the stream short inside the fragment (keeping the DICOM structure valid).
    let text = decode_err(&fuzz_support::small_rle_damaged(64), "short.dcm");
    assert!(text.contains("RLE"), "{text}");
}

/// Issue 20, defect 1: sequences nested far deeper than any real file (the committed 17 KB
/// deflated file nests 200,000 levels; the parser recursed once per level and overflowed its
/// stack, aborting the process) are refused before the parser sees them, in every encoding:
/// undefined and defined lengths, explicit and implicit VR, deflated.
#[test]
fn deeply_nested_sequences_are_refused_before_parsing() {
    for (name, bytes) in [
        ("fixture.dcm", fuzz_support::nested_fixture()),
        (
            "undefined.dcm",
            fuzz_support::nested_sequences(100_000, false),
        ),
        ("defined.dcm", fuzz_support::nested_sequences(100_000, true)),
        (
            "implicit.dcm",
            fuzz_support::nested_implicit_sequences(100_000),
        ),
        ("just_over.dcm", fuzz_support::nested_sequences(65, false)),
    ] {
        let text = decode_err(&bytes, name);
        assert!(
            text.contains("too deeply nested: its sequences nest more than 64 levels deep"),
            "{text}"
        );
    }
    // 64 levels are within the limit and decode like the file without them.
    let nested = Xray::decode(&fuzz_support::nested_sequences(64, true), "64.dcm").unwrap();
    let plain = Xray::decode(&fuzz_support::small_uncompressed(64), "plain.dcm").unwrap();
    assert_eq!(nested.gray, plain.gray);
}

/// Issue 20, defect 1 (element count): a data set of hundreds of thousands of elements is
/// refused before the parser builds an object for each.
#[test]
fn a_data_set_of_too_many_elements_is_refused() {
    let text = decode_err(&fuzz_support::many_elements(200_001), "many.dcm");
    assert!(
        text.contains("too large: its data set holds more than 200000 elements"),
        "{text}"
    );
    assert!(Xray::decode(&fuzz_support::many_elements(1000), "some.dcm").is_ok());
}

/// Issue 20, defect 9: left-aligned data (Bits Stored 12, High Bit 15) is shifted down and
/// decodes exactly like the same values right-aligned (High Bit 11); impossible High Bit values
/// are refused with a message instead of read silently.
#[test]
fn high_bit_is_honoured_and_impossible_values_are_refused() {
    let right = dicom::decode(&fuzz_support::twelve_bit(false), Path::new("right.dcm")).unwrap();
    let left = dicom::decode(&fuzz_support::twelve_bit(true), Path::new("left.dcm")).unwrap();
    assert_eq!((left.info.bits_stored, left.info.high_bit), (12, 15));
    assert_eq!((right.info.bits_stored, right.info.high_bit), (12, 11));
    assert_eq!(left.gray, right.gray);
    let (lo, hi) = left
        .gray
        .pixels()
        .fold((1f32, 0f32), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
    assert!(hi > lo, "the image is not flat: {lo}..{hi}");
    for (high_bit, bits_stored) in [(16, 12), (10, 12), (0, 15)] {
        let mut bytes = fuzz_support::small_uncompressed(64);
        fuzz_support::set_us(&mut bytes, 0x0028, 0x0101, bits_stored);
        fuzz_support::set_us(&mut bytes, 0x0028, 0x0102, high_bit);
        let text = decode_err(&bytes, "impossible.dcm");
        assert!(
            text.contains(&format!(
                "DICOM High Bit {high_bit} is impossible with Bits Stored {bits_stored} and Bits \
                 Allocated 16"
            )),
            "{text}"
        );
    }
}
