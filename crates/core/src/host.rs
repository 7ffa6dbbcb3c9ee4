//! What a program decides for its whole process, at start-up: for the programs (the `cxr`
//! binary, the benches) to call; the library never calls them. Both act on or read the whole
//! host, not one model: the allocator's settings ([`reuse_freed_memory`]) and how many cores
//! other work leaves free ([`idle_cores`], handed to [`crate::compute::Compute::with_idle_cores`]).

/// Keeps the memory libtorch frees for its next allocations; once per process (later calls do
/// nothing).
///
/// A forward pass allocates and frees megabytes of activations per layer. With glibc's defaults
/// each such block is a fresh `mmap` (or the heap is trimmed after it), so the next pass faults
/// every page in again and the kernel zeroes it: about 6,600 page faults and a quarter of the
/// U-Net's time per forward on this project's machine (102 ms against 77 ms with this; PyTorch
/// in Python pays the same cost). Blocks of up to 1 GiB now come from the heap, and up to 1 GiB
/// of freed heap is kept for reuse rather than given back: the process keeps its peak footprint
/// instead of refaulting it.
///
/// This changes glibc's allocator for every thread and every library of the process, which is
/// why a program chooses it and the library does not.
pub fn reuse_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            #[allow(unsafe_code)]
            // SAFETY: mallopt only sets two of glibc's allocator parameters; it takes its own
            // lock, and blocks allocated before keep working.
            let accepted = unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1
                    && libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1
            };
            if !accepted {
                tracing::debug!("glibc refused the allocator settings; freed memory goes back");
            }
        }
    });
}

/// The cores not busy with other work now: the available cores less the one-minute load
/// average (Linux `/proc/loadavg`), at least one. A program measures it once and hands it to
/// [`crate::compute::Compute::with_idle_cores`], so that every model it loads gets the same
/// thread count.
#[must_use]
pub fn idle_cores() -> usize {
    idle_cores_under(load_average())
}

/// The available cores less those other work keeps busy (`load`, the one-minute load average,
/// rounded down), at least one.
fn idle_cores_under(load: f64) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let busy = if load.is_finite() && load > 0.0 {
        load as usize
    } else {
        0
    };
    cores.saturating_sub(busy).max(1)
}

/// The one-minute load average (Linux `/proc/loadavg`); 0 where there is none.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_cores_are_left_alone() {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        assert_eq!(idle_cores_under(0.0), cores);
        assert_eq!(idle_cores_under(0.9), cores);
        assert_eq!(idle_cores_under(1.2), (cores - 1).max(1));
        assert_eq!(idle_cores_under(1000.0), 1);
        assert_eq!(idle_cores_under(f64::NAN), cores);
        assert!((1..=cores).contains(&idle_cores()));
    }
}
