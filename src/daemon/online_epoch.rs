//! An online run: mark with the store writable (the filesystem records what writes make
//! live), pause writes for a moment to fold that in and fix what to delete, then sweep
//! with the store writable (the filesystem takes back, or refuses, writes naming what
//! is being deleted). Nothing is refused with EROFS at any point.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::job::{Job, JobOutcome};
use super::run_control::RunControl;
use super::run_record::{RunParts, forget_deleted, outcome_of, record_failure, record_report};
use super::settings::Settings;
use super::status::State;
use crate::gc::{self, Action, Barrier, Cancel, Claims, LateRoot, Plan};
use crate::layout::Digest;
use crate::policy::gate::{Paused, WriteGate};
use crate::policy::online::{DoomedUnit, OnlineCollection, Touched};

/// The pause: writes held back from [`Barrier::pause`] until [`PauseBarrier::resume`].
pub struct PauseBarrier<'a> {
    gate: &'a WriteGate,
    online: &'a OnlineCollection,
    /// How long the pause waits for writes in flight.
    timeout: Duration,
    held: Mutex<Option<(Paused<'a>, Instant)>>,
}

impl<'a> PauseBarrier<'a> {
    pub fn new(gate: &'a WriteGate, online: &'a OnlineCollection, timeout: Duration) -> Self {
        PauseBarrier {
            gate,
            online,
            timeout,
            held: Mutex::new(None),
        }
    }
}

impl Barrier for PauseBarrier<'_> {
    fn pause(&self) -> Option<Vec<LateRoot>> {
        let paused = self.gate.pause_writes(self.timeout)?;
        let start = Instant::now();
        let roots = self
            .online
            .take_touched()
            .into_iter()
            .map(late_root)
            .collect();
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Some((paused, start));
        Some(roots)
    }
}

impl PauseBarrier<'_> {
    /// Lets writes go on; how long they were held, if they were.
    pub fn resume(&self) -> Option<f64> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner()).take();
        held.map(|(paused, start)| {
            drop(paused);
            start.elapsed().as_secs_f64()
        })
    }
}

fn late_root(t: Touched) -> LateRoot {
    match t {
        Touched::Manifest { repo, digest } => LateRoot::Manifest { repo, digest },
        Touched::Blob(d) => LateRoot::Blob(d),
    }
}

/// The units of `plan` as the filesystem guards them, in the plan's order.
pub fn doomed_units(plan: &Plan) -> Vec<DoomedUnit> {
    plan.actions
        .iter()
        .map(|a| DoomedUnit {
            paths: a
                .paths()
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            hidden: match a {
                Action::DeleteBlob { digest, .. } => Some(
                    crate::layout::paths::blob_dir(digest)
                        .to_string_lossy()
                        .into_owned(),
                ),
                _ => None,
            },
        })
        .collect()
}

/// The sweep asks the filesystem for each unit.
pub struct OnlineClaims<'a>(pub &'a OnlineCollection);

impl Claims for OnlineClaims<'_> {
    fn claim(&self, i: usize) -> bool {
        self.0.claim(i)
    }

    fn release(&self, i: usize) {
        self.0.release(i)
    }
}

/// Ends the online phase on every path out of the run: nothing stays hidden or guarded.
struct EndOnline<'a>(&'a OnlineCollection);

impl Drop for EndOnline<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The online run itself; fills in `job`.
pub(super) fn collect(parts: &RunParts, job: &mut Job, control: &RunControl, settings: &Settings) {
    let online = parts.online;
    online.start_recording();
    let _end = EndOnline(online);
    control.set_state(State::Marking);
    let barrier = PauseBarrier::new(parts.gate, online, settings.drain_timeout);
    let marked = gc::mark_online(
        parts.store,
        &settings.gc_options(),
        control,
        control,
        &barrier,
    );
    let mut planned = match marked {
        Err(e) => {
            job.pause_seconds = barrier.resume().unwrap_or(0.0);
            return record_failure(job, &e);
        }
        Ok(gc::Marked::Interrupted(report)) => {
            job.pause_seconds = barrier.resume().unwrap_or(0.0);
            return record_report(job, report);
        }
        Ok(gc::Marked::Planned(planned)) => planned,
    };
    if !settings.dry_run {
        online.doom(doomed_units(&planned.plan));
    }
    job.pause_seconds = barrier.resume().unwrap_or(0.0);
    tracing::info!(
        job = job.id,
        pause_ms = job.pause_seconds * 1000.0,
        late_roots = planned.report.late_roots,
        "online GC: writes paused while the mark was fixed"
    );
    planned.measure(parts.store);
    if settings.dry_run {
        return record_report(job, planned.report);
    }
    let deleted: Vec<Digest> = planned.plan.blobs().copied().collect();
    // Before anything goes: a registry cache must not answer "exists" for a doomed blob.
    forget_deleted(job, settings, &deleted);
    for dir in online.hidden() {
        if let Err(e) = parts.fs.forget_cached(Path::new(&dir)) {
            tracing::debug!(error = %e, dir, "cannot drop a hidden blob from the kernel cache");
        }
    }
    if control.interrupted().is_some() {
        job.outcome = outcome_of(control.interrupted().unwrap_or(gc::Outcome::Stopped));
        job.ended_in = Some("mark".into());
        return;
    }
    control.set_state(State::Sweeping);
    let swept = gc::sweep_claimed(planned, parts.fs, &OnlineClaims(online), control, control);
    job.resurrected = online.resurrected();
    job.refused_writes = online.refused();
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
