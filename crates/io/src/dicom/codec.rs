//! The first frame's stored values: native pixel data sliced out by dicom-pixeldata, JPEG and
//! JPEG 2000 decoded by its decoders once `guard` has checked the frame's own header
//! (a panic in them is caught and reported), RLE Lossless decoded here.

use std::borrow::Cow;

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::PixelDecoder;

use super::guard::{Header, check_codestream};
use super::{RLE, element, one_line};

/// The first frame's stored values, one `i32` per sample, interleaved (RGB: r, g, b, r...).
pub(super) fn frame_samples(
    object: &DefaultDicomObject,
    header: &Header,
) -> std::result::Result<Vec<i32>, String> {
    let fragments = element(object, tags::PIXEL_DATA)
        .and_then(|e| e.value().fragments())
        .map(<[Vec<u8>]>::to_vec);
    // Native and RLE data hold the stored words as written (left-aligned values too); the
    // JPEG decoders return right-aligned samples of the codestream's own precision.
    let words_as_stored = fragments.is_none() || header.transfer_syntax == RLE;
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
    let shift = if words_as_stored {
        u32::from(header.high_bit + 1 - header.bits_stored)
    } else {
        0
    };
    let stored = |raw: u32| -> i32 {
        let v = (raw >> shift) & mask;
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
