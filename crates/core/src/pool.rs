//! A fixed pool of worker threads, each owning its own models (libtorch modules are `Send`,
//! not `Sync`, so a loaded [`crate::service::Service`] cannot be shared; each thread makes its
//! own). Work goes through one bounded queue: when it is full, [`ModelPool::submit`] waits
//! (backpressure for a reader of requests) and [`ModelPool::try_submit`] refuses at once (a
//! server answers "busy"). Each worker's thread count comes from [`crate::compute::Compute`],
//! applied when the worker loads its models.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::{CoreError, Result};

type Task<W> = Box<dyn FnOnce(&W) + Send>;

/// A task panicked (inside libtorch or a decoder): the pool goes on, the caller gets this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl std::fmt::Display for Panicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "internal error: {}", self.0)
    }
}

/// Runs `work`, turning a panic (inside libtorch or a decoder) into [`Panicked`] with its
/// message, so that every task gets an answer. Tasks that answer on their own channel (the
/// watch folder, the worker, the server) use it directly.
pub fn catching<T>(work: impl FnOnce() -> T) -> std::result::Result<T, Panicked> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
        Panicked(
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a worker panicked".into()),
        )
    })
}

/// The queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// What a submitted task answers: its value, or the panic that ended it.
pub type Answer<T> = Receiver<std::result::Result<T, Panicked>>;

/// Worker threads with their own state `W` (typically a loaded service), fed by one bounded
/// queue. Dropping the pool lets the queued work finish, then joins the threads.
pub struct ModelPool<W> {
    jobs: Option<Sender<Task<W>>>,
    threads: Vec<JoinHandle<()>>,
    workers: usize,
}

impl<W: 'static> ModelPool<W> {
    /// Starts `workers` threads named `name-N`; each makes its state with `make(N)` and the
    /// pool is returned once all of them have. The first that fails is the error (after the
    /// others have stopped). At most `pending` tasks wait in the queue.
    pub fn start<F>(workers: usize, pending: usize, name: &str, make: F) -> Result<Self>
    where
        F: Fn(usize) -> Result<W> + Send + Sync + 'static,
    {
        let workers = workers.max(1);
        let (jobs, queue) = bounded::<Task<W>>(pending.max(1));
        let (ready_tx, ready_rx) = bounded::<Result<()>>(workers);
        let make = Arc::new(make);
        let mut threads = Vec::with_capacity(workers);
        for index in 0..workers {
            let (queue, ready, make) = (queue.clone(), ready_tx.clone(), Arc::clone(&make));
            let thread = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || {
                    let state = match make(index) {
                        Ok(state) => {
                            let _ = ready.send(Ok(()));
                            state
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    drop(ready);
                    for task in queue {
                        task(&state);
                    }
                    // The state (models) is dropped here, on its own thread, before the join.
                })
                .map_err(|e| CoreError::internal("starting a worker thread", e))?;
            threads.push(thread);
        }
        drop(ready_tx);
        let mut pool = Self {
            jobs: Some(jobs),
            threads,
            workers,
        };
        for ready in ready_rx {
            if let Err(e) = ready {
                pool.close();
                return Err(e);
            }
        }
        Ok(pool)
    }

    /// How many worker threads there are.
    #[must_use]
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Queues `work`, waiting while the queue is full; its answer comes on the receiver.
    pub fn submit<T, F>(&self, work: F) -> Answer<T>
    where
        T: Send + 'static,
        F: FnOnce(&W) -> T + Send + 'static,
    {
        let (task, answer) = Self::task(work);
        if let Some(jobs) = &self.jobs {
            // Fails only once every worker has stopped; the answer's sender is then dropped
            // and the caller sees a disconnected receiver.
            let _ = jobs.send(task);
        }
        answer
    }

    /// Queues `work` if there is room now, else [`Busy`].
    pub fn try_submit<T, F>(&self, work: F) -> std::result::Result<Answer<T>, Busy>
    where
        T: Send + 'static,
        F: FnOnce(&W) -> T + Send + 'static,
    {
        let (task, answer) = Self::task(work);
        let Some(jobs) = &self.jobs else {
            return Err(Busy);
        };
        match jobs.try_send(task) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    fn task<T, F>(work: F) -> (Task<W>, Answer<T>)
    where
        T: Send + 'static,
        F: FnOnce(&W) -> T + Send + 'static,
    {
        let (tx, rx) = bounded(1);
        let task: Task<W> = Box::new(move |state: &W| {
            let outcome = catching(|| work(state));
            // The caller may have stopped waiting (a client went away): nothing to tell.
            let _ = tx.send(outcome);
        });
        (task, rx)
    }
}

impl<W> ModelPool<W> {
    /// Lets the queued work finish, then joins every thread.
    pub fn close(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl<W> Drop for ModelPool<W> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_on_a_worker_with_its_own_state_and_answers() {
        let pool = ModelPool::start(3, 8, "test", |index| Ok(index * 100)).unwrap_or_else(|e| {
            panic!("{e}");
        });
        let answers: Vec<_> = (0..20)
            .map(|i| pool.submit(move |state: &usize| (*state, i)))
            .collect();
        let mut seen = Vec::new();
        for answer in answers {
            let (state, i) = answer
                .recv()
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert!([0, 100, 200].contains(&state));
            seen.push(i);
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_panic_is_answered_and_the_worker_goes_on() {
        let pool = ModelPool::start(1, 2, "test", |_| Ok(())).unwrap_or_else(|e| panic!("{e}"));
        let boom = pool.submit(|()| -> u32 { panic!("boom") });
        assert_eq!(
            boom.recv().unwrap_or_else(|e| panic!("{e}")),
            Err(Panicked("boom".into()))
        );
        let fine = pool.submit(|()| 7);
        assert_eq!(fine.recv().unwrap_or_else(|e| panic!("{e}")), Ok(7));
    }

    #[test]
    fn a_full_queue_is_busy_and_a_failed_start_is_the_error() {
        let (release, hold) = bounded::<()>(0);
        let pool = ModelPool::start(1, 1, "test", |_| Ok(())).unwrap_or_else(|e| panic!("{e}"));
        // One task holds the worker, one waits in the queue: the next is refused.
        let held = pool.submit(move |()| hold.recv().is_ok());
        let mut queued = None;
        while queued.is_none() {
            queued = pool.try_submit(|()| true).ok();
        }
        assert!(pool.try_submit(|()| true).is_err(), "a full queue refuses");
        drop(release);
        assert!(
            !held
                .recv()
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or(true)
        );
        let failed = ModelPool::<()>::start(2, 1, "test", |index| {
            if index == 1 {
                Err(CoreError::Internal("no models".into()))
            } else {
                Ok(())
            }
        });
        assert_eq!(
            failed.err().map(|e| e.to_string()),
            Some("no models".into())
        );
    }
}
