//! DICOM input: a single-frame (or the first frame of a multi-frame) radiograph, uncompressed or
//! compressed (JPEG baseline/extended/lossless, JPEG 2000, RLE, deflated), becomes the same kind
//! of image as a PNG: windowed grayscale with white bone.
//!
//! Three stages, one module each:
//! - `guard`: hostile files are refused before anything large is allocated: every element
//!   length is checked against the bytes that remain (a deflated data set is inflated under a
//!   limit first), the header must describe an image this tool reads, Rows/Columns are checked
//!   against [`MAX_SIDE`](crate::limits::MAX_SIDE) and the whole pixel payload against 1 GiB,
//!   and a compressed frame's own header (JPEG SOF, JPEG 2000 SIZ) must agree with
//!   Rows/Columns before a decoder runs;
//! - `codec`: the first frame's stored values, through dicom-pixeldata's decoders (RLE is
//!   decoded here: the library's RLE decoder trusts its input);
//! - `voi`: the DICOM grayscale pipeline (PS3.4 N.2): stored value (bits stored, sign) ->
//!   modality LUT (rescale slope and intercept) -> VOI LUT (the first VOI LUT table, else the
//!   first window centre/width with its VOI LUT function, through dicom-pixeldata's
//!   `WindowLevelTransform`, else the image's own min..max) -> MONOCHROME1 inverted.
//!   Everything up to that point is computed in `f64` from the stored 8-16-bit integers; only
//!   the result becomes `f32` (the analysis image) and 16-bit (the displayed original).

mod codec;
mod guard;
mod voi;

use std::path::Path;
use std::sync::Arc;

use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use image::{ImageBuffer, Luma};
use serde::{Deserialize, Serialize};

use crate::GrayF32;
use crate::budget::{MemoryBudget, Reservation};
use crate::{Error, Result};
use guard::Header;

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
    pub high_bit: u16,
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

/// VOI LUT Function (0028,1056): `Linear`, `LinearExact` or `Sigmoid`.
pub use dicom_pixeldata::VoiLutFunction as WindowFunction;

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
    let fail = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    if !is_dicom(bytes) {
        return Err(fail("not a DICOM file (no DICM marker at byte 128)".into()));
    }
    // Memory: the data set as parsed (the file, or what a deflated one inflates to, twice:
    // the structure check's copy and the parser's), then the pixels once their size is known.
    // Two steps, so the second is taken under `staged` (see `Reservation::grow`).
    let order = crate::budget::staged();
    let mut memory = MemoryBudget::global()?.reserve(
        2 * bytes.len() as u64 + 2 * guard::inflated_len(bytes),
        path,
    )?;
    guard::check_structure(bytes).map_err(|e| fail(format!("DICOM file is {e}")))?;
    let object = OpenFileOptions::new()
        .from_reader(&bytes[128..])
        .map_err(|e| fail(format!("corrupt DICOM file ({})", one_line(&e))))?;
    let header = Header::read(&object).map_err(fail)?;
    guard::check_size(&header, path)?;
    // The frame as decoded and copied (up to 2 x 2 bytes a sample), its i32 samples (and a
    // copy for planar colour), the f32 values and their copy, the 16-bit original.
    memory.grow(
        u64::from(header.rows) * u64::from(header.columns) * (12 * u64::from(header.samples) + 10),
        path,
    )?;
    drop(order);
    let samples = codec::frame_samples(&object, &header).map_err(fail)?;
    guard::check_rescale(&header, &samples).map_err(fail)?;
    let identifiers = identifiers(&object);
    let (values, voi) = voi::to_display(&object, &header, &samples);
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
            high_bit: header.high_bit,
            signed: header.signed,
            rescale: (header.rescale.slope, header.rescale.intercept),
            voi,
        },
    })
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

fn identifiers(object: &DefaultDicomObject) -> DicomIdentifiers {
    DicomIdentifiers {
        patient_id: text(object, tags::PATIENT_ID),
        patient_name: text(object, tags::PATIENT_NAME),
        study_instance_uid: text(object, tags::STUDY_INSTANCE_UID),
        accession_number: text(object, tags::ACCESSION_NUMBER),
        study_date: text(object, tags::STUDY_DATE),
    }
}
