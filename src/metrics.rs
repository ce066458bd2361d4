//! Prometheus metrics: GC runs by trigger and outcome, durations, read-only seconds,
//! what runs deleted, bytes freed, the current state, the last successful run, and FUSE
//! operations and errors by kind. Served as text at `/metrics` on the HTTP listener
//! (`--http-listen`, see [`crate::api`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::daemon::job::{Job, JobOutcome};
use crate::daemon::status::State;
use crate::daemon::{Daemon, JobObserver};
use crate::gc::Counts;

/// GC figures accumulated over every run in the history.
#[derive(Debug, Default)]
pub struct GcStats {
    /// By mode, trigger and outcome.
    runs: HashMap<(String, String, String), u64>,
    pause_sum: f64,
    pause_count: u64,
    pause_max: f64,
    resurrected: u64,
    refused_writes: u64,
    /// The store's own size after the last run that measured it.
    store_bytes: Option<u64>,
    duration_sum: f64,
    duration_count: u64,
    read_only_seconds: f64,
    deleted: HashMap<&'static str, u64>,
    bytes_freed: u64,
    last_success: Option<i64>,
}

/// Each kind of deletion the metrics count, and where a run's report holds it.
type DeletedCount = fn(&Counts) -> u64;
const DELETED_KINDS: [(&str, DeletedCount); 6] = [
    ("blobs", |c| c.blobs_deleted),
    ("manifests", |c| c.manifests_removed),
    ("layer_links", |c| c.layer_links_removed),
    ("uploads", |c| c.uploads_removed),
    ("temp_files", |c| c.temp_files_removed),
    ("directories", |c| c.dirs_removed),
];

fn lower(v: &dyn std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

impl GcStats {
    pub fn add(&mut self, job: &Job) {
        *self
            .runs
            .entry((
                job.settings.mode.clone(),
                lower(&job.trigger),
                lower(&job.outcome),
            ))
            .or_default() += 1;
        if job.settings.mode == "online" {
            self.pause_sum += job.pause_seconds;
            self.pause_count += 1;
            self.pause_max = self.pause_max.max(job.pause_seconds);
            self.resurrected += job.resurrected;
        }
        self.refused_writes += job.refused_writes;
        if let Some(b) = job.store_bytes {
            self.store_bytes = Some(b);
        }
        if let Some(end) = job.ended_at {
            self.duration_sum += (end - job.started_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.duration_count += 1;
        }
        self.read_only_seconds += job.read_only_seconds;
        if let Some(c) = job.report.as_ref().map(|r| r.counts()) {
            for (kind, count) in DELETED_KINDS {
                *self.deleted.entry(kind).or_default() += count(c);
            }
            self.bytes_freed += c.bytes_freed;
        }
        if job.outcome == JobOutcome::Done {
            let t = job.ended_at.unwrap_or(job.started_at).timestamp();
            self.last_success = Some(self.last_success.map_or(t, |l| l.max(t)));
        }
    }

    fn render(&self, out: &mut String) {
        let mut w = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        w("# HELP regfs_gc_runs_total GC runs, by mode, trigger and outcome.".into());
        w("# TYPE regfs_gc_runs_total counter".into());
        let mut runs: Vec<_> = self.runs.iter().collect();
        runs.sort();
        for ((mode, trigger, outcome), n) in runs {
            w(format!(
                "regfs_gc_runs_total{{mode=\"{mode}\",trigger=\"{trigger}\",outcome=\"{outcome}\"}} {n}"
            ));
        }
        w("# HELP regfs_gc_pause_seconds How long online runs held writes back.".into());
        w("# TYPE regfs_gc_pause_seconds summary".into());
        w(format!("regfs_gc_pause_seconds_sum {}", self.pause_sum));
        w(format!("regfs_gc_pause_seconds_count {}", self.pause_count));
        w("# HELP regfs_gc_pause_seconds_max The longest pause of an online run.".into());
        w("# TYPE regfs_gc_pause_seconds_max gauge".into());
        w(format!("regfs_gc_pause_seconds_max {}", self.pause_max));
        w("# HELP regfs_gc_resurrected_total Units online runs were about to delete and a write took back.".into());
        w("# TYPE regfs_gc_resurrected_total counter".into());
        w(format!("regfs_gc_resurrected_total {}", self.resurrected));
        w("# HELP regfs_gc_refused_writes_total Writes GC runs refused: EROFS during read-only runs, writes naming what an online run was deleting.".into());
        w("# TYPE regfs_gc_refused_writes_total counter".into());
        w(format!(
            "regfs_gc_refused_writes_total {}",
            self.refused_writes
        ));
        if let Some(b) = self.store_bytes {
            w("# HELP regfs_store_blob_bytes Bytes of blob data in the store after the last run (counted by its mark, less what it deleted).".into());
            w("# TYPE regfs_store_blob_bytes gauge".into());
            w(format!("regfs_store_blob_bytes {b}"));
        }
        w("# HELP regfs_gc_run_duration_seconds How long GC runs took.".into());
        w("# TYPE regfs_gc_run_duration_seconds summary".into());
        w(format!(
            "regfs_gc_run_duration_seconds_sum {}",
            self.duration_sum
        ));
        w(format!(
            "regfs_gc_run_duration_seconds_count {}",
            self.duration_count
        ));
        w(
            "# HELP regfs_gc_read_only_seconds_total Seconds the store refused writes for GC."
                .into(),
        );
        w("# TYPE regfs_gc_read_only_seconds_total counter".into());
        w(format!(
            "regfs_gc_read_only_seconds_total {}",
            self.read_only_seconds
        ));
        w("# HELP regfs_gc_deleted_total What GC runs deleted, by kind.".into());
        w("# TYPE regfs_gc_deleted_total counter".into());
        for (kind, _) in DELETED_KINDS {
            w(format!(
                "regfs_gc_deleted_total{{kind=\"{kind}\"}} {}",
                self.deleted.get(kind).copied().unwrap_or(0)
            ));
        }
        w("# HELP regfs_gc_bytes_freed_total Bytes of blobs GC runs deleted.".into());
        w("# TYPE regfs_gc_bytes_freed_total counter".into());
        w(format!("regfs_gc_bytes_freed_total {}", self.bytes_freed));
        w("# HELP regfs_gc_last_success_timestamp_seconds When the last GC run that finished its work ended.".into());
        w("# TYPE regfs_gc_last_success_timestamp_seconds gauge".into());
        w(format!(
            "regfs_gc_last_success_timestamp_seconds {}",
            self.last_success.unwrap_or(0)
        ));
    }
}

fn render_descriptors(d: &crate::daemon::status::Descriptors, out: &mut String) {
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name} {v}");
    };
    gauge(
        "regfs_fd_limit",
        "The daemon's open-file limit (soft, raised to the hard one at start).",
        d.limit,
    );
    gauge(
        "regfs_fd_budget",
        "Inode descriptors the daemon keeps open at most.",
        d.budget,
    );
    gauge(
        "regfs_inode_fds",
        "Inode descriptors the daemon holds now.",
        d.inode_fds,
    );
    if let Some(open) = d.open {
        gauge(
            "regfs_open_fds",
            "Descriptors open in the daemon now.",
            open,
        );
    }
}

/// The figures of every job the daemon ends (and of those its history held at start).
impl JobObserver for Mutex<GcStats> {
    fn job_ended(&self, job: &Job) {
        self.lock().unwrap_or_else(|e| e.into_inner()).add(job);
    }
}

/// The whole exposition.
pub fn render(daemon: &Daemon, gc: &Mutex<GcStats>) -> String {
    let mut out = String::new();
    gc.lock()
        .unwrap_or_else(|e| e.into_inner())
        .render(&mut out);
    let status = daemon.status();
    let _ = writeln!(
        out,
        "# HELP regfs_gc_state The GC state (1 for the current one)."
    );
    let _ = writeln!(out, "# TYPE regfs_gc_state gauge");
    for state in [State::Idle, State::Closing, State::Marking, State::Sweeping] {
        let _ = writeln!(
            out,
            "regfs_gc_state{{state=\"{}\"}} {}",
            lower(&state),
            (status.state == state) as u8
        );
    }
    let _ = writeln!(
        out,
        "# HELP regfs_gc_mode The mode the next GC run uses (1 for the current one)."
    );
    let _ = writeln!(out, "# TYPE regfs_gc_mode gauge");
    for mode in ["read-only", "online"] {
        let _ = writeln!(
            out,
            "regfs_gc_mode{{mode=\"{mode}\"}} {}",
            (status.mode == mode) as u8
        );
    }
    let _ = writeln!(
        out,
        "# HELP regfs_store_read_only 1 while a GC epoch refuses writes."
    );
    let _ = writeln!(out, "# TYPE regfs_store_read_only gauge");
    let _ = writeln!(out, "regfs_store_read_only {}", status.read_only as u8);
    if let Some(c) = &status.registry_cache {
        let _ = writeln!(
            out,
            "# HELP regfs_registry_cache_safe 1 when regfs can keep the registry's blob-descriptor cache right after GC, 0 when it cannot (runs delete nothing unless allow_unsafe_cache)."
        );
        let _ = writeln!(out, "# TYPE regfs_registry_cache_safe gauge");
        let _ = writeln!(out, "regfs_registry_cache_safe {}", c.safe as u8);
    }
    if let Some(d) = &status.descriptors {
        render_descriptors(d, &mut out);
    }
    daemon.fs().stats().render(&mut out);
    out
}
