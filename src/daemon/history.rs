//! The job history: one JSON line per finished job in `jobs.jsonl` in the state
//! directory (oldest first, bounded by [`HistoryLimits`]: the oldest lines are cut at
//! each run's end, and the newest are read from the end of the file, so neither `regfs
//! jobs --limit N` nor a run start reads more than it shows), and `running.json` while a
//! job runs, rewritten every heartbeat with what
//! the run has deleted so far, so a daemon that died mid-run is recorded at the next
//! start as interrupted with what it did. Every file is opened through the checked
//! [`StateDir`], never through a symlink, mode 0600.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustix::fs::OFlags;
use serde::Deserialize;

use super::job::{Job, JobOutcome};
use crate::state_dir::StateDir;

pub const JOBS_FILE: &str = "jobs.jsonl";
pub const RUNNING_FILE: &str = "running.json";

/// A running record larger than this is not one the daemon wrote.
const MAX_RUNNING_RECORD: u64 = 1 << 20;

type RunningRecord = (Vec<u8>, Option<DateTime<Utc>>);

pub use crate::settings::HistoryLimits;

/// The part of a history line pruning looks at.
#[derive(Deserialize)]
struct RunTimes {
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

/// Bytes read from the end of the history at a time.
const CHUNK: u64 = 64 * 1024;

/// Calls `each(line, end)` for every non-blank line of `f`, the last first, where `end`
/// is the offset just past the line's newline; stops when `each` returns false. Reads
/// only as far back as it is asked to go.
fn each_line_from_end(f: &File, mut each: impl FnMut(&[u8], u64) -> bool) -> io::Result<()> {
    let mut pos = f.metadata()?.len();
    // The bytes from `pos` to the first newline after it: a line not yet complete.
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0; (pos - start) as usize];
        f.read_exact_at(&mut chunk, start)?;
        chunk.extend_from_slice(&tail);
        let mut line_end = chunk.len();
        while let Some(nl) = chunk[..line_end].iter().rposition(|&b| b == b'\n') {
            let line = &chunk[nl + 1..line_end];
            let end = start + line_end as u64 + 1;
            if !line.trim_ascii().is_empty() && !each(line, end) {
                return Ok(());
            }
            line_end = nl;
        }
        if start == 0 {
            let line = &chunk[..line_end];
            if !line.trim_ascii().is_empty() {
                each(line, line_end as u64 + 1);
            }
            return Ok(());
        }
        chunk.truncate(line_end);
        tail = chunk;
        pos = start;
    }
}

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

    fn open_jobs(&self) -> io::Result<Option<File>> {
        match self.dir.open(JOBS_FILE, OFlags::RDONLY) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The `n` most recent finished jobs (all with `None`), oldest first, read from the
    /// end of the file: as fast with a long history as with a short one. Lines that
    /// cannot be parsed are reported and skipped.
    pub fn recent(&self, n: Option<usize>) -> io::Result<Vec<Job>> {
        let Some(f) = self.open_jobs()? else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        if n == Some(0) {
            return Ok(out);
        }
        each_line_from_end(&f, |line, _| {
            match serde_json::from_slice(line) {
                Ok(j) => out.push(j),
                Err(e) => {
                    tracing::warn!(file = %self.dir.shown(JOBS_FILE), error = %e, "skipping an unreadable history line")
                }
            }
            n.is_none_or(|n| out.len() < n)
        })?;
        out.reverse();
        Ok(out)
    }

    /// Cuts the runs `limits` no longer keeps (the oldest lines: the file is in the
    /// order runs ended) by replacing the file with its newest lines, atomically. Reads
    /// back only as far as the last run kept. Returns how many lines were cut.
    pub fn prune(&self, limits: &HistoryLimits, now: DateTime<Utc>) -> io::Result<usize> {
        let Some(f) = self.open_jobs()? else {
            return Ok(0);
        };
        let mut kept = 0;
        let mut cut_at = None;
        each_line_from_end(&f, |line, end| {
            // A line that cannot be read is kept (and skipped by readers), not counted.
            if let Ok(t) = serde_json::from_slice::<RunTimes>(line) {
                if !limits.keeps(t.ended_at.unwrap_or(t.started_at), kept, now) {
                    cut_at = Some(end);
                    return false;
                }
                kept += 1;
            }
            true
        })?;
        let Some(cut_at) = cut_at else {
            return Ok(0);
        };
        let len = f.metadata()?.len();
        let mut newest = vec![0; (len - cut_at) as usize];
        f.read_exact_at(&mut newest, cut_at)?;
        let mut cut = vec![0; cut_at as usize];
        f.read_exact_at(&mut cut, 0)?;
        let lines = cut
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty());
        let removed = lines.count();
        self.dir.replace(JOBS_FILE, &newest, true)?;
        Ok(removed)
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

    /// The next job id: one past the last recorded (ids only grow, and pruning keeps
    /// the newest).
    pub fn next_id(&self) -> io::Result<u64> {
        Ok(self.recent(Some(1))?.first().map_or(0, |j| j.id) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::job::{JobSettings, Trigger};

    fn fresh() -> (tempfile::TempDir, History) {
        let t = tempfile::tempdir().unwrap();
        let dir = StateDir::prepare(&t.path().join("state")).unwrap();
        (t, History::new(Arc::new(dir)))
    }

    fn job(id: u64, ended: DateTime<Utc>) -> Job {
        let settings = JobSettings {
            mode: "read-only".into(),
            duration: "until-done".into(),
            delete_untagged: false,
            dry_run: false,
            upload_max_age: "7days".into(),
            min_age: "1h".into(),
            drain_timeout: "10s".into(),
        };
        Job {
            outcome: JobOutcome::Done,
            ended_at: Some(ended),
            ..Job::started(id, Trigger::Schedule, settings, ended)
        }
    }

    fn ids(jobs: &[Job]) -> Vec<u64> {
        jobs.iter().map(|j| j.id).collect()
    }

    #[test]
    fn the_newest_runs_are_read_from_the_end_whatever_the_line_lengths() {
        let (_t, h) = fresh();
        let now = Utc::now();
        // Lines longer than a read chunk, and a blank and an unreadable line between.
        for id in 1..=5 {
            let mut j = job(id, now);
            if id % 2 == 0 {
                j.error = Some("x".repeat(CHUNK as usize + 17));
            }
            h.append(&j).unwrap();
            if id == 3 {
                let mut f = h
                    .dir
                    .open(JOBS_FILE, OFlags::WRONLY | OFlags::APPEND)
                    .unwrap();
                f.write_all(b"\n{not json\n").unwrap();
            }
        }
        assert_eq!(ids(&h.recent(Some(2)).unwrap()), [4, 5]);
        assert_eq!(ids(&h.recent(Some(4)).unwrap()), [2, 3, 4, 5]);
        assert_eq!(ids(&h.recent(None).unwrap()), [1, 2, 3, 4, 5]);
        assert_eq!(ids(&h.recent(None).unwrap()), ids(&h.jobs().unwrap()));
        assert!(h.recent(Some(0)).unwrap().is_empty());
        assert_eq!(h.next_id().unwrap(), 6);
    }

    #[test]
    fn pruning_keeps_the_newest_runs_within_the_limits() {
        let (_t, h) = fresh();
        let now = Utc::now();
        let days_ago = |d: i64| now - chrono::TimeDelta::days(d);
        for (id, ended) in [
            (1, days_ago(200)),
            (2, days_ago(91)),
            (3, days_ago(89)),
            (4, days_ago(3)),
            (5, days_ago(2)),
            (6, days_ago(1)),
        ] {
            h.append(&job(id, ended)).unwrap();
        }
        let limits = HistoryLimits {
            keep_runs: 10,
            keep_days: 90,
        };
        assert_eq!(h.prune(&limits, now).unwrap(), 2);
        assert_eq!(ids(&h.jobs().unwrap()), [3, 4, 5, 6]);
        assert_eq!(h.prune(&limits, now).unwrap(), 0, "nothing more to cut");
        let limits = HistoryLimits {
            keep_runs: 2,
            keep_days: 90,
        };
        assert_eq!(h.prune(&limits, now).unwrap(), 2);
        assert_eq!(ids(&h.jobs().unwrap()), [5, 6]);
        // The next id still follows the last run ever recorded.
        assert_eq!(h.next_id().unwrap(), 7);
        h.append(&job(7, now)).unwrap();
        h.prune(&limits, now).unwrap();
        assert_eq!(ids(&h.jobs().unwrap()), [6, 7]);
    }
}
