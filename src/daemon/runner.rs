//! One GC epoch. Read-only mode: close the store (drain) → mark → sweep (deleting
//! through the mount, so the kernel sees it) → reopen; the store is reopened whatever
//! happens, a panic included. Online mode: see `online_run`.
//! A run works on the parts it is given ([`RunParts`]) and reports to a [`RunHost`]; it
//! knows nothing of the service that starts it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use chrono::Utc;

use super::job::{CutWriter, Job, JobOutcome};
use super::run_control::RunControl;
use super::run_parts::{
    RunCancel, RunHost, RunParts, cluster_closed, forget_deleted, outcome_of, record_failure,
    record_report,
};
use super::status::State;
use crate::gc::{self, Cancel};
use crate::policy::gate::WriteGate;
use crate::settings::{GcMode, Settings};

const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(250);

/// Reopens the store when dropped: no path out of a run leaves it read-only.
struct Reopen<'a>(&'a WriteGate);

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        self.0.reopen_for_writes();
    }
}

/// Before an epoch: a registry cache regfs cannot make safe would keep listing what the
/// run deletes, so the run deletes nothing unless the operator allowed it. A dry run
/// deletes nothing anyway.
fn cache_refusal(host: &dyn RunHost, job: &Job, settings: &Settings) -> Option<String> {
    let verdict = host.cache_verdict("before a GC run")?;
    if verdict.safe || settings.dry_run {
        return None;
    }
    if settings.mode == GcMode::Online {
        // A cached "exists" answers the client without the filesystem ever seeing the
        // question: nothing online GC does can take such a blob back in time.
        let why = format!(
            "online GC refused: {}; online mode needs the registry's blob-descriptor cache off or in redis (set storage.cache.blobdescriptor, or REGISTRY_STORAGE_CACHE_BLOBDESCRIPTOR=none as the shipped drop-in does)",
            verdict.detail
        );
        tracing::error!(job = job.id, "{why}");
        return Some(why);
    }
    if settings.registry.allow_unsafe_cache {
        tracing::warn!(job = job.id, detail = %verdict.detail,
            "registry cache unsafe; running anyway (allow_unsafe_cache): pushes of deleted blobs will fail until the registry restarts");
        return None;
    }
    Some(format!(
        "registry cache unsafe, nothing deleted: {} (set [registry] allow_unsafe_cache = true to collect anyway)",
        verdict.detail
    ))
}

/// The epoch itself; fills in `job`.
fn epoch(parts: &RunParts, job: &mut Job, control: &RunControl, settings: &Settings) {
    if let Some(refusal) = cache_refusal(parts.host, job, settings) {
        job.outcome = JobOutcome::Failed;
        job.error = Some(refusal);
        return;
    }
    if settings.mode == GcMode::Online {
        // In a cluster every member records and checks its writes too, through etcd
        // (`online_run`, `cluster::online`).
        super::online_run::collect(parts, job, control, settings);
        return;
    }
    let start = Instant::now();
    // Every EROFS the epoch answers is counted: what the run cost the registry's pushes.
    let refused_before = parts.gate.refused_writes();
    let reopen = close_store(parts, job, control, settings);
    let all_closed = control.interrupted().is_none() && cluster_closed(parts, job, control);
    if let Some(o) = control.interrupted() {
        job.outcome = outcome_of(o);
        job.ended_in = Some("mark".into());
    } else if !all_closed {
        job.outcome = JobOutcome::Failed;
    } else {
        collect(parts, job, control, settings);
    }
    drop(reopen);
    job.read_only_seconds = start.elapsed().as_secs_f64();
    job.refused_writes = parts.gate.refused_writes() - refused_before;
    tracing::warn!(
        job = job.id,
        read_only_seconds = job.read_only_seconds,
        "GC epoch closed: the store is writable again"
    );
    super::notify::status(
        &format!("idle; last GC job {} {:?}", job.id, job.outcome).to_lowercase(),
    );
}

/// Closes the store for writes (drain, then cut) and records what it took; the store
/// reopens when the returned guard drops, on every path.
fn close_store<'a>(
    parts: &RunParts<'a>,
    job: &mut Job,
    control: &RunControl,
    settings: &Settings,
) -> Reopen<'a> {
    let gate = parts.gate;
    // In this order, so a status that says "closing" is already read-only.
    gate.refuse_new_writes();
    let reopen = Reopen(gate);
    parts.host.read_only_since(Utc::now());
    control.set_state(State::Closing);
    tracing::warn!(
        job = job.id,
        "GC epoch open: the store is read-only, pushes are refused until it ends"
    );
    super::notify::status(&format!(
        "GC job {}: store READ-ONLY, pushes refused",
        job.id
    ));
    let close =
        gate.close_for_writes_unless(settings.drain_timeout, &|| control.interrupted().is_some());
    job.drain_seconds = close.waited.as_secs_f64();
    job.cut_writers = CutWriter::all_of(&close);
    for c in &job.cut_writers {
        tracing::info!(job = job.id, path = %c.path, reason = %c.reason, "write handle cut by the epoch");
    }
    reopen
}

/// Mark, then sweep what the plan names; the job records how it ended.
fn collect(parts: &RunParts, job: &mut Job, control: &RunControl, settings: &Settings) {
    control.set_state(State::Marking);
    let cancel = RunCancel {
        control,
        epoch: parts.epoch,
    };
    // The store is closed: no tag is written while the stage prunes.
    let opts = super::prune_stage::prune_stage(parts, job, settings);
    let planned = match gc::mark(parts.store, &opts, &cancel, control) {
        Err(e) => return record_failure(job, &e),
        Ok(gc::Marked::Interrupted(report)) => return record_report(job, report),
        Ok(gc::Marked::Planned(planned)) => planned,
    };
    // The scan is complete: where it looked for temp files counts.
    parts.temp_search.scanned(opts.temp_files, settings.dry_run);
    control.set_state(State::Sweeping);
    let deleted: Option<Vec<_>> =
        (!settings.dry_run).then(|| planned.plan.blobs().copied().collect());
    let swept = gc::sweep(planned, parts.deleter, &cancel, control);
    // Whatever the sweep's outcome: some blobs may be gone.
    if let Some(deleted) = deleted {
        forget_deleted(job, settings, &deleted);
    }
    match swept {
        Err(e) => record_failure(job, &e),
        Ok(report) => record_report(job, report),
    }
}

/// Runs a job on its own thread and records it.
pub fn run(parts: &RunParts, mut job: Job, control: &RunControl, settings: &Settings) {
    *control.started_slot() = Some(Instant::now());
    tracing::info!(job = job.id, trigger = ?job.trigger, duration = %job.settings.duration,
        delete_untagged = job.settings.delete_untagged, dry_run = job.settings.dry_run, "GC job started");
    let running = std::sync::atomic::AtomicBool::new(true);
    let result = std::thread::scope(|scope| {
        // A heartbeat rewrites the running-job record with the run's progress, so a
        // daemon killed mid-run is recorded as interrupted at (about) the moment it died,
        // with what it had deleted and how long the store was read-only by then.
        scope.spawn(|| {
            let mut failing = false;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(snapshot) = parts.host.snapshot() {
                    match parts.history.heartbeat(&snapshot) {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::error!(job = snapshot.id, error = %e,
                                "cannot update the running-job record; if the daemon dies now, \
                                 the history will not say what this run deleted");
                        }
                        Err(_) => {}
                        Ok(()) => failing = false,
                    }
                }
                std::thread::sleep(HEARTBEAT);
            }
        });
        let r = catch_unwind(AssertUnwindSafe(|| {
            epoch(parts, &mut job, control, settings)
        }));
        running.store(false, std::sync::atomic::Ordering::Relaxed);
        r
    });
    if let Err(panic) = result {
        let detail = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        job.outcome = JobOutcome::Failed;
        job.error = Some(format!("internal error: {detail}"));
    }
    control.set_state(State::Idle);
    job.ended_at = Some(Utc::now());
    parts.epoch.end(&job);
    match job.outcome {
        JobOutcome::Failed => tracing::error!(
            job = job.id,
            error = job.error.as_deref().unwrap_or(""),
            "GC job failed; nothing more was deleted"
        ),
        _ => tracing::info!("GC {}", job.summary()),
    }
    parts.host.ended(job);
}
