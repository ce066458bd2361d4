//! The collector: scan the store, mark what is live, plan, sweep, report.
//!
//! It never deletes what it cannot prove unreferenced: an unreadable or missing manifest,
//! one that does not match its digest, or one of an unknown kind stops the run before the
//! sweep.

pub mod error;
pub mod mark;
pub mod plan;
pub mod report;
pub mod scan;
pub mod sweep;

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

pub use error::GcError;
pub use plan::{Action, Plan};
pub use report::{Counts, Outcome, Phase, Report, Warning};
pub use sweep::Deleter;

use crate::layout::{Digest, Store};

/// The collector's threads. Reading manifests and deleting directories wait on the disk
/// far more than they compute, so many more threads than cores pay off (deleting 2,000
/// blob directories here: 1.7 s with one thread, 0.6 s with 8, 0.47 s with 32).
/// `REGFS_GC_THREADS` overrides the default of 8 per core, at least 16.
fn io_pool() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = std::env::var("REGFS_GC_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or((cores * 8).clamp(16, 64));
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("regfs-gc-io-{i}"))
            .build()
            .expect("collector thread pool")
    })
}

/// The registry's upload purger default: uploads older than a week are abandoned.
pub const DEFAULT_UPLOAD_MAX_AGE: Duration = Duration::from_secs(168 * 3600);

#[derive(Debug, Clone)]
pub struct Options {
    /// Roots are tagged manifests only; unreachable revisions are removed.
    pub delete_untagged: bool,
    pub dry_run: bool,
    pub upload_max_age: Duration,
    /// Keep every blob an unknown manifest names instead of stopping the run.
    pub keep_unknown: bool,
    /// Go on past a manifest whose blob is missing, keeping every blob and revision of
    /// its repository, instead of stopping the run.
    pub allow_missing_manifests: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            delete_untagged: false,
            dry_run: false,
            upload_max_age: DEFAULT_UPLOAD_MAX_AGE,
            keep_unknown: false,
            allow_missing_manifests: false,
        }
    }
}

/// Why a run should end early; checked between units of work.
pub trait Control: Sync {
    /// `Some(outcome)` to stop now.
    fn interrupted(&self) -> Option<Outcome> {
        None
    }
    /// A phase begins with `total` units of work.
    fn phase(&self, _phase: Phase, _total: u64) {}
    /// One unit of the current phase is done.
    fn advance(&self) {}
    /// A sweep unit is done and deleted `unit` (so a record of the run can say what
    /// went, even if the process dies before the report).
    fn swept(&self, _unit: &Counts) {}
}

/// A control that never interrupts and reports nothing.
pub struct Unattended;
impl Control for Unattended {}

/// The result of scanning and marking: everything needed to sweep.
pub struct Marked {
    pub plan: Plan,
    pub report: Report,
}

/// Scans and marks, and builds the plan. Deletes nothing. `Ok(Err(report))` when the
/// control interrupted the mark phase.
pub fn mark(
    store: &Store,
    opts: &Options,
    control: &dyn Control,
) -> Result<Result<Marked, Report>, GcError> {
    io_pool().install(|| mark_in_pool(store, opts, control))
}

fn mark_in_pool(
    store: &Store,
    opts: &Options,
    control: &dyn Control,
) -> Result<Result<Marked, Report>, GcError> {
    let start = Instant::now();
    let mut report = Report {
        storage: store.path().display().to_string(),
        mode: if opts.delete_untagged {
            "delete-untagged"
        } else {
            "default"
        },
        dry_run: opts.dry_run,
        outcome: Outcome::Done,
        ended_in: None,
        repositories: 0,
        manifests_scanned: 0,
        blobs_scanned: 0,
        blobs_marked: 0,
        counts: Counts::default(),
        warnings: Vec::new(),
        mark_seconds: 0.0,
        sweep_seconds: 0.0,
    };
    let stop = || control.interrupted().is_some();
    // An interrupted mark phase deletes nothing: the report says where it stopped.
    let interrupted = |mut report: Report| {
        report.outcome = control.interrupted().unwrap_or(Outcome::Stopped);
        report.ended_in = Some(Phase::Mark);
        report.mark_seconds = start.elapsed().as_secs_f64();
        Ok(Err(report))
    };
    let repos = scan::find_repositories(store)?;
    control.phase(Phase::Mark, repos.len() as u64);
    report.repositories = repos.len() as u64;
    let scans: Result<Vec<Option<scan::RepoScan>>, GcError> = {
        use rayon::prelude::*;
        repos
            .par_iter()
            .map(|r| {
                if stop() {
                    Ok(None)
                } else {
                    scan::scan_repository(store, r).map(Some)
                }
            })
            .collect()
    };
    let Some(scans) = scans?.into_iter().collect::<Option<Vec<_>>>() else {
        return interrupted(report);
    };
    let manifests = mark::Manifests::new(store, opts.keep_unknown, opts.allow_missing_manifests)?;
    let marks = mark::mark_repositories(&manifests, &scans, opts.delete_untagged, &stop, &|| {
        control.advance()
    })?;
    let (Some(marks), false) = (marks, stop()) else {
        return interrupted(report);
    };
    let blobs = scan::scan_blobs(store)?;
    let mut marked: HashSet<Digest> = HashSet::new();
    for m in &marks {
        marked.extend(m.marked.iter().copied());
        report.manifests_scanned += m.manifests as u64;
    }
    for s in &scans {
        report.warnings.extend(s.warnings.iter().cloned());
    }
    for m in &marks {
        report.warnings.extend(m.warnings.iter().cloned());
    }
    report.warnings.extend(blobs.warnings.iter().cloned());
    report.blobs_scanned = blobs.blobs.len() as u64;
    report.blobs_marked = blobs.blobs.iter().filter(|d| marked.contains(d)).count() as u64;
    let plan = plan::build(
        store,
        &scans,
        &marks,
        &blobs,
        &marked,
        opts.upload_max_age,
        SystemTime::now(),
    );
    report.counts = plan.counts();
    report.mark_seconds = start.elapsed().as_secs_f64();
    Ok(Ok(Marked { plan, report }))
}

/// Carries out a marked plan (unless it is a dry run) and completes the report.
pub fn sweep(
    marked: Marked,
    deleter: &dyn Deleter,
    control: &dyn Control,
) -> Result<Report, GcError> {
    let Marked { plan, mut report } = marked;
    if report.dry_run {
        return Ok(report);
    }
    let start = Instant::now();
    control.phase(Phase::Sweep, plan.actions.len() as u64);
    let stop = || control.interrupted().is_some();
    let (done, stopped) = io_pool().install(|| {
        sweep::execute(&plan, deleter, &stop, &|unit| {
            control.swept(unit);
            control.advance()
        })
    })?;
    report.counts = done;
    if stopped {
        report.outcome = control.interrupted().unwrap_or(Outcome::Stopped);
        report.ended_in = Some(Phase::Sweep);
    }
    report.sweep_seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// A whole run: mark, then sweep.
pub fn collect(
    store: &Store,
    deleter: &dyn Deleter,
    opts: &Options,
    control: &dyn Control,
) -> Result<Report, GcError> {
    match mark(store, opts, control)? {
        Ok(marked) => sweep(marked, deleter, control),
        Err(report) => Ok(report),
    }
}
