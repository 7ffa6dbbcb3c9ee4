//! DICOM input: a single-frame (or the first frame of a multi-frame) radiograph, uncompressed or
//! compressed (JPEG baseline/extended/lossless, JPEG 2000, RLE, deflated), becomes the same kind
//! of image as a PNG: windowed grayscale with white bone.
//!
//! The order of operations follows the DICOM grayscale pipeline (PS3.4 N.2): stored value
//! (bits stored, sign) -> modality LUT (rescale slope and intercept) -> VOI LUT (the first VOI
//! LUT table, else the first window centre/width with its VOI LUT function, else the image's own
//! min..max) -> MONOCHROME1 inverted. Everything up to that point is computed in `f64` from the
//! stored 8-16-bit integers; only the result becomes `f32` (the analysis image) and 16-bit (the
//! displayed original).
//!
//! Hostile files are refused before anything large is allocated: every element length is
//! checked against the bytes that remain, Rows/Columns against [`MAX_SIDE`], the whole pixel
//! payload (rows x columns x frames x samples x bytes) against 1 GiB, and a compressed frame's
//! own header (JPEG SOF, JPEG 2000 SIZ, RLE header) must agree with Rows/Columns before a
//! decoder runs. RLE is decoded here (the library's RLE decoder trusts its input).

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use image::{ImageBuffer, Luma};
use serde::{Deserialize, Serialize};

use crate::input::{MemoryBudget, Reservation};
use crate::xray::{GrayF32, MAX_DECODE_BYTES, MAX_SIDE};
use crate::{CoreError, Result};

/// Patient and study identifiers of a DICOM file. Kept out of reports unless the user asks
/// (`--identifiers`): they are personal data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DicomIdentifiers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study_instance_uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accession_number: Option<String>,
    /// As stored: `YYYYMMDD`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub study_date: Option<String>,
}

/// Facts about how the pixels were stored and mapped, for tests and diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    pub transfer_syntax: String,
    pub photometric: String,
    pub rows: u32,
    pub columns: u32,
    pub frames: u32,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub signed: bool,
    pub rescale: (f64, f64),
    /// How stored values became display values.
    pub voi: Voi,
}

/// The VOI transformation applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Voi {
    /// The first item of the VOI LUT Sequence: `entries` values from `first`.
    Table { first: i64, entries: usize },
    /// The first Window Center / Window Width with its VOI LUT Function.
    Window {
        center: f64,
        width: f64,
        function: WindowFunction,
    },
    /// No VOI in the file: the image's own range of modality values, stretched.
    MinMax { min: f64, max: f64 },
}

/// VOI LUT Function (0028,1056).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunction {
    Linear,
    LinearExact,
    Sigmoid,
}

/// A decoded DICOM radiograph.
#[derive(Debug, Clone)]
pub struct DicomImage {
    /// Display values (after VOI and MONOCHROME1 inversion) at 16 bits.
    pub original: ImageBuffer<Luma<u16>, Vec<u16>>,
    /// The same values in [0, 1] at full precision.
    pub gray: GrayF32,
    pub identifiers: DicomIdentifiers,
    pub info: DicomInfo,
    /// This image's share of the process-wide memory budget.
    pub(crate) memory: Option<Arc<Reservation>>,
}

/// Whether `bytes` start like a DICOM file (Part 10: 128-byte preamble, then `DICM`).
#[must_use]
pub fn is_dicom(bytes: &[u8]) -> bool {
    bytes.len() >= 132 && &bytes[128..132] == b"DICM"
}

const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_VR_BE: &str = "1.2.840.10008.1.2.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const RLE: &str = "1.2.840.10008.1.2.5";

/// Decodes a DICOM Part 10 file held in memory; `path` names it in errors.
pub fn decode(bytes: &[u8], path: &Path) -> Result<DicomImage> {
    let fail = |reason: String| CoreError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    if !is_dicom(bytes) {
        return Err(fail("not a DICOM file (no DICM marker at byte 128)".into()));
    }
    // Memory: the data set as parsed (the file, or what a deflated one inflates to, twice:
    // the structure check's copy and the parser's), then the pixels once their size is known.
    // Two steps, so the second is taken under `staged` (see `Reservation::grow`).
    let order = crate::input::staged();
    let mut memory =
        MemoryBudget::global()?.reserve(2 * bytes.len() as u64 + 2 * inflated_len(bytes), path)?;
    check_structure(bytes).map_err(|e| fail(format!("DICOM file is {e}")))?;
    let object = OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .map_err(|e| fail(format!("corrupt DICOM file ({})", one_line(&e))))?;
    let header = Header::read(&object).map_err(fail)?;
    if header.rows > MAX_SIDE || header.columns > MAX_SIDE {
        return Err(CoreError::TooLarge {
            path: path.to_path_buf(),
            width: header.columns,
            height: header.rows,
            limit: MAX_SIDE,
        });
    }
    crate::xray::check_pixels(
        path,
        u64::from(header.rows) * u64::from(header.columns) * u64::from(header.frames),
        u64::from(header.samples) * u64::from(header.bits_allocated / 8),
    )?;
    let payload = u64::from(header.rows)
        * u64::from(header.columns)
        * u64::from(header.frames)
        * u64::from(header.samples)
        * u64::from(header.bits_allocated / 8);
    if payload > MAX_DECODE_BYTES {
        return Err(fail(format!(
            "DICOM pixel data of {} x {} x {} frames would need {} MiB, more than the {} MiB \
             this tool allows per image",
            header.columns,
            header.rows,
            header.frames,
            payload >> 20,
            MAX_DECODE_BYTES >> 20
        )));
    }
    // The frame as decoded and copied (up to 2 x 2 bytes a sample), its i32 samples (and a
    // copy for planar colour), the f32 values and their copy, the 16-bit original.
    memory.grow(
        u64::from(header.rows) * u64::from(header.columns) * (12 * u64::from(header.samples) + 10),
        path,
    )?;
    drop(order);
    let samples = frame_samples(&object, &header).map_err(fail)?;
    check_rescale(&header, &samples).map_err(fail)?;
    let identifiers = identifiers(&object);
    let (values, voi) = to_display(&object, &header, &samples);
    let (width, height) = (header.columns, header.rows);
    let gray = GrayF32::from_raw(width, height, values.clone())
        .ok_or_else(|| fail("pixel count does not match Rows x Columns".into()))?;
    let original = ImageBuffer::from_raw(
        width,
        height,
        values
            .iter()
            .map(|&v| (f64::from(v) * 65535.0).round() as u16)
            .collect(),
    )
    .ok_or_else(|| fail("pixel count does not match Rows x Columns".into()))?;
    drop(object);
    memory.retain(u64::from(width) * u64::from(height) * (2 + 4));
    Ok(DicomImage {
        original,
        gray,
        memory: Some(Arc::new(memory)),
        identifiers,
        info: DicomInfo {
            transfer_syntax: header.transfer_syntax,
            photometric: header.photometric,
            rows: height,
            columns: width,
            frames: header.frames,
            bits_allocated: header.bits_allocated,
            bits_stored: header.bits_stored,
            signed: header.signed,
            rescale: (header.slope, header.intercept),
            voi,
        },
    })
}

/// Refuses a modality LUT (Rescale Slope and Intercept) that makes any pixel non-finite.
fn check_rescale(header: &Header, samples: &[i32]) -> std::result::Result<(), String> {
    if header.samples != 1 {
        return Ok(());
    }
    // The modality LUT is linear: its extremes are at the extreme stored values.
    let (lo, hi) = samples
        .iter()
        .fold((i32::MAX, i32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let finite = [lo, hi]
        .iter()
        .all(|&v| (f64::from(v) * header.slope + header.intercept).is_finite());
    if !finite || !header.slope.is_finite() || !header.intercept.is_finite() {
        let show = |v: f64| {
            if v.abs() < 1e6 {
                v.to_string()
            } else {
                format!("{v:e}")
            }
        };
        return Err(format!(
            "DICOM Rescale Slope ({}) and Rescale Intercept ({}) make pixel values \
             non-finite (NaN or infinite)",
            show(header.slope),
            show(header.intercept)
        ));
    }
    Ok(())
}

/// A library error on one line, without its backtrace or source chain noise.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

// ---------------------------------------------------------------------------------------------
// Structure check: no declared length beyond the end of the file
// ---------------------------------------------------------------------------------------------

/// Walks the file meta group and the data set, checking every declared element and item length
/// against the bytes that remain, so that the parser never allocates for data that is not there
/// (a flipped bit in a length would otherwise cost up to 4 GiB). The deflated transfer syntax is
/// inflated here first, at most 1 GiB.
fn check_structure(bytes: &[u8]) -> std::result::Result<(), String> {
    let (syntax, data) = split_meta(bytes)?;
    match syntax.as_str() {
        DEFLATED => {
            let mut inflated = Vec::new();
            flate2::read::DeflateDecoder::new(data)
                .take(MAX_DECODE_BYTES + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| format!("corrupt: deflated data set ({e})"))?;
            if inflated.len() as u64 > MAX_DECODE_BYTES {
                return Err(format!(
                    "too large: the deflated data set inflates past {} MiB",
                    MAX_DECODE_BYTES >> 20
                ));
            }
            check_data_set(&inflated, true, false)
        }
        IMPLICIT_VR_LE => check_data_set(data, false, false),
        EXPLICIT_VR_BE => check_data_set(data, true, true),
        _ => check_data_set(data, true, false),
    }
}

/// How many bytes a deflated data set inflates to (at most one more than the limit), counted
/// without keeping them; 0 for other transfer syntaxes or a broken file meta group.
fn inflated_len(bytes: &[u8]) -> u64 {
    match split_meta(bytes) {
        Ok((syntax, data)) if syntax == DEFLATED => std::io::copy(
            &mut flate2::read::DeflateDecoder::new(data).take(MAX_DECODE_BYTES + 1),
            &mut std::io::sink(),
        )
        .unwrap_or(MAX_DECODE_BYTES + 1),
        _ => 0,
    }
}

/// The transfer syntax from the file meta group, and the data set after it.
fn split_meta(bytes: &[u8]) -> std::result::Result<(String, &[u8]), String> {
    let meta = &bytes[132..];
    let mut pos = 0;
    let mut syntax = None;
    while pos + 8 <= meta.len() && u16::from_le_bytes([meta[pos], meta[pos + 1]]) == 0x0002 {
        let element = u16::from_le_bytes([meta[pos + 2], meta[pos + 3]]);
        let (header, len) = element_header(&meta[pos..], true, false)
            .ok_or_else(|| format!("truncated in the file meta group at byte {}", pos + 132))?;
        let Some(len) = len else {
            return Err("corrupt: undefined length in the file meta group".into());
        };
        let start = pos + header;
        if len > meta.len().saturating_sub(start) {
            return Err(format!(
                "truncated: meta element (0002,{element:04X}) claims {len} bytes, {} remain",
                meta.len().saturating_sub(start)
            ));
        }
        if element == 0x0010 {
            let text = String::from_utf8_lossy(&meta[start..start + len]);
            syntax = Some(text.trim_end_matches(['\0', ' ']).to_owned());
        }
        pos = start + len;
    }
    let syntax = syntax.ok_or("corrupt: no transfer syntax in the file meta group")?;
    Ok((syntax, &meta[pos..]))
}

/// Header size and length (None: undefined) of the element at the start of `b`.
fn element_header(b: &[u8], explicit: bool, big_endian: bool) -> Option<(usize, Option<usize>)> {
    let u16_at = |i: usize| {
        let pair = [*b.get(i)?, *b.get(i + 1)?];
        Some(if big_endian {
            u16::from_be_bytes(pair)
        } else {
            u16::from_le_bytes(pair)
        })
    };
    let u32_at = |i: usize| {
        let quad = [*b.get(i)?, *b.get(i + 1)?, *b.get(i + 2)?, *b.get(i + 3)?];
        Some(if big_endian {
            u32::from_be_bytes(quad)
        } else {
            u32::from_le_bytes(quad)
        })
    };
    let group = u16_at(0)?;
    let defined = |len: u32| (len != u32::MAX).then_some(len as usize);
    if group == 0xFFFE || !explicit {
        // Items and delimiters never have a VR; implicit VR elements neither.
        return Some((8, defined(u32_at(4)?)));
    }
    let vr = [*b.get(4)?, *b.get(5)?];
    if matches!(
        &vr,
        b"OB"
            | b"OD"
            | b"OF"
            | b"OL"
            | b"OV"
            | b"OW"
            | b"SQ"
            | b"SV"
            | b"UC"
            | b"UN"
            | b"UR"
            | b"UT"
            | b"UV"
    ) {
        Some((12, defined(u32_at(8)?)))
    } else {
        Some((8, Some(usize::from(u16_at(6)?))))
    }
}

fn check_data_set(
    data: &[u8],
    explicit: bool,
    big_endian: bool,
) -> std::result::Result<(), String> {
    let mut pos = 0;
    // Inside encapsulated pixel data, items hold compressed bytes, not elements.
    let mut in_fragments = false;
    while data.len() - pos >= 8 {
        let b = &data[pos..];
        let (group, element) = if big_endian {
            (
                u16::from_be_bytes([b[0], b[1]]),
                u16::from_be_bytes([b[2], b[3]]),
            )
        } else {
            (
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]]),
            )
        };
        let (header, len) = element_header(b, explicit, big_endian)
            .ok_or_else(|| format!("truncated at byte {pos} of the data set"))?;
        let remaining = data.len() - pos - header;
        if let Some(len) = len
            && len > remaining
        {
            return Err(format!(
                "truncated: element ({group:04X},{element:04X}) claims {len} bytes, only \
                 {remaining} remain"
            ));
        }
        let is_sequence = explicit && group != 0xFFFE && &b[4..6] == b"SQ";
        pos += header;
        match (group, element, len) {
            (0xFFFE, 0xE0DD, _) => in_fragments = false,
            (0xFFFE, 0xE000, Some(len)) if in_fragments => pos += len,
            // Items, delimiters and sequences: their contents are elements, walked in turn.
            (0xFFFE, _, _) | (_, _, None) => {
                if (group, element) == (0x7FE0, 0x0010) {
                    in_fragments = true;
                }
            }
            (_, _, Some(_)) if is_sequence => {}
            (_, _, Some(len)) => pos += len,
        }
    }
    if in_fragments || pos < data.len() {
        return Err(format!(
            "truncated: it ends inside {}",
            if in_fragments {
                "the compressed pixel data"
            } else {
                "an element header"
            }
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// The image attributes that decide how pixels are read.
struct Header {
    transfer_syntax: String,
    rows: u32,
    columns: u32,
    frames: u32,
    samples: u16,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    photometric: String,
    planar: u16,
    slope: f64,
    intercept: f64,
}

fn element(object: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<&InMemElement> {
    object.element_opt(tag).ok().flatten()
}

fn text(object: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<String> {
    let value = element(object, tag)?.to_str().ok()?;
    let value = value.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!value.is_empty()).then(|| value.to_owned())
}

fn number(object: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<f64> {
    element(object, tag)?
        .to_multi_float64()
        .ok()?
        .first()
        .copied()
        .filter(|v| v.is_finite())
}

impl Header {
    fn read(object: &DefaultDicomObject) -> std::result::Result<Self, String> {
        let int = |tag, name: &str| -> std::result::Result<Option<u32>, String> {
            match element(object, tag) {
                None => Ok(None),
                Some(e) => e
                    .to_int::<u32>()
                    .map(Some)
                    .map_err(|_| format!("DICOM attribute {name} is not a valid number")),
            }
        };
        let required = |tag, name: &str| {
            int(tag, name)?.ok_or_else(|| format!("DICOM file has no {name}: not an image"))
        };
        if element(object, tags::PIXEL_DATA).is_none() {
            return Err("DICOM file has no pixel data (Pixel Data element missing)".into());
        }
        let rows = required(tags::ROWS, "Rows")?;
        let columns = required(tags::COLUMNS, "Columns")?;
        if rows == 0 || columns == 0 {
            return Err(format!("DICOM image has no pixels ({columns}x{rows})"));
        }
        let frames = int(tags::NUMBER_OF_FRAMES, "Number of Frames")?.unwrap_or(1);
        if frames == 0 {
            return Err("DICOM Number of Frames is 0".into());
        }
        let samples = int(tags::SAMPLES_PER_PIXEL, "Samples per Pixel")?.unwrap_or(1);
        let bits_allocated = required(tags::BITS_ALLOCATED, "Bits Allocated")?;
        if bits_allocated != 8 && bits_allocated != 16 {
            return Err(format!(
                "DICOM Bits Allocated is {bits_allocated}; only 8 and 16 are read"
            ));
        }
        let bits_stored = int(tags::BITS_STORED, "Bits Stored")?.unwrap_or(bits_allocated);
        if bits_stored == 0 || bits_stored > bits_allocated {
            return Err(format!(
                "DICOM Bits Stored is {bits_stored} with {bits_allocated} bits allocated"
            ));
        }
        let photometric = text(object, tags::PHOTOMETRIC_INTERPRETATION)
            .ok_or("DICOM file has no Photometric Interpretation")?
            .to_uppercase();
        let expected_samples = match photometric.as_str() {
            "MONOCHROME1" | "MONOCHROME2" => 1,
            "RGB" | "YBR_FULL" | "YBR_FULL_422" => 3,
            other => {
                return Err(format!(
                    "DICOM Photometric Interpretation {other} is not supported (MONOCHROME1, \
                     MONOCHROME2 and RGB are)"
                ));
            }
        };
        if samples != expected_samples {
            return Err(format!(
                "DICOM {photometric} image with {samples} samples per pixel"
            ));
        }
        let signed = int(tags::PIXEL_REPRESENTATION, "Pixel Representation")?.unwrap_or(0) == 1;
        let planar = int(tags::PLANAR_CONFIGURATION, "Planar Configuration")?.unwrap_or(0);
        let slope = number(object, tags::RESCALE_SLOPE).unwrap_or(1.0);
        let intercept = number(object, tags::RESCALE_INTERCEPT).unwrap_or(0.0);
        Ok(Self {
            transfer_syntax: object
                .meta()
                .transfer_syntax()
                .trim_end_matches(['\0', ' '])
                .to_owned(),
            rows,
            columns,
            frames,
            samples: samples as u16,
            bits_allocated: bits_allocated as u16,
            bits_stored: bits_stored as u16,
            signed,
            photometric,
            planar: planar as u16,
            slope,
            intercept,
        })
    }

    fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    fn frame_bytes(&self) -> usize {
        self.pixels() * usize::from(self.samples) * usize::from(self.bits_allocated / 8)
    }
}

fn identifiers(object: &DefaultDicomObject) -> DicomIdentifiers {
    DicomIdentifiers {
        patient_id: text(object, tags::PATIENT_ID),
        patient_name: text(object, tags::PATIENT_NAME),
        study_instance_uid: text(object, tags::STUDY_INSTANCE_UID),
        accession_number: text(object, tags::ACCESSION_NUMBER),
        study_date: text(object, tags::STUDY_DATE),
    }
}

// ---------------------------------------------------------------------------------------------
// Pixel data
// ---------------------------------------------------------------------------------------------

/// The first frame's stored values, one `i32` per sample, interleaved (RGB: r, g, b, r...).
fn frame_samples(
    object: &DefaultDicomObject,
    header: &Header,
) -> std::result::Result<Vec<i32>, String> {
    let fragments = element(object, tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
        .map(<[Vec<u8>]>::to_vec);
    let bytes: Cow<'_, [u8]> = match fragments {
        None if header.photometric.starts_with("YBR") => {
            // Only compressed YBR is turned into RGB by the decoders.
            return Err(format!(
                "uncompressed DICOM {} pixel data is not supported",
                header.photometric
            ));
        }
        None => {
            // Native: the library only slices the frame out (checked against the length).
            let decoded = object
                .decode_pixel_data_frame(0)
                .map_err(|e| format!("unreadable DICOM pixel data ({})", one_line(&e)))?;
            Cow::Owned(decoded.data().to_vec())
        }
        Some(fragments) if header.transfer_syntax == RLE => {
            let first = fragments
                .first()
                .ok_or("DICOM RLE pixel data has no fragments")?;
            Cow::Owned(decode_rle(first, header)?)
        }
        Some(fragments) => {
            let frame = first_frame(object, &fragments, header);
            check_codestream(&frame, header)?;
            // The decoders are third-party code reading hostile bytes; the checks above keep
            // their allocations bounded, and a panic in them is reported, not propagated.
            let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                object.decode_pixel_data_frame(0).map(|d| d.data().to_vec())
            }))
            .map_err(|_| "the DICOM pixel data decoder crashed on malformed data".to_owned())?
            .map_err(|e| format!("corrupt compressed DICOM pixel data ({})", one_line(&e)))?;
            Cow::Owned(decoded)
        }
    };
    let need = header.frame_bytes();
    if bytes.len() < need {
        return Err(format!(
            "DICOM pixel data holds {} bytes, {need} needed for {}x{} pixels: truncated",
            bytes.len(),
            header.columns,
            header.rows
        ));
    }
    let bytes = &bytes[..need];
    let (bits, signed) = (u32::from(header.bits_stored), header.signed);
    let mask = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    let stored = |raw: u32| -> i32 {
        let v = raw & mask;
        if signed && bits < 32 && v & (1 << (bits - 1)) != 0 {
            (i64::from(v) - (1i64 << bits)) as i32
        } else {
            v as i32
        }
    };
    let mut values: Vec<i32> = if header.bits_allocated == 8 {
        bytes.iter().map(|&b| stored(u32::from(b))).collect()
    } else {
        bytes
            .chunks_exact(2)
            .map(|p| stored(u32::from(u16::from_le_bytes([p[0], p[1]]))))
            .collect()
    };
    // Native colour-by-plane (RRR..GGG..BBB) becomes interleaved.
    if header.samples == 3 && header.planar == 1 && fragments_absent(object) {
        let n = header.pixels();
        let planes = values.clone();
        for i in 0..n {
            for c in 0..3 {
                values[i * 3 + c] = planes[c * n + i];
            }
        }
    }
    Ok(values)
}

fn fragments_absent(object: &DefaultDicomObject) -> bool {
    element(object, tags::PIXEL_DATA).is_none_or(|e| e.value().fragments().is_none())
}

/// The compressed bytes of frame 0, gathered the way the library's decoders gather them.
fn first_frame<'a>(
    object: &DefaultDicomObject,
    fragments: &'a [Vec<u8>],
    header: &Header,
) -> Cow<'a, [u8]> {
    if fragments.len() == 1 || fragments.len() == header.frames as usize {
        return Cow::Borrowed(fragments.first().map_or(&[][..], Vec::as_slice));
    }
    let table: Vec<u32> = element(object, tags::PIXEL_DATA)
        .and_then(|e| e.value().offset_table().map(<[u32]>::to_vec))
        .unwrap_or_default();
    let base = table.first().copied().unwrap_or(0) as usize;
    let next = table.get(1).map(|&n| n as usize);
    let mut offset = 0;
    let mut out = Vec::new();
    for fragment in fragments {
        if offset >= base {
            out.extend_from_slice(fragment);
        }
        offset += fragment.len() + 8;
        if next.is_some_and(|n| offset >= n) {
            break;
        }
    }
    Cow::Owned(out)
}

/// Makes sure a compressed frame describes the image the header announces, so the decoder
/// neither allocates for a larger one nor writes past the buffer sized from Rows/Columns.
fn check_codestream(frame: &[u8], header: &Header) -> std::result::Result<(), String> {
    let (width, height, components, precision) = if frame.starts_with(&[0xFF, 0xD8]) {
        jpeg_frame_header(frame).ok_or("corrupt JPEG data in DICOM pixel data (no frame header)")?
    } else if let Some(siz) = find(frame, &[0xFF, 0x4F, 0xFF, 0x51]) {
        j2k_frame_header(&frame[siz + 2..])
            .ok_or("corrupt JPEG 2000 data in DICOM pixel data (bad SIZ header)")?
    } else {
        // Another codec: the library reports what it cannot read.
        return Ok(());
    };
    if (width, height) != (header.columns, header.rows) || components != u32::from(header.samples) {
        return Err(format!(
            "compressed frame is {width}x{height} with {components} component(s), but the DICOM \
             header says {}x{} with {}",
            header.columns, header.rows, header.samples
        ));
    }
    if precision == 0 || precision > u32::from(header.bits_allocated) {
        return Err(format!(
            "compressed frame has {precision}-bit samples, more than the {} bits allocated",
            header.bits_allocated
        ));
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// (width, height, components, precision) from a JPEG's `SOFn` segment.
fn jpeg_frame_header(b: &[u8]) -> Option<(u32, u32, u32, u32)> {
    let mut pos = 2;
    loop {
        while *b.get(pos)? != 0xFF {
            pos += 1;
        }
        while *b.get(pos)? == 0xFF {
            pos += 1;
        }
        let marker = *b.get(pos)?;
        pos += 1;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        if matches!(marker, 0xD9 | 0xDA) {
            return None; // end of image or scan before any frame header
        }
        let len = usize::from(u16::from_be_bytes([*b.get(pos)?, *b.get(pos + 1)?]));
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let precision = u32::from(*b.get(pos + 2)?);
            let height = u32::from(u16::from_be_bytes([*b.get(pos + 3)?, *b.get(pos + 4)?]));
            let width = u32::from(u16::from_be_bytes([*b.get(pos + 5)?, *b.get(pos + 6)?]));
            let components = u32::from(*b.get(pos + 7)?);
            return Some((width, height, components, precision));
        }
        pos += len;
    }
}

/// (width, height, components, precision) from a JPEG 2000 SIZ segment (`b` starts at its
/// marker). Every component must have the same precision and no subsampling.
fn j2k_frame_header(b: &[u8]) -> Option<(u32, u32, u32, u32)> {
    let u32_at = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    let (x, y, x0, y0) = (u32_at(6)?, u32_at(10)?, u32_at(14)?, u32_at(18)?);
    let components = u32::from(u16::from_be_bytes(b.get(38..40)?.try_into().ok()?));
    let mut precision = None;
    for c in 0..components as usize {
        let at = 40 + c * 3;
        let (ssiz, dx, dy) = (*b.get(at)?, *b.get(at + 1)?, *b.get(at + 2)?);
        let bits = u32::from(ssiz & 0x7F) + 1;
        if (dx, dy) != (1, 1) || precision.is_some_and(|p| p != bits) {
            return None;
        }
        precision = Some(bits);
    }
    Some((
        x.checked_sub(x0)?,
        y.checked_sub(y0)?,
        components,
        precision?,
    ))
}

/// RLE Lossless (PS3.5 G): a 64-byte header of segment offsets, then one `PackBits` segment
/// per byte plane, most significant first. Returns little-endian interleaved samples.
fn decode_rle(fragment: &[u8], header: &Header) -> std::result::Result<Vec<u8>, String> {
    let bad = |what: &str| format!("corrupt RLE pixel data ({what})");
    let word = |i: usize| {
        fragment
            .get(i * 4..i * 4 + 4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize)
    };
    let bytes_per_sample = usize::from(header.bits_allocated / 8);
    let samples = usize::from(header.samples);
    let segments = samples * bytes_per_sample;
    if word(0).ok_or_else(|| bad("no header"))? != segments {
        return Err(bad("wrong number of segments"));
    }
    let pixels = header.pixels();
    let mut out = vec![0u8; pixels * segments];
    for s in 0..segments {
        let start = word(1 + s).ok_or_else(|| bad("no header"))?;
        let end = if s + 1 < segments {
            word(2 + s).ok_or_else(|| bad("no header"))?
        } else {
            fragment.len()
        };
        let segment = fragment
            .get(start..end)
            .filter(|_| start >= 64)
            .ok_or_else(|| bad("segment offsets out of range"))?;
        let plane = unpack_bits(segment, pixels).ok_or_else(|| bad("segment too short"))?;
        // Segment s holds byte (bytes_per_sample - 1 - s % bps) of sample s / bps.
        let (sample, byte) = (
            s / bytes_per_sample,
            bytes_per_sample - 1 - s % bytes_per_sample,
        );
        for (i, &v) in plane.iter().enumerate() {
            out[(i * samples + sample) * bytes_per_sample + byte] = v;
        }
    }
    Ok(out)
}

/// `PackBits` decoding of exactly `n` bytes (None when the segment runs out first).
fn unpack_bits(segment: &[u8], n: usize) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let mut pos = 0;
    while out.len() < n {
        let control = *segment.get(pos)? as i8;
        pos += 1;
        match control {
            0..=127 => {
                let count = control as usize + 1;
                out.extend_from_slice(segment.get(pos..pos + count)?);
                pos += count;
            }
            -127..=-1 => {
                let value = *segment.get(pos)?;
                pos += 1;
                out.extend(std::iter::repeat_n(
                    value,
                    (1 - i32::from(control)) as usize,
                ));
            }
            -128 => {}
        }
    }
    out.truncate(n);
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Grayscale pipeline
// ---------------------------------------------------------------------------------------------

/// Stored values to display values in [0, 1]: modality LUT, VOI, MONOCHROME1 inversion. Colour
/// images become luma (their values are already for display).
fn to_display(object: &DefaultDicomObject, header: &Header, samples: &[i32]) -> (Vec<f32>, Voi) {
    if header.samples == 3 {
        let top = f64::from((1u32 << header.bits_stored) - 1);
        let luma = samples
            .chunks_exact(3)
            .map(|c| {
                let y =
                    0.2126 * f64::from(c[0]) + 0.7152 * f64::from(c[1]) + 0.0722 * f64::from(c[2]);
                (y / top).clamp(0.0, 1.0) as f32
            })
            .collect();
        return (luma, Voi::MinMax { min: 0.0, max: top });
    }
    let modality = |v: i32| f64::from(v) * header.slope + header.intercept;
    let voi = voi_table(object, header.signed)
        .or_else(|| window(object))
        .unwrap_or_else(|| {
            let (min, max) = samples
                .iter()
                .map(|&v| modality(v))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            VoiMap::MinMax { min, max }
        });
    let invert = header.photometric == "MONOCHROME1";
    let values = samples
        .iter()
        .map(|&v| {
            let y = voi.apply(modality(v)).clamp(0.0, 1.0);
            (if invert { 1.0 - y } else { y }) as f32
        })
        .collect();
    (values, voi.describe())
}

/// A VOI transformation ready to apply.
enum VoiMap {
    Table {
        first: i64,
        data: Vec<u16>,
        top: f64,
    },
    Window {
        center: f64,
        width: f64,
        function: WindowFunction,
    },
    MinMax {
        min: f64,
        max: f64,
    },
}

impl VoiMap {
    fn apply(&self, x: f64) -> f64 {
        match self {
            Self::Table { first, data, top } => {
                let i = (x.round() as i64 - first).clamp(0, data.len() as i64 - 1);
                f64::from(data[i as usize]) / top
            }
            // PS3.3 C.11.2.1.2: the three window functions.
            Self::Window {
                center,
                width,
                function: WindowFunction::Linear,
            } => ((x - (center - 0.5)) / (width - 1.0) + 0.5).clamp(0.0, 1.0),
            Self::Window {
                center,
                width,
                function: WindowFunction::LinearExact,
            } => ((x - center) / width + 0.5).clamp(0.0, 1.0),
            Self::Window {
                center,
                width,
                function: WindowFunction::Sigmoid,
            } => 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
            Self::MinMax { min, max } => {
                if max > min {
                    (x - min) / (max - min)
                } else {
                    0.0
                }
            }
        }
    }

    fn describe(&self) -> Voi {
        match *self {
            Self::Table {
                first, ref data, ..
            } => Voi::Table {
                first,
                entries: data.len(),
            },
            Self::Window {
                center,
                width,
                function,
            } => Voi::Window {
                center,
                width,
                function,
            },
            Self::MinMax { min, max } => Voi::MinMax { min, max },
        }
    }
}

/// The first Window Center/Width pair, when it is usable.
fn window(object: &DefaultDicomObject) -> Option<VoiMap> {
    let center = number(object, tags::WINDOW_CENTER)?;
    let width = number(object, tags::WINDOW_WIDTH)?;
    let function = match text(object, tags::VOILUT_FUNCTION).as_deref() {
        Some("LINEAR_EXACT") => WindowFunction::LinearExact,
        Some("SIGMOID") => WindowFunction::Sigmoid,
        _ => WindowFunction::Linear,
    };
    let usable = match function {
        WindowFunction::Linear => width >= 1.0,
        _ => width > 0.0,
    };
    // LINEAR with width 1 is a threshold: (x - c + 0.5) / 0 is avoided by exact width 1 rules.
    let width = if function == WindowFunction::Linear && width == 1.0 {
        1.0 + f64::EPSILON
    } else {
        width
    };
    usable.then_some(VoiMap::Window {
        center,
        width,
        function,
    })
}

/// The first item of the VOI LUT Sequence, when it is well formed.
fn voi_table(object: &DefaultDicomObject, signed: bool) -> Option<VoiMap> {
    let sequence = element(object, tags::VOILUT_SEQUENCE)?;
    let item = sequence.items()?.first()?;
    let descriptor: Vec<i64> = item
        .element(tags::LUT_DESCRIPTOR)
        .ok()?
        .to_multi_int::<i64>()
        .ok()?;
    let [entries, first, bits] = descriptor[..] else {
        return None;
    };
    let entries = if entries == 0 {
        65_536
    } else {
        entries as usize
    };
    // The first mapped value is signed when the pixels are (PS3.3 C.11.2.1.1).
    let first = if signed && first > 0x7FFF {
        first - 0x1_0000
    } else {
        first
    };
    if !(1..=16).contains(&bits) {
        return None;
    }
    let data: Vec<u16> = item
        .element(tags::LUT_DATA)
        .ok()?
        .to_multi_int::<u16>()
        .ok()?;
    if data.len() < entries {
        return None;
    }
    Some(VoiMap::Table {
        first,
        data: data[..entries].to_vec(),
        top: f64::from((1u32 << bits) - 1),
    })
}
