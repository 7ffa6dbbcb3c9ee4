//! Reading radiographs: any PNG or JPEG (8- or 16-bit; gray, RGB or RGBA; see `raster`) or
//! DICOM file (see [`crate::dicom`]) becomes one grayscale `f32` image in [0, 1], with the
//! decoded original kept for display. This module only dispatches on the format and checks
//! what every format must satisfy.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::DynamicImage;

pub use crate::GrayF32;
use crate::budget::Reservation;
use crate::dicom::{self, DicomIdentifiers};
use crate::files::sha256_hex;
use crate::input::Gate;
use crate::raster;
use crate::{Error, Result};

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
    /// This image's share of the process-wide [`crate::budget::MemoryBudget`], released when the last clone
    /// is dropped.
    memory: Option<Arc<Reservation>>,
}

impl Xray {
    /// Reads and decodes a file through the input gate ([`Gate::TRUSTED`]: regular files
    /// only, bounded reads, at least [`crate::limits::MIN_SIDE`] pixels per side).
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
        let raster = raster::decode(bytes, &path)?;
        Ok(Self {
            path,
            original: raster.original,
            gray: raster.gray,
            sha256: sha256_hex(bytes),
            identifiers: None,
            memory: Some(Arc::new(raster.memory)),
        })
    }

    /// Bytes of the process-wide [`crate::budget::MemoryBudget`] this image holds (0 if none).
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

/// Decoding through the gate: defined here, not in [`crate::input`], so that reading bytes does
/// not depend on the decoders.
impl Gate {
    /// Reads and decodes a radiograph through the gate.
    pub fn open(&self, path: &Path) -> Result<Xray> {
        let bytes = self.read(path)?;
        self.decode(&bytes, path)
    }

    /// Decodes bytes read through the gate: [`Xray::decode`] (pixel budget, strict decoding,
    /// finite values) plus the minimum size.
    pub fn decode(&self, bytes: &[u8], path: &Path) -> Result<Xray> {
        let xray = Xray::decode_min(bytes, path, self.min_side)?;
        Ok(xray)
    }
}
