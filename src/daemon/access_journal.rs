//! The journal of access times in the state directory (`access.jsonl`, format in
//! `retention::times`): a thread takes what the policy layer noted every
//! [`FLUSH_EVERY`], appends it as one write, and merges it into the times the daemon
//! answers from. Nothing on a request's path waits for it. Read back whole at start
//! (rewritten compacted when it has grown past twice its live entries), so pull times
//! survive restarts; a crash loses at most the last interval's accesses.
//!
//! In cluster mode the same thread publishes, after each batch, the latest times of the
//! repositories the batches touched ([`AccessShare`]), and the pruning stage reads every
//! node's ([`AccessJournal::with_all_times`]).

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::OFlags;

use super::access_share::AccessShare;
use crate::policy::access::AccessRecorder;
use crate::retention::AccessTimes;
use crate::retention::times::push_line;
use crate::state_dir::StateDir;

pub const JOURNAL: &str = "access.jsonl";
/// How often noted accesses are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The journal, its times, and the recorder it empties.
#[derive(Debug)]
pub struct AccessJournal {
    state: Arc<StateDir>,
    recorder: Arc<AccessRecorder>,
    /// Whether the mount notes pushes and pulls (`access_times`); if not, the journal
    /// keeps what it holds and learns nothing new.
    recording: bool,
    times: RwLock<AccessTimes>,
    /// Held by the one writing a batch (the flusher, or a reader asking for fresh
    /// times); readers of `times` never wait for it. Holds the journal's line count.
    file: Mutex<usize>,
    /// Lines over twice the entries before the journal is rewritten compacted.
    compact_slack: usize,
    /// Cluster mode: where the nodes' times meet (set once, when the node joins).
    share: OnceLock<Arc<dyn AccessShare>>,
    /// Cluster mode: the repositories whose times changed since they were published.
    unpublished: Mutex<BTreeSet<String>>,
    /// Held by the one publishing (the journal's thread, or a member about to
    /// acknowledge an epoch) across its call to the share, so an older snapshot never
    /// lands after a newer one. Only publishers take it: no request and no run waits.
    publishing: Mutex<()>,
}

/// The journal is rewritten compacted once it holds this many lines more than twice its
/// entries (a busy registry appends a line per tag pulled per second).
const COMPACT_SLACK: usize = 100_000;

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
    /// `recorder` notes from now on (`recording`: whether the mount notes anything).
    pub fn open(
        state: Arc<StateDir>,
        recorder: Arc<AccessRecorder>,
        recording: bool,
    ) -> io::Result<AccessJournal> {
        let (times, lines, bad) = AccessTimes::from_journal(&read_journal(&state)?);
        if bad > 0 {
            tracing::warn!(journal = %state.shown(JOURNAL), lines = bad, "access journal: lines not understood were skipped");
        }
        let lines = if lines > 2 * times.entries() + 1000 || bad > 0 {
            state.replace(JOURNAL, times.to_journal().as_bytes(), true)?;
            times.entries()
        } else {
            lines
        };
        tracing::info!(entries = times.entries(), "access times read");
        Ok(AccessJournal {
            state,
            recorder,
            recording,
            times: RwLock::new(times),
            file: Mutex::new(lines),
            compact_slack: COMPACT_SLACK,
            share: OnceLock::new(),
            unpublished: Mutex::new(BTreeSet::new()),
            publishing: Mutex::new(()),
        })
    }

    /// Whether pushes and pulls are noted (off: `access_times = false`).
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// Cluster mode: from now on the times are published through `share` (every
    /// repository's first) and the pruning stage reads every node's. Set once.
    pub fn share_with(&self, share: Arc<dyn AccessShare>) {
        if self.share.set(share).is_err() {
            return;
        }
        // After the share is set: a batch applied before this read is in these names,
        // one applied after it sees the share and notes its repositories itself.
        let all: Vec<String> = {
            let times = self.times.read().unwrap_or_else(|e| e.into_inner());
            times.repo_names().map(str::to_owned).collect()
        };
        self.unpublished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(all);
    }

    /// Cluster mode: publishes the latest times of every repository changed since its
    /// last publication; how many repositories. Nothing to do for a node alone. On
    /// failure they stay to be published next time.
    pub fn publish(&self) -> Result<usize, String> {
        let Some(share) = self.share.get() else {
            return Ok(0);
        };
        let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let repos =
            std::mem::take(&mut *self.unpublished.lock().unwrap_or_else(|e| e.into_inner()));
        if repos.is_empty() {
            return Ok(0);
        }
        let snapshot: Vec<_> = {
            let times = self.times.read().unwrap_or_else(|e| e.into_inner());
            repos
                .iter()
                .filter_map(|r| Some((r.clone(), times.repo(r)?.clone())))
                .collect()
        };
        // No lock of the journal's held across the call.
        match share.publish(&snapshot) {
            Ok(()) => Ok(snapshot.len()),
            Err(e) => {
                self.unpublished
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(repos);
                Err(e)
            }
        }
    }

    /// Writes what was noted and publishes it (a member about to acknowledge an epoch:
    /// the collector then sees every pull this node served before it closed).
    pub fn flush_and_publish(&self) -> Result<usize, String> {
        self.flush().map_err(|e| format!("access journal: {e}"))?;
        self.publish()
    }

    /// Writes what was noted since the last flush; how many entries.
    pub fn flush(&self) -> io::Result<usize> {
        let mut lines = self.file.lock().unwrap_or_else(|e| e.into_inner());
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
        let compacted = {
            let mut times = self.times.write().unwrap_or_else(|e| e.into_inner());
            for (what, at) in &batch {
                times.apply(what, *at);
            }
            if self.share.get().is_some() {
                let mut unpublished = self.unpublished.lock().unwrap_or_else(|e| e.into_inner());
                for what in batch.keys() {
                    if !unpublished.contains(what.repo()) {
                        unpublished.insert(what.repo().to_owned());
                    }
                }
            }
            *lines += batch.len();
            (*lines > 2 * times.entries() + self.compact_slack)
                .then(|| (times.to_journal(), times.entries()))
        };
        // Written with only the journal's own lock held.
        if let Some((text, entries)) = compacted {
            self.state.replace(JOURNAL, text.as_bytes(), true)?;
            *lines = entries;
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

    /// Cluster mode: every other node's times (this node's published first); `None` for
    /// a node alone. An etcd call: made holding no lock. Err: the others' cannot be read
    /// (then nothing may be pruned on this node's times alone).
    pub fn others(&self) -> Result<Option<AccessTimes>, String> {
        let Some(share) = self.share.get() else {
            return Ok(None);
        };
        if let Err(e) = self.publish() {
            tracing::warn!(error = %e, "cannot publish this node's access times");
        }
        share.others().map(Some)
    }

    /// Reads the times with `others` (from [`Self::others`]) merged in, the later of two
    /// for each key: what the pruning stage decides from.
    pub fn with_merged<T>(
        &self,
        others: Option<AccessTimes>,
        f: impl FnOnce(&AccessTimes) -> T,
    ) -> T {
        match others {
            None => self.with_times(f),
            Some(mut all) => {
                // Merged under the times' read lock (memory only), used after it.
                self.with_times(|mine| all.merge(mine));
                f(&all)
            }
        }
    }

    /// Reads the times with every other node's merged in (cluster mode).
    pub fn with_all_times<T>(&self, f: impl FnOnce(&AccessTimes) -> T) -> Result<T, String> {
        let others = self.others()?;
        Ok(self.with_merged(others, f))
    }

    /// Starts the thread that flushes every `every` until [`Flusher::stop`].
    pub fn start(self: &Arc<Self>, every: Duration) -> io::Result<Flusher> {
        let stop = Arc::new(AtomicBool::new(false));
        let (journal, stopping) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("access-journal".into())
            .spawn(move || {
                let (mut failing, mut unshared) = (false, false);
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
                    match journal.publish() {
                        Err(e) if !unshared => {
                            unshared = true;
                            tracing::warn!(error = %e, "cannot publish this node's access times; retried after each batch");
                        }
                        Err(_) => {}
                        Ok(_) => unshared = false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::access::Accessed;

    fn lines_in(dir: &std::path::Path) -> usize {
        std::fs::read_to_string(dir.join(JOURNAL))
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn times_survive_a_reopen_and_the_journal_stays_compact() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(StateDir::prepare(&dir.path().join("state")).unwrap());
        let rec = AccessRecorder::new();
        let mut journal = AccessJournal::open(state.clone(), rec.clone(), true).unwrap();
        journal.compact_slack = 10;
        let pull = |tag: &str| Accessed::TagPulled {
            repo: "r".into(),
            tag: tag.into(),
        };
        for round in 0..50 {
            rec.record(pull("a"), round);
            rec.record(pull("b"), round);
            journal.flush().unwrap();
            assert!(lines_in(state.path()) <= 2 * 2 + 10 + 2, "round {round}");
        }
        let again = AccessJournal::open(state, AccessRecorder::new(), true).unwrap();
        again.with_times(|t| {
            assert_eq!(t.pulled("r", "a", None), Some(49));
            assert_eq!(t.pulled("r", "b", None), Some(49));
        });
    }
}
