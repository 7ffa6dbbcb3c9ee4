//! Shared by the fuzz test, the long-running fuzz example and the DICOM tests: the seed inputs
//! (real files and small files derived from them) and a deterministic mutator.

#![allow(dead_code)] // each includer uses its own part

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use cxr_io::xray::Xray;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn dicom_dir() -> PathBuf {
    repo().join("../shared/data/dicom")
}

pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus")
}

pub const UNCOMPRESSED: &str = "pydicom-data_RG1_UNCR.dcm";
pub const JPEG2000: &str = "pydicom-data_RG1_J2KI.dcm";
pub const JPEG: &str = "torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm";
pub const RELABELLED: &str = "torchxrayvision_Fake_MONOHR1.dcm";

/// One seed: a name (with the extension a user's file would have) and its bytes.
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), format)
        .expect("encoding a test image in memory");
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("element present in the seed file")
}

/// Sets the explicit-VR little-endian US element `(group,element)` to `value`.
pub fn set_us(bytes: &mut [u8], group: u16, element: u16, value: u16) {
    let mut needle = group.to_le_bytes().to_vec();
    needle.extend_from_slice(&element.to_le_bytes());
    needle.extend_from_slice(b"US\x02\x00");
    let at = find(bytes, &needle) + 8;
    bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// Offset of the (last) Pixel Data element's tag.
fn pixel_data_at(bytes: &[u8]) -> usize {
    bytes
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .expect("pixel data present in the seed file")
}

/// The uncompressed 15-bit MONOCHROME1 CR cut down to its top-left `side` x `side` pixels:
/// the real header and real stored values, small enough to decode thousands of times.
pub fn small_uncompressed(side: u16) -> Vec<u8> {
    let full = std::fs::read(dicom_dir().join(UNCOMPRESSED)).expect("the shared DICOM data");
    let columns = 1841;
    let at = pixel_data_at(&full);
    let pixels = &full[at + 12..];
    let mut out = full[..at].to_vec();
    set_us(&mut out, 0x0028, 0x0010, side);
    set_us(&mut out, 0x0028, 0x0011, side);
    out.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0]);
    out.extend_from_slice(&(u32::from(side) * u32::from(side) * 2).to_le_bytes());
    for row in 0..usize::from(side) {
        let start = row * columns * 2;
        out.extend_from_slice(&pixels[start..start + usize::from(side) * 2]);
    }
    out
}

/// An encapsulated Pixel Data element holding one fragment (empty offset table).
fn encapsulated(fragment: &[u8]) -> Vec<u8> {
    let mut out = vec![
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    let mut fragment = fragment.to_vec();
    if fragment.len() % 2 == 1 {
        fragment.push(0);
    }
    out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    out.extend_from_slice(&(fragment.len() as u32).to_le_bytes());
    out.extend_from_slice(&fragment);
    out.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
    out
}

/// `small_uncompressed(side)` re-encoded as RLE Lossless (the transfer syntax UID has the same
/// length, so the meta group keeps its size).
pub fn small_rle(side: u16) -> Vec<u8> {
    let plain = small_uncompressed(side);
    let at = pixel_data_at(&plain);
    let pixels = &plain[at + 12..];
    let mut out = plain[..at].to_vec();
    let uid = find(&out, b"1.2.840.10008.1.2.1\0");
    out[uid + 18] = b'5';
    let (msb, lsb) = rle_segments(pixels);
    out.extend_from_slice(&encapsulated(&rle_fragment(&msb, &lsb)));
    out
}

/// `small_rle(side)` whose second segment stops short: valid DICOM, broken RLE.
pub fn small_rle_damaged(side: u16) -> Vec<u8> {
    let plain = small_uncompressed(side);
    let at = pixel_data_at(&plain);
    let mut out = small_rle(side)[..at].to_vec();
    let pixels = &plain[at + 12..];
    let (msb, mut lsb) = rle_segments(pixels);
    lsb.truncate(lsb.len() / 2);
    out.extend_from_slice(&encapsulated(&rle_fragment(&msb, &lsb)));
    out
}

/// The two RLE segments of 16-bit little-endian pixels: high bytes, then low bytes, each packed.
fn rle_segments(pixels: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let msb: Vec<u8> = pixels.chunks_exact(2).map(|p| p[1]).collect();
    let lsb: Vec<u8> = pixels.chunks_exact(2).map(|p| p[0]).collect();
    (pack_bits(&msb), pack_bits(&lsb))
}

/// One RLE frame: the 64-byte header (two segments and their offsets), then the segments.
fn rle_fragment(msb: &[u8], lsb: &[u8]) -> Vec<u8> {
    let mut fragment = vec![0u8; 64];
    fragment[0..4].copy_from_slice(&2u32.to_le_bytes());
    fragment[4..8].copy_from_slice(&64u32.to_le_bytes());
    fragment[8..12].copy_from_slice(&(64 + msb.len() as u32).to_le_bytes());
    fragment.extend_from_slice(msb);
    fragment.extend_from_slice(lsb);
    fragment
}

/// `PackBits`: runs of 3+ equal bytes as repeats, the rest as literals of at most 128.
pub fn pack_bits(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut literal: Vec<u8> = Vec::new();
    let flush = |literal: &mut Vec<u8>, out: &mut Vec<u8>| {
        for chunk in literal.chunks(128) {
            out.push((chunk.len() - 1) as u8);
            out.extend_from_slice(chunk);
        }
        literal.clear();
    };
    while i < data.len() {
        let run = data[i..]
            .iter()
            .take(128)
            .take_while(|&&b| b == data[i])
            .count();
        if run >= 3 {
            flush(&mut literal, &mut out);
            out.push((1i32 - run as i32) as i8 as u8);
            out.push(data[i]);
            i += run;
        } else {
            literal.push(data[i]);
            i += 1;
        }
    }
    flush(&mut literal, &mut out);
    out
}

/// The 8-bit JPEG-baseline DICOM with its image replaced by a small JPEG of its own pixels.
pub fn small_jpeg_dicom(side: u16) -> Vec<u8> {
    let full = std::fs::read(dicom_dir().join(JPEG)).expect("the shared DICOM data");
    let image = Xray::decode(&full, JPEG).expect("the seed decodes");
    let small = image::imageops::thumbnail(&image.original.to_luma8(), side.into(), side.into());
    let jpeg = encode(&DynamicImage::ImageLuma8(small), ImageFormat::Jpeg);
    let at = pixel_data_at(&full);
    let mut out = full[..at].to_vec();
    set_us(&mut out, 0x0028, 0x0010, side);
    set_us(&mut out, 0x0028, 0x0011, side);
    out.extend_from_slice(&encapsulated(&jpeg));
    out
}

/// `bytes` (a Part 10 file in explicit VR little endian) with its transfer syntax UID replaced
/// by `uid`, the meta group length fixed; the data set is deflated for the deflated syntax.
pub fn with_syntax(bytes: &[u8], uid: &str) -> Vec<u8> {
    let meta_start = 132;
    let group_len = u32::from_le_bytes(bytes[140..144].try_into().unwrap()) as usize;
    let meta_end = 144 + group_len;
    let ts = find(&bytes[..meta_end], &[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
    let old_len = usize::from(u16::from_le_bytes([bytes[ts + 6], bytes[ts + 7]]));
    let mut value = uid.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(0);
    }
    let mut out = bytes[..ts + 6].to_vec();
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(&bytes[ts + 8 + old_len..meta_end]);
    let new_group_len = (group_len + value.len() - old_len) as u32;
    out[140..144].copy_from_slice(&new_group_len.to_le_bytes());
    let _ = meta_start;
    let data = &bytes[meta_end..];
    if uid == "1.2.840.10008.1.2.1.99" {
        use std::io::Write;
        let mut deflater =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        deflater.write_all(data).unwrap();
        out.extend_from_slice(&deflater.finish().unwrap());
    } else {
        out.extend_from_slice(data);
    }
    out
}

/// `bytes` with a decimal-string element inserted before the pixel data (tag order is not
/// what a hostile file keeps either).
pub fn with_ds(bytes: &[u8], group: u16, element: u16, value: &str) -> Vec<u8> {
    let at = pixel_data_at(bytes);
    let mut value = value.as_bytes().to_vec();
    if value.len() % 2 == 1 {
        value.push(b' ');
    }
    let mut out = bytes[..at].to_vec();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(b"DS");
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(&bytes[at..]);
    out
}

/// `bytes` with `element` (encoded bytes) inserted before the pixel data.
fn inserted(bytes: &[u8], element: &[u8]) -> Vec<u8> {
    let at = pixel_data_at(bytes);
    [&bytes[..at], element, &bytes[at..]].concat()
}

/// `small_uncompressed(64)` with a Referenced Image Sequence nested `levels` deep before the
/// pixel data: each level a sequence holding one item, of undefined lengths closed by
/// delimiters, or (`defined`) of defined lengths.
pub fn nested_sequences(levels: usize, defined: bool) -> Vec<u8> {
    const LEVEL: usize = 12 + 8; // a sequence header and an item header
    let mut nest = Vec::with_capacity(levels * (LEVEL + 16));
    for depth in 0..levels {
        let inside = (levels - depth) * LEVEL;
        let (sequence, item) = if defined {
            ((inside - 12) as u32, (inside - LEVEL) as u32)
        } else {
            (u32::MAX, u32::MAX)
        };
        nest.extend_from_slice(&[0x08, 0x00, 0x40, 0x11, b'S', b'Q', 0, 0]);
        nest.extend_from_slice(&sequence.to_le_bytes());
        nest.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        nest.extend_from_slice(&item.to_le_bytes());
    }
    if !defined {
        for _ in 0..levels {
            nest.extend_from_slice(&[0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0]);
            nest.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        }
    }
    inserted(&small_uncompressed(64), &nest)
}

/// An implicit-VR little-endian file whose data set opens with a Referenced Image Sequence
/// nested `levels` deep, with defined lengths: no VR marks the sequences, the dictionary does.
pub fn nested_implicit_sequences(levels: usize) -> Vec<u8> {
    const LEVEL: usize = 8 + 8;
    let implicit = with_syntax(&small_uncompressed(64), "1.2.840.10008.1.2");
    let meta_end = 144 + u32::from_le_bytes(implicit[140..144].try_into().unwrap()) as usize;
    let mut out = implicit[..meta_end].to_vec();
    for depth in 0..levels {
        let inside = (levels - depth) * LEVEL;
        out.extend_from_slice(&[0x08, 0x00, 0x40, 0x11]);
        out.extend_from_slice(&((inside - 8) as u32).to_le_bytes());
        out.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
        out.extend_from_slice(&((inside - LEVEL) as u32).to_le_bytes());
    }
    out.extend_from_slice(&implicit[meta_end..]);
    out
}

/// `small_uncompressed(64)` with `count` empty private elements before the pixel data.
pub fn many_elements(count: usize) -> Vec<u8> {
    let element = [0x09, 0x00, 0x00, 0x10, b'L', b'O', 0, 0];
    inserted(&small_uncompressed(64), &element.repeat(count))
}

/// The committed poisoned file: a 17 KB deflated radiograph whose data set nests a sequence
/// 200,000 levels deep (written by `python/make_hostile_dicom.py`).
pub fn nested_fixture() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nested-sequences.dcm"))
        .expect("the committed nested-sequences fixture")
}

/// `small_uncompressed(64)` rewritten to 12 stored bits, right-aligned (High Bit 11) or, with
/// `left_aligned`, in the top bits of each word (High Bit 15): the same stored values.
pub fn twelve_bit(left_aligned: bool) -> Vec<u8> {
    let mut bytes = small_uncompressed(64);
    set_us(&mut bytes, 0x0028, 0x0101, 12);
    set_us(
        &mut bytes,
        0x0028,
        0x0102,
        if left_aligned { 15 } else { 11 },
    );
    let at = pixel_data_at(&bytes) + 12;
    for word in bytes[at..].chunks_exact_mut(2) {
        let value = u16::from_le_bytes([word[0], word[1]]) >> 3;
        let stored = if left_aligned { value << 4 } else { value };
        word.copy_from_slice(&stored.to_le_bytes());
    }
    bytes
}

/// Synthesised hostile DICOM files, each with what the decoder must say (None: decoding is
/// fine too): wrong VR lengths, huge Rows/Columns, odd transfer syntaxes, extreme rescale
/// values, a deflated data set.
pub fn dicom_synthesized() -> Vec<(String, Vec<u8>, Option<&'static str>)> {
    let base = small_uncompressed(64);
    let mut out: Vec<(String, Vec<u8>, Option<&'static str>)> = Vec::new();
    // Rows claims a 4-byte value: the element after it is misread.
    let mut wrong_vr = base.clone();
    let rows = find(&wrong_vr, &[0x28, 0x00, 0x10, 0x00, b'U', b'S']);
    wrong_vr[rows + 6] = 4;
    out.push(("wrong_vr_length.dcm".into(), wrong_vr, None));
    // A length past the end of the file.
    let mut past_end = base.clone();
    past_end[rows + 6..rows + 8].copy_from_slice(&0xFFF0u16.to_le_bytes());
    out.push(("length_past_end.dcm".into(), past_end, None));
    for (name, r, c) in [
        ("huge_rows.dcm", 0xFFFF, 64),
        ("huge_both.dcm", 0xFFFF, 0xFFFF),
        ("zero_rows.dcm", 0, 64),
    ] {
        let mut b = base.clone();
        set_us(&mut b, 0x0028, 0x0010, r);
        set_us(&mut b, 0x0028, 0x0011, c);
        out.push((name.into(), b, None));
    }
    for (name, uid) in [
        ("explicit_be.dcm", "1.2.840.10008.1.2.2"),
        ("implicit_le.dcm", "1.2.840.10008.1.2"),
        ("jpeg_ls_claimed.dcm", "1.2.840.10008.1.2.4.80"),
        ("mpeg2_claimed.dcm", "1.2.840.10008.1.2.4.100"),
        ("unknown_syntax.dcm", "9.9.999.1"),
    ] {
        out.push((name.into(), with_syntax(&base, uid), None));
    }
    out.push((
        "deflated.dcm".into(),
        with_syntax(&base, "1.2.840.10008.1.2.1.99"),
        None,
    ));
    for (name, slope, intercept) in [
        ("slope_1e308.dcm", "1e308", "0"),
        ("slope_minus_1e308.dcm", "-1e308", "0"),
        ("intercept_1e308.dcm", "1", "1e308"),
        ("slope_nan.dcm", "NaN", "0"),
        ("slope_inf.dcm", "inf", "0"),
    ] {
        let b = with_ds(&base, 0x0028, 0x1052, intercept);
        let b = with_ds(&b, 0x0028, 0x1053, slope);
        // 1 x v + 1e308 is finite (and windowed like any other value); 1e308 x v is not.
        let expect = slope.contains("308").then_some("non-finite");
        out.push((name.into(), b, expect));
    }
    out.push((
        "slope_tiny.dcm".into(),
        with_ds(&base, 0x0028, 0x1053, "1e-300"),
        None,
    ));
    for (name, bytes) in [
        ("nested_200000_deflated.dcm", nested_fixture()),
        ("nested_1000.dcm", nested_sequences(1000, false)),
        ("nested_1000_defined.dcm", nested_sequences(1000, true)),
        ("nested_1000_implicit.dcm", nested_implicit_sequences(1000)),
    ] {
        out.push((name.into(), bytes, Some("too deeply nested")));
    }
    out.push(("nested_64.dcm".into(), nested_sequences(64, false), None));
    out.push(("left_aligned_12_bit.dcm".into(), twelve_bit(true), None));
    out
}

/// Every kind of input the decoder reads, small enough for thousands of decodes, plus (when
/// `full`) the real DICOM files at full size (slow: up to a second for JPEG 2000).
pub fn seeds(full: bool) -> Vec<Seed> {
    let mut seeds = Vec::new();
    for name in ["nih_00001299_000.png", "hannover_e1446fe8.png"] {
        seeds.push(Seed {
            name: name.into(),
            bytes: std::fs::read(repo().join("samples").join(name)).expect("sample radiograph"),
        });
    }
    let card = ImageBuffer::from_fn(48, 40, |x, y| Rgb([(x * 5) as u8, (y * 6) as u8, 90]));
    seeds.push(Seed {
        name: "card.jpg".into(),
        bytes: encode(&DynamicImage::ImageRgb8(card), ImageFormat::Jpeg),
    });
    let ramp = ImageBuffer::from_fn(40, 32, |x, y| Luma([(x * 1500 + y * 13) as u16]));
    seeds.push(Seed {
        name: "ramp16.png".into(),
        bytes: encode(&DynamicImage::ImageLuma16(ramp), ImageFormat::Png),
    });
    seeds.push(Seed {
        name: "small_uncompressed.dcm".into(),
        bytes: small_uncompressed(48),
    });
    seeds.push(Seed {
        name: "small_rle.dcm".into(),
        bytes: small_rle(48),
    });
    seeds.push(Seed {
        name: "small_jpeg.dcm".into(),
        bytes: small_jpeg_dicom(48),
    });
    for (name, bytes, _) in dicom_synthesized() {
        seeds.push(Seed { name, bytes });
    }
    if full {
        for name in [UNCOMPRESSED, JPEG2000, JPEG, RELABELLED] {
            seeds.push(Seed {
                name: name.into(),
                bytes: std::fs::read(dicom_dir().join(name)).expect("the shared DICOM data"),
            });
        }
    }
    seeds
}

/// Small numbers that break parsers: zero, one, sign and width boundaries, the decoder's limit.
const INTERESTING: [u32; 14] = [
    0,
    1,
    2,
    7,
    8,
    15,
    16,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    16_385,
    0xFFFF_FFFF,
];

/// Offsets of header fields worth rewriting: DICOM image attributes and element lengths, PNG
/// IHDR, JPEG SOF.
fn header_fields(bytes: &[u8]) -> Vec<usize> {
    let mut fields = Vec::new();
    let scan = &bytes[..bytes.len().min(4096)];
    for (i, w) in scan.windows(4).enumerate() {
        // DICOM group 0028 (image pixel module) and 7FE0 (pixel data), items, meta group.
        if (w[0] == 0x28 && w[1] == 0x00)
            || (w[0] == 0xE0 && w[1] == 0x7F)
            || (w[0] == 0xFE && w[1] == 0xFF)
            || (w[0] == 0x02 && w[1] == 0x00 && i > 128)
        {
            fields.extend([i + 6, i + 8]);
        }
        if w == b"IHDR" {
            fields.extend([i + 4, i + 8, i + 12, i + 13]);
        }
        if w[0] == 0xFF && (0xC0..=0xC3).contains(&w[1]) {
            fields.extend([i + 5, i + 7, i + 9]);
        }
        if w[0] == 0xFF && w[1] == 0x51 {
            // JPEG 2000 SIZ: image and offset sizes, component count.
            fields.extend([i + 6, i + 10, i + 14, i + 38]);
        }
    }
    fields.retain(|&f| f + 4 <= bytes.len());
    fields
}

/// One to four stacked mutations of `seed`.
pub fn mutate(seed: &[u8], rng: &mut StdRng) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    let fields = header_fields(seed);
    for _ in 0..rng.random_range(1..=4) {
        if bytes.is_empty() {
            bytes.push(rng.random());
        }
        let len = bytes.len();
        // Headers are where parsers decide what to allocate: aim half the edits at them.
        let at = if rng.random_bool(0.5) {
            rng.random_range(0..len.min(2048))
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..7) {
            0 => {
                for _ in 0..rng.random_range(1..=8) {
                    let i = if rng.random_bool(0.5) {
                        at
                    } else {
                        rng.random_range(0..len)
                    };
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 => {
                let n = rng.random_range(1..=16);
                let insert: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                bytes.splice(at..at, insert);
            }
            2 => {
                let end = (at + rng.random_range(1..=64)).min(len);
                bytes.drain(at..end);
            }
            3 => bytes.truncate(rng.random_range(0..len)),
            4 | 5 if !fields.is_empty() => {
                let field = fields[rng.random_range(0..fields.len())];
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                let width = if rng.random_bool(0.5) { 2 } else { 4 };
                let value = if rng.random_bool(0.2) {
                    value.wrapping_add(rng.random_range(0..3)).wrapping_sub(1)
                } else {
                    value
                };
                let le = rng.random_bool(0.5);
                for k in 0..width {
                    if let Some(b) = bytes.get_mut(field + k) {
                        let shift = if le { 8 * k } else { 8 * (width - 1 - k) };
                        *b = (value >> shift) as u8;
                    }
                }
            }
            _ => {
                // Splice: a chunk of the file copied over another place.
                let from = rng.random_range(0..len);
                let n = rng.random_range(1..=256).min(len - from);
                let chunk = bytes[from..from + n].to_vec();
                let to = at.min(len - n);
                bytes[to..to + n].copy_from_slice(&chunk);
            }
        }
    }
    bytes
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// What one decode did.
pub enum Outcome {
    Decoded,
    Refused,
    /// A third-party decoder panicked inside `Xray::decode`, which caught it.
    DecoderPanicCaught(String),
    /// The error did not name the file or spanned lines.
    BadMessage(String),
    /// A decoded image with values outside [0, 1] or no pixels.
    BadImage(String),
    Panicked(String),
}

/// Decodes `bytes` as `name`, catching any panic.
pub fn run_one(bytes: &[u8], name: &str) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| Xray::decode(bytes, name))) {
        Err(panic) => Outcome::Panicked(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "non-text panic".into()),
        ),
        Ok(Err(e)) => {
            let text = e.to_string();
            if !text.contains(name) || text.contains('\n') {
                Outcome::BadMessage(text)
            } else if text.contains("decoder crashed") {
                Outcome::DecoderPanicCaught(text)
            } else {
                Outcome::Refused
            }
        }
        Ok(Ok(x)) => {
            let ok = x.width() > 0
                && x.height() > 0
                && x.gray.pixels().all(|p| (0.0..=1.0).contains(&p.0[0]));
            if ok {
                Outcome::Decoded
            } else {
                Outcome::BadImage(format!("{}x{}", x.width(), x.height()))
            }
        }
    }
}
