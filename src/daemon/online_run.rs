//! An online run: mark with the store writable (the filesystem records what writes make
//! live), pause writes for a moment to fold that in and fix what to delete, then sweep
//! with the store writable (the filesystem takes back, or refuses, writes naming what
//! is being deleted). Nothing is refused with EROFS at any point.

use std::path::Path;
use std::time::{Duration, Instant};

use super::epoch::OnlineCoordinator;
use super::job::{Job, JobOutcome};
use super::run_control::RunControl;
use super::run_parts::{
    RunCancel, RunParts, cluster_closed, forget_deleted, outcome_of, record_failure, record_report,
};
use super::status::State;
use crate::gc::{self, Action, Cancel, Claims, Plan};
use crate::layout::Digest;
use crate::layout::paths;
use crate::policy::gate::WriteGate;
use crate::policy::online::{Doomed, DoomedUnit, OnlineCollection, Recording, Referrer, Sweeping};
use crate::settings::Settings;

/// Starts recording writes (phase 1). A write admitted just before was not recorded: it
/// must land before the mark reads the store, or the mark could read a link as it was (a
/// tag still on the manifest it moves away from) and the write go unseen. So writes in
/// flight are waited for (new ones wait a moment, then are recorded). (Found by the soak
/// with the real registry.)
///
/// In a cluster the barrier may still hold this node's part in another node's run that
/// has just ended (the member agent lets it go at its next tick, within
/// [`MEMBER_PART_ENDS`]): a run started on this node meanwhile waits for that, instead of
/// failing. (Found by the soak across two nodes, runs triggered on each in turn.)
pub fn start_recording(
    gate: &WriteGate,
    online: &OnlineCollection,
    timeout: Duration,
) -> Result<Recording, String> {
    let waiting_since = Instant::now();
    let recording = loop {
        match online.start_recording() {
            Ok(r) => break r,
            Err(_) if waiting_since.elapsed() < MEMBER_PART_ENDS.min(timeout) => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    match gate.pause_writes(timeout) {
        Some(_paused) => Ok(recording),
        None => Err(
            "writes in flight did not finish within the drain timeout; nothing was deleted".into(),
        ),
    }
}

/// How long a run waits for the barrier to be free: a few ticks of the member agent.
const MEMBER_PART_ENDS: Duration = Duration::from_secs(2);

/// What the pause did.
#[derive(Debug, Clone, Copy)]
pub struct Pause {
    /// How long writes were held back.
    pub held: Duration,
    /// Paths writes had recorded while the run marked.
    pub recorded: u64,
}

/// The pause (phase 3): holds writes back, takes back what the writes recorded during
/// the mark reach, starts guarding what `plan` deletes, and lets writes go on. `None` if
/// writes in flight did not finish within `timeout` (the run then ends: nothing is
/// guarded or deleted).
pub fn pause_and_install(
    gate: &WriteGate,
    mut recording: Recording,
    plan: &Plan,
    timeout: Duration,
) -> Option<(Sweeping, Pause)> {
    // Built, and the writes of the mark applied, before the pause: a big plan's units
    // take a while to lay out, and many writes take a while to apply.
    let mut doomed = Doomed::new(doomed_units(plan, &recording));
    let mut recorded = recording.absorb(&mut doomed);
    let start = Instant::now();
    let paused = gate.pause_writes(timeout)?;
    let (sweeping, late) = recording.install(doomed, &paused);
    recorded += late;
    drop(paused);
    Some((
        sweeping,
        Pause {
            held: start.elapsed(),
            recorded,
        },
    ))
}

/// The units of `plan` as the filesystem guards them, in the plan's order. A referrer's
/// manifest is read (through `recording`) for what keeping it keeps.
pub fn doomed_units(plan: &Plan, recording: &Recording) -> Vec<DoomedUnit> {
    let text = |p: &Path| p.to_string_lossy().into_owned();
    plan.actions
        .iter()
        .map(|a| DoomedUnit {
            paths: a.paths().iter().map(|p| text(p)).collect(),
            hidden: match a {
                Action::DeleteBlob { digest, .. } => Some(text(&paths::blob_dir(digest))),
                _ => None,
            },
            referrer: match a {
                Action::RemoveRevision {
                    repo,
                    digest,
                    subject: Some(subject),
                    ..
                } => Some(Referrer {
                    subject: text(&paths::revision_dir(repo, subject)),
                    reaches: recording.manifest_reach(repo, *digest),
                }),
                _ => None,
            },
        })
        .collect()
}

/// The sweep asks the filesystem for each unit.
pub struct OnlineClaims<'a>(pub &'a Sweeping);

impl Claims for OnlineClaims<'_> {
    fn claim(&self, i: usize) -> bool {
        self.0.claim(i)
    }

    fn release(&self, i: usize) {
        self.0.release(i)
    }
}

/// The pause across a cluster (phase 3). First, with every node writable, the members
/// get the planned doomed set and hand over their records so far, folded in here. Then
/// the pause: every member hands its record since over and holds its writes; this node
/// pauses its own, folds every record in, installs, resumes, and gives the members the
/// delta (what was taken back since the planned set): they resume once they enforce it.
/// Err: the run deletes nothing.
fn cluster_pause_and_install(
    cluster: &dyn OnlineCoordinator,
    gate: &WriteGate,
    mut recording: Recording,
    plan: &Plan,
    timeout: Duration,
    give_up: &dyn Fn() -> bool,
) -> Result<(Sweeping, Pause), String> {
    let mut doomed = Doomed::new(doomed_units(plan, &recording));
    let mut recorded = recording.absorb(&mut doomed);
    // Before the pause: every member holds the planned set (not enforced) and hands
    // over what it wrote so far; the pause then moves only the last moments.
    for r in &cluster.publish_planned(&doomed, timeout, give_up)? {
        recorded += recording.absorb_record(r, &mut doomed)?;
    }
    recorded += recording.absorb(&mut doomed);
    let start = Instant::now();
    let records = cluster.hand_over(timeout, give_up)?;
    for r in &records {
        recorded += recording.absorb_record(r, &mut doomed)?;
    }
    let paused = gate.pause_writes(timeout).ok_or(
        "writes in flight did not finish within the drain timeout, so they could not be paused",
    )?;
    let (sweeping, late) = recording.install_with(doomed, &paused, Some(cluster.keeper()));
    recorded += late;
    drop(paused);
    cluster.publish(&sweeping, timeout, give_up)?;
    Ok((
        sweeping,
        Pause {
            held: start.elapsed(),
            recorded,
        },
    ))
}

/// The online run itself; fills in `job`.
pub(super) fn collect(parts: &RunParts, job: &mut Job, control: &RunControl, settings: &Settings) {
    let cluster = parts.epoch.online();
    let cancel = RunCancel {
        control,
        epoch: parts.epoch,
    };
    // Tags are removed only with every writer paused; a cluster's other nodes are not
    // (yet) paused for the pruning stage, so it only reports there.
    let mut prune_settings;
    let settings_for_prune = if cluster.is_some() && !settings.retention.policies.is_empty() {
        tracing::warn!(
            job = job.id,
            "cluster online run: tag retention previews only (tags are pruned by read-only runs in a cluster)"
        );
        prune_settings = settings.clone();
        prune_settings.retention.dry_run = true;
        &prune_settings
    } else {
        settings
    };
    // Pruning first, with writes paused: no tag push races the removal of a tag (one
    // written since the policies judged it is kept).
    let opts = match parts.gate.pause_writes(settings.drain_timeout) {
        Some(_paused) => super::prune_stage::prune_stage(parts, job, settings_for_prune),
        None => {
            return record_failure(
                job,
                &"writes in flight did not finish within the drain timeout, so tags could not be pruned; nothing was deleted",
            );
        }
    };
    // Each phase ends the run when dropped, on every path out of here.
    let recording = match start_recording(parts.gate, parts.online, settings.drain_timeout) {
        Ok(r) => r,
        Err(why) => return record_failure(job, &why),
    };
    // In a cluster: every other member records too before the mark reads.
    if cluster.is_some() && !cluster_closed(parts, job, control) {
        return;
    }
    control.set_state(State::Marking);
    let planned = match gc::mark(parts.store, &opts, &cancel, control) {
        Err(e) => return record_failure(job, &e),
        Ok(gc::Marked::Interrupted(report)) => return record_report(job, report),
        Ok(gc::Marked::Planned(planned)) => planned,
    };
    // The scan is complete: where it looked for temp files counts.
    parts.temp_search.scanned(opts.temp_files, settings.dry_run);
    if settings.dry_run {
        return record_report(job, planned.report);
    }
    let installed = match cluster {
        Some(cluster) => cluster_pause_and_install(
            cluster,
            parts.gate,
            recording,
            &planned.plan,
            settings.drain_timeout,
            &|| control.interrupted().is_some(),
        )
        .map_err(|e| format!("{e}; nothing was deleted")),
        None => pause_and_install(parts.gate, recording, &planned.plan, settings.drain_timeout)
            .ok_or_else(|| "writes in flight did not finish within the drain timeout, so they could not be paused; nothing was deleted".to_string()),
    };
    let (sweeping, pause) = match installed {
        Ok(i) => i,
        Err(e) => return record_failure(job, &e),
    };
    job.pause_seconds = pause.held.as_secs_f64();
    job.late_writes = pause.recorded;
    tracing::info!(
        job = job.id,
        pause_ms = job.pause_seconds * 1000.0,
        recorded = pause.recorded,
        taken_back = sweeping.resurrected(),
        "online GC: writes paused while what they did during the mark was taken into account"
    );
    let deleted: Vec<Digest> = planned.plan.blobs().copied().collect();
    // Before anything goes: a registry cache must not answer "exists" for a doomed blob.
    forget_deleted(job, settings, &deleted);
    for dir in sweeping.hidden() {
        if let Err(e) = parts.fs.forget_cached(Path::new(&dir)) {
            tracing::debug!(error = %e, dir, "cannot drop a hidden blob from the kernel cache");
        }
    }
    if let Some(o) = control.interrupted() {
        job.outcome = outcome_of(o);
        job.ended_in = Some("mark".into());
        return;
    }
    control.set_state(State::Sweeping);
    let units = planned.plan.actions.len();
    let claims: Box<dyn Claims + '_> = match cluster {
        Some(cluster) => cluster.claims(&sweeping, units),
        None => Box::new(OnlineClaims(&sweeping)),
    };
    let swept = gc::sweep_claimed(planned, parts.deleter, claims.as_ref(), &cancel, control);
    drop(claims);
    let writes = sweeping.finish();
    job.resurrected = writes.resurrected;
    job.refused_writes = writes.refused;
    // Every member's refusals and keeps count too, reported as each ends its part.
    if let Some(cluster) = cluster {
        let members = cluster.members_finish(settings.drain_timeout);
        job.refused_writes += members.refused;
        job.resurrected += members.resurrected;
    }
    match swept {
        Err(e) => record_failure(job, &e),
        Ok(report) => record_report(job, report),
    }
    if job.outcome == JobOutcome::Done && job.resurrected > 0 {
        tracing::info!(
            job = job.id,
            resurrected = job.resurrected,
            "online GC: writes took back units it was about to delete"
        );
    }
}
