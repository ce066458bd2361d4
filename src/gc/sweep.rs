//! Sweep: carries out a plan through a [`Deleter`]. Units run in three ordered phases —
//! revisions, then blobs with their links, then the rest — each unit whole, so a stop
//! between units leaves no manifest pointing at a deleted blob and no dangling link.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::control::{Cancel, Progress};
use super::error::GcError;
use super::plan::{Action, Plan};
use super::report::Counts;
use crate::error::FsError;
use crate::layout::paths;

/// What removing a tree took away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
}

/// Deletes paths relative to the store root. The composition root implements it over
/// the filesystem core (`runtime::compose::SweepDeleter`), which tells the kernel, so a
/// stat through the mount sees the deletion at once.
pub trait Deleter: Sync {
    fn remove_tree(&self, rel: &Path) -> Result<Removed, FsError>;
    fn remove_empty_dir(&self, rel: &Path) -> Result<bool, FsError>;
}

/// Lets the sweep ask, unit by unit (by index in the plan), whether it may still delete.
pub trait Claims: Sync {
    /// The sweep is about to carry out unit `i`; false: skip it.
    fn claim(&self, i: usize) -> bool;
    /// The sweep is done with unit `i` (whatever came of it).
    fn release(&self, i: usize);
}

/// Every unit is the sweep's (read-only runs, offline collection).
pub struct Unclaimed;

impl Claims for Unclaimed {
    fn claim(&self, _i: usize) -> bool {
        true
    }

    fn release(&self, _i: usize) {}
}

fn guarded(rel: &Path) -> Result<(), GcError> {
    if paths::is_inside_v2(rel) {
        Ok(())
    } else {
        Err(GcError::NotUnderstood {
            path: rel.display().to_string(),
            what: format!("a deletion outside {} (refused)", paths::V2),
        })
    }
}

fn remove(deleter: &dyn Deleter, rel: &Path) -> Result<Removed, GcError> {
    guarded(rel)?;
    deleter.remove_tree(rel).map_err(|source| GcError::Delete {
        path: rel.display().to_string(),
        source,
    })
}

fn remove_empty(deleter: &dyn Deleter, dir: &Path) -> Result<u64, GcError> {
    guarded(dir)?;
    let gone = deleter
        .remove_empty_dir(dir)
        .map_err(|source| GcError::Delete {
            path: dir.display().to_string(),
            source,
        })?;
    Ok(gone as u64)
}

/// Removes each of `dirs`; how many were there.
fn remove_all(deleter: &dyn Deleter, dirs: &[PathBuf]) -> Result<u64, GcError> {
    let mut n = 0;
    for d in dirs {
        if remove(deleter, d)?.dirs > 0 {
            n += 1;
        }
    }
    Ok(n)
}

/// Carries out one unit; returns what it counts for (nothing if it was already gone).
fn run(action: &Action, deleter: &dyn Deleter) -> Result<Counts, GcError> {
    let mut c = Counts::default();
    // The unit's own directory comes last: its links or history entries go first.
    let mut paths = action.paths();
    let last = paths.pop();
    match action {
        Action::RemoveRevision { .. } => {
            c.tag_index_entries_removed = remove_all(deleter, &paths)?;
            c.manifests_removed = remove_all(deleter, last.as_slice())?;
        }
        Action::DeleteBlob { .. } => {
            c.layer_links_removed = remove_all(deleter, &paths)?;
            if let Some(dir) = last {
                let r = remove(deleter, &dir)?;
                if r.dirs > 0 {
                    c.blobs_deleted += 1;
                    c.bytes_freed += r.bytes;
                }
            }
        }
        Action::RemoveLayerLink { .. } => {
            c.layer_links_removed = remove_all(deleter, last.as_slice())?;
        }
        Action::RemoveEmptyRevision { .. } | Action::RemoveEmptyFanOut { .. } => {
            if let Some(dir) = last {
                c.dirs_removed = remove_empty(deleter, &dir)?;
            }
        }
        Action::RemoveUpload { dir, .. } => {
            let r = remove(deleter, dir)?;
            if r.dirs > 0 {
                c.uploads_removed += 1;
                c.upload_bytes_freed += r.bytes;
            }
        }
        Action::RemoveTempFile { path } => {
            if remove(deleter, path)?.files > 0 {
                c.temp_files_removed += 1;
            }
        }
    }
    Ok(c)
}

fn phase_of(a: &Action) -> usize {
    match a {
        Action::RemoveRevision { .. } => 0,
        Action::DeleteBlob { .. } => 1,
        _ => 2,
    }
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    pub counts: Counts,
    /// A stop cut it short.
    pub stopped: bool,
}

/// One unit of a sweep: asks `claims`, carries it out, reports it. `Ok(false)`: a stop
/// came first and nothing was done.
fn sweep_unit(
    (i, a): (usize, &Action),
    deleter: &dyn Deleter,
    claims: &dyn Claims,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
    total: &Mutex<Counts>,
) -> Result<bool, GcError> {
    if cancel.interrupted().is_some() {
        return Ok(false);
    }
    if !claims.claim(i) {
        progress.advance();
        return Ok(true);
    }
    let c = run(a, deleter);
    claims.release(i);
    let c = c?;
    total.lock().unwrap_or_else(|e| e.into_inner()).add(&c);
    progress.swept(&c);
    progress.advance();
    Ok(true)
}

/// How units run within a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Many at once, on the current rayon pool (the daemon, the offline collector).
    Parallel,
    /// One at a time on the calling thread, in the plan's order: for a deterministic
    /// scheduler that must see every claim (`tests/online_schedules.rs`).
    Sequential,
}

/// Carries out `plan`, checking `cancel` between units.
pub fn execute(
    plan: &Plan,
    deleter: &dyn Deleter,
    claims: &dyn Claims,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Swept, GcError> {
    execute_in(Order::Parallel, plan, deleter, claims, cancel, progress)
}

/// As [`execute`], with units run in `order`.
pub fn execute_in(
    order: Order,
    plan: &Plan,
    deleter: &dyn Deleter,
    claims: &dyn Claims,
    cancel: &dyn Cancel,
    progress: &dyn Progress,
) -> Result<Swept, GcError> {
    let total = Mutex::new(Counts::default());
    let mut stopped = false;
    for phase in 0..3 {
        let units: Vec<(usize, &Action)> = plan
            .actions
            .iter()
            .enumerate()
            .filter(|(_, a)| phase_of(a) == phase)
            .collect();
        // Empty fan-out directories only after every blob in them is gone: phase 2 runs
        // after phase 1 has finished.
        let one = |&u: &(usize, &Action)| sweep_unit(u, deleter, claims, cancel, progress, &total);
        let result: Result<Vec<bool>, GcError> = match order {
            Order::Parallel => units.par_iter().map(one).collect(),
            Order::Sequential => units.iter().map(one).collect(),
        };
        if result?.iter().any(|done| !done) {
            stopped = true;
            break;
        }
    }
    Ok(Swept {
        counts: total.into_inner().unwrap_or_else(|e| e.into_inner()),
        stopped,
    })
}
