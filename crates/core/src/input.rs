//! The one input gate: every radiograph the tool reads (classify, explain, segment, eval, the
//! viewer, the watch folder, the worker) comes through [`Gate`], so that hostile or careless
//! files are refused the same way everywhere, with a one-line error naming the file and the
//! limit.
//!
//! - The file is opened once, without blocking (a FIFO cannot hang the reader), and everything
//!   after that uses the opened handle: its metadata must say "regular file" (FIFOs, devices,
//!   sockets and folders are refused), and for untrusted folders (the watch inbox, the worker's
//!   folder) it is opened with `O_NOFOLLOW`, so a symbolic link is refused, never followed.
//! - At most [`MAX_FILE_BYTES`] are read, enforced while reading: `/dev/zero` or a sparse
//!   3 GB file is never read whole.
//! - The decoded size is checked from the header (PNG IHDR, JPEG SOF, DICOM rows x columns x
//!   frames) before any pixel is allocated: at most [`MAX_PIXELS`] (see [`crate::xray`]).
//! - Decoding is strict (a JPEG without its end-of-image marker or a PNG without IEND is
//!   truncated, even when the decoder would pad it), pixel values must be finite, and each side
//!   must have at least [`MIN_SIDE`] pixels.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::xray::Xray;
use crate::{CoreError, Result};

/// Largest file read, in bytes (256 MiB): far above any radiograph, far below the memory of a
/// workstation.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Most pixels one image may decode to (64 megapixels; an 8000 x 8000 radiograph).
pub const MAX_PIXELS: u64 = 64_000_000;
/// Shortest side accepted, in pixels: anything smaller carries no diagnostic content.
pub const MIN_SIDE: u32 = 64;

/// How an input is read: the limits, and whether symbolic links are followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// Files larger than this are refused before and while reading.
    pub max_bytes: u64,
    /// Images with a side shorter than this are refused.
    pub min_side: u32,
    /// `false` for folders other users or programs write into: a symbolic link is refused.
    pub follow_symlinks: bool,
}

impl Default for Gate {
    fn default() -> Self {
        Self::TRUSTED
    }
}

impl Gate {
    /// Files named by the user on the command line or in a manifest: links are followed.
    pub const TRUSTED: Self = Self {
        max_bytes: MAX_FILE_BYTES,
        min_side: MIN_SIDE,
        follow_symlinks: true,
    };
    /// Files found in a folder others write into (watch inbox, worker folder): a symbolic link
    /// is refused.
    pub const UNTRUSTED: Self = Self {
        follow_symlinks: false,
        ..Self::TRUSTED
    };

    /// Opens `path` once, without blocking, and returns the handle if it is a regular file no
    /// larger than [`Gate::max_bytes`].
    pub fn open_file(&self, path: &Path) -> Result<File> {
        let refuse = |reason: String| CoreError::Refused {
            path: path.to_path_buf(),
            reason,
        };
        let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
        if !self.follow_symlinks {
            flags |= libc::O_NOFOLLOW;
        }
        let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
            Ok(file) => file,
            // O_NOFOLLOW on a symbolic link fails with ELOOP.
            Err(e) if !self.follow_symlinks && e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(refuse(
                    "is a symbolic link; links are not followed in this folder".into(),
                ));
            }
            Err(e) => return Err(CoreError::io(path, e)),
        };
        let meta = file.metadata().map_err(|e| CoreError::io(path, e))?;
        let kind = meta.file_type();
        let what = if kind.is_file() {
            None
        } else if kind.is_dir() {
            Some("a folder")
        } else if kind.is_fifo() {
            Some("a FIFO (named pipe)")
        } else if kind.is_char_device() || kind.is_block_device() {
            Some("a device")
        } else if kind.is_socket() {
            Some("a socket")
        } else {
            Some("a special file")
        };
        if let Some(what) = what {
            return Err(refuse(format!("is {what}, not a regular file")));
        }
        if meta.len() > self.max_bytes {
            return Err(refuse(too_big(meta.len(), self.max_bytes)));
        }
        Ok(file)
    }

    /// Reads a whole file through the gate: at most [`Gate::max_bytes`], however large the file
    /// claims or turns out to be.
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let file = self.open_file(path)?;
        self.read_file(&file, path)
    }

    /// Reads an already opened (and checked) file, bounded by [`Gate::max_bytes`].
    pub fn read_file(&self, file: &File, path: &Path) -> Result<Vec<u8>> {
        let hint = file.metadata().map_or(0, |m| m.len()).min(self.max_bytes);
        let mut bytes = Vec::with_capacity(hint as usize);
        let mut limited = file.take(self.max_bytes + 1);
        loop {
            match limited.read_to_end(&mut bytes) {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(CoreError::io(path, e)),
            }
        }
        if bytes.len() as u64 > self.max_bytes {
            return Err(CoreError::Refused {
                path: path.to_path_buf(),
                reason: format!(
                    "grew past the {} MiB this tool reads while being read",
                    self.max_bytes >> 20
                ),
            });
        }
        Ok(bytes)
    }

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

fn too_big(len: u64, max: u64) -> String {
    format!(
        "file of {} MiB is larger than the {} MiB this tool reads",
        len.div_ceil(1 << 20),
        max >> 20
    )
}

/// What a walk over a file's structure found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Structure {
    /// Every chunk or segment is whole and the end marker is there.
    Complete,
    /// The data stops before the end marker.
    Truncated,
    /// Not what the format says; left to the decoder to judge.
    Unknown,
}

/// Walks a PNG's chunks: complete when every chunk is whole and IEND is reached.
pub(crate) fn png_structure(b: &[u8]) -> Structure {
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
pub(crate) fn jpeg_structure(b: &[u8]) -> Structure {
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
