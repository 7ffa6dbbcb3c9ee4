//! The process-wide memory budget for decoded pixels: every decode reserves its estimated peak
//! before allocating, waits while other decodes hold the budget, and keeps a reservation for the
//! decoded image until it is dropped, so `--jobs N` or several watch workers cannot multiply the
//! per-image limit N times.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use crate::{Error, Result};

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
}
