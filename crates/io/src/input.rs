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
//! - Decoded images share one process-wide [`MemoryBudget`] (default [`DEFAULT_MEMORY_BUDGET`],
//!   set with `CXR_MEMORY_BUDGET`): every decode reserves its estimated peak before allocating,
//!   waits while other decodes hold the budget, and keeps a reservation for the decoded image
//!   until it is dropped, so `--jobs N` or several watch workers cannot multiply the per-image
//!   limit N times.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use crate::xray::Xray;
use crate::{Error, Result};

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

/// Decoded-image memory one process may use at once when `CXR_MEMORY_BUDGET` is not set
/// (2 GiB): room for the largest image this tool decodes (about 1.5 GiB at its peak) and for
/// several ordinary radiographs (about 100 MiB each) at once.
pub const DEFAULT_MEMORY_BUDGET: u64 = 2 << 30;
/// The environment variable that sets the memory budget: bytes, or a number with `K`, `M`, `G`
/// (binary units, an optional `iB`/`B`), or `unlimited`.
pub const MEMORY_BUDGET_ENV: &str = "CXR_MEMORY_BUDGET";

/// A process-wide ledger of the memory decoded images use: a byte semaphore.
///
/// Every decode [reserves](MemoryBudget::reserve) its estimated peak before it allocates pixels;
/// when the decode is done the reservation shrinks to what the decoded image keeps
/// ([`Reservation::retain`]) and lives as long as the image, released on drop.
///
/// A reservation that does not fit waits until other decodes finish. It never waits for
/// memory when its own thread already holds a decoded image (that thread would be waiting for
/// itself, or for a thread waiting for it): it is refused with [`Error::MemoryBudget`]
/// instead, as is a single image whose estimate exceeds the whole budget ([`Error::Refused`]:
/// retrying cannot help). Waits are therefore always for a decode in progress or for an image
/// held by a thread that is not waiting, and end.
#[derive(Debug)]
pub struct MemoryBudget {
    total: u64,
    ledger: Mutex<Ledger>,
    freed: Condvar,
}

#[derive(Debug, Default)]
struct Ledger {
    used: u64,
    /// Threads waiting for memory now.
    waiting: usize,
    /// Live retained reservations (decoded images) by the thread that decoded them.
    holders: HashMap<ThreadId, usize>,
}

/// Bytes held in a [`MemoryBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
    /// The thread that holds a decoded image through this reservation, once retained.
    holder: Option<ThreadId>,
}

static GLOBAL_BUDGET: LazyLock<std::result::Result<Arc<MemoryBudget>, String>> =
    LazyLock::new(|| {
        let total = match std::env::var(MEMORY_BUDGET_ENV) {
            Ok(value) => parse_memory_size(&value)
                .map_err(|e| format!("{MEMORY_BUDGET_ENV}={value:?}: {e}"))?,
            Err(_) => DEFAULT_MEMORY_BUDGET,
        };
        Ok(MemoryBudget::new(total))
    });

/// Parses a memory size: `1073741824`, `512M`, `2G`, `2GiB`, `1.5G` or `unlimited`.
pub fn parse_memory_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("unlimited") {
        return Ok(u64::MAX);
    }
    let upper = text.to_ascii_uppercase();
    let number = upper.trim_end_matches('B').trim_end_matches('I').trim_end();
    let (digits, shift) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 10),
        Some('M') => (&number[..number.len() - 1], 20),
        Some('G') => (&number[..number.len() - 1], 30),
        Some('T') => (&number[..number.len() - 1], 40),
        _ => (number, 0),
    };
    let value: f64 = digits
        .trim()
        .parse()
        .map_err(|_| "not a size (use bytes, or a number with K, M or G, or `unlimited`)")?;
    let bytes = value * 2f64.powi(shift);
    if !bytes.is_finite() || bytes < f64::from(1u32 << 20) {
        return Err("a memory budget must be at least 1M".into());
    }
    Ok(if bytes >= u64::MAX as f64 {
        u64::MAX
    } else {
        bytes as u64
    })
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

impl MemoryBudget {
    /// A budget of `total` bytes.
    #[must_use]
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            total,
            ledger: Mutex::new(Ledger::default()),
            freed: Condvar::new(),
        })
    }

    /// The process-wide budget: `CXR_MEMORY_BUDGET`, else [`DEFAULT_MEMORY_BUDGET`]. An
    /// unreadable `CXR_MEMORY_BUDGET` is an error for every decode, not silently the default.
    pub fn global() -> Result<&'static Arc<Self>> {
        GLOBAL_BUDGET
            .as_ref()
            .map_err(|e| Error::Invalid(e.clone()))
    }

    /// The budget, in bytes.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes reserved now.
    #[must_use]
    pub fn in_use(&self) -> u64 {
        self.lock().used
    }

    /// Threads waiting for memory now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // The ledger is consistent after every statement: a panic elsewhere leaves it usable.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `bytes` for decoding `path`, waiting while other decodes hold the budget.
    pub fn reserve(self: &Arc<Self>, bytes: u64, path: &Path) -> Result<Reservation> {
        let mut reservation = Reservation {
            budget: Arc::clone(self),
            bytes: 0,
            holder: None,
        };
        reservation.grow(bytes, path)?;
        Ok(reservation)
    }

    /// Reserves `bytes` only if they are free now.
    #[must_use]
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut ledger = self.lock();
        if ledger.used.saturating_add(bytes) > self.total {
            return None;
        }
        ledger.used += bytes;
        Some(Reservation {
            budget: Arc::clone(self),
            bytes,
            holder: None,
        })
    }
}

impl Reservation {
    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `extra` bytes to this reservation, waiting like [`MemoryBudget::reserve`]. Only one
    /// thread at a time may grow a reservation it already holds while others wait (see
    /// [`staged`]); otherwise two half-reserved decodes could wait for each other.
    pub fn grow(&mut self, extra: u64, path: &Path) -> Result<()> {
        let budget = Arc::clone(&self.budget);
        let total = budget.total;
        let need = self.bytes.saturating_add(extra);
        if need > total {
            return Err(Error::Refused {
                path: path.to_path_buf(),
                reason: format!(
                    "decoding this image needs about {} MiB, more than the whole memory budget \
                     of {} MiB ({MEMORY_BUDGET_ENV})",
                    mib(need),
                    mib(total)
                ),
            });
        }
        let me = std::thread::current().id();
        let mut ledger = budget.lock();
        loop {
            if ledger.used.saturating_add(extra) <= total {
                ledger.used += extra;
                self.bytes = need;
                return Ok(());
            }
            if ledger.holders.get(&me).copied().unwrap_or(0) > 0 {
                return Err(Error::MemoryBudget {
                    path: path.to_path_buf(),
                    reason: format!(
                        "memory budget exhausted: decoding needs about {} MiB, {} of the {} \
                         MiB budget ({MEMORY_BUDGET_ENV}) are in use, and this thread holds a \
                         decoded image already",
                        mib(extra),
                        mib(ledger.used),
                        mib(total)
                    ),
                });
            }
            ledger.waiting += 1;
            ledger = budget
                .freed
                .wait(ledger)
                .unwrap_or_else(PoisonError::into_inner);
            ledger.waiting -= 1;
        }
    }

    /// Shrinks the reservation to the `bytes` a decoded image keeps, and records that this
    /// thread now holds it until the reservation is dropped.
    pub fn retain(&mut self, bytes: u64) {
        let mut ledger = self.budget.lock();
        let keep = bytes.min(self.bytes);
        ledger.used -= self.bytes - keep;
        self.bytes = keep;
        if self.holder.is_none() {
            let me = std::thread::current().id();
            *ledger.holders.entry(me).or_insert(0) += 1;
            self.holder = Some(me);
        }
        drop(ledger);
        self.budget.freed.notify_all();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut ledger = self.budget.lock();
        ledger.used -= self.bytes;
        if let Some(holder) = self.holder
            && let Some(count) = ledger.holders.get_mut(&holder)
        {
            *count -= 1;
            if *count == 0 {
                ledger.holders.remove(&holder);
            }
        }
        drop(ledger);
        self.budget.freed.notify_all();
    }
}

static STAGED: Mutex<()> = Mutex::new(());

/// Serialises decodes that reserve in two steps (DICOM: the data set, then the pixels once
/// their size is known): hold the guard from the first reservation until the second is granted.
pub(crate) fn staged() -> MutexGuard<'static, ()> {
    STAGED.lock().unwrap_or_else(PoisonError::into_inner)
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
    fn memory_sizes_parse() {
        assert_eq!(parse_memory_size("2G"), Ok(2 << 30));
        assert_eq!(parse_memory_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory_size("512m"), Ok(512 << 20));
        assert_eq!(parse_memory_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_memory_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory_size("unlimited"), Ok(u64::MAX));
        assert!(parse_memory_size("lots").is_err());
        assert!(parse_memory_size("10K").is_err(), "below 1M");
        assert!(parse_memory_size("-1G").is_err());
    }

    #[test]
    fn a_reservation_waits_for_a_decode_to_finish_then_proceeds() {
        let budget = MemoryBudget::new(100);
        let path = Path::new("a.png");
        let first = budget.reserve(80, path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let second = budget.reserve(50, Path::new("b.png"));
                tx.send(second.map(|r| r.bytes())).unwrap();
            })
        };
        // Deterministic: the waiter is parked on the ledger, and cannot have been granted.
        while budget.waiting() == 0 {
            std::thread::yield_now();
        }
        assert!(rx.try_recv().is_err(), "granted while the budget was held");
        assert_eq!(budget.in_use(), 80);
        drop(first);
        waiter.join().unwrap();
        assert_eq!(rx.recv().unwrap().unwrap(), 50);
        assert_eq!(budget.in_use(), 0, "released on drop");
    }

    #[test]
    fn more_than_the_whole_budget_is_refused_not_waited_for() {
        let budget = MemoryBudget::new(100);
        let e = budget.reserve(101, Path::new("bomb.png")).unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("more than the whole memory budget"), "{text}");
        assert!(text.contains(MEMORY_BUDGET_ENV), "{text}");
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn a_thread_holding_an_image_is_refused_instead_of_waiting_for_itself() {
        let budget = MemoryBudget::new(100);
        let mut image = budget.reserve(90, Path::new("a.png")).unwrap();
        image.retain(70);
        assert_eq!(budget.in_use(), 70, "shrunk to what the image keeps");
        let e = budget.reserve(40, Path::new("b.png")).unwrap_err();
        assert!(matches!(e, Error::MemoryBudget { .. }), "{e}");
        assert!(e.to_string().contains("memory budget exhausted"), "{e}");
        // What fits is granted.
        let small = budget.reserve(30, Path::new("c.png")).unwrap();
        drop((image, small));
        assert_eq!(budget.in_use(), 0);
        budget.reserve(100, Path::new("d.png")).unwrap();
    }

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
