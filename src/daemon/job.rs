//! A GC job: one epoch, from trigger to reopen, as recorded in the history.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::gate::{CloseReport, CutReason};

/// What started a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Signal,
    Cli,
    /// The HTTP API or the page ("Save & start").
    Api,
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOutcome {
    Running,
    Done,
    /// "For N minutes" ran out: nothing deleted if it was still marking.
    TimeLimit,
    Stopped,
    Failed,
    /// The daemon died during the run; found at the next start.
    Interrupted,
}

/// The settings a job ran with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSettings {
    /// "read-only" or "online" (records from before modes existed were read-only).
    #[serde(default = "read_only")]
    pub mode: String,
    pub duration: String,
    pub delete_untagged: bool,
    pub dry_run: bool,
    pub upload_max_age: String,
    /// Absent from records written before the setting existed.
    #[serde(default)]
    pub min_age: String,
    pub drain_timeout: String,
}

impl JobSettings {
    /// What a job records of the settings it runs with.
    pub fn of(s: &crate::settings::Settings) -> JobSettings {
        JobSettings {
            mode: s.mode.to_string(),
            duration: s.duration.to_string(),
            delete_untagged: s.delete_untagged,
            dry_run: s.dry_run,
            upload_max_age: humantime::format_duration(s.upload_max_age).to_string(),
            min_age: humantime::format_duration(s.min_age).to_string(),
            drain_timeout: humantime::format_duration(s.drain_timeout).to_string(),
        }
    }
}

fn read_only() -> String {
    "read-only".into()
}

/// A writer the epoch cut when it closed the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutWriter {
    pub path: String,
    pub reason: String,
}

impl CutWriter {
    /// The writers a close of the gate cut, as a job records them.
    pub fn all_of(report: &CloseReport) -> Vec<CutWriter> {
        report
            .cut
            .iter()
            .map(|c| CutWriter {
                path: c.path.clone(),
                reason: match c.reason {
                    CutReason::Upload => "upload in progress".into(),
                    CutReason::DrainTimeout => "still writing after the drain timeout".into(),
                },
            })
            .collect()
    }
}

/// Everything the history keeps about a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: u64,
    pub trigger: Trigger,
    pub settings: JobSettings,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: JobOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The phase a stopped or timed-out run was in ("mark": nothing was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_in: Option<String>,
    /// How long pushes were refused.
    pub read_only_seconds: f64,
    /// How long closing waited for writers to finish.
    pub drain_seconds: f64,
    /// Online runs: how long writes were held back while the mark was fixed.
    #[serde(default)]
    pub pause_seconds: f64,
    /// Online runs: paths written while the run marked (taken into account at the pause).
    #[serde(default)]
    pub late_writes: u64,
    /// Online runs: units the run was to delete that a write took back (at the pause or
    /// during the sweep).
    #[serde(default)]
    pub resurrected: u64,
    /// Writes the run refused: read-only runs, every EROFS the epoch answered (each a
    /// push that failed or retried); online runs, writes that named what the sweep was
    /// deleting (in a cluster, on every node: each member reports its own at the end).
    #[serde(default)]
    pub refused_writes: u64,
    #[serde(default)]
    pub cut_writers: Vec<CutWriter>,
    /// What became of the registry's cache entries for the deleted blobs (redis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_cache: Option<String>,
    /// The collector's report (counts, bytes, warnings), when it got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<crate::gc::RunReport>,
    /// Bytes in use on the store's filesystem when the run ended (the whole filesystem,
    /// whatever else it holds; the chart shows `store_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_used_bytes: Option<u64>,
    /// The store's own size after the run: the bytes under `blobs/` the mark counted,
    /// less what the run deleted (the page's chart shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_bytes: Option<u64>,
    /// A cluster run: the collector and how each member closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterRun>,
    /// Tag retention: the tags the run's pruning stage removed (or, dry, would have).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::retention::prune::PruneOutcome>,
    /// Where the run looked for leftover temp files (`every-link-dir` or
    /// `broken-links-only`); absent when it stopped before choosing, and from records
    /// written before the choice existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temp_files_searched: Option<crate::gc::TempFileSearch>,
}

impl Job {
    /// A job just started: running, nothing measured yet. The one place a job is made,
    /// so a new field has one default.
    pub fn started(
        id: u64,
        trigger: Trigger,
        settings: JobSettings,
        started_at: DateTime<Utc>,
    ) -> Self {
        Job {
            id,
            trigger,
            settings,
            started_at,
            ended_at: None,
            outcome: JobOutcome::Running,
            error: None,
            ended_in: None,
            read_only_seconds: 0.0,
            drain_seconds: 0.0,
            pause_seconds: 0.0,
            late_writes: 0,
            resurrected: 0,
            refused_writes: 0,
            cut_writers: vec![],
            registry_cache: None,
            report: None,
            store_used_bytes: None,
            store_bytes: None,
            cluster: None,
            retention: None,
            temp_files_searched: None,
        }
    }

    /// One line for logs and listings.
    pub fn summary(&self) -> String {
        let c = self.report.as_ref().map(|r| r.counts().clone());
        let c = c.unwrap_or_default();
        let lower = |v: &dyn std::fmt::Debug| format!("{v:?}").to_lowercase();
        format!(
            "job {} ({}, {}, {}): {}; {} blobs deleted, {} bytes freed, {} manifests removed; read-only {:.1} s",
            self.id,
            lower(&self.trigger),
            self.settings.mode,
            self.settings.duration,
            lower(&self.outcome),
            c.blobs_deleted,
            c.bytes_freed,
            c.manifests_removed,
            self.read_only_seconds
        ) + &self.refused()
            + &self.young_kept()
    }

    /// The summary's note of blobs kept for their age, when there were any.
    fn refused(&self) -> String {
        match self.refused_writes {
            0 => String::new(),
            n => format!(", {n} writes refused"),
        }
    }

    fn young_kept(&self) -> String {
        match &self.report {
            Some(crate::gc::RunReport::Finished(r)) if r.young_blobs_kept > 0 => format!(
                "; {} unreferenced blobs younger than {} kept",
                r.young_blobs_kept, self.settings.min_age
            ),
            _ => String::new(),
        }
    }
}

/// One member's part in a cluster epoch, as it acknowledged it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberDrain {
    pub node: String,
    /// When its gate was closed and drained.
    pub closed_at: DateTime<Utc>,
    pub drain_seconds: f64,
    #[serde(default)]
    pub cut_writers: Vec<CutWriter>,
}

/// A run of the whole cluster: who collected, and how each member closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRun {
    /// The epoch's number (the etcd revision that created it), the same on every node.
    pub epoch: u64,
    pub collector: String,
    /// Every member that acknowledged, the collector included.
    pub members: Vec<MemberDrain>,
}
