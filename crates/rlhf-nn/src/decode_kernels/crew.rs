//! The worker threads that share the decode kernels' work with the calling thread.
//!
//! A decode step hands out dozens of jobs of 20-300 us each (one per weight product, one per
//! layer's attention). A general pool puts idle workers to sleep between jobs and wakes them
//! with a system call, and on small machines that wake-up costs a large part of the second
//! core's share (the figures are in docs/performance.md). So while a decode scope is open
//! ([`Hot`], held by [`super::DecodeThreads`]) idle workers spin on the job counter instead, for
//! at most [`SPIN_FOR`] after their last job; outside it they park and cost nothing.
//!
//! One job runs at a time. A caller that finds the crew busy (another thread decoding in the
//! same process) runs every part itself.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job inside a decode scope before it parks.
const SPIN_FOR: Duration = Duration::from_millis(2);

/// Nanoseconds since the last [`take_times`]: the calling threads' parts, their waits for the
/// workers after them, and the workers' parts.
static TIMES: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];

/// Where the crew's jobs spent their time (a profiling aid: a thread that waits long for
/// the other means the parts were uneven, or one core ran slower).
#[derive(Debug, Clone, Copy, Default)]
pub struct CrewTimes {
    /// The calling threads' own parts.
    pub caller_parts: Duration,
    /// The calling threads' waits for the workers once their own part was done.
    pub caller_waits: Duration,
    /// The workers' parts, all workers together.
    pub worker_parts: Duration,
}

/// The crew's times since the last call (or the process start), and starts counting anew.
pub fn take_times() -> CrewTimes {
    let [a, b, c] = [0, 1, 2].map(|i| Duration::from_nanos(TIMES[i].swap(0, Ordering::Relaxed)));
    CrewTimes {
        caller_parts: a,
        caller_waits: b,
        worker_parts: c,
    }
}

/// Adds the time since `since` to `TIMES[which]`.
fn count(which: usize, since: Instant) {
    TIMES[which].fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
}

/// A job: called once per part, with the part's index (0 = the calling thread).
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicUsize,
    /// The current job, set before `epoch` is bumped and valid until `pending` is back to 0.
    job: UnsafeCell<Option<*const Job>>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// A worker's part panicked.
    panicked: AtomicBool,
    /// Open decode scopes: while non-zero, idle workers spin.
    hot: AtomicUsize,
    /// Per worker: parked (or about to park), so the next job must unpark it.
    sleeping: Vec<AtomicBool>,
    /// Held by the thread whose job is running.
    busy: Mutex<()>,
}

// SAFETY: `job` is written only by the thread holding `busy`, before it publishes the job by
// bumping `epoch` (SeqCst), and read by workers only after they observed that bump; the
// pointee is `Sync` and outlives every read because its owner waits for `pending` to reach 0
// before it clears `job` or returns.
unsafe impl Sync for Shared {}

/// The crew: `handles[w - 1]` is worker `w`.
pub(crate) struct Crew {
    shared: &'static Shared,
    handles: Vec<Thread>,
}

/// The crew, started on first use with one worker fewer than libtorch's thread count then;
/// `None` for a single thread.
pub(crate) fn crew() -> Option<&'static Crew> {
    static CREW: OnceLock<Option<Crew>> = OnceLock::new();
    CREW.get_or_init(|| {
        let workers = tch::get_num_threads().max(1) as usize - 1;
        (workers > 0).then(|| Crew::start(workers))
    })
    .as_ref()
}

impl Crew {
    fn start(workers: usize) -> Crew {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            hot: AtomicUsize::new(0),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            busy: Mutex::new(()),
        }));
        let handles = (1..=workers)
            .map(|w| {
                thread::Builder::new()
                    .name(format!("decode-kernel-{w}"))
                    .spawn(move || work_loop(shared, w))
                    .expect("starting a decode-kernel thread")
                    .thread()
                    .clone()
            })
            .collect();
        Crew { shared, handles }
    }

    /// Parts per job: the workers plus the calling thread.
    pub fn parts(&self) -> usize {
        self.handles.len() + 1
    }

    /// Runs `job(p)` for every part p in 0..parts(), part 0 on the calling thread, and returns
    /// when all are done (re-raising a part's panic).
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let s = self.shared;
        let Ok(_busy) = s.busy.try_lock() else {
            // Another thread's job is running: do every part here.
            return (0..self.parts()).for_each(job);
        };
        // SAFETY: erases the borrow's lifetime; the pointer is read by workers only until
        // `pending` reaches 0, which this function waits for before it returns or unwinds.
        let erased: *const Job = unsafe { std::mem::transmute(job) };
        // SAFETY: only the `busy` holder writes `job`, and no worker reads it until `epoch` moves.
        unsafe { *s.job.get() = Some(erased) };
        s.pending.store(self.handles.len(), Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (w, h) in self.handles.iter().enumerate() {
            if s.sleeping[w].load(Ordering::SeqCst) {
                h.unpark();
            }
        }
        let begun = Instant::now();
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        count(0, begun);
        let started = Instant::now();
        while s.pending.load(Ordering::Acquire) != 0 {
            if started.elapsed() < SPIN_FOR {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        count(1, started);
        // SAFETY: every worker is done with the job.
        unsafe { *s.job.get() = None };
        if let Err(e) = mine {
            resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a decode-kernel worker panicked (see its message above)");
        }
    }
}

/// While alive, idle workers spin for the next job instead of parking.
pub(crate) struct Hot(&'static Shared);

impl Hot {
    pub fn new(crew: &Crew) -> Hot {
        crew.shared.hot.fetch_add(1, Ordering::SeqCst);
        Hot(crew.shared)
    }
}

impl Drop for Hot {
    fn drop(&mut self) {
        self.0.hot.fetch_sub(1, Ordering::SeqCst);
    }
}

fn work_loop(s: &'static Shared, w: usize) {
    // The epoch the crew started at: a job posted before this thread ran is still seen as new.
    let mut seen = 0;
    loop {
        let mut idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.epoch.load(Ordering::Acquire) != seen {
                break;
            }
            if s.hot.load(Ordering::Relaxed) > 0 {
                spins = spins.wrapping_add(1);
                // Check the clock now and then only; spinning is cheap, the clock less so.
                if !spins.is_multiple_of(256) || idle_since.elapsed() < SPIN_FOR {
                    std::hint::spin_loop();
                    continue;
                }
            }
            s.sleeping[w - 1].store(true, Ordering::SeqCst);
            // Re-check after announcing the park: a job posted before the announcement is seen
            // here, one posted after it unparks this thread.
            if s.epoch.load(Ordering::SeqCst) == seen {
                thread::park();
            }
            s.sleeping[w - 1].store(false, Ordering::SeqCst);
            idle_since = Instant::now();
        }
        seen = s.epoch.load(Ordering::SeqCst);
        // SAFETY: the job was set before `epoch` moved and stays valid until `pending` is 0,
        // which needs this worker's decrement below.
        let job = unsafe { (*s.job.get()).expect("a job is set while pending") };
        // SAFETY: see above; the pointee is a `Sync` closure.
        let begun = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(w) }));
        count(2, begun);
        if result.is_err() {
            s.panicked.store(true, Ordering::SeqCst);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// A crew of two (one worker), whatever libtorch's thread count; `of` picks one of several,
/// so that tests running at the same time can each have their own.
#[cfg(test)]
pub(crate) fn two(of: usize) -> &'static Crew {
    static TWO: [OnceLock<Crew>; 2] = [OnceLock::new(), OnceLock::new()];
    TWO[of].get_or_init(|| Crew::start(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_part_once_hot_or_parked() {
        let crew = two(0);
        for hot in [false, true] {
            let _hot = hot.then(|| Hot::new(crew));
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> =
                    (0..crew.parts()).map(|_| AtomicUsize::new(0)).collect();
                crew.run(&|p| {
                    hits[p].fetch_add(1, Ordering::SeqCst);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) == 1));
            }
        }
    }

    #[test]
    fn a_workers_panic_reaches_the_caller_and_the_crew_goes_on() {
        let crew = two(0);
        let caught = catch_unwind(AssertUnwindSafe(|| {
            crew.run(&|p| {
                if p == 1 {
                    panic!("part 1 fails");
                }
            })
        }));
        assert!(caught.is_err());
        let done = AtomicUsize::new(0);
        crew.run(&|_| {
            done.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(done.load(Ordering::SeqCst), crew.parts());
    }

    #[test]
    fn concurrent_callers_each_get_every_part() {
        let crew = two(0);
        thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let sum = AtomicUsize::new(0);
                        crew.run(&|p| {
                            sum.fetch_add(p + 1, Ordering::SeqCst);
                        });
                        assert_eq!(sum.load(Ordering::SeqCst), 3);
                    }
                });
            }
        });
    }
}
