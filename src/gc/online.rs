//! What an online run adds to the stages: roots learnt after the concurrent mark (from
//! the filesystem's write barrier, while writes pause), and per-unit claims that let
//! the sweep skip what a write took back.

use std::collections::{HashMap, HashSet};

use super::error::GcError;
use super::inventory::{Inventory, RepoInventory};
use super::mark::Manifests;
use super::markset::MarkSet;
use super::report::Warning;
use crate::layout::{Digest, RepoName, Store, paths};

/// Something a write made referenced or present while the run marked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LateRoot {
    /// A link naming manifest `digest` in `repo`: it and what it reaches are live.
    Manifest { repo: RepoName, digest: Digest },
    /// A blob linked or (re)written: live.
    Blob(Digest),
}

/// The pause of an online run.
pub trait Barrier: Sync {
    /// Holds writes back (until the caller lets them go) and returns what writes made
    /// live since marking began; `None` if writes could not be paused (nothing is then
    /// deleted).
    fn pause(&self) -> Option<Vec<LateRoot>>;
}

/// Marks `roots` into `marks`. A manifest root whose blob is missing marks nothing (its
/// link was refused, or names nothing that exists). With `--delete-untagged`, a
/// repository written during the run keeps all its revisions this time: a tag may have
/// moved onto one the mark found unreachable, with referrers the barrier never saw.
pub fn fold(
    store: &Store,
    inventory: &Inventory,
    manifests: &Manifests,
    marks: &mut MarkSet,
    roots: Vec<LateRoot>,
    delete_untagged: bool,
) -> Result<Vec<Warning>, GcError> {
    let repos: HashMap<&RepoName, &RepoInventory> = inventory
        .repositories
        .iter()
        .map(|r| (&r.name, r))
        .collect();
    let mut written: HashSet<RepoName> = HashSet::new();
    let mut warnings = Vec::new();
    let mut empty: HashMap<RepoName, RepoInventory> = HashMap::new();
    for root in roots {
        match root {
            LateRoot::Blob(d) => marks.mark(&d),
            LateRoot::Manifest { repo, digest } => {
                let data = paths::blob_data(&digest);
                if !matches!(store.stat(&data), Ok(Some(_))) {
                    warnings.push(Warning::new(
                        data,
                        format!(
                            "a link to manifest {digest} of repository {repo} was written during the run, but the manifest is not in the store; nothing marked through it"
                        ),
                    ));
                    continue;
                }
                let inv = match repos.get(&repo) {
                    Some(inv) => *inv,
                    None => empty
                        .entry(repo.clone())
                        .or_insert_with(|| RepoInventory::new(repo.clone())),
                };
                marks.mark_root(manifests, inv, digest)?;
                written.insert(repo);
            }
        }
    }
    if delete_untagged {
        for repo in written {
            let keep = marks.unreachable(&repo).to_vec();
            if keep.is_empty() {
                continue;
            }
            if let Some(inv) = repos.get(&repo) {
                for d in keep {
                    marks.mark_root(manifests, inv, d)?;
                }
            }
            marks.set_unreachable(repo, Vec::new());
        }
    }
    Ok(warnings)
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
