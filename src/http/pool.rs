//! The listener's handler threads: a fixed number of workers take requests from a
//! bounded queue and hand their answers back to the poll thread, which alone touches
//! the sockets. A slow handler (a bcrypt check, an etcd round trip) holds one worker,
//! not the listener; a request that finds the queue full is answered 503 at once.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use super::message::{Request, Response};

/// Handler threads.
pub const WORKERS: usize = 4;
/// Requests waiting for a worker, at most; more are refused with 503.
pub const QUEUE: usize = 32;

/// What answers a request; called on any worker thread.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A request for the workers, and the connection it came on.
struct Job {
    conn: u64,
    request: Request,
}

/// The workers, their queue, and the way back for answers.
pub struct Pool {
    jobs: Option<SyncSender<Job>>,
    answers: Receiver<(u64, Response)>,
    /// Readable when an answer waits: the poll thread polls it with the sockets.
    wake: UnixStream,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// Why a request was not queued.
pub enum Refused {
    /// The queue is full.
    Busy,
    /// The pool is stopping.
    Stopping,
}

impl Pool {
    pub fn start(handler: Handler) -> io::Result<Pool> {
        let (jobs, queue) = mpsc::sync_channel::<Job>(QUEUE);
        let (answer, answers) = mpsc::channel();
        let (wake, waker) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        waker.set_nonblocking(true)?;
        let queue = Arc::new(Mutex::new(queue));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut pool = Pool {
            jobs: Some(jobs),
            answers,
            wake,
            stopping: stopping.clone(),
            threads: Vec::with_capacity(WORKERS),
        };
        for i in 0..WORKERS {
            let (queue, answer, handler, stopping) = (
                queue.clone(),
                answer.clone(),
                handler.clone(),
                stopping.clone(),
            );
            let mut waker = waker.try_clone()?;
            let spawned = thread::Builder::new()
                .name(format!("regfs-http-{i}"))
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else { return };
                        if stopping.load(Ordering::SeqCst) {
                            continue;
                        }
                        let response = catch_unwind(AssertUnwindSafe(|| handler(&job.request)))
                            .unwrap_or_else(|_| {
                                tracing::error!(path = %job.request.path, "http: handler panicked");
                                Response::text(500, "internal error: the handler failed\n")
                            });
                        if answer.send((job.conn, response)).is_err() {
                            return;
                        }
                        // A full pipe already wakes the poll thread.
                        let _ = waker.write(&[1]);
                    }
                });
            match spawned {
                Ok(t) => pool.threads.push(t),
                Err(e) => {
                    pool.stop();
                    return Err(e);
                }
            }
        }
        Ok(pool)
    }

    /// Queues `request` for a worker, unless the queue is full.
    pub fn submit(&self, conn: u64, request: Request) -> Result<(), Refused> {
        let jobs = self.jobs.as_ref().ok_or(Refused::Stopping)?;
        jobs.try_send(Job { conn, request }).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Busy,
            TrySendError::Disconnected(_) => Refused::Stopping,
        })
    }

    /// What the poll thread polls to learn of answers.
    pub fn wake(&self) -> &UnixStream {
        &self.wake
    }

    /// The answers ready now, by connection.
    pub fn answers(&self) -> Vec<(u64, Response)> {
        let mut buf = [0u8; 64];
        while matches!((&self.wake).read(&mut buf), Ok(n) if n > 0) {}
        self.answers.try_iter().collect()
    }

    /// Drops the queued requests, lets each worker finish the one in hand, and joins
    /// every worker.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.jobs = None;
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("regfs-http").to_string();
            if t.join().is_err() {
                tracing::error!(thread = %name, "thread panicked");
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_answers(pool: &Pool, n: usize) -> Vec<(u64, Response)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut got = vec![];
        while got.len() < n {
            assert!(Instant::now() < deadline, "only {} answers", got.len());
            got.extend(pool.answers());
            thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn a_slow_handler_holds_one_worker_and_a_full_queue_is_refused() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let g = gate.clone();
        let mut pool = Pool::start(Arc::new(move |req: &Request| {
            if req.path == "/slow" {
                drop(g.lock().unwrap());
            }
            Response::text(200, &req.path)
        }))
        .unwrap();
        let slow = Request {
            path: "/slow".into(),
            ..Request::default()
        };
        for i in 0..WORKERS - 1 {
            assert!(pool.submit(i as u64, slow.clone()).is_ok());
        }
        // One worker is left for the quick request.
        let quick = Request {
            path: "/quick".into(),
            ..Request::default()
        };
        assert!(pool.submit(100, quick).is_ok());
        let got = wait_answers(&pool, 1);
        assert_eq!(got[0].0, 100);
        // All workers held, then the queue filled: the next is refused.
        let mut queued = 0;
        while pool.submit(200 + queued as u64, slow.clone()).is_ok() {
            queued += 1;
            assert!(queued <= QUEUE + 1, "the queue takes more than {QUEUE}");
        }
        assert!(queued >= QUEUE, "only {queued} queued");
        drop(held);
        wait_answers(&pool, WORKERS - 1 + queued);
        pool.stop();
        assert!(matches!(pool.submit(1000, slow), Err(Refused::Stopping)));
    }

    #[test]
    fn a_panicking_handler_is_answered_500_and_the_worker_lives_on() {
        let pool = Pool::start(Arc::new(|req: &Request| {
            if req.path == "/panic" {
                panic!("boom");
            }
            Response::text(200, "ok")
        }))
        .unwrap();
        let panic = Request {
            path: "/panic".into(),
            ..Request::default()
        };
        for i in 0..WORKERS as u64 * 2 {
            assert!(pool.submit(i, panic.clone()).is_ok());
        }
        let got = wait_answers(&pool, WORKERS * 2);
        assert!(got.iter().all(|(_, r)| r.status == 500));
        assert!(pool.submit(7, Request::default()).is_ok());
        assert_eq!(wait_answers(&pool, 1)[0].1.status, 200);
    }
}
