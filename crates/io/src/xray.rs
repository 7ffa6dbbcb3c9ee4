//! Reading radiographs: any PNG or JPEG (8- or 16-bit; gray, RGB or RGBA) or DICOM file (see
//! [`crate::dicom`]) becomes one grayscale `f32` image in [0, 1], with the decoded original kept
//! for display.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::{DynamicImage, ImageBuffer, ImageDecoder, ImageFormat, ImageReader, Limits, Luma};

use crate::dicom::{self, DicomIdentifiers};
use crate::files::sha256_hex;
use crate::input::{
    Gate, MAX_PIXELS, MemoryBudget, Reservation, Structure, jpeg_structure, png_structure,
};
use crate::{Error, Result};

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
    /// This image's share of the process-wide [`MemoryBudget`], released when the last clone
    /// is dropped.
    memory: Option<Arc<Reservation>>,
}

impl Xray {
    /// Reads and decodes a file through the input gate ([`Gate::TRUSTED`]: regular files
    /// only, bounded reads, at least [`crate::input::MIN_SIDE`] pixels per side).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Gate::TRUSTED.open(path.as_ref())
    }

    /// Decodes bytes already in memory; `path` only names them in errors and reports. The pixel
    /// budget, strict decoding and finite values are checked here; the minimum size only by
    /// the gate ([`Gate::decode`]).
    pub fn decode(bytes: &[u8], path: impl Into<PathBuf>) -> Result<Self> {
        Self::decode_min(bytes, path, 1)
    }

    /// [`Xray::decode`], refusing images with a side shorter than `min_side`.
    pub(crate) fn decode_min(
        bytes: &[u8],
        path: impl Into<PathBuf>,
        min_side: u32,
    ) -> Result<Self> {
        let path = path.into();
        let xray = Self::decode_unchecked(bytes, path)?;
        let (width, height) = (xray.width(), xray.height());
        if width < min_side || height < min_side {
            return Err(Error::Refused {
                path: xray.path,
                reason: format!(
                    "image is {width}x{height} pixels, smaller than the {min_side}x{min_side} \
                     this tool needs"
                ),
            });
        }
        if xray.gray.iter().any(|v| !v.is_finite()) {
            return Err(Error::Decode {
                path: xray.path,
                reason: "pixel values are not finite (NaN or infinite) after decoding".into(),
            });
        }
        Ok(xray)
    }

    fn decode_unchecked(bytes: &[u8], path: PathBuf) -> Result<Self> {
        let fail = |reason: String| Error::Decode {
            path: path.clone(),
            reason,
        };
        if bytes.is_empty() {
            return Err(fail("empty file (0 bytes)".into()));
        }
        if dicom::is_dicom(bytes) {
            let mut image = dicom::decode(bytes, &path)?;
            let memory = image.memory.take();
            return Ok(Self {
                path,
                original: DynamicImage::ImageLuma16(image.original),
                gray: image.gray,
                sha256: sha256_hex(bytes),
                identifiers: Some(image.identifiers),
                memory,
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
            return Err(Error::TooLarge {
                path,
                width,
                height,
                limit: MAX_SIDE,
            });
        }
        check_pixels(&path, u64::from(width) * u64::from(height), 8)?;
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
            &path,
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
                "truncated or incomplete image (the data ends before the image's end marker)"
                    .into(),
            ));
        }
        let mut gray = original.to_luma32f();
        // The luma weights of colour images sum to 1 + 1 ulp in f32: white would be 1.0000001.
        for p in gray.pixels_mut() {
            p.0[0] = p.0[0].clamp(0.0, 1.0);
        }
        let sha256 = sha256_hex(bytes);
        memory.retain(pixels * (bytes_per_pixel + 4));
        Ok(Self {
            path,
            original,
            gray,
            sha256,
            identifiers: None,
            memory: Some(Arc::new(memory)),
        })
    }

    /// Bytes of the process-wide [`MemoryBudget`] this image holds (0 if none).
    #[must_use]
    pub fn reserved_bytes(&self) -> u64 {
        self.memory.as_ref().map_or(0, |m| m.bytes())
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

/// Refuses an image of `pixels` pixels over [`MAX_PIXELS`]; `bytes_per_pixel` only sizes the
/// message.
pub(crate) fn check_pixels(path: &Path, pixels: u64, bytes_per_pixel: u64) -> Result<()> {
    if pixels > MAX_PIXELS {
        return Err(Error::Refused {
            path: path.to_path_buf(),
            reason: format!(
                "image would decode to {:.1} megapixels (up to {} MiB), more than the {} \
                 megapixels this tool decodes",
                pixels as f64 / 1e6,
                (pixels * bytes_per_pixel) >> 20,
                MAX_PIXELS / 1_000_000
            ),
        });
    }
    Ok(())
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
