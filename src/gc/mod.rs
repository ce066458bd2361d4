//! The collector, as stages with a type between each: the scan reads the store into an
//! [`Inventory`]; the mark walks each repository's roots into a [`MarkSet`]; [`plan::plan`]
//! (pure) turns both into a [`Plan`] of units; the sweep carries the units out; the
//! [`Report`] says what happened. [`Cancel`] and [`Progress`] steer and watch a run.
//!
//! It never deletes what it cannot prove unreferenced. What it does not understand keeps
//! what it may stand for and the rest is collected: an entry of a repository it does not
//! understand, or a manifest it cannot read or parse, keeps that repository whole; a link
//! in the repository tree keeps the repositories it points to whole, or every blob when it
//! leads out of the tree (see [`scan`]). A manifest missing from the store stops the run
//! before the sweep (unless `allow_missing_manifests`).

pub mod control;
pub mod error;
pub mod inventory;
pub mod manifests;
pub mod markset;
pub mod plan;
pub mod report;
pub mod scan;
pub mod sweep;
pub mod threads;

use std::time::{Duration, Instant, SystemTime};

pub use control::{Cancel, Progress, Unattended};
pub use error::GcError;
pub use inventory::Inventory;
pub use markset::MarkSet;
pub use plan::{Action, Plan};
pub use report::{Counts, Mode, Outcome, Phase, Report, RunReport, Warning};
pub use sweep::{Claims, Deleter, Removed, Unclaimed};
pub use threads::ThreadShare;

use crate::layout::{Digest, Store};

/// The registry's upload purger default: uploads older than a week are abandoned.
pub const DEFAULT_UPLOAD_MAX_AGE: Duration = Duration::from_secs(168 * 3600);

#[derive(Debug, Clone)]
pub struct Options {
    /// Roots are tagged manifests only; unreachable revisions are removed.
    pub delete_untagged: bool,
    pub dry_run: bool,
    pub upload_max_age: Duration,
    /// Keep every blob an unknown manifest names and collect the rest of its repository,
    /// instead of keeping that repository whole.
    pub keep_unknown: bool,
    /// Go on past a manifest whose blob is missing, keeping every blob and revision of
    /// its repository, instead of stopping the run.
    pub allow_missing_manifests: bool,
    /// An unmarked blob whose data was written less than this long ago stays: its
    /// manifest may not be pushed yet. Zero keeps no blob for its age.
    pub min_age: Duration,
    /// How the run's threads give way to the daemon's requests.
    pub threads: ThreadShare,
    /// Revisions kept as if young whatever `delete_untagged` says: manifests that lost
    /// their last tag to retention pruning, within its grace.
    pub keep_revisions: Vec<(crate::layout::RepoName, Digest)>,
    /// Which link directories are searched for leftover temp files.
    pub temp_files: TempFileSearch,
}

/// Where a run looks for leftover `*.tmp` files: registry 3.1+ writes a link as
/// `link.<uuid>.tmp` and renames it over `link`, and leaves the temp file behind when it
/// dies in between. Each is a few dozen bytes; they go once older than the upload age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TempFileSearch {
    /// Every link directory is listed: each `_layers` link, tag history entry, revision
    /// and tag (one listing per link: most of a run's system calls on a large store).
    #[default]
    EveryLinkDir,
    /// Only where a link is missing or damaged. Revision and tag links are read directly
    /// (`<dir>/link`, one open) and their directory is listed only when the link is
    /// missing, damaged or (a revision) names another digest; `_layers` link directories
    /// and tag history entries, known by their names, are not opened at all. A temp file
    /// beside a link that reads well, or in a `_layers` link or tag history directory,
    /// stays until a run searches every link directory. Plans are otherwise the same.
    BrokenLinksOnly,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            delete_untagged: false,
            dry_run: false,
            upload_max_age: DEFAULT_UPLOAD_MAX_AGE,
            keep_unknown: false,
            allow_missing_manifests: false,
            min_age: Duration::ZERO,
            threads: ThreadShare::Lowered,
            keep_revisions: Vec::new(),
            temp_files: TempFileSearch::EveryLinkDir,
        }
    }
}

/// The binary's minimum age of a blob before a run may delete it (zot's gcDelay). The
/// library's [`Options::default`] uses zero: a caller states the age it wants.
pub const DEFAULT_MIN_AGE: Duration = Duration::from_secs(3600);

/// A run marked and planned, ready to sweep.
pub struct Planned {
    pub plan: Plan,
    pub report: Report,
    /// The mark's threads, which the sweep uses too.
    pub threads: ThreadShare,
}

/// How the stages before the sweep ended.
pub enum Marked {
    Planned(Planned),
    /// Stopped or out of time: nothing was deleted; the report says where it stopped.
    Interrupted(Report),
}

/// Scans, marks and plans. Deletes nothing.
pub fn mark(
    store: &Store,
    opts: &Options,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Marked, GcError> {
    threads::Pool::new(opts.threads).install(|| mark_in_pool(store, opts, cancel, progress))
}

fn mark_in_pool(
    store: &Store,
    opts: &Options,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Marked, GcError> {
    let start = Instant::now();
    let mut report = Report::new(store.path(), opts.delete_untagged, opts.dry_run);
    let interrupted = |mut report: Report| {
        report.outcome = cancel.interrupted().unwrap_or(Outcome::Stopped);
        report.ended_in = Some(Phase::Mark);
        report.mark_seconds = start.elapsed().as_secs_f64();
        Ok(Marked::Interrupted(report))
    };
    let stop = || cancel.interrupted().is_some();
    let stage = |name: &str| {
        tracing::debug!(
            stage = name,
            seconds = start.elapsed().as_secs_f64(),
            "mark stage done"
        )
    };
    let repos = scan::find_repositories(store)?;
    stage("repositories");
    progress.phase(Phase::Mark, repos.names.len() as u64);
    report.repositories = repos.names.len() as u64;
    let Some(inventory) = scan::inventory(store, repos, opts.temp_files, &stop)? else {
        return interrupted(report);
    };
    stage("inventory");
    let manifests =
        manifests::Manifests::new(store, opts.keep_unknown, opts.allow_missing_manifests)?
            .recording_sizes(&inventory.blobs);
    let marks = markset::mark_all(&inventory, &manifests, opts.delete_untagged, &stop, &|| {
        progress.advance()
    })?;
    let (Some(marks), false) = (marks, stop()) else {
        return interrupted(report);
    };
    stage("marks");
    if inventory.keeps_all_blobs() {
        marks.mark_every_blob();
    }
    let now = SystemTime::now();
    let mut marks = marks;
    let mut revision_age_warnings = Vec::new();
    for repo in &inventory.repositories {
        let young = scan::young_revisions(
            store,
            &repo.name,
            marks.unreachable(&repo.name),
            opts.min_age,
            now,
        );
        for d in young.digests {
            marks.keep_revision(&manifests, repo, d)?;
            report.young_revisions_kept += 1;
        }
        for d in kept_by_retention(opts, repo, marks.unreachable(&repo.name)) {
            marks.keep_revision(&manifests, repo, d)?;
            report.young_revisions_kept += 1;
        }
        revision_age_warnings.extend(young.warnings);
    }
    report.blobs_marked = marks.live_count();
    let young = scan::young_blobs(store, unmarked(&inventory, &marks), opts.min_age, now);
    for d in &young.digests {
        marks.mark(d);
    }
    report.young_blobs_kept = young.digests.len() as u64;
    let settings = plan::AgeLimits {
        upload_max_age: opts.upload_max_age,
        now,
    };
    stage("ages");
    // Planning is one thread's work: it runs beside the stats of the sizes.
    let (mut plan, sizes) = rayon::join(
        || plan::plan(&inventory, &marks, &settings),
        || blob_sizes(store, &inventory, manifests.sizes_read()),
    );
    stage("plan and sizes");
    report.blob_bytes_scanned = sizes.iter().sum();
    measure(&inventory, &sizes, &mut plan);
    report.manifests_scanned = marks.manifests_scanned();
    report.warnings = inventory
        .warnings()
        .cloned()
        .chain(marks.warnings())
        .chain(young.warnings)
        .chain(revision_age_warnings)
        .collect();
    report.blobs_scanned = inventory.blobs.len() as u64;
    report.counts = plan.counts();
    report.mark_seconds = start.elapsed().as_secs_f64();
    Ok(Marked::Planned(Planned {
        plan,
        report,
        threads: opts.threads,
    }))
}

/// The unreachable revisions of `repo` retention keeps (see [`Options::keep_revisions`]).
fn kept_by_retention(
    opts: &Options,
    repo: &inventory::RepoInventory,
    unreachable: &[Digest],
) -> Vec<Digest> {
    opts.keep_revisions
        .iter()
        .filter(|(r, d)| *r == repo.name && unreachable.contains(d))
        .map(|(_, d)| *d)
        .collect()
}

/// The blobs the mark did not reach: the only ones whose age matters.
fn unmarked<'a>(inventory: &'a Inventory, marks: &'a MarkSet) -> impl Iterator<Item = Digest> + 'a {
    inventory
        .blobs
        .digests()
        .iter()
        .filter(|d| !marks.is_live(d))
        .copied()
}

/// The size of every blob's data, in the inventory's order: the store's own size, and
/// what deleting any of them frees. One stat each, in parallel, but for the manifests
/// the mark read (`read`).
fn blob_sizes(
    store: &Store,
    inventory: &Inventory,
    read: Option<&manifests::SizesRead>,
) -> Vec<u64> {
    use rayon::prelude::*;
    let sizes = scan::BlobSizes::new(store);
    inventory
        .blobs
        .digests()
        .par_iter()
        .enumerate()
        .map(|(i, d)| read.and_then(|r| r.at(i)).unwrap_or_else(|| sizes.of(d)))
        .collect()
}

/// Fills in the size of each blob the plan deletes, for the report.
fn measure(inventory: &Inventory, sizes: &[u64], plan: &mut Plan) {
    for a in &mut plan.actions {
        if let Action::DeleteBlob { digest, bytes, .. } = a {
            *bytes = inventory.blobs.position(digest).map_or(0, |i| sizes[i]);
        }
    }
}

/// Carries out a planned run (unless it is a dry run) and completes the report.
pub fn sweep(
    planned: Planned,
    deleter: &dyn Deleter,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Report, GcError> {
    sweep_claimed(planned, deleter, &Unclaimed, cancel, progress)
}

/// As [`sweep`], asking `claims` before each unit (an online run: a write may have taken
/// the unit back).
pub fn sweep_claimed(
    planned: Planned,
    deleter: &dyn Deleter,
    claims: &dyn Claims,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Report, GcError> {
    let Planned {
        plan,
        mut report,
        threads,
    } = planned;
    if report.dry_run {
        return Ok(report);
    }
    let start = Instant::now();
    progress.phase(Phase::Sweep, plan.actions.len() as u64);
    let swept = threads::Pool::new(threads)
        .install(|| sweep::execute(&plan, deleter, claims, cancel, progress))?;
    report.counts = swept.counts;
    if swept.stopped {
        report.outcome = cancel.interrupted().unwrap_or(Outcome::Stopped);
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
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Report, GcError> {
    match mark(store, opts, cancel, progress)? {
        Marked::Planned(planned) => sweep(planned, deleter, cancel, progress),
        Marked::Interrupted(report) => Ok(report),
    }
}
