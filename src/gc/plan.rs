//! The plan: everything a run will delete, in the order it deletes it. A dry run reports
//! the plan; a real run carries it out, so the two cannot disagree.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::Serialize;

use super::mark::RepoMark;
use super::report::Counts;
use super::scan::{BlobScan, RepoScan};
use crate::layout::{Digest, RepoName, Store, paths};

/// One unit of the sweep: a stop between units leaves a consistent store.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// An unreachable revision: its tag history entries, then its revision directory.
    RemoveRevision {
        repo: RepoName,
        digest: Digest,
        dir: PathBuf,
        tag_entries: Vec<PathBuf>,
    },
    /// An unmarked blob: the `_layers` links naming it first (so none dangles if the run
    /// stops here), then its directory.
    DeleteBlob {
        digest: Digest,
        dir: PathBuf,
        bytes: u64,
        layer_links: Vec<PathBuf>,
    },
    /// A `_layers` link whose blob was already gone before the run.
    RemoveLayerLink {
        dir: PathBuf,
    },
    RemoveEmptyDir {
        dir: PathBuf,
    },
    RemoveUpload {
        dir: PathBuf,
        bytes: u64,
    },
    RemoveTempFile {
        path: PathBuf,
    },
}

impl Action {
    /// Every path this action removes (directories as a whole).
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            Action::RemoveRevision {
                dir, tag_entries, ..
            } => tag_entries.iter().cloned().chain([dir.clone()]).collect(),
            Action::DeleteBlob {
                dir, layer_links, ..
            } => layer_links.iter().cloned().chain([dir.clone()]).collect(),
            Action::RemoveLayerLink { dir }
            | Action::RemoveEmptyDir { dir }
            | Action::RemoveUpload { dir, .. } => vec![dir.clone()],
            Action::RemoveTempFile { path } => vec![path.clone()],
        }
    }

    /// What this action counts for in a report.
    pub fn add_to(&self, c: &mut Counts) {
        match self {
            Action::RemoveRevision { tag_entries, .. } => {
                c.manifests_removed += 1;
                c.tag_index_entries_removed += tag_entries.len() as u64;
            }
            Action::DeleteBlob {
                bytes, layer_links, ..
            } => {
                c.blobs_deleted += 1;
                c.bytes_freed += bytes;
                c.layer_links_removed += layer_links.len() as u64;
            }
            Action::RemoveLayerLink { .. } => c.layer_links_removed += 1,
            Action::RemoveEmptyDir { .. } => c.dirs_removed += 1,
            Action::RemoveUpload { bytes, .. } => {
                c.uploads_removed += 1;
                c.upload_bytes_freed += bytes;
            }
            Action::RemoveTempFile { .. } => c.temp_files_removed += 1,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for a in &self.actions {
            a.add_to(&mut c);
        }
        c
    }

    /// Every path the plan removes.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.actions.iter().flat_map(|a| a.paths()).collect()
    }
}

/// Builds the plan from what scanning and marking found.
pub fn build(
    store: &Store,
    scans: &[RepoScan],
    marks: &[RepoMark],
    blobs: &BlobScan,
    marked: &HashSet<Digest>,
    upload_max_age: Duration,
    now: SystemTime,
) -> Plan {
    let mut actions = Vec::new();
    let mut removed_dirs: HashSet<PathBuf> = HashSet::new();

    // 1. Unreachable revisions (--delete-untagged), with the tag history naming them.
    for (scan, mark) in scans.iter().zip(marks) {
        let unreachable: HashSet<&Digest> = mark.unreachable.iter().collect();
        for d in &mark.unreachable {
            let tag_entries: Vec<PathBuf> = scan
                .tags
                .iter()
                .filter(|t| t.index.contains(d))
                .map(|t| paths::tag_index_entry(&scan.name, &t.name, d))
                .collect();
            let dir = paths::revision_dir(&scan.name, d);
            removed_dirs.insert(dir.clone());
            removed_dirs.extend(tag_entries.iter().cloned());
            actions.push(Action::RemoveRevision {
                repo: scan.name.clone(),
                digest: *d,
                dir,
                tag_entries,
            });
        }
        // Revision directories left empty by a delete through the API.
        for r in &scan.revisions {
            if r.empty && !unreachable.contains(&r.dir_digest) {
                actions.push(Action::RemoveEmptyDir {
                    dir: paths::revision_dir(&scan.name, &r.dir_digest),
                });
            }
        }
    }

    // 2. Unmarked blobs, each with the `_layers` links that name it.
    let mut links: HashMap<Digest, Vec<PathBuf>> = HashMap::new();
    for scan in scans {
        for d in &scan.layers {
            links
                .entry(*d)
                .or_default()
                .push(paths::layer_link_dir_named(&scan.name, &d.hex()));
        }
    }
    let mut doomed: Vec<Digest> = blobs
        .blobs
        .iter()
        .filter(|d| !marked.contains(d))
        .copied()
        .collect();
    doomed.sort();
    let sizes: Vec<u64> = doomed
        .par_iter()
        .map(|d| {
            store
                .stat(&paths::blob_data(d))
                .ok()
                .flatten()
                .map(|st| st.st_size.max(0) as u64)
                .unwrap_or(0)
        })
        .collect();
    let mut per_prefix: HashMap<String, usize> = HashMap::new();
    for (d, bytes) in doomed.iter().zip(sizes) {
        *per_prefix.entry(d.prefix()).or_default() += 1;
        let layer_links = links.remove(d).unwrap_or_default();
        removed_dirs.extend(layer_links.iter().cloned());
        actions.push(Action::DeleteBlob {
            digest: *d,
            dir: paths::blob_dir(d),
            bytes,
            layer_links,
        });
    }

    // 3. Layer links whose blob was gone before this run.
    let present: HashSet<&Digest> = blobs.blobs.iter().collect();
    let mut dangling: Vec<PathBuf> = links
        .into_iter()
        .filter(|(d, _)| !present.contains(d))
        .flat_map(|(_, dirs)| dirs)
        .collect();
    dangling.sort();
    for dir in dangling {
        removed_dirs.insert(dir.clone());
        actions.push(Action::RemoveLayerLink { dir });
    }

    // 4. Fan-out directories every blob of which goes.
    let mut prefixes: Vec<&(String, usize)> = blobs.prefixes.iter().collect();
    prefixes.sort();
    for (prefix, entries) in prefixes {
        if *entries == per_prefix.get(prefix).copied().unwrap_or(0) {
            actions.push(Action::RemoveEmptyDir {
                dir: paths::blob_prefix_dir(prefix),
            });
        }
    }

    // 5. Abandoned uploads and leftover temp files older than the limit.
    let old = |t: SystemTime| now.duration_since(t).is_ok_and(|age| age > upload_max_age);
    for scan in scans {
        for u in &scan.uploads {
            if old(u.started) {
                actions.push(Action::RemoveUpload {
                    dir: u.dir.clone(),
                    bytes: u.bytes,
                });
            }
        }
        for t in &scan.temp_files {
            let parent_goes = t.path.parent().is_some_and(|p| removed_dirs.contains(p));
            if old(t.mtime) && !parent_goes {
                actions.push(Action::RemoveTempFile {
                    path: t.path.clone(),
                });
            }
        }
    }
    Plan { actions }
}
