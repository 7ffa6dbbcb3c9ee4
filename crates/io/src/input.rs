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
//!   frames) before any pixel is allocated: at most
//!   [`MAX_PIXELS`](crate::limits::MAX_PIXELS) (see [`crate::limits`]).
//! - Decoding is strict (a JPEG without its end-of-image marker or a PNG without IEND is
//!   truncated, even when the decoder would pad it), pixel values must be finite, and each side
//!   must have at least [`MIN_SIDE`] pixels.
//! - Decoded images share one process-wide memory budget ([`crate::budget`], set with
//!   `CXR_MEMORY_BUDGET`).

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::limits::{MAX_FILE_BYTES, MIN_SIDE};
use crate::{Error, Result};

/// How an input is read: the limits, and whether symbolic links are followed. Reading bytes is
/// here; decoding them through the gate ([`Gate::open`], [`Gate::decode`]) is in [`crate::xray`],
/// next to what it makes, so that this module needs no decoder.
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
        let refuse = |reason: String| Error::Refused {
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
            Err(e) => return Err(Error::io(path, e)),
        };
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
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
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        if bytes.len() as u64 > self.max_bytes {
            return Err(Error::Refused {
                path: path.to_path_buf(),
                reason: format!(
                    "grew past the {} MiB this tool reads while being read",
                    self.max_bytes >> 20
                ),
            });
        }
        Ok(bytes)
    }
}

fn too_big(len: u64, max: u64) -> String {
    format!(
        "file of {} MiB is larger than the {} MiB this tool reads",
        len.div_ceil(1 << 20),
        max >> 20
    )
}
