//! The plan: everything a run will delete, in the order it deletes it. A dry run reports
//! the plan; a real run carries it out, so the two cannot disagree.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
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
    /// An unmarked blob: the `_layers` links naming it (in these repositories) first, so
    /// none dangles if the run stops here, then its directory. Paths are derived, not
    /// stored: a million-blob store plans hundreds of thousands of these.
    DeleteBlob {
        digest: Digest,
        bytes: u64,
        link_repos: Vec<Arc<RepoName>>,
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
            Action::DeleteBlob { .. } => self
                .layer_links()
                .into_iter()
                .chain(self.blob_dir())
                .collect(),
            Action::RemoveLayerLink { dir }
            | Action::RemoveEmptyDir { dir }
            | Action::RemoveUpload { dir, .. } => vec![dir.clone()],
            Action::RemoveTempFile { path } => vec![path.clone()],
        }
    }

    /// The blob directory a `DeleteBlob` removes.
    pub fn blob_dir(&self) -> Option<PathBuf> {
        match self {
            Action::DeleteBlob { digest, .. } => Some(paths::blob_dir(digest)),
            _ => None,
        }
    }

    /// The `_layers` link directories a `DeleteBlob` removes first.
    pub fn layer_links(&self) -> Vec<PathBuf> {
        match self {
            Action::DeleteBlob {
                digest, link_repos, ..
            } => link_repos
                .iter()
                .map(|r| paths::layer_link_dir_named(r, &digest.hex()))
                .collect(),
            _ => vec![],
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
                bytes, link_repos, ..
            } => {
                c.blobs_deleted += 1;
                c.bytes_freed += bytes;
                c.layer_links_removed += link_repos.len() as u64;
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

    // 2. Unmarked blobs, each with the `_layers` links that name it. Only links of
    //    blobs that go (or are already gone) are gathered: most links stay.
    let present: HashSet<&Digest> = blobs.blobs.iter().collect();
    let mut links: HashMap<Digest, Vec<Arc<RepoName>>> = HashMap::new();
    for scan in scans {
        let repo = Arc::new(scan.name.clone());
        for d in &scan.layers {
            if !marked.contains(d) || !present.contains(d) {
                links.entry(*d).or_default().push(repo.clone());
            }
        }
    }
    let mut doomed: Vec<Digest> = blobs
        .blobs
        .iter()
        .filter(|d| !marked.contains(d))
        .copied()
        .collect();
    doomed.sort();
    // Sizes are read below the blobs root: three components per path instead of eight.
    let root = paths::blobs_root();
    let blob_store = store.sub(&root).ok().flatten();
    let sizes: Vec<u64> = doomed
        .par_iter()
        .map(|d| {
            blob_store
                .as_ref()
                .and_then(|b| b.stat(&paths::blob_data_in_blobs_root(d)).ok().flatten())
                .map_or(0, |st| st.st_size.max(0) as u64)
        })
        .collect();
    let mut per_prefix: HashMap<String, usize> = HashMap::new();
    for (d, bytes) in doomed.iter().zip(sizes) {
        *per_prefix.entry(d.prefix()).or_default() += 1;
        let link_repos = links.remove(d).unwrap_or_default();
        for r in &link_repos {
            removed_dirs.insert(paths::layer_link_dir_named(r, &d.hex()));
        }
        actions.push(Action::DeleteBlob {
            digest: *d,
            bytes,
            link_repos,
        });
    }

    // 3. Layer links whose blob was gone before this run.
    let mut dangling: Vec<PathBuf> = links
        .into_iter()
        .filter(|(d, _)| !present.contains(d))
        .flat_map(|(d, repos)| {
            repos
                .into_iter()
                .map(move |r| paths::layer_link_dir_named(&r, &d.hex()))
        })
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
