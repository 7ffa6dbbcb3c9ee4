//! The hostile-file checks: before the parser sees a file, no declared length may point past
//! its end (a flipped bit in a length would otherwise cost up to 4 GiB) and a deflated data set
//! is inflated under a limit; after parsing, the header must describe an image this tool reads,
//! within the size limits, and a compressed frame must describe the image the header announces
//! before a third-party decoder runs on it.

use std::io::Read;
use std::path::Path;

use dicom_dictionary_std::{StandardDataDictionary, tags};
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::Rescale;

use super::{DEFLATED, EXPLICIT_VR_BE, IMPLICIT_VR_LE, element, number, text};
use crate::limits::{MAX_DECODE_BYTES, MAX_SIDE, check_pixels};
use crate::{Error, Result};

// ---------------------------------------------------------------------------------------------
// Structure check: no declared length beyond the end of the file
// ---------------------------------------------------------------------------------------------

/// Walks the file meta group and the data set, checking every declared element and item length
/// against the bytes that remain, so that the parser never allocates for data that is not there
/// (a flipped bit in a length would otherwise cost up to 4 GiB). The deflated transfer syntax is
/// inflated here first, at most 1 GiB.
pub(super) fn check_structure(bytes: &[u8]) -> std::result::Result<(), String> {
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
pub(super) fn inflated_len(bytes: &[u8]) -> u64 {
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

/// Deepest nesting of sequences the parser is given: DICOM files nest a handful of levels (a
/// structured report a dozen); the parser recurses once per level, and 100,000 levels overflow
/// its thread's stack, which aborts the whole process.
pub const MAX_SEQUENCE_DEPTH: usize = 64;
/// Most elements (items and delimiters included, compressed pixel data fragments not) a data set
/// may hold: a radiograph's has a few hundred; each costs the parser about a hundred bytes.
pub const MAX_ELEMENTS: usize = 200_000;

/// A sequence or item being walked: where it ends (`None`: at its delimiter).
struct Open {
    sequence: bool,
    end: Option<usize>,
}

fn check_data_set(
    data: &[u8],
    explicit: bool,
    big_endian: bool,
) -> std::result::Result<(), String> {
    let mut pos = 0;
    // Inside encapsulated pixel data, items hold compressed bytes, not elements.
    let mut in_fragments = false;
    // The sequences and items around `pos`. A delimiter closes only the container it belongs
    // to, so unmatched delimiters can make the walk count too deep, never too shallow.
    let mut open: Vec<Open> = Vec::new();
    let mut elements = 0_usize;
    while data.len() - pos >= 8 {
        while open
            .last()
            .is_some_and(|o| o.end.is_some_and(|end| pos >= end))
        {
            open.pop();
        }
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
        if !in_fragments {
            elements += 1;
            if elements > MAX_ELEMENTS {
                return Err(format!(
                    "too large: its data set holds more than {MAX_ELEMENTS} elements"
                ));
            }
        }
        let is_sequence = group != 0xFFFE
            && if explicit {
                &b[4..6] == b"SQ"
            } else {
                implicit_sequence(group, element)
            };
        pos += header;
        let end = len.map(|len| pos + len);
        match (group, element, len) {
            (0xFFFE, 0xE0DD, _) if in_fragments => in_fragments = false,
            (0xFFFE, 0xE000, Some(len)) if in_fragments => pos += len,
            (0xFFFE, 0xE0DD, _) => close(&mut open, true),
            (0xFFFE, 0xE00D, _) => close(&mut open, false),
            (0xFFFE, 0xE000, _) => open.push(Open {
                sequence: false,
                end,
            }),
            (0x7FE0, 0x0010, None) => in_fragments = true,
            (0xFFFE, _, _) => {}
            (_, _, Some(len)) if !is_sequence => pos += len,
            // Sequences, and elements of undefined length (which the parser reads as
            // sequences): their contents are elements, walked in turn.
            _ => {
                let depth = open.iter().filter(|o| o.sequence).count() + 1;
                if depth > MAX_SEQUENCE_DEPTH {
                    return Err(format!(
                        "too deeply nested: its sequences nest more than {MAX_SEQUENCE_DEPTH} \
                         levels deep (element ({group:04X},{element:04X}) at byte {})",
                        pos - header
                    ));
                }
                open.push(Open {
                    sequence: true,
                    end,
                });
            }
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

/// Closes the innermost open container if it is of the kind the delimiter ends (a sequence
/// delimiter: a sequence of undefined length; an item delimiter: an item of undefined length).
fn close(open: &mut Vec<Open>, sequence: bool) {
    if open
        .last()
        .is_some_and(|o| o.sequence == sequence && o.end.is_none())
    {
        open.pop();
    }
}

/// Whether the parser reads `(group,element)` as a sequence in an implicit-VR data set: the
/// standard dictionary says so.
fn implicit_sequence(group: u16, element: u16) -> bool {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    StandardDataDictionary
        .by_tag(dicom_core::Tag(group, element))
        .is_some_and(|entry| entry.vr() == VirtualVr::Exact(dicom_core::VR::SQ))
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

/// The image attributes that decide how pixels are read.
pub(super) struct Header {
    pub(super) transfer_syntax: String,
    pub(super) rows: u32,
    pub(super) columns: u32,
    pub(super) frames: u32,
    pub(super) samples: u16,
    pub(super) bits_allocated: u16,
    pub(super) bits_stored: u16,
    /// High Bit: the stored value's most significant bit; above `bits_stored - 1` when the
    /// values are left-aligned in their words.
    pub(super) high_bit: u16,
    pub(super) signed: bool,
    pub(super) photometric: String,
    pub(super) planar: u16,
    /// The modality LUT: Rescale Slope and Intercept.
    pub(super) rescale: Rescale,
}

impl Header {
    /// Reads the attributes, refusing what this tool cannot read (no pixel data, no pixels,
    /// bit depths other than 8 and 16, unsupported photometric interpretations).
    pub(super) fn read(object: &DefaultDicomObject) -> std::result::Result<Self, String> {
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
        let high_bit = int(tags::HIGH_BIT, "High Bit")?.unwrap_or(bits_stored - 1);
        if high_bit >= bits_allocated || high_bit + 1 < bits_stored {
            return Err(format!(
                "DICOM High Bit {high_bit} is impossible with Bits Stored {bits_stored} and Bits \
                 Allocated {bits_allocated} (it must be at least Bits Stored - 1 and below Bits \
                 Allocated)"
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
        let rescale = Rescale::new(
            number(object, tags::RESCALE_SLOPE).unwrap_or(1.0),
            number(object, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        );
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
            high_bit: high_bit as u16,
            signed,
            photometric,
            planar: planar as u16,
            rescale,
        })
    }

    pub(super) fn pixels(&self) -> usize {
        self.rows as usize * self.columns as usize
    }

    pub(super) fn frame_bytes(&self) -> usize {
        self.pixels() * usize::from(self.samples) * usize::from(self.bits_allocated / 8)
    }
}

/// Refuses, from the header alone, an image over [`MAX_SIDE`] per side, over the pixel limit, or
/// whose whole pixel payload (rows x columns x frames x samples x bytes) is over
/// [`MAX_DECODE_BYTES`].
pub(super) fn check_size(header: &Header, path: &Path) -> Result<()> {
    if header.rows > MAX_SIDE || header.columns > MAX_SIDE {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            width: header.columns,
            height: header.rows,
            limit: MAX_SIDE,
        });
    }
    check_pixels(
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
        return Err(Error::Decode {
            path: path.to_path_buf(),
            reason: format!(
                "DICOM pixel data of {} x {} x {} frames would need {} MiB, more than the {} MiB \
             this tool allows per image",
                header.columns,
                header.rows,
                header.frames,
                payload >> 20,
                MAX_DECODE_BYTES >> 20
            ),
        });
    }
    Ok(())
}

/// Refuses a modality LUT (Rescale Slope and Intercept) that makes any pixel non-finite.
pub(super) fn check_rescale(header: &Header, samples: &[i32]) -> std::result::Result<(), String> {
    if header.samples != 1 {
        return Ok(());
    }
    // The modality LUT is linear: its extremes are at the extreme stored values.
    let (lo, hi) = samples
        .iter()
        .fold((i32::MAX, i32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let finite = [lo, hi]
        .iter()
        .all(|&v| header.rescale.apply(f64::from(v)).is_finite());
    let Rescale { slope, intercept } = header.rescale;
    if !finite || !slope.is_finite() || !intercept.is_finite() {
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
            show(slope),
            show(intercept)
        ));
    }
    Ok(())
}

/// Makes sure a compressed frame describes the image the header announces, so the decoder
/// neither allocates for a larger one nor writes past the buffer sized from Rows/Columns.
pub(super) fn check_codestream(frame: &[u8], header: &Header) -> std::result::Result<(), String> {
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
