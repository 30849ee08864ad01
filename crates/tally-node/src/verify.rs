//! The verification pool: one thread per core takes signature checks in arrival order.
//!
//! Submissions used to be verified on tokio's blocking pool, one thread per half request.
//! Under load that meant dozens of runnable verification threads sharing two cores with
//! the sequencer: the scheduler gave each an equal slice, so every request's verification
//! took as long as all of them together, and the one thread that commits for everyone got
//! a small share of a core. A fixed pool of `cores` threads keeps at most that many
//! verifications running; the rest wait in a FIFO queue, so requests finish in the order
//! they arrived and the sequencer competes with a bounded number of threads.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// A fixed set of threads running jobs first come, first served.
#[derive(Debug)]
pub struct VerifyPool {
    tx: Sender<Job>,
    threads: usize,
}

/// The pool's threads are gone (the node is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolClosed;

impl VerifyPool {
    /// Start `threads` threads (at least one) named `tally-verify`.
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new().name("tally-verify".into()).spawn(move || worker(&rx))?;
        }
        Ok(Self { tx, threads })
    }

    /// One thread per core the process may use.
    pub fn per_core() -> std::io::Result<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queue `f` now, behind every job queued before it; the future is its result. The
    /// job is queued by this call, not when the future is first polled, so the parts of one
    /// submission queued one after another run side by side.
    pub fn run<T, F>(&self, f: F) -> impl std::future::Future<Output = Result<T, PoolClosed>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(f());
        });
        let queued = self.tx.send(job).map_err(|_| PoolClosed);
        async move {
            queued?;
            answer.await.map_err(|_| PoolClosed)
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only to take the next job, not while running it.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            // A panicking job (a bug) loses its answer, which its caller sees as
            // `PoolClosed`; the thread carries on with the next.
            Ok(job) => drop(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_returns_their_results() {
        let pool = VerifyPool::new(2).expect("pool");
        let answers: Vec<_> = (0..50u64).map(|i| pool.run(move || i * i)).collect();
        let mut got = Vec::new();
        for a in answers {
            got.push(a.await.expect("answer"));
        }
        assert_eq!(got, (0..50u64).map(|i| i * i).collect::<Vec<_>>());
    }

    /// Two jobs queued before either is awaited run at the same time: the first waits for a
    /// message only the second sends. (Were a job queued only when its future is first
    /// polled, the first would wait out its timeout alone.)
    #[tokio::test]
    async fn jobs_are_queued_when_run_is_called() {
        let pool = VerifyPool::new(2).expect("pool");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let first = pool.run(move || rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok());
        let second = pool.run(move || tx.send(()).is_ok());
        assert!(first.await.expect("first"), "the second job ran while the first was waiting");
        assert!(second.await.expect("second"));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = VerifyPool::new(1).expect("pool");
        assert_eq!(pool.run(|| -> u8 { panic!("a bug") }).await, Err(PoolClosed));
        assert_eq!(pool.run(|| 7u8).await, Ok(7));
    }

    #[tokio::test]
    async fn at_most_threads_jobs_run_at_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = Arc::new(VerifyPool::new(2).expect("pool"));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                })
            })
            .collect();
        for j in jobs {
            j.await.expect("task").expect("job");
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }
}
