//! One persistent thread pool for all kernels.
//!
//! Decode runs a few hundred parallel regions per token, so a region must start in
//! microseconds: workers spin briefly on a generation counter before parking, and the
//! calling thread takes a share of the work itself. The pool never allocates per call.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job<'a> = &'a (dyn Fn(usize, usize) + Sync);

struct Shared {
    /// Incremented to publish a new job.
    generation: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// The current job, valid while `pending > 0` (lifetime erased; `run` waits).
    job: UnsafeCell<Option<Job<'static>>>,
    n_threads: usize,
    shutdown: AtomicBool,
    sleep: Mutex<usize>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the owner thread while no worker reads it (between
// jobs, with `pending == 0`), and read by workers only after observing a new generation.
unsafe impl Sync for Shared {}

/// A fixed set of worker threads; `run` executes a closure on all of them plus the
/// caller and returns when every share is done.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    lock: Mutex<()>,
}

/// Busy-wait this long for the next job or for workers to finish (a decode step's
/// regions are microseconds apart)...
const SPIN: Duration = Duration::from_micros(50);
/// ...then yield the core to other runnable threads for this long before a worker
/// parks. Yielding keeps a contended machine (a server's HTTP threads, other
/// processes) from being starved by our waiting.
const YIELD: Duration = Duration::from_millis(3);

/// A waiting strategy: spin, then yield, then report that it is time to sleep.
struct Backoff {
    start: Option<Instant>,
    iters: u32,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            start: None,
            iters: 0,
        }
    }
    /// Waits a little; returns `false` once the caller should park instead.
    #[inline]
    fn snooze(&mut self) -> bool {
        self.iters = self.iters.wrapping_add(1);
        if !self.iters.is_multiple_of(64) {
            std::hint::spin_loop();
            return true;
        }
        let start = *self.start.get_or_insert_with(Instant::now);
        let waited = start.elapsed();
        if waited < SPIN {
            std::hint::spin_loop();
            true
        } else if waited < SPIN + YIELD {
            std::thread::yield_now();
            true
        } else {
            false
        }
    }
}

impl ThreadPool {
    /// A pool of `n_threads` in total (the caller counts as one).
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            n_threads,
            shutdown: AtomicBool::new(false),
            sleep: Mutex::new(0),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|tid| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("hangar-kernel-{tid}"))
                    .spawn(move || worker(s, tid))
                    .expect("spawning a kernel thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    }

    /// Threads available to each job (including the caller).
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `task(i)` for every `i < n`, the indices handed out one at a time to the
    /// pool's threads (for uneven work such as sampling rows).
    pub fn for_each_index(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n <= 1 || self.shared.n_threads == 1 {
            (0..n).for_each(task);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(|_, _| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            task(i);
        });
    }

    /// Runs `f(thread_index, n_threads)` on every thread and waits for all of them.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let n = self.shared.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let job: Job<'_> = &f;
        // SAFETY: we erase the lifetime, then wait below until every worker finished
        // with the job before `f` goes out of scope.
        let job: Job<'static> = unsafe { std::mem::transmute(job) };
        unsafe { *self.shared.job.get() = Some(job) };
        self.shared.pending.store(n - 1, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        {
            let sleepers = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            if *sleepers > 0 {
                self.shared.wake.notify_all();
            }
        }
        f(0, n);
        let mut backoff = Backoff::new();
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            if !backoff.snooze() {
                std::thread::yield_now();
            }
        }
        unsafe { *self.shared.job.get() = None };
    }

    /// Splits `0..total` into chunks of `chunk` handed out dynamically; calls
    /// `f(start, end)` for each. Dynamic hand-out keeps both cores busy when one is
    /// disturbed by other work.
    pub fn for_each_chunk<F: Fn(usize, usize) + Sync>(&self, total: usize, chunk: usize, f: F) {
        let chunk = chunk.max(1);
        if total == 0 {
            return;
        }
        if self.n_threads() == 1 || total <= chunk {
            let mut s = 0;
            while s < total {
                f(s, (s + chunk).min(total));
                s += chunk;
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(|_, _| loop {
            let s = next.fetch_add(chunk, Ordering::Relaxed);
            if s >= total {
                break;
            }
            f(s, (s + chunk).min(total));
        });
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0usize;
    loop {
        let mut backoff = Backoff::new();
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if !backoff.snooze() {
                let mut sleepers = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                *sleepers += 1;
                while s.generation.load(Ordering::Acquire) == seen
                    && !s.shutdown.load(Ordering::Acquire)
                {
                    sleepers = s.wake.wait(sleepers).unwrap_or_else(|e| e.into_inner());
                }
                *sleepers -= 1;
                backoff = Backoff::new();
            }
        }
        // SAFETY: the owner published the job before bumping the generation and keeps it
        // alive until `pending` reaches zero.
        if let Some(job) = unsafe { *s.job.get() } {
            job(tid, s.n_threads);
        }
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self.shared.sleep.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for total in [0usize, 1, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each_chunk(total, 3, |s, e| {
                for h in &hits[s..e] {
                    h.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn run_reaches_all_threads_many_times() {
        let pool = ThreadPool::new(2);
        let count = AtomicUsize::new(0);
        for _ in 0..10_000 {
            pool.run(|_, n| {
                assert_eq!(n, 2);
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(count.load(Ordering::Relaxed), 20_000);
    }
}
