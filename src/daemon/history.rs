//! The job history: one JSON line per finished job in `jobs.jsonl` in the state
//! directory, and `running.json` while a job runs, rewritten every heartbeat with what
//! the run has deleted so far, so a daemon that died mid-run is recorded at the next
//! start as interrupted with what it did. Every file is opened through the checked
//! [`StateDir`], never through a symlink, mode 0600.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustix::fs::OFlags;

use super::job::{Job, JobOutcome};
use crate::state_dir::StateDir;

pub const JOBS_FILE: &str = "jobs.jsonl";
pub const RUNNING_FILE: &str = "running.json";

/// A running record larger than this is not one the daemon wrote.
const MAX_RUNNING_RECORD: u64 = 1 << 20;

type RunningRecord = (Vec<u8>, Option<DateTime<Utc>>);

#[derive(Debug, Clone)]
pub struct History {
    dir: Arc<StateDir>,
}

impl History {
    pub fn new(dir: Arc<StateDir>) -> Self {
        History { dir }
    }

    /// The history of the daemon whose state directory is `path`, for reading.
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = StateDir::for_reading(path).map_err(|e| {
            let kind = match &e {
                crate::state_dir::StateDirError::Io { source, .. } => source.kind(),
                _ => io::ErrorKind::Other,
            };
            io::Error::new(kind, e)
        })?;
        Ok(History { dir: Arc::new(dir) })
    }

    /// Appends a finished job, durably.
    pub fn append(&self, job: &Job) -> io::Result<()> {
        let mut line = serde_json::to_vec(job).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = self
            .dir
            .open(JOBS_FILE, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)?;
        let shown = || self.dir.shown(JOBS_FILE);
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", shown())))
    }

    /// Records the job in progress, durably (replaced atomically).
    pub fn mark_running(&self, job: &Job) -> io::Result<()> {
        let bytes = serde_json::to_vec(job).map_err(io::Error::other)?;
        self.dir.replace(RUNNING_FILE, &bytes, true)
    }

    /// Rewrites the running record with the run's progress; its mtime is then the last
    /// moment the run was known alive. Not synced: a killed process loses nothing the
    /// kernel already has. When the record cannot be rewritten (a full filesystem), its
    /// mtime alone still says the run was alive.
    pub fn heartbeat(&self, job: &Job) -> io::Result<()> {
        let bytes = serde_json::to_vec(job).map_err(io::Error::other)?;
        match self.dir.replace(RUNNING_FILE, &bytes, false) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self
                    .dir
                    .open(RUNNING_FILE, OFlags::WRONLY)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Err(e)
            }
        }
    }

    pub fn clear_running(&self) -> io::Result<()> {
        self.dir.remove(RUNNING_FILE)
    }

    /// The running record's bytes and when it was last written.
    fn read_running(&self) -> io::Result<Option<RunningRecord>> {
        let f = match self.dir.open(RUNNING_FILE, OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let alive = f.metadata().and_then(|m| m.modified()).ok().map(Into::into);
        let mut text = Vec::new();
        f.take(MAX_RUNNING_RECORD).read_to_end(&mut text)?;
        Ok(Some((text, alive)))
    }

    /// A job left running by a daemon that died: recorded as interrupted, with what its
    /// last heartbeat said it had deleted and how long the store had been read-only.
    /// Returns it. A record that cannot be read is reported and removed.
    pub fn recover_interrupted(&self) -> io::Result<Option<Job>> {
        let (text, alive) = match self.read_running() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::error!(error = %e, "unreadable record of an interrupted job; removing it");
                self.clear_running()?;
                return Ok(None);
            }
        };
        let mut job: Job = match serde_json::from_slice(&text) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(path = %self.dir.shown(RUNNING_FILE), error = %e, "unreadable record of an interrupted job; discarding it");
                self.clear_running()?;
                return Ok(None);
            }
        };
        job.outcome = JobOutcome::Interrupted;
        // The record is rewritten every heartbeat while the job runs: its mtime is the
        // last moment the job was known alive, and its counts are as of then.
        let ended = alive.unwrap_or_else(Utc::now).max(job.started_at);
        job.ended_at = Some(ended);
        job.error = Some(format!(
            "the daemon stopped during this run; what it had done by {} is recorded",
            ended.format("%Y-%m-%d %H:%M:%S%.3f UTC")
        ));
        self.append(&job)?;
        self.clear_running()?;
        Ok(Some(job))
    }

    /// Finished jobs, oldest first. Lines that cannot be parsed are reported and skipped.
    pub fn jobs(&self) -> io::Result<Vec<Job>> {
        let f = match self.dir.open(JOBS_FILE, OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(j) => out.push(j),
                Err(e) => {
                    tracing::warn!(file = %self.dir.shown(JOBS_FILE), line = i + 1, error = %e, "skipping an unreadable history line")
                }
            }
        }
        Ok(out)
    }

    /// The next job id: one past the highest ever recorded.
    pub fn next_id(&self) -> io::Result<u64> {
        Ok(self.jobs()?.iter().map(|j| j.id).max().unwrap_or(0) + 1)
    }
}
