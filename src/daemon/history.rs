//! The job history: one JSON line per finished job in `jobs.jsonl` in the state
//! directory, and `running.json` while a job runs, so a daemon that died mid-run finds
//! it at the next start and records it as interrupted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::job::{Job, JobOutcome};

#[derive(Debug, Clone)]
pub struct History {
    dir: PathBuf,
}

impl History {
    pub fn new(state_dir: &Path) -> Self {
        History {
            dir: state_dir.to_path_buf(),
        }
    }

    fn jobs_file(&self) -> PathBuf {
        self.dir.join("jobs.jsonl")
    }

    fn running_file(&self) -> PathBuf {
        self.dir.join("running.json")
    }

    /// Appends a finished job, durably.
    pub fn append(&self, job: &Job) -> io::Result<()> {
        let mut line = serde_json::to_vec(job).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.jobs_file())?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Records the job in progress (replaced atomically).
    pub fn mark_running(&self, job: &Job) -> io::Result<()> {
        let tmp = self.dir.join("running.json.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(job).map_err(io::Error::other)?)?;
        f.sync_data()?;
        fs::rename(&tmp, self.running_file())
    }

    /// Marks the running job as still alive (its record's mtime).
    pub fn heartbeat(&self) -> io::Result<()> {
        File::options()
            .write(true)
            .open(self.running_file())?
            .set_modified(std::time::SystemTime::now())
    }

    pub fn clear_running(&self) -> io::Result<()> {
        match fs::remove_file(self.running_file()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// A job left running by a daemon that died: recorded as interrupted. Returns it.
    pub fn recover_interrupted(&self) -> io::Result<Option<Job>> {
        let path = self.running_file();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut job: Job = match serde_json::from_slice(&text) {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable record of an interrupted job; discarding it");
                self.clear_running()?;
                return Ok(None);
            }
        };
        job.outcome = JobOutcome::Interrupted;
        // The record is touched every heartbeat while the job runs: its mtime is the last
        // moment the job was known alive.
        let alive: Option<DateTime<Utc>> = fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .map(Into::into);
        job.ended_at = Some(alive.unwrap_or_else(Utc::now).max(job.started_at));
        job.error = Some("the daemon stopped during this run".into());
        self.append(&job)?;
        self.clear_running()?;
        Ok(Some(job))
    }

    /// Finished jobs, oldest first. Lines that cannot be parsed are reported and skipped.
    pub fn jobs(&self) -> io::Result<Vec<Job>> {
        let f = match File::open(self.jobs_file()) {
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
                    tracing::warn!(file = %self.jobs_file().display(), line = i + 1, error = %e, "skipping an unreadable history line")
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
