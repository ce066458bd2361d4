//! The journal of access times in the state directory (`access.jsonl`, format in
//! `retention::times`): a thread takes what the policy layer noted every
//! [`FLUSH_EVERY`], appends it as one write, and merges it into the times the daemon
//! answers from. Nothing on a request's path waits for it. Read back whole at start
//! (rewritten compacted when it has grown past twice its live entries), so pull times
//! survive restarts; a crash loses at most the last interval's accesses.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::OFlags;

use super::state_dir::StateDir;
use crate::policy::access::AccessRecorder;
use crate::retention::AccessTimes;
use crate::retention::times::push_line;

pub const JOURNAL: &str = "access.jsonl";
/// How often noted accesses are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The journal, its times, and the recorder it empties.
#[derive(Debug)]
pub struct AccessJournal {
    state: Arc<StateDir>,
    recorder: Arc<AccessRecorder>,
    times: RwLock<AccessTimes>,
    /// Held by the one writing a batch (the flusher, or a reader asking for fresh
    /// times); readers of `times` never wait for it.
    file: Mutex<()>,
}

fn read_journal(state: &StateDir) -> io::Result<String> {
    let mut text = String::new();
    match state.open(JOURNAL, OFlags::RDONLY) {
        Ok(mut f) => {
            f.read_to_string(&mut text)?;
            Ok(text)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(text),
        Err(e) => Err(e),
    }
}

/// The times a daemon's journal holds (a command reading a state directory).
pub fn read_times(state: &StateDir) -> io::Result<AccessTimes> {
    Ok(AccessTimes::from_journal(&read_journal(state)?).0)
}

impl AccessJournal {
    /// Reads the journal in `state` (compacting it if it has grown), to keep what
    /// `recorder` notes from now on.
    pub fn open(state: Arc<StateDir>, recorder: Arc<AccessRecorder>) -> io::Result<AccessJournal> {
        let (times, lines, bad) = AccessTimes::from_journal(&read_journal(&state)?);
        if bad > 0 {
            tracing::warn!(journal = %state.shown(JOURNAL), lines = bad, "access journal: lines not understood were skipped");
        }
        if lines > 2 * times.entries() + 1000 || bad > 0 {
            state.replace(JOURNAL, times.to_journal().as_bytes(), true)?;
        }
        tracing::info!(entries = times.entries(), "access times read");
        Ok(AccessJournal {
            state,
            recorder,
            times: RwLock::new(times),
            file: Mutex::new(()),
        })
    }

    /// Writes what was noted since the last flush; how many entries.
    pub fn flush(&self) -> io::Result<usize> {
        let _writing = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let batch = self.recorder.take();
        if batch.is_empty() {
            return Ok(0);
        }
        let mut text = String::new();
        for (what, at) in &batch {
            push_line(&mut text, what, *at);
        }
        let written = self
            .state
            .open(JOURNAL, OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        // Kept in memory even if the write failed: the daemon still answers with them.
        let mut times = self.times.write().unwrap_or_else(|e| e.into_inner());
        for (what, at) in &batch {
            times.apply(what, *at);
        }
        written.map(|()| batch.len())
    }

    /// Reads the times (flushed first, so what was just noted is in).
    pub fn with_times<T>(&self, f: impl FnOnce(&AccessTimes) -> T) -> T {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "cannot write the access journal");
        }
        f(&self.times.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Starts the thread that flushes every `every` until [`Flusher::stop`].
    pub fn start(self: &Arc<Self>, every: Duration) -> io::Result<Flusher> {
        let stop = Arc::new(AtomicBool::new(false));
        let (journal, stopping) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("access-journal".into())
            .spawn(move || {
                let mut failing = false;
                while !stopping.load(Ordering::Acquire) {
                    std::thread::park_timeout(every);
                    match journal.flush() {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::error!(error = %e, "cannot write the access journal; pull times are kept in memory only");
                        }
                        Err(_) => {}
                        Ok(_) => failing = false,
                    }
                }
            })?;
        Ok(Flusher {
            stop,
            thread: Some(thread),
            journal: self.clone(),
        })
    }
}

/// The journal's thread; [`Flusher::stop`] writes the last batch and joins it.
#[derive(Debug)]
pub struct Flusher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    journal: Arc<AccessJournal>,
}

impl Flusher {
    pub fn stop(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        t.thread().unpark();
        if t.join().is_err() {
            tracing::error!("the access journal thread panicked");
        }
        if let Err(e) = self.journal.flush() {
            tracing::error!(error = %e, "cannot write the access journal at shutdown");
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}
