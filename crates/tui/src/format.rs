//! How durations read for people, shared by the batch commands' progress and the viewer's
//! panel.

use std::time::Duration;

/// The estimated time left after `done` of `total` items in `elapsed`, or `None` while too
/// little is done for an honest guess: at least one item and one second, and either three items
/// or a tenth of the work. Simply the mean time per item so far times the items left.
pub fn eta(done: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if done == 0 || done >= total || elapsed < Duration::from_secs(1) {
        return None;
    }
    if done < 3 && done * 10 < total {
        return None;
    }
    let per_item = elapsed.as_secs_f64() / done as f64;
    Some(Duration::from_secs_f64(per_item * (total - done) as f64))
}

/// "42 s", "3 min 05 s", "1 h 07 min".
pub fn human(duration: Duration) -> String {
    let s = duration.as_secs_f64().round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_estimate_until_enough_is_done() {
        let s = Duration::from_secs;
        assert_eq!(eta(0, 100, s(10)), None, "nothing done");
        assert_eq!(eta(1, 100, s(10)), None, "one of a hundred says little");
        assert_eq!(eta(2, 100, s(10)), None);
        assert_eq!(eta(3, 100, s(0)), None, "under a second");
        assert_eq!(eta(100, 100, s(10)), None, "done");
        // Three done in 6 s: 2 s each, 97 left.
        assert_eq!(eta(3, 100, s(6)), Some(s(194)));
        // One of two done in 5 s (half the work): 5 s left.
        assert_eq!(eta(1, 2, s(5)), Some(s(5)));
        // LIME: 300 of 1000 samples in 12 s.
        assert_eq!(eta(300, 1000, s(12)), Some(s(28)));
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(42)), "42 s");
        assert_eq!(human(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(human(Duration::from_secs(4020)), "1 h 07 min");
    }
}
