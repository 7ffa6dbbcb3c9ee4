//! Every supported input format decodes to the same kind of grayscale image, and every kind of
//! bad input is a clear error naming the file.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::io::Cursor;
use std::path::{Path, PathBuf};

use cxr_io::Error;
use cxr_io::xray::Xray;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, LumaA, Rgb, Rgba};

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

/// A 40x30 test card: horizontal ramp, vertical ramp, constant.
fn rgb_card() -> ImageBuffer<Rgb<u8>, Vec<u8>> {
    ImageBuffer::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 100]))
}

fn decode_err(bytes: &[u8], name: &str) -> String {
    let err = Xray::decode(bytes, name).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(name), "error does not name the file: {text}");
    text
}

#[test]
fn real_radiograph_8bit_gray() {
    let x = Xray::open(sample("nih_00001299_000.png")).unwrap();
    assert_eq!(
        (x.width(), x.height()),
        (x.original.width(), x.original.height())
    );
    assert!(matches!(x.original, DynamicImage::ImageLuma8(_)));
    let (lo, hi) = x
        .gray
        .pixels()
        .fold((1f32, 0f32), |(lo, hi), p| (lo.min(p.0[0]), hi.max(p.0[0])));
    assert!(lo >= 0.0 && hi <= 1.0 && hi - lo > 0.5, "range {lo}..{hi}");
    assert_eq!(x.sha256.len(), 64);
}

#[test]
fn sixteen_bit_precision_is_kept() {
    let img = ImageBuffer::from_fn(64, 8, |x, _| Luma([(x * 1000 + 7) as u16]));
    let bytes = encode(&DynamicImage::ImageLuma16(img), ImageFormat::Png);
    let x = Xray::decode(&bytes, "sixteen.png").unwrap();
    assert!(matches!(x.original, DynamicImage::ImageLuma16(_)));
    for (col, expected) in [(0u32, 7.0f32), (1, 1007.0), (63, 63_007.0)] {
        let got = x.gray.get_pixel(col, 3).0[0];
        assert!((got - expected / 65535.0).abs() < 1e-6, "col {col}: {got}");
    }
    // Neighbouring 16-bit values stay distinct: an 8-bit detour would merge them.
    let fine = ImageBuffer::from_fn(2, 1, |x, _| Luma([30_000 + x as u16]));
    let x = Xray::decode(
        &encode(&DynamicImage::ImageLuma16(fine), ImageFormat::Png),
        "fine.png",
    )
    .unwrap();
    assert!(x.gray.get_pixel(1, 0).0[0] > x.gray.get_pixel(0, 0).0[0]);
}

#[test]
fn rgb_rgba_and_gray_alpha_become_luma() {
    let rgb = DynamicImage::ImageRgb8(rgb_card());
    let reference = rgb.to_luma32f();
    let rgba = DynamicImage::ImageRgba8(ImageBuffer::from_fn(40, 30, |x, y| {
        let Rgb([r, g, b]) = *rgb_card().get_pixel(x, y);
        Rgba([r, g, b, (x * 5) as u8])
    }));
    for (name, image) in [("rgb.png", rgb), ("rgba.png", rgba)] {
        let x = Xray::decode(&encode(&image, ImageFormat::Png), name).unwrap();
        assert_eq!(x.gray.dimensions(), (40, 30));
        for (a, b) in x.gray.pixels().zip(reference.pixels()) {
            assert!(
                (a.0[0] - b.0[0]).abs() < 1e-6,
                "{name}: alpha must not change luma"
            );
        }
    }
    let la = DynamicImage::ImageLumaA8(ImageBuffer::from_fn(5, 5, |x, _| {
        LumaA([(x * 50) as u8, 10])
    }));
    let x = Xray::decode(&encode(&la, ImageFormat::Png), "la.png").unwrap();
    assert!((x.gray.get_pixel(4, 0).0[0] - 200.0 / 255.0).abs() < 1e-6);
}

#[test]
fn jpeg_gray_and_colour() {
    let gray = DynamicImage::ImageLuma8(ImageBuffer::from_fn(64, 48, |x, _| Luma([(x * 4) as u8])));
    let x = Xray::decode(&encode(&gray, ImageFormat::Jpeg), "gray.jpg").unwrap();
    assert_eq!((x.width(), x.height()), (64, 48));
    assert!((x.gray.get_pixel(32, 20).0[0] - 128.0 / 255.0).abs() < 0.03);
    let colour = DynamicImage::ImageRgb8(rgb_card());
    let x = Xray::decode(&encode(&colour, ImageFormat::Jpeg), "colour.jpeg").unwrap();
    assert_eq!((x.width(), x.height()), (40, 30));
}

#[test]
fn truncated_files_are_refused() {
    let bytes = std::fs::read(sample("nih_00001299_000.png")).unwrap();
    let text = decode_err(&bytes[..bytes.len() / 2], "half.png");
    assert!(
        text.contains("truncated") || text.contains("corrupt"),
        "{text}"
    );
    let jpeg = encode(&DynamicImage::ImageRgb8(rgb_card()), ImageFormat::Jpeg);
    let text = decode_err(&jpeg[..jpeg.len() / 3], "half.jpg");
    assert!(
        text.contains("truncated") || text.contains("corrupt"),
        "{text}"
    );
}

#[test]
fn corrupt_pixel_data_is_refused() {
    let mut bytes = std::fs::read(sample("nih_00001299_000.png")).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 200] {
        *b ^= 0x5a;
    }
    let text = decode_err(&bytes, "flipped.png");
    assert!(
        text.contains("corrupt") || text.contains("truncated"),
        "{text}"
    );
}

#[test]
fn non_images_and_empty_files_are_refused() {
    assert!(decode_err(b"path,label\nx.png,covid\n", "notes.csv").contains("not a PNG or JPEG"));
    assert!(decode_err(b"", "empty.png").contains("empty file"));
    // A DICOM preamble and marker followed by a cut-off meta group: a clear DICOM error.
    let mut dicom = vec![0u8; 128];
    dicom.extend_from_slice(b"DICM\x02\x00");
    let text = decode_err(&dicom, "scan.dcm");
    assert!(
        text.contains("DICOM") && (text.contains("truncated") || text.contains("corrupt")),
        "{text}"
    );
}

/// A PNG with only a header claiming `width` x `height` (colour type and depth given).
fn png_header(width: u32, height: u32, depth: u8, colour: u8) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        crc32fast::hash(bytes)
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IDAT");
    png.extend_from_slice(&crc32(b"IDAT").to_be_bytes());
    png
}

#[test]
fn enormous_dimensions_are_refused_before_allocating() {
    let err = Xray::decode(&png_header(100_000, 90_000, 8, 0), "bomb.png").unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 100_000,
                height: 90_000,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("bomb.png"));
    // Within the side limit, but 16k x 16k RGBA16 would need 2 GiB.
    let text = decode_err(&png_header(16_000, 16_000, 16, 6), "wide.png");
    assert!(text.contains("MiB"), "{text}");
    let text = decode_err(&png_header(0, 10, 8, 0), "zero.png");
    assert!(text.contains("zero.png"), "{text}");
}

#[test]
fn unreadable_paths_name_the_path() {
    let missing = Xray::open("/nonexistent/dir/x.png").unwrap_err();
    assert!(matches!(missing, Error::Io { .. }));
    assert!(
        missing.to_string().contains("/nonexistent/dir/x.png"),
        "{missing}"
    );
    let dir = tempfile::tempdir().unwrap();
    let not_a_file = Xray::open(dir.path()).unwrap_err();
    assert!(
        not_a_file
            .to_string()
            .contains(&dir.path().display().to_string())
    );
}
