//! The coordinator's retry, busy and stuck logic, against a scripted processing step instead
//! of the models: each test says what the "workers" answer and checks what the coordinator
//! makes of it, with the real inbox, watcher and queue folders.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::processor::{Job, Outcome};
use super::{Msg, Processing, RetryPolicy, Summary, WatchEvent, WatchOptions, coordinate};
use crate::queue::Queue;

/// One scripted answer: `None` is "no worker free now".
type Answer = Option<Box<dyn Fn(&Job) -> Outcome + Send>>;

/// Answers jobs from a script, in order, and records what it was given.
struct Scripted {
    script: Mutex<VecDeque<Answer>>,
    /// `(attempts, last_try)` of every job it took.
    taken: Arc<Mutex<Vec<(u32, bool)>>>,
}

impl Scripted {
    fn new(script: Vec<Answer>) -> Self {
        Self {
            script: Mutex::new(script.into()),
            taken: Arc::default(),
        }
    }
}

impl Processing for Scripted {
    fn try_start(&self, job: Job, done: &mpsc::Sender<Msg>) -> bool {
        let next = self
            .script
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .pop_front();
        let Some(Some(answer)) = next else {
            return false;
        };
        self.taken
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .push((job.attempts, job.last_try));
        let outcome = answer(&job);
        done.send(Msg::Done(job.path, outcome)).is_ok()
    }
}

#[allow(clippy::unnecessary_wraps)] // a script entry, like the `None`s beside it
fn incomplete() -> Answer {
    Some(Box::new(|_| Outcome::Incomplete {
        reason: "truncated".into(),
    }))
}

/// Rejects the file as a worker would: moved out of the inbox, with its reason.
#[allow(clippy::unnecessary_wraps)]
fn reject() -> Answer {
    Some(Box::new(|job| {
        let to = job.path.with_extension("rejected");
        std::fs::rename(&job.path, &to).unwrap_or_else(|e| panic!("{e}"));
        Outcome::Rejected {
            to,
            reason: "still truncated".into(),
        }
    }))
}

/// Runs the coordinator once over an inbox holding one file, with quick retries.
fn run_once(processing: &Scripted) -> (Vec<WatchEvent>, Summary) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let queue = Queue::create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(queue.inbox().join("scan.png"), b"not yet").unwrap_or_else(|e| panic!("{e}"));
    let mut options = WatchOptions::new(
        dir.path(),
        "no-models",
        crate::compute::Compute::on(tch::Device::Cpu),
    );
    options.once = true;
    options.jobs = 1;
    options.debounce = Duration::from_millis(10);
    options.retry = RetryPolicy {
        retries: 2,
        first_delay: Duration::from_millis(20),
    };
    let mut events = Vec::new();
    let summary = coordinate(
        &options,
        &queue,
        processing,
        &AtomicBool::new(false),
        &mut |e| events.push(e.clone()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (events, summary)
}

#[test]
fn an_unreadable_file_is_retried_with_growing_delays_then_rejected_on_its_last_try() {
    let scripted = Scripted::new(vec![incomplete(), incomplete(), reject()]);
    let (events, summary) = run_once(&scripted);
    let retries: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Retrying {
                attempt, delay_ms, ..
            } => Some((*attempt, *delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(retries, [(1, 20), (2, 40)]);
    assert_eq!(
        *scripted.taken.lock().unwrap_or_else(|e| panic!("{e}")),
        [(0, false), (1, false), (2, true)],
        "the third attempt is the last try"
    );
    assert_eq!(summary.rejected, 1);
    assert!(matches!(events.last(), Some(WatchEvent::Finished(s)) if s.rejected == 1));
}

#[test]
fn a_full_pool_delays_a_file_and_loses_nothing() {
    // Three times no worker is free, then the file goes through.
    let scripted = Scripted::new(vec![None, None, None, reject()]);
    let (_, summary) = run_once(&scripted);
    assert_eq!(summary.rejected, 1);
    assert_eq!(
        scripted
            .taken
            .lock()
            .unwrap_or_else(|e| panic!("{e}"))
            .len(),
        1
    );
}

#[test]
fn a_file_that_cannot_leave_the_inbox_is_reported_once_and_counted_as_stuck() {
    let scripted = Scripted::new(vec![Some(Box::new(|_| {
        Outcome::Stuck("cannot move it: read-only inbox".into())
    }))]);
    let (events, summary) = run_once(&scripted);
    let errors: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Error { error, .. } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(errors[0].contains("read-only inbox") && errors[0].contains("stays in the inbox"));
    assert_eq!(summary.stuck, 1);
    assert_eq!(summary.rejected, 0);
}
