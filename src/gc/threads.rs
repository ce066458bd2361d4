//! The collector's threads, and how they share the machine with the requests the daemon
//! serves.
//!
//! Reading manifests and deleting directories wait on the disk far more than they
//! compute, so many more threads than cores pay off (deleting 2,000 blob directories
//! here: 1.7 s with one thread, 0.6 s with 8, 0.47 s with 32). Many threads also weigh
//! more: the scheduler shares a core by thread, so 16 collector threads at nice 10 still
//! outweigh one request thread, and many deleting at once fill the journal the
//! registry's fsyncs wait on. Hence the pools: a read-only run, the push outage, takes
//! many threads; an online run, which nobody waits for, few at idle priority (on 250,000
//! blobs under load, 2 cores: push latency during a run 1.65x with 16, 1.36x with 4, for
//! about the same run length, since the idle threads mostly wait for the CPU anyway).

//!
//! A pool lives for one stage of one run ([`Pool`]): its threads are started for it and
//! joined when it is dropped, so a daemon at rest runs no collector thread.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// How the collector's threads give way to the daemon's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThreadShare {
    /// Nice 10 and the lowest best-effort disk priority: a read-only run, whose length is
    /// the window in which pushes are refused, still lets pulls go first.
    #[default]
    Lowered,
    /// Ordinary priority: an offline run (`regfs gc --offline`), on a store no registry
    /// serves. Its length is the registry's downtime and there is no request to give way
    /// to; lowered threads only lengthened it on a busy machine (a 50,000-blob dry run at
    /// load 13 on 2 cores: 5.1 s at nice 10, against the peer's 13.6 s at nice 0).
    Full,
    /// Also SCHED_IDLE for the CPU: an online run, which nobody waits for, computes only
    /// when the registry does not (it still gets a small share on a saturated machine, so
    /// it ends). The disk priority stays best-effort: the idle class could starve it.
    Idle,
}

/// The collector's threads for one stage (mark, sweep): rayon's pool, whose threads this
/// owns. Dropping it ends them and waits until they have (rayon alone lets them end
/// on their own time).
pub(super) struct Pool {
    pool: Option<rayon::ThreadPool>,
    /// The pool's threads; held only to add one or take them all.
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Pool {
    /// A pool for `share`. `REGFS_GC_THREADS` overrides the defaults: for `Lowered` and
    /// `Full` 8 per core, at least 16 and at most 64; for `Idle` 2 per core, at least 4
    /// and at most 16.
    pub(super) fn new(share: ThreadShare) -> Pool {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let default = match share {
            ThreadShare::Lowered | ThreadShare::Full => (cores * 8).clamp(16, 64),
            ThreadShare::Idle => (cores * 2).clamp(4, 16),
        };
        let n = std::env::var("REGFS_GC_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(default);
        let prefix = match share {
            ThreadShare::Lowered | ThreadShare::Full => "regfs-gc-io",
            ThreadShare::Idle => "regfs-gc-idle",
        };
        let threads = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let kept = threads.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(move |i| format!("{prefix}-{i}"))
            .start_handler(move |_| give_way(share))
            .spawn_handler(move |t| {
                let mut b = std::thread::Builder::new();
                if let Some(name) = t.name() {
                    b = b.name(name.to_owned());
                }
                if let Some(size) = t.stack_size() {
                    b = b.stack_size(size);
                }
                let handle = b.spawn(|| t.run())?;
                kept.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
                Ok(())
            })
            .build()
            .expect("collector thread pool");
        Pool {
            pool: Some(pool),
            threads,
        }
    }

    /// Runs `f` in the pool: rayon's parallel iterators in it use the pool's threads.
    pub(super) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.as_ref().expect("a pool until dropped").install(f)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Tells the threads to end once idle (they are: `install` has returned).
        drop(self.pool.take());
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Lowers the calling thread's priority as `share` says. Best effort: a refused change
/// is only logged.
fn give_way(share: ThreadShare) {
    if share == ThreadShare::Full {
        return;
    }
    // Per-thread on Linux: setpriority, ioprio_set and sched_setscheduler take a thread id.
    let tid = rustix::thread::gettid().as_raw_nonzero().get();
    // SAFETY: plain syscalls on this thread's own id; only a stack value is passed.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10) };
    // Best-effort class (2), lowest level (7): IOPRIO_PRIO_VALUE(2, 7), IOPRIO_WHO_PROCESS (1).
    let io = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7) };
    let idle = match share {
        ThreadShare::Lowered | ThreadShare::Full => 0,
        ThreadShare::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above; `param` outlives the call.
            unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) }
        }
    };
    if nice != 0 || io != 0 || idle != 0 {
        tracing::debug!(
            "collector thread priority not lowered (nice {nice}, ioprio {io}, idle {idle})"
        );
    }
}
