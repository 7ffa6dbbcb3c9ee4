//! Reading radiographs: any PNG or JPEG (8- or 16-bit; gray, RGB or RGBA) or DICOM file (see
//! [`crate::dicom`]) becomes one grayscale `f32` image in [0, 1], with the decoded original kept
//! for display.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageReader, Limits, Luma};
use sha2::{Digest, Sha256};

use crate::dicom::{self, DicomIdentifiers};
use crate::{CoreError, Result};

/// A grayscale image with `f32` pixels, in [0, 1] for decoded radiographs.
pub type GrayF32 = ImageBuffer<Luma<f32>, Vec<f32>>;

/// Longest side accepted. Digital radiographs are at most about 4300 px; anything far larger is
/// a mistake or a decompression bomb, refused from the header before any pixel is allocated.
pub const MAX_SIDE: u32 = 16_384;
/// Upper bound on what one decode may allocate (a 16k x 16k RGBA16 frame is 2 GiB).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// A decoded chest radiograph.
#[derive(Debug, Clone)]
pub struct Xray {
    /// Where it came from, for messages and reports.
    pub path: PathBuf,
    /// The pixels as decoded, in their own bit depth and colour type, for display (DICOM:
    /// 16-bit gray after windowing and MONOCHROME1 inversion).
    pub original: DynamicImage,
    /// Luma of the original in [0, 1] (alpha is ignored); 16-bit precision is kept.
    pub gray: GrayF32,
    /// SHA-256 of the file's bytes, hex: the cache and queue key.
    pub sha256: String,
    /// Patient and study identifiers, for DICOM input only. Reports leave them out unless the
    /// user asks for them.
    pub identifiers: Option<DicomIdentifiers>,
}

impl Xray {
    /// Reads and decodes a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        Self::decode(&bytes, path)
    }

    /// Decodes bytes already in memory; `path` only names them in errors and reports.
    pub fn decode(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let fail = |reason: String| CoreError::Decode {
            path: path.clone(),
            reason,
        };
        if bytes.is_empty() {
            return Err(fail("empty file (0 bytes)".into()));
        }
        if dicom::is_dicom(bytes) {
            let image = dicom::decode(bytes, &path)?;
            return Ok(Self {
                path,
                original: DynamicImage::ImageLuma16(image.original),
                gray: image.gray,
                sha256: hex(&Sha256::digest(bytes)),
                identifiers: Some(image.identifiers),
            });
        }
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
            return Err(CoreError::TooLarge {
                path,
                width,
                height,
                limit: MAX_SIDE,
            });
        }
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| fail(e.to_string()))?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(MAX_DECODE_BYTES);
        reader.limits(limits);
        let original = reader
            .decode()
            .map_err(|e| fail(describe_decode_error(&e)))?;
        let mut gray = original.to_luma32f();
        // The luma weights of colour images sum to 1 + 1 ulp in f32: white would be 1.0000001.
        for p in gray.pixels_mut() {
            p.0[0] = p.0[0].clamp(0.0, 1.0);
        }
        let sha256 = hex(&Sha256::digest(bytes));
        Ok(Self {
            path,
            original,
            gray,
            sha256,
            identifiers: None,
        })
    }

    #[must_use]
    pub fn width(&self) -> u32 {
        self.gray.width()
    }

    #[must_use]
    pub fn height(&self) -> u32 {
        self.gray.height()
    }
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

/// Lower-case hex of a byte slice.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
