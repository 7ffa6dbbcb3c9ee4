//! What the batch commands tell people on stderr while they work: progress (`--progress
//! auto|always|never`) and notes, both silenced by `--quiet`. Results go to stdout regardless.
//!
//! On a terminal, progress is an indicatif bar; with `--progress always` and stderr not a
//! terminal (a log file, CI), it is plain lines, at most one a second. Either way the estimate
//! of the time left is shown only once enough work is done to make it (see [`eta`]), and is
//! simply the time so far per item times the items left.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::cli::ProgressArg;
use crate::format::{eta, human};

static QUIET: AtomicBool = AtomicBool::new(false);
static MODE: AtomicU8 = AtomicU8::new(0);

/// Sets `--progress` and `--quiet` for the whole process (once, before the command runs).
pub fn set_output(progress: ProgressArg, quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    let mode = match progress {
        ProgressArg::Auto => 0,
        ProgressArg::Always => 1,
        ProgressArg::Never => 2,
    };
    MODE.store(mode, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

fn mode() -> ProgressArg {
    match MODE.load(Ordering::Relaxed) {
        1 => ProgressArg::Always,
        2 => ProgressArg::Never,
        _ => ProgressArg::Auto,
    }
}

/// A note for people (`cxr: TEXT` on stderr), unless `--quiet`. Best effort: a closed stderr
/// loses the note, never the command.
pub fn note(text: &str) {
    if !quiet() {
        let _ = writeln!(std::io::stderr().lock(), "cxr: {text}");
    }
}

/// The words after the counts: "12 s elapsed, about 40 s left" (no estimate until [`eta`]
/// gives one).
fn timing(done: u64, total: u64, elapsed: Duration) -> String {
    match eta(done, total, elapsed) {
        Some(left) => format!("{} elapsed, about {} left", human(elapsed), human(left)),
        None => format!("{} elapsed", human(elapsed)),
    }
}

/// Where the progress of one command goes.
#[derive(Clone)]
pub struct Progress {
    kind: Kind,
    what: Arc<str>,
    total: u64,
    state: Arc<Mutex<State>>,
}

#[derive(Clone)]
enum Kind {
    Bar(ProgressBar),
    Lines,
    Hidden,
}

struct State {
    done: u64,
    start: Instant,
    last_line: Option<Instant>,
    /// The inner task (one explanation's samples): its label, start and counts.
    detail: Option<(String, Instant, u64, u64)>,
}

/// Progress over `len` items doing `what` ("classifying").
pub fn progress(len: usize, what: &str) -> Progress {
    let terminal = std::io::stderr().is_terminal();
    let kind = match (quiet(), mode(), terminal) {
        (true, _, _) | (false, ProgressArg::Never, _) | (false, ProgressArg::Auto, false) => {
            Kind::Hidden
        }
        (false, _, true) => Kind::Bar(bar(len as u64, what)),
        (false, ProgressArg::Always, false) => Kind::Lines,
    };
    Progress {
        kind,
        what: what.into(),
        total: len as u64,
        state: Arc::new(Mutex::new(State {
            done: 0,
            start: Instant::now(),
            last_line: None,
            detail: None,
        })),
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {timing} {msg}").map(|style| {
            style.with_key(
                "timing",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&timing(
                        state.pos(),
                        state.len().unwrap_or(0),
                        state.elapsed(),
                    ));
                },
            )
        });
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar
}

impl Progress {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more item done.
    pub fn inc(&self, n: u64) {
        let line = {
            let mut state = self.state();
            state.done += n;
            state.detail = None;
            let last = state.done >= self.total;
            self.line_due(&mut state, last)
        };
        if let Kind::Bar(bar) = &self.kind {
            bar.set_message("");
            bar.inc(n);
        }
        if let Some(line) = line {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    /// The inner task of the current item advanced: `done` of `total` `label` (e.g. "lime",
    /// samples), with its own estimate of the time left.
    pub fn detail(&self, label: &str, done: usize, total: usize) {
        let (done, total) = (done as u64, total as u64);
        let (text, line) = {
            let mut state = self.state();
            let now = Instant::now();
            let start = match &state.detail {
                Some((l, start, d, _)) if l == label && *d <= done => *start,
                _ => now,
            };
            state.detail = Some((label.to_owned(), start, done, total));
            let text = format!(
                "{label} {done}/{total} ({})",
                timing(done, total, now - start)
            );
            (text, self.line_due(&mut state, false))
        };
        if let Kind::Bar(bar) = &self.kind {
            bar.set_message(text);
        }
        if let Some(line) = line {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
    }

    /// In line mode, the line to print now (the first, then at most one a second, and the
    /// last), with the counts and the inner task.
    fn line_due(&self, state: &mut State, last: bool) -> Option<String> {
        if !matches!(self.kind, Kind::Lines) {
            return None;
        }
        let now = Instant::now();
        let due = last
            || state
                .last_line
                .is_none_or(|t| now - t >= Duration::from_secs(1));
        if !due {
            return None;
        }
        state.last_line = Some(now);
        let mut line = format!(
            "cxr: {} {}/{}, {}",
            self.what,
            state.done,
            self.total,
            timing(state.done, self.total, now - state.start)
        );
        if let Some((label, start, done, total)) = &state.detail {
            let _ = write!(
                line,
                "; {label} {done}/{total} ({})",
                timing(*done, *total, now - *start)
            );
        }
        Some(line)
    }

    /// Runs `f` with the bar out of the way (so its output is not drawn over).
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.kind {
            Kind::Bar(bar) => bar.suspend(f),
            Kind::Lines | Kind::Hidden => f(),
        }
    }

    /// Removes the bar.
    pub fn finish_and_clear(&self) {
        if let Kind::Bar(bar) = &self.kind {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_read_naturally() {
        assert_eq!(
            timing(300, 1000, Duration::from_secs(12)),
            "12 s elapsed, about 28 s left"
        );
        assert_eq!(timing(1, 1000, Duration::from_secs(12)), "12 s elapsed");
    }
}
