//! A background thread its owner stops and joins: the daemon's threads (control socket,
//! metrics, inode reclaimer) are each one of these, so that shutdown can end them in
//! order instead of leaving them to the process's exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What a worker's loop checks: whether to stop, and a nap that a stop cuts short.
#[derive(Debug, Clone)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sleeps up to `d`, waking early when the worker is asked to stop.
    pub fn nap(&self, d: Duration) {
        if !self.is_set() {
            thread::park_timeout(d);
        }
    }
}

/// A running worker thread.
#[derive(Debug)]
pub struct Worker {
    stop: StopFlag,
    thread: JoinHandle<()>,
}

impl Worker {
    /// Runs `body` on a thread named `name`; `body` returns once its flag is set.
    pub fn spawn(
        name: &str,
        body: impl FnOnce(StopFlag) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let stop = StopFlag(Arc::new(AtomicBool::new(false)));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name(name.into())
            .spawn(move || body(flag))?;
        Ok(Worker { stop, thread })
    }

    /// Asks the thread to stop, wakes it and waits for it to end.
    pub fn stop(self) {
        self.stop.0.store(true, Ordering::SeqCst);
        self.thread.thread().unpark();
        let name = self.thread.thread().name().unwrap_or("worker").to_string();
        if self.thread.join().is_err() {
            tracing::error!(thread = %name, "thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_stop_wakes_a_napping_worker_and_joins_it() {
        let w = Worker::spawn("test-worker", |stop| {
            while !stop.is_set() {
                stop.nap(Duration::from_secs(60));
            }
        })
        .unwrap();
        let asked = Instant::now();
        w.stop();
        assert!(asked.elapsed() < Duration::from_secs(5));
    }
}
