//! What a run is given and how its job record is filled in, shared by the read-only
//! epoch (`runner`) and the online one (`online_run`).

use chrono::{DateTime, Utc};

use super::epoch::{EpochCoordinator, MemberDrain};
use super::history::History;
use super::job::{Job, JobOutcome};
use super::run_control::RunControl;
use crate::fs::StorageFs;
use crate::gc::{self, Cancel, Outcome, Phase};
use crate::layout::Store;
use crate::policy::gate::WriteGate;
use crate::policy::online::OnlineCollection;
use crate::registry::CacheStatus;
use crate::settings::Settings;

/// Where a run reports, and what it asks, of whoever started it.
pub trait RunHost: Sync {
    /// The registry cache's verdict now (`when` says why it is asked).
    fn cache_verdict(&self, when: &str) -> Option<CacheStatus>;
    /// The store closed for writes at `t`.
    fn read_only_since(&self, t: DateTime<Utc>);
    /// The running job as its record should say now (for the heartbeat).
    fn snapshot(&self) -> Option<Job>;
    /// The run ended; `job` says how.
    fn ended(&self, job: Job);
}

/// What a run works on.
pub struct RunParts<'a> {
    /// Closed for the epoch, reopened at its end.
    pub gate: &'a WriteGate,
    /// The collector reads the store here (the directory handle taken before the mount).
    pub store: &'a Store,
    /// The mount's filesystem (its kernel caches).
    pub fs: &'a StorageFs,
    /// The sweep deletes through it, so the kernel sees each deletion.
    pub deleter: &'a dyn gc::Deleter,
    /// The heartbeat rewrites the running-job record here.
    pub history: &'a History,
    /// The filesystem's online layer, for online runs.
    pub online: &'a OnlineCollection,
    /// Tag retention: the pruning stage at the start of the run.
    pub retention: &'a super::retention_state::RetentionState,
    /// When the last run searched every link directory for leftover temp files.
    pub temp_search: &'a super::temp_search::TempSearchClock,
    pub host: &'a dyn RunHost,
    /// The other nodes serving the store (none for a node alone).
    pub epoch: &'a dyn super::epoch::EpochCoordinator,
}

pub fn outcome_of(o: Outcome) -> JobOutcome {
    match o {
        Outcome::Done => JobOutcome::Done,
        Outcome::Stopped => JobOutcome::Stopped,
        Outcome::TimeLimit => JobOutcome::TimeLimit,
    }
}

fn phase_name(p: Phase) -> String {
    match p {
        Phase::Mark => "mark".into(),
        Phase::Sweep => "sweep".into(),
    }
}

/// After a real sweep, still inside the epoch (so no push can read a stale entry): the
/// registry's redis cache forgets every blob the plan deleted.
pub fn forget_deleted(job: &mut Job, settings: &Settings, deleted: &[crate::layout::Digest]) {
    match crate::registry::cache::forget(&settings.registry, deleted) {
        None => {}
        Some(Ok(said)) => {
            tracing::info!(job = job.id, "{said}");
            job.registry_cache = Some(said);
        }
        Some(Err(e)) => {
            tracing::error!(job = job.id, error = %e,
                "registry cache keys of deleted blobs NOT removed: pushes of them fail until they expire or the registry restarts");
            job.registry_cache = Some(format!("keys not removed: {e}"));
        }
    }
}

pub fn record_failure(job: &mut Job, e: &dyn std::fmt::Display) {
    job.outcome = JobOutcome::Failed;
    job.error = Some(e.to_string());
}

pub fn record_report(job: &mut Job, report: gc::Report) {
    job.outcome = outcome_of(report.outcome);
    job.ended_in = report.ended_in.map(phase_name);
    job.report = Some(gc::RunReport::Finished(report));
}

/// Cluster mode: waits until every other member has closed too. False (the job's error
/// says why) when the run must delete nothing.
pub fn cluster_closed(parts: &RunParts, job: &mut Job, control: &RunControl) -> bool {
    let own = MemberDrain {
        node: String::new(),
        closed_at: Utc::now(),
        drain_seconds: job.drain_seconds,
        cut_writers: job.cut_writers.clone(),
    };
    match parts
        .epoch
        .acknowledge(own, &|| control.interrupted().is_some())
    {
        Ok(run) => {
            job.cluster = run;
            true
        }
        Err(e) => {
            job.error = Some(format!("{e}; nothing deleted"));
            false
        }
    }
}

/// The run's cancel, and in a cluster its claim too: a collector no longer sure of its
/// epoch (stalled past its lease, say) stops before the next unit it would delete.
pub struct RunCancel<'a> {
    pub control: &'a RunControl,
    pub epoch: &'a dyn EpochCoordinator,
}

impl gc::Cancel for RunCancel<'_> {
    fn interrupted(&self) -> Option<Outcome> {
        self.control.interrupted().or_else(|| {
            (!self.epoch.still_held()).then(|| {
                tracing::error!(
                    "cluster: this node no longer surely holds its epoch; stopping before the next unit"
                );
                self.control.request_stop();
                Outcome::Stopped
            })
        })
    }
}
