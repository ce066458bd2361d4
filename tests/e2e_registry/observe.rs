//! What is watched around the epoch: the loop of pulls that runs through it, and the
//! registry's and the job's times and problems.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::EROFS_TEXT;
use crate::ctx::Ctx;

// ---------------------------------------------------------------------------------------
// The pull loop that runs through the epoch

#[derive(Debug)]
pub struct PullRecord {
    pub reference: String,
    pub result: Result<(), String>,
    /// The job holding the store read-only just before and just after the pull.
    pub read_only_before: Option<u64>,
    pub read_only_after: Option<u64>,
}

pub struct PullLoop {
    pub stop: Arc<AtomicBool>,
    pub rounds: Arc<AtomicU64>,
    pub handle: Option<JoinHandle<Vec<PullRecord>>>,
}

impl PullLoop {
    pub fn start(ctx: Arc<Ctx>, pulls: Vec<(String, String)>) -> PullLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = thread::spawn(move || {
            let mut records = Vec::new();
            while !s.load(Ordering::SeqCst) {
                for (reference, image) in &pulls {
                    let before = ctx.read_only_job();
                    let result = ctx.pull(reference, image);
                    let after = ctx.read_only_job();
                    records.push(PullRecord {
                        reference: reference.clone(),
                        result,
                        read_only_before: before,
                        read_only_after: after,
                    });
                }
                r.fetch_add(1, Ordering::SeqCst);
            }
            records
        });
        PullLoop {
            stop,
            rounds,
            handle: Some(handle),
        }
    }

    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::SeqCst)
    }

    /// Lets the loop finish `more` rounds from now, then stops it.
    pub fn finish(mut self, more: u64) -> Vec<PullRecord> {
        let target = self.rounds() + more;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.rounds() < target && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("pull loop thread")
    }
}

impl Drop for PullLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Log checks

/// Warnings the registry logs under Debian's default configuration, run as the shipped
/// drop-in runs it: no `http.secret` in the default config.yml; the drop-in's
/// `REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none` (2.8 knows no `none` and disables the
/// cache, which is the point); a client's first request without credentials (htpasswd).
const EXPECTED_WARNINGS: [&str; 3] = [
    "No HTTP secret provided",
    r#"unknown cache type map[\"blobdescriptor\":\"none\"], caching disabled"#,
    "basic authentication challenge for realm",
];

/// Lines of the registry's log that report a problem: any warning or error except the
/// ordinary client errors (4xx answers such as "blob unknown" while pushing) and the
/// refused writes, which are returned separately.
pub fn registry_log_problems(log: &str) -> (Vec<String>, Vec<String>) {
    let mut erofs = Vec::new();
    let mut problems = Vec::new();
    for line in log.lines() {
        if line.starts_with("panic:") || line.starts_with("fatal error:") {
            problems.push(line.to_string());
            continue;
        }
        if !line.starts_with("time=") {
            continue; // the access log
        }
        let level = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("level="))
            .unwrap_or("");
        if !matches!(level, "warning" | "error" | "fatal" | "panic") {
            continue;
        }
        if line.contains(EROFS_TEXT) {
            erofs.push(line.to_string());
            continue;
        }
        if EXPECTED_WARNINGS.iter().any(|w| line.contains(w)) {
            continue;
        }
        let status = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http.response.status="))
            .and_then(|s| s.parse::<u16>().ok());
        let client_error = matches!(status, Some(400..=499)) && !line.contains("err.code=unknown");
        if !client_error {
            problems.push(line.to_string());
        }
    }
    (erofs, problems)
}

pub fn log_time(line: &str) -> Option<DateTime<Utc>> {
    let t = line.strip_prefix("time=\"")?.split('"').next()?;
    DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub fn job_time(job: &Value, field: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        job[field]
            .as_str()
            .unwrap_or_else(|| panic!("job {field}: {job:#}")),
    )
    .expect("an RFC 3339 time")
    .with_timezone(&Utc)
}
