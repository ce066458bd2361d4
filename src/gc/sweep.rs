//! Sweep: carries out a plan through a [`Deleter`]. Units run in three ordered phases —
//! revisions, then blobs with their links, then the rest — each unit whole, so a stop
//! between units leaves no manifest pointing at a deleted blob and no dangling link.

use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;

use super::error::GcError;
use super::plan::{Action, Plan};
use super::report::Counts;
use crate::error::FsError;
use crate::fs::{Removed, StorageFs};
use crate::layout::paths;

/// Deletes paths relative to the store root. The daemon's implementation tells the
/// kernel, so a stat through the mount sees the deletion at once.
pub trait Deleter: Sync {
    fn remove_tree(&self, rel: &Path) -> Result<Removed, FsError>;
    fn remove_empty_dir(&self, rel: &Path) -> Result<bool, FsError>;
}

impl Deleter for StorageFs {
    fn remove_tree(&self, rel: &Path) -> Result<Removed, FsError> {
        StorageFs::remove_tree(self, rel)
    }

    fn remove_empty_dir(&self, rel: &Path) -> Result<bool, FsError> {
        StorageFs::remove_empty_dir(self, rel)
    }
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

/// Carries out one unit; returns what it counts for (nothing if it was already gone).
fn run(action: &Action, deleter: &dyn Deleter) -> Result<Counts, GcError> {
    let mut c = Counts::default();
    match action {
        Action::RemoveRevision {
            dir, tag_entries, ..
        } => {
            for e in tag_entries {
                if remove(deleter, e)?.dirs > 0 {
                    c.tag_index_entries_removed += 1;
                }
            }
            if remove(deleter, dir)?.dirs > 0 {
                c.manifests_removed += 1;
            }
        }
        Action::DeleteBlob { .. } => {
            for l in action.layer_links() {
                if remove(deleter, &l)?.dirs > 0 {
                    c.layer_links_removed += 1;
                }
            }
            if let Some(dir) = action.blob_dir() {
                let r = remove(deleter, &dir)?;
                if r.dirs > 0 {
                    c.blobs_deleted += 1;
                    c.bytes_freed += r.bytes;
                }
            }
        }
        Action::RemoveLayerLink { dir } => {
            if remove(deleter, dir)?.dirs > 0 {
                c.layer_links_removed += 1;
            }
        }
        Action::RemoveEmptyDir { dir } => {
            guarded(dir)?;
            let gone = deleter
                .remove_empty_dir(dir)
                .map_err(|source| GcError::Delete {
                    path: dir.display().to_string(),
                    source,
                })?;
            c.dirs_removed += gone as u64;
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

/// Adds `c` to `total`.
pub fn add(total: &mut Counts, c: &Counts) {
    total.manifests_removed += c.manifests_removed;
    total.tag_index_entries_removed += c.tag_index_entries_removed;
    total.blobs_deleted += c.blobs_deleted;
    total.bytes_freed += c.bytes_freed;
    total.layer_links_removed += c.layer_links_removed;
    total.uploads_removed += c.uploads_removed;
    total.upload_bytes_freed += c.upload_bytes_freed;
    total.temp_files_removed += c.temp_files_removed;
    total.dirs_removed += c.dirs_removed;
}

fn phase_of(a: &Action) -> usize {
    match a {
        Action::RemoveRevision { .. } => 0,
        Action::DeleteBlob { .. } => 1,
        _ => 2,
    }
}

/// Carries out `plan`. Returns what was done and whether `stop` cut it short.
pub fn execute(
    plan: &Plan,
    deleter: &dyn Deleter,
    stop: &(dyn Fn() -> bool + Sync),
    progress: &(dyn Fn(&Counts) + Sync),
) -> Result<(Counts, bool), GcError> {
    let total = Mutex::new(Counts::default());
    let mut stopped = false;
    for phase in 0..3 {
        let units: Vec<&Action> = plan
            .actions
            .iter()
            .filter(|a| phase_of(a) == phase)
            .collect();
        // Empty fan-out directories only after every blob in them is gone: phase 2 runs
        // after phase 1 has finished.
        let result: Result<Vec<bool>, GcError> = units
            .par_iter()
            .map(|a| {
                if stop() {
                    return Ok(false);
                }
                let c = run(a, deleter)?;
                add(&mut total.lock().unwrap_or_else(|e| e.into_inner()), &c);
                progress(&c);
                Ok(true)
            })
            .collect();
        if result?.iter().any(|done| !done) {
            stopped = true;
            break;
        }
    }
    Ok((
        total.into_inner().unwrap_or_else(|e| e.into_inner()),
        stopped,
    ))
}
