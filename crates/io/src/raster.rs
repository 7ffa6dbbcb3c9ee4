//! PNG and JPEG (8- or 16-bit; gray, RGB or RGBA) through the `image` crate, under the size
//! limits and the memory budget, and strict about truncation: the decoders pad a JPEG that stops
//! early and stop a PNG at its last whole row, so the file's own structure is walked too.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::GrayF32;
use crate::budget::{MemoryBudget, Reservation};
use crate::limits::{MAX_DECODE_BYTES, MAX_SIDE, check_pixels};
use crate::{Error, Result};

/// A decoded PNG or JPEG.
pub(crate) struct Raster {
    /// The pixels as decoded, in their own bit depth and colour type.
    pub original: DynamicImage,
    /// Their luma in [0, 1].
    pub gray: GrayF32,
    /// The budget the two hold, retained for as long as they live.
    pub memory: Reservation,
}

/// Decodes a PNG or JPEG held in memory; `path` names it in errors.
pub(crate) fn decode(bytes: &[u8], path: &Path) -> Result<Raster> {
    let fail = |reason: String| Error::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    if reader.format().is_none() {
        return Err(fail("not a PNG or JPEG image, nor a DICOM file".into()));
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| fail(describe_decode_error(&e)))?;
    if width == 0 || height == 0 {
        return Err(fail(format!("image has no pixels ({width}x{height})")));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: MAX_SIDE,
        });
    }
    check_pixels(path, u64::from(width) * u64::from(height), 8)?;
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let reader_format = reader.format();
    let decoder = reader
        .into_decoder()
        .map_err(|e| fail(describe_decode_error(&e)))?;
    let pixels = u64::from(width) * u64::from(height);
    let bytes_per_pixel = u64::from(decoder.color_type().bytes_per_pixel());
    // Peak: the decoder's output and its own working rows or planes, the luma copy, and
    // the file itself; kept: the original and its luma.
    let mut memory = MemoryBudget::global()?.reserve(
        bytes.len() as u64 + pixels * (2 * bytes_per_pixel + 4),
        path,
    )?;
    let original =
        DynamicImage::from_decoder(decoder).map_err(|e| fail(describe_decode_error(&e)))?;
    // The decoders pad missing data (JPEG) or stop at the last row (PNG): a file that ends
    // before its end marker is truncated even when they succeed.
    let structure = match reader_format {
        Some(ImageFormat::Png) => png_structure(bytes),
        Some(ImageFormat::Jpeg) => jpeg_structure(bytes),
        _ => Structure::Unknown,
    };
    if structure == Structure::Truncated {
        return Err(fail(
            "truncated or incomplete image (the data ends before the image's end marker)".into(),
        ));
    }
    let mut gray = original.to_luma32f();
    // The luma weights of colour images sum to 1 + 1 ulp in f32: white would be 1.0000001.
    for p in gray.pixels_mut() {
        p.0[0] = p.0[0].clamp(0.0, 1.0);
    }
    memory.retain(pixels * (bytes_per_pixel + 4));
    Ok(Raster {
        original,
        gray,
        memory,
    })
}

/// Turns the decoder's error into a sentence a user can act on.
fn describe_decode_error(e: &image::ImageError) -> String {
    if let image::ImageError::Limits(_) = e {
        return format!(
            "decoding would need more than the {} MiB this tool allows per image",
            MAX_DECODE_BYTES >> 20
        );
    }
    // Some decoders end their messages with a newline: keep the error on one line.
    let text = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let lower = text.to_lowercase();
    if ["eof", "end of file", "not enough bytes", "unexpected end"]
        .iter()
        .any(|s| lower.contains(s))
    {
        format!("truncated or incomplete image ({text})")
    } else {
        format!("corrupt image ({text})")
    }
}

/// What a walk over a file's structure found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Structure {
    /// Every chunk or segment is whole and the end marker is there.
    Complete,
    /// The data stops before the end marker.
    Truncated,
    /// Not what the format says; left to the decoder to judge.
    Unknown,
}

/// Walks a PNG's chunks: complete when every chunk is whole and IEND is reached.
fn png_structure(b: &[u8]) -> Structure {
    if !b.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Structure::Unknown;
    }
    let mut i = 8usize;
    loop {
        let Some(head) = b.get(i..i + 8) else {
            return Structure::Truncated;
        };
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !head[4..8].iter().all(u8::is_ascii_alphabetic) {
            return Structure::Unknown;
        }
        let end = i.saturating_add(12).saturating_add(len);
        if end > b.len() {
            return Structure::Truncated;
        }
        if &head[4..8] == b"IEND" {
            return Structure::Complete;
        }
        i = end;
    }
}

/// Walks a JPEG's segments and entropy-coded data: complete when the end-of-image marker is
/// reached.
fn jpeg_structure(b: &[u8]) -> Structure {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Structure::Unknown;
    }
    let mut i = 2usize;
    loop {
        if i >= b.len() {
            return Structure::Truncated;
        }
        if b[i] != 0xFF {
            return Structure::Unknown;
        }
        // Fill bytes before a marker.
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&marker) = b.get(i) else {
            return Structure::Truncated;
        };
        i += 1;
        match marker {
            0xD9 => return Structure::Complete,
            0x01 | 0xD0..=0xD7 => continue,
            0x00 => return Structure::Unknown,
            _ => {}
        }
        let Some(len) = b
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Structure::Truncated;
        };
        if len < 2 {
            return Structure::Unknown;
        }
        i += len;
        if i > b.len() {
            return Structure::Truncated;
        }
        if marker == 0xDA {
            // Entropy-coded data: ends at the first marker that is neither a stuffed 0xFF00
            // nor a restart marker.
            loop {
                let Some(&byte) = b.get(i) else {
                    return Structure::Truncated;
                };
                if byte == 0xFF {
                    match b.get(i + 1) {
                        None => return Structure::Truncated,
                        Some(0x00 | 0xD0..=0xD7) => i += 2,
                        Some(0xFF) => i += 1,
                        Some(_) => break,
                    }
                } else {
                    i += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_and_jpeg_walks_see_truncation() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend_from_slice(&[0, 0, 0, 2]);
        png.extend_from_slice(b"IDAT\x78\x9c");
        png.extend_from_slice(&[0; 4]);
        assert_eq!(png_structure(&png), Structure::Truncated);
        png.extend_from_slice(&[0, 0, 0, 0]);
        png.extend_from_slice(b"IEND");
        png.extend_from_slice(&[0; 4]);
        assert_eq!(png_structure(&png), Structure::Complete);
        assert_eq!(png_structure(&png[..png.len() - 1]), Structure::Truncated);

        let jpeg = [
            0xFF, 0xD8, 0xFF, 0xDA, 0, 3, 0, 0x12, 0xFF, 0x00, 0xFF, 0xD0, 0x34, 0xFF, 0xD9,
        ];
        assert_eq!(jpeg_structure(&jpeg), Structure::Complete);
        for cut in 2..jpeg.len() - 1 {
            assert_eq!(jpeg_structure(&jpeg[..cut]), Structure::Truncated, "{cut}");
        }
    }
}
