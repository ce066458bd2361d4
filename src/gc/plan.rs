//! The plan: everything a run will delete, as units that know their digest, in the
//! order they are deleted. [`plan`] is a pure function of the inventory and the marks
//! (no I/O): a dry run reports the plan, a real run carries it out, so the two cannot
//! disagree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::inventory::{Inventory, RepoInventory, TempParent};
use super::markset::MarkSet;
use super::report::Counts;
use crate::layout::{Digest, RepoName, TagName, paths};

/// One unit of the sweep: a stop between units leaves a consistent store. Paths are
/// derived from the digest and names, not stored: a million-blob store plans hundreds of
/// thousands of units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// An unreachable revision: the tag history entries naming it, then its directory.
    /// Also the history naming a manifest the run deletes whose revision was deleted
    /// through the API (its directory is then already gone or empty).
    RemoveRevision {
        repo: Arc<RepoName>,
        digest: Digest,
        tags: Box<[TagName]>,
        /// The manifest this one refers to (its `subject`), if any: an online run keeps
        /// this revision when a write makes that manifest live again.
        subject: Option<Digest>,
    },
    /// An unmarked blob: the `_layers` links naming it (in these repositories) first, so
    /// none dangles if the run stops here, then its directory. `bytes` is what its data
    /// holds, filled in after planning (planning reads nothing).
    DeleteBlob {
        digest: Digest,
        bytes: u64,
        link_repos: Box<[Arc<RepoName>]>,
    },
    /// A `_layers` link whose blob was already gone before the run.
    RemoveLayerLink {
        repo: Arc<RepoName>,
        digest: Digest,
    },
    /// A revision directory left empty by a delete through the API.
    RemoveEmptyRevision {
        repo: Arc<RepoName>,
        digest: Digest,
    },
    /// A fan-out directory every blob of which goes.
    RemoveEmptyFanOut {
        prefix: String,
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
    /// Every path this action removes (directories as a whole), in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            Action::RemoveRevision {
                repo, digest, tags, ..
            } => tags
                .iter()
                .map(|t| paths::tag_index_entry(repo, t, digest))
                .chain([paths::revision_dir(repo, digest)])
                .collect(),
            Action::DeleteBlob {
                digest, link_repos, ..
            } => link_repos
                .iter()
                .map(|r| paths::layer_link_dir_named(r, &digest.hex()))
                .chain([paths::blob_dir(digest)])
                .collect(),
            Action::RemoveLayerLink { repo, digest } => {
                vec![paths::layer_link_dir_named(repo, &digest.hex())]
            }
            Action::RemoveEmptyRevision { repo, digest } => {
                vec![paths::revision_dir(repo, digest)]
            }
            Action::RemoveEmptyFanOut { prefix } => vec![paths::blob_prefix_dir(prefix)],
            Action::RemoveUpload { dir, .. } => vec![dir.clone()],
            Action::RemoveTempFile { path } => vec![path.clone()],
        }
    }

    /// What this action counts for in a report.
    pub fn add_to(&self, c: &mut Counts) {
        match self {
            Action::RemoveRevision { tags, .. } => {
                c.manifests_removed += 1;
                c.tag_index_entries_removed += tags.len() as u64;
            }
            Action::DeleteBlob {
                bytes, link_repos, ..
            } => {
                c.blobs_deleted += 1;
                c.bytes_freed += bytes;
                c.layer_links_removed += link_repos.len() as u64;
            }
            Action::RemoveLayerLink { .. } => c.layer_links_removed += 1,
            Action::RemoveEmptyRevision { .. } | Action::RemoveEmptyFanOut { .. } => {
                c.dirs_removed += 1
            }
            Action::RemoveUpload { bytes, .. } => {
                c.uploads_removed += 1;
                c.upload_bytes_freed += bytes;
            }
            Action::RemoveTempFile { .. } => c.temp_files_removed += 1,
        }
    }
}

#[derive(Debug, Clone, Default)]
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

    /// The blobs the plan deletes.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        self.actions.iter().filter_map(|a| match a {
            Action::DeleteBlob { digest, .. } => Some(digest),
            _ => None,
        })
    }
}

/// What planning needs besides the inventory and the marks.
#[derive(Debug, Clone, Copy)]
pub struct AgeLimits {
    /// Uploads and temp files older than this are abandoned.
    pub upload_max_age: Duration,
    /// The moment ages are measured from.
    pub now: SystemTime,
}

impl AgeLimits {
    fn is_old(&self, t: SystemTime) -> bool {
        self.now
            .duration_since(t)
            .is_ok_and(|age| age > self.upload_max_age)
    }
}

/// Plans a run: pure, no I/O.
pub fn plan(inventory: &Inventory, marks: &MarkSet, settings: &AgeLimits) -> Plan {
    // One shared name per repository, however many units name it.
    let repos: Vec<(&RepoInventory, Arc<RepoName>)> = inventory
        .repositories
        .iter()
        .map(|r| (r, Arc::new(r.name.clone())))
        .collect();
    let mut actions = Vec::new();
    // Nothing of a repository kept whole goes.
    let collected = || repos.iter().filter(|(r, _)| !marks.is_kept_whole(&r.name));
    for (repo, name) in collected() {
        plan_revisions(repo, name, marks, &mut actions);
    }
    plan_blobs(inventory, &repos, marks, &mut actions);
    for (repo, _) in collected() {
        plan_leftovers(repo, marks, settings, &mut actions);
    }
    Plan { actions }
}

/// Unreachable revisions (`--delete-untagged`), with the tag history naming them; and
/// revision directories left empty by a delete through the API.
fn plan_revisions(
    repo: &RepoInventory,
    name: &Arc<RepoName>,
    marks: &MarkSet,
    actions: &mut Vec<Action>,
) {
    let unreachable = marks.unreachable(&repo.name);
    for d in unreachable {
        actions.push(Action::RemoveRevision {
            repo: name.clone(),
            digest: *d,
            tags: repo
                .tags
                .iter()
                .filter(|t| t.index.contains(d))
                .map(|t| t.name.clone())
                .collect(),
            subject: marks.subject_of(&repo.name, d),
        });
    }
    let unreachable: HashSet<&Digest> = unreachable.iter().collect();
    // Tag history naming a manifest the run deletes whose revision is already gone (a
    // delete by digest leaves other tags' history): removed, so no link names it after.
    let mut history: BTreeMap<Digest, Vec<TagName>> = BTreeMap::new();
    for t in &repo.tags {
        for d in t
            .index
            .iter()
            .filter(|d| !marks.is_live(d) && !unreachable.contains(d))
        {
            history.entry(*d).or_default().push(t.name.clone());
        }
    }
    let history_goes: HashSet<Digest> = history.keys().copied().collect();
    for (digest, tags) in history {
        actions.push(Action::RemoveRevision {
            repo: name.clone(),
            digest,
            tags: tags.into(),
            subject: None,
        });
    }
    for r in &repo.revisions {
        if r.empty && !unreachable.contains(&r.dir_digest) && !history_goes.contains(&r.dir_digest)
        {
            actions.push(Action::RemoveEmptyRevision {
                repo: name.clone(),
                digest: r.dir_digest,
            });
        }
    }
}

/// Unmarked blobs, each with the `_layers` links that name it; links whose blob was gone
/// before the run; fan-out directories every blob of which goes.
fn plan_blobs(
    inventory: &Inventory,
    repos: &[(&RepoInventory, Arc<RepoName>)],
    marks: &MarkSet,
    actions: &mut Vec<Action>,
) {
    // Only links of blobs that go (or are already gone) are gathered: most links stay.
    // Both these and the blobs are sorted by digest, so one pass pairs them.
    let mut links: Vec<(Digest, &Arc<RepoName>)> = repos
        .iter()
        .filter(|(repo, _)| !marks.is_kept_whole(&repo.name))
        .flat_map(|(repo, name)| {
            repo.layers
                .iter()
                .filter(|d| !marks.is_live(d))
                .map(move |d| (*d, name))
        })
        .collect();
    links.sort_unstable();
    let doomed = inventory.blobs.len() - marks.live_count() as usize;
    actions.reserve(doomed);
    let mut rest = links.as_slice();
    let mut dangling: Vec<(Arc<RepoName>, Digest)> = Vec::new();
    let mut per_prefix: HashMap<String, usize> = HashMap::new();
    for d in inventory
        .blobs
        .digests()
        .iter()
        .filter(|d| !marks.is_live(d))
    {
        // Links before `d` name blobs the store does not hold.
        let before = rest.partition_point(|(l, _)| l < d);
        dangling.extend(rest[..before].iter().map(|(l, r)| (Arc::clone(r), *l)));
        let here = rest[before..].partition_point(|(l, _)| l == d);
        let link_repos = rest[before..before + here]
            .iter()
            .map(|(_, r)| Arc::clone(r))
            .collect();
        rest = &rest[before + here..];
        *per_prefix.entry(d.prefix()).or_default() += 1;
        actions.push(Action::DeleteBlob {
            digest: *d,
            bytes: 0,
            link_repos,
        });
    }
    dangling.extend(rest.iter().map(|(l, r)| (Arc::clone(r), *l)));
    // A link naming a stray of the blob tree (a link, a file) may be served: it stays.
    dangling.retain(|(_, d)| inventory.blobs.strays.binary_search(d).is_err());
    dangling.sort();
    for (repo, digest) in dangling {
        actions.push(Action::RemoveLayerLink { repo, digest });
    }
    let mut fan_outs: Vec<_> = inventory.blobs.fan_outs.iter().collect();
    fan_outs.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    for f in fan_outs {
        if f.entries == per_prefix.get(&f.prefix).copied().unwrap_or(0) {
            actions.push(Action::RemoveEmptyFanOut {
                prefix: f.prefix.clone(),
            });
        }
    }
}

/// Abandoned uploads and leftover temp files older than the limit; a temp file whose
/// directory a unit removes goes with it.
fn plan_leftovers(
    repo: &RepoInventory,
    marks: &MarkSet,
    settings: &AgeLimits,
    actions: &mut Vec<Action>,
) {
    for u in &repo.uploads {
        if settings.is_old(u.started) {
            actions.push(Action::RemoveUpload {
                dir: u.dir.clone(),
                bytes: u.bytes,
            });
        }
    }
    let unreachable = marks.unreachable(&repo.name);
    let parent_goes = |p: &TempParent| match p {
        TempParent::Revision(d) | TempParent::TagIndex(d) => unreachable.contains(d),
        TempParent::LayerLink(d) => !marks.is_live(d),
        TempParent::TagCurrent => false,
    };
    for t in &repo.temp_files {
        if settings.is_old(t.mtime) && !parent_goes(&t.parent) {
            actions.push(Action::RemoveTempFile {
                path: t.path.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gc::inventory::{BlobInventory, FanOut, LinkState, Revision, Tag, TempFile, Upload};

    fn d(n: u8) -> Digest {
        let mut b = [0u8; 32];
        b[0] = n;
        b[31] = n;
        Digest(b)
    }

    fn repo(name: &str) -> RepoInventory {
        RepoInventory::new(RepoName::new(name).unwrap())
    }

    fn fan_outs(blobs: &[Digest]) -> Vec<FanOut> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for b in blobs {
            *counts.entry(b.prefix()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(prefix, entries)| FanOut { prefix, entries })
            .collect()
    }

    fn inventory(repos: Vec<RepoInventory>, blobs: &[Digest]) -> Inventory {
        Inventory {
            repositories: repos,
            blobs: BlobInventory::new(blobs.to_vec(), fan_outs(blobs), vec![]),
            keep_all_blobs: vec![],
            tree_warnings: vec![],
        }
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    fn settings() -> AgeLimits {
        AgeLimits {
            upload_max_age: WEEK,
            now: SystemTime::UNIX_EPOCH + 10 * WEEK,
        }
    }

    fn shown(p: &Plan) -> Vec<String> {
        p.paths().iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn an_unmarked_blob_goes_with_every_link_naming_it_links_first() {
        let mut a = repo("a");
        a.layers = vec![d(1), d(2)];
        let mut b = repo("b/c");
        b.layers = vec![d(2)];
        let inv = inventory(vec![a, b], &[d(1), d(2)]);
        let marks = MarkSet::new(&inv.blobs);
        marks.mark(&d(1));
        let p = plan(&inv, &marks, &settings());
        let [
            Action::DeleteBlob {
                digest, link_repos, ..
            },
            Action::RemoveEmptyFanOut { prefix },
        ] = p.actions.as_slice()
        else {
            panic!("{p:?}");
        };
        assert_eq!(*digest, d(2));
        assert_eq!(prefix, "02");
        let repos: Vec<&str> = link_repos.iter().map(|r| r.as_str()).collect();
        assert_eq!(repos, ["a", "b/c"]);
        let paths = shown(&p);
        assert!(paths[0].ends_with(&format!("a/_layers/sha256/{}", d(2).hex())));
        assert!(paths[2].ends_with(&format!("blobs/sha256/02/{}", d(2).hex())));
        assert_eq!(p.counts().layer_links_removed, 2);
    }

    #[test]
    fn a_fan_out_directory_stays_while_one_blob_in_it_is_live() {
        let mut live = d(7);
        live.0[31] = 0;
        let inv = inventory(vec![], &[d(7), live]);
        let marks = MarkSet::new(&inv.blobs);
        marks.mark(&live);
        let p = plan(&inv, &marks, &settings());
        assert!(
            matches!(p.actions.as_slice(), [Action::DeleteBlob { .. }]),
            "{p:?}"
        );
    }

    #[test]
    fn a_link_to_a_blob_the_store_does_not_hold_is_removed_alone() {
        let mut a = repo("a");
        a.layers = vec![d(9)];
        let inv = inventory(vec![a], &[]);
        let marks = MarkSet::new(&inv.blobs);
        // Marking a digest the store does not hold changes nothing.
        marks.mark(&d(9));
        let p = plan(&inv, &marks, &settings());
        assert_eq!(
            p.actions,
            [Action::RemoveLayerLink {
                repo: Arc::new(RepoName::new("a").unwrap()),
                digest: d(9)
            }]
        );
    }

    #[test]
    fn an_unreachable_revision_goes_with_its_tag_history_and_the_temp_files_inside() {
        let mut a = repo("a");
        a.revisions = vec![
            Revision {
                dir_digest: d(1),
                link: LinkState::Ok(d(1)),
                empty: false,
            },
            Revision {
                dir_digest: d(2),
                link: LinkState::Ok(d(2)),
                empty: false,
            },
            Revision {
                dir_digest: d(3),
                link: LinkState::Missing,
                empty: true,
            },
        ];
        let tag = |name: &str, index| Tag {
            name: TagName::new(name).unwrap(),
            current: LinkState::Ok(d(1)),
            index,
        };
        a.tags = vec![tag("old", vec![d(2)]), tag("latest", vec![d(1), d(2)])];
        let temp = |path: &str, parent| TempFile {
            path: PathBuf::from(path),
            mtime: SystemTime::UNIX_EPOCH,
            parent,
        };
        a.temp_files = vec![
            temp("in-revision-2", TempParent::Revision(d(2))),
            temp("in-index-2", TempParent::TagIndex(d(2))),
            temp("in-revision-1", TempParent::Revision(d(1))),
            temp("in-current", TempParent::TagCurrent),
        ];
        let inv = inventory(vec![a], &[d(1), d(2)]);
        let mut marks = MarkSet::new(&inv.blobs);
        marks.mark(&d(1));
        marks.set_unreachable(RepoName::new("a").unwrap(), vec![d(2)]);
        let p = plan(&inv, &marks, &settings());
        let tags: Vec<&str> = match &p.actions[0] {
            Action::RemoveRevision { digest, tags, .. } if *digest == d(2) => {
                tags.iter().map(|t| t.as_str()).collect()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(tags, ["old", "latest"]);
        assert!(
            matches!(&p.actions[1], Action::RemoveEmptyRevision { digest, .. } if *digest == d(3))
        );
        let temp_files: Vec<&PathBuf> = p
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::RemoveTempFile { path } => Some(path),
                _ => None,
            })
            .collect();
        assert_eq!(
            temp_files,
            [
                &PathBuf::from("in-revision-1"),
                &PathBuf::from("in-current")
            ]
        );
        let c = p.counts();
        assert_eq!((c.manifests_removed, c.tag_index_entries_removed), (1, 2));
    }

    #[test]
    fn only_uploads_older_than_the_limit_go() {
        let mut a = repo("a");
        let upload = |dir: &str, age: Duration| Upload {
            dir: PathBuf::from(dir),
            started: settings().now - age,
            bytes: 5,
        };
        a.uploads = vec![upload("old", 2 * WEEK), upload("young", WEEK / 2)];
        let inv = inventory(vec![a], &[]);
        let p = plan(&inv, &MarkSet::new(&inv.blobs), &settings());
        assert_eq!(
            p.actions,
            [Action::RemoveUpload {
                dir: PathBuf::from("old"),
                bytes: 5
            }]
        );
    }
}
