//! The limits every input is held to: a leaf that the gate, the PNG/JPEG decoder and the
//! DICOM reader all read, so none of them imports another for a number.

use std::path::Path;

use crate::{Error, Result};

/// Largest file read, in bytes (256 MiB): far above any radiograph, far below the memory of a
/// workstation.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Most pixels one image may decode to (64 megapixels; an 8000 x 8000 radiograph).
pub const MAX_PIXELS: u64 = 64_000_000;
/// Shortest side accepted, in pixels: anything smaller carries no diagnostic content.
pub const MIN_SIDE: u32 = 64;
/// Longest side accepted. Digital radiographs are at most about 4300 px; anything far larger is
/// a mistake or a decompression bomb, refused from the header before any pixel is allocated.
pub const MAX_SIDE: u32 = 16_384;
/// Upper bound on what one decode may allocate (a 16k x 16k RGBA16 frame is 2 GiB).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

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
