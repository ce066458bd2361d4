//! The mark set: which blobs of the inventory are live. One bit per blob the scan found
//! (a million-blob store marks in 125 KiB); marking a digest the store does not hold is
//! a no-op, since the plan only ever deletes what the inventory holds. Bits are set
//! atomically, so repositories mark in parallel and a root that appears late (a link
//! written during the run) can be marked with [`MarkSet::mark_root`] after the rest.
//!
//! Default mode, as the registry's own collector: every revision of every repository is
//! a root. `--delete-untagged`: roots are the manifests tags point at now; a manifest is
//! live if a root reaches it through index children or referrers (`subject`).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use super::error::GcError;
use super::inventory::{BlobInventory, Inventory, LinkState, RepoInventory};
use super::manifests::{Loaded, Manifests, RepoManifests};
use super::report::Warning;
use crate::layout::{Digest, RepoName, paths};

pub struct MarkSet<'i> {
    blobs: &'i BlobInventory,
    bits: Vec<AtomicU64>,
    /// Revisions no root reaches, by repository (`--delete-untagged` only).
    unreachable: HashMap<RepoName, Vec<Digest>>,
    /// Of those, the ones that refer to another manifest: referrer -> subject.
    subjects: HashMap<RepoName, HashMap<Digest, Digest>>,
    manifests_scanned: u64,
    warnings: Mutex<Vec<Warning>>,
    /// Repositories kept whole: the plan deletes nothing of them.
    kept_whole: HashSet<RepoName>,
}

/// What marking one repository found besides its marks.
#[derive(Debug)]
struct RepoMark {
    repo: RepoName,
    unreachable: Vec<Digest>,
    subjects: HashMap<Digest, Digest>,
    manifests: u64,
    warnings: Vec<Warning>,
    kept_whole: bool,
}

impl<'i> MarkSet<'i> {
    /// Nothing marked yet.
    pub fn new(blobs: &'i BlobInventory) -> Self {
        MarkSet {
            blobs,
            bits: (0..blobs.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            unreachable: HashMap::new(),
            subjects: HashMap::new(),
            manifests_scanned: 0,
            warnings: Mutex::new(Vec::new()),
            kept_whole: HashSet::new(),
        }
    }

    /// Marks every blob of the store: none can be proven unreferenced.
    pub fn mark_every_blob(&self) {
        for d in self.blobs.digests() {
            self.mark(d);
        }
    }

    /// The repository is kept whole: nothing of it is deleted.
    pub fn is_kept_whole(&self, repo: &RepoName) -> bool {
        self.kept_whole.contains(repo)
    }

    /// Marks one digest (a manifest or a blob) live.
    pub fn mark(&self, d: &Digest) {
        if let Some(i) = self.blobs.position(d) {
            self.bits[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
        }
    }

    /// The store holds `d` and it is marked.
    pub fn is_live(&self, d: &Digest) -> bool {
        self.blobs
            .position(d)
            .is_some_and(|i| self.bits[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0)
    }

    /// How many of the store's blobs are marked.
    pub fn live_count(&self) -> u64 {
        self.bits
            .iter()
            .map(|b| u64::from(b.load(Ordering::Relaxed).count_ones()))
            .sum()
    }

    /// Records the revisions of `repo` that no root reaches (sorted).
    pub fn set_unreachable(&mut self, repo: RepoName, revisions: Vec<Digest>) {
        if revisions.is_empty() {
            self.unreachable.remove(&repo);
        } else {
            self.unreachable.insert(repo, revisions);
        }
    }

    /// Revisions of `repo` that no root reaches.
    pub fn unreachable(&self, repo: &RepoName) -> &[Digest] {
        self.unreachable.get(repo).map_or(&[], |v| v.as_slice())
    }

    /// Records which unreachable revisions of `repo` refer to which manifest.
    pub fn set_subjects(&mut self, repo: RepoName, subjects: HashMap<Digest, Digest>) {
        if subjects.is_empty() {
            self.subjects.remove(&repo);
        } else {
            self.subjects.insert(repo, subjects);
        }
    }

    /// The manifest an unreachable revision `d` of `repo` refers to (its `subject`): an
    /// online run keeps `d` if a write makes that manifest live again.
    pub fn subject_of(&self, repo: &RepoName, d: &Digest) -> Option<Digest> {
        self.subjects.get(repo)?.get(d).copied()
    }

    /// Revision manifests the mark started from.
    pub fn manifests_scanned(&self) -> u64 {
        self.manifests_scanned
    }

    pub fn warnings(&self) -> Vec<Warning> {
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Keeps revision `d` of `repo` that no root reached (an untagged revision younger than
    /// the minimum age): marks it and what it reaches as a root would, and takes every
    /// revision it reaches (an index's children) off the repository's unreachable ones.
    pub fn keep_revision(
        &mut self,
        manifests: &Manifests,
        repo: &RepoInventory,
        d: Digest,
    ) -> Result<(), GcError> {
        let reached = self.reach_from(manifests, repo, d)?;
        if let Some(list) = self.unreachable.get_mut(&repo.name) {
            list.retain(|r| !reached.contains(r));
        }
        if let Some(subjects) = self.subjects.get_mut(&repo.name) {
            subjects.retain(|r, _| !reached.contains(r));
        }
        Ok(())
    }

    /// Marks manifest `d` of `repo`, a root that appeared after the initial mark, and
    /// everything it reaches (its blobs, its children). Fails as the initial mark does on
    /// a manifest it cannot read or understand.
    pub fn mark_root(
        &self,
        manifests: &Manifests,
        repo: &RepoInventory,
        d: Digest,
    ) -> Result<(), GcError> {
        self.reach_from(manifests, repo, d).map(drop)
    }

    /// Marks what manifest `d` of `repo` reaches; the manifests it reached.
    fn reach_from(
        &self,
        manifests: &Manifests,
        repo: &RepoInventory,
        d: Digest,
    ) -> Result<HashSet<Digest>, GcError> {
        let mut walk = Walk::new(self, manifests, repo);
        walk.lenient = self.is_kept_whole(&repo.name);
        let reached = walk.reach(vec![d], None, &|| false)?;
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(walk.warnings);
        Ok(reached)
    }
}

/// A walk through one repository's manifests, marking what it reaches.
struct Walk<'a, 'i> {
    set: &'a MarkSet<'i>,
    manifests: &'a Manifests<'a>,
    repo: &'a RepoInventory,
    /// Each manifest is read once per repository, and the memory goes with the
    /// repository (a store-wide cache would hold every manifest at once).
    cache: RepoManifests,
    warnings: Vec<Warning>,
    /// The repository is kept whole: a manifest not understood or unreadable stops
    /// nothing (a missing one still does, unless allowed).
    lenient: bool,
    /// A missing manifest stops nothing either (one only a tag or a stray names).
    missing_ok: bool,
}

impl<'a, 'i> Walk<'a, 'i> {
    fn new(set: &'a MarkSet<'i>, manifests: &'a Manifests<'a>, repo: &'a RepoInventory) -> Self {
        Walk {
            set,
            manifests,
            repo,
            cache: HashMap::new(),
            warnings: Vec::new(),
            lenient: false,
            missing_ok: false,
        }
    }

    fn load(&mut self, d: &Digest) -> Result<std::sync::Arc<Loaded>, GcError> {
        if self.lenient {
            return Ok(self.manifests.load_any(&mut self.cache, d));
        }
        self.manifests.load(&mut self.cache, &self.repo.name, d)
    }

    /// Marks `roots` and everything they reach: their blobs, their children and, when
    /// `referrers` is given, manifests whose subject is reached. Returns the manifests
    /// reached.
    fn reach(
        &mut self,
        roots: Vec<Digest>,
        referrers: Option<&HashMap<Digest, Vec<Digest>>>,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<HashSet<Digest>, GcError> {
        let mut reached: HashSet<Digest> = HashSet::new();
        let mut stack = roots;
        while let Some(d) = stack.pop() {
            if !reached.insert(d) {
                continue;
            }
            // A stop or time limit lands within a few manifests, even in a huge repository.
            if reached.len().is_multiple_of(64) && stop() {
                return Err(GcError::Interrupted);
            }
            self.set.mark(&d);
            let loaded = self.load(&d)?;
            if let Loaded::Missing = *loaded
                && !self.missing_ok
            {
                self.missing_manifest(d, &mut stack)?;
            }
            loaded.blobs().iter().for_each(|b| self.set.mark(b));
            stack.extend(loaded.children().iter().copied());
            if let Some(refs) = referrers.and_then(|r| r.get(&d)) {
                stack.extend(refs.iter().copied());
            }
        }
        Ok(reached)
    }

    /// A manifest whose blob is missing names blobs nobody can know: the run stops,
    /// unless `--allow-missing-manifests`, where it keeps everything the manifest could
    /// have named (the registry only accepts a manifest whose blobs its repository links,
    /// and whose children are manifests of the same repository): every `_layers` link and
    /// every revision of the repository.
    fn missing_manifest(&mut self, d: Digest, stack: &mut Vec<Digest>) -> Result<(), GcError> {
        if !self.manifests.allow_missing {
            return Err(missing_error(self.repo, d));
        }
        self.warnings.push(Warning::new(
            paths::blob_data(&d),
            format!(
                "manifest {d} of repository {} is missing from the store; kept every blob the repository links and every revision",
                self.repo.name
            ),
        ));
        self.repo.layers.iter().for_each(|l| self.set.mark(l));
        stack.extend(self.repo.revision_manifests());
        Ok(())
    }
}

fn missing_error(repo: &RepoInventory, d: Digest) -> GcError {
    GcError::ManifestMissing {
        repo: repo.name.clone(),
        digest: d,
        path: paths::blob_data(&d).display().to_string(),
    }
}

/// Default mode: every revision is a root.
fn mark_all_revisions(
    walk: &mut Walk,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<RepoMark, GcError> {
    let roots: Vec<Digest> = walk.repo.revision_manifests().collect();
    let manifests = roots.len() as u64;
    walk.reach(roots, None, stop)?;
    Ok(RepoMark {
        repo: walk.repo.name.clone(),
        unreachable: Vec::new(),
        subjects: HashMap::new(),
        manifests,
        warnings: std::mem::take(&mut walk.warnings),
        kept_whole: false,
    })
}

/// `--delete-untagged`: roots are what tags point at now (a damaged tag keeps its whole
/// history); reachable through index children and referrers.
fn mark_tagged(walk: &mut Walk, stop: &(dyn Fn() -> bool + Sync)) -> Result<RepoMark, GcError> {
    let present: Vec<Digest> = walk.repo.revision_manifests().collect();
    // Every revision is read, to learn which ones refer to which (subject).
    let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut roots = Vec::new();
    for d in &present {
        let loaded = walk.load(d)?;
        if let Some(subject) = loaded.subject() {
            referrers.entry(subject).or_default().push(*d);
        }
        // An untagged revision whose blob is missing may have been a referrer of what
        // is kept (its subject is unknown): stop, or mark through it as a root.
        if let Loaded::Missing = *loaded {
            if !walk.manifests.allow_missing {
                return Err(missing_error(walk.repo, *d));
            }
            roots.push(*d);
        }
    }
    for tag in &walk.repo.tags {
        match &tag.current {
            LinkState::Ok(d) => roots.push(*d),
            LinkState::Missing | LinkState::Damaged(_) => roots.extend(tag.index.iter().copied()),
        }
    }
    let reached = walk.reach(roots, Some(&referrers), stop)?;
    let manifests = present.len() as u64;
    let mut unreachable: Vec<Digest> = present
        .into_iter()
        .filter(|d| !reached.contains(d))
        .collect();
    unreachable.sort();
    unreachable.dedup();
    let subjects = referrers
        .into_iter()
        .flat_map(|(subject, refs)| refs.into_iter().map(move |r| (r, subject)))
        .filter(|(r, _)| unreachable.binary_search(r).is_ok())
        .collect();
    Ok(RepoMark {
        repo: walk.repo.name.clone(),
        unreachable,
        subjects,
        manifests,
        warnings: std::mem::take(&mut walk.warnings),
        kept_whole: false,
    })
}

/// A repository kept whole: every revision, every manifest a tag names now or named
/// before, and every `_layers` link is live, and every blob they name; nothing it meets
/// stops the walk.
fn mark_whole(walk: &mut Walk, stop: &(dyn Fn() -> bool + Sync)) -> Result<RepoMark, GcError> {
    walk.lenient = true;
    walk.repo.layers.iter().for_each(|l| walk.set.mark(l));
    // Revisions as in every mode: a missing manifest stops the run unless allowed.
    let roots: Vec<Digest> = walk.repo.revision_manifests().collect();
    walk.reach(roots, None, stop)?;
    // What only tags and strays name may be gone already: kept if it is there.
    let mut named: Vec<Digest> = walk.repo.revisions.iter().map(|r| r.dir_digest).collect();
    named.extend(walk.repo.stray_revisions.iter().copied());
    for tag in &walk.repo.tags {
        if let LinkState::Ok(d) = &tag.current {
            named.push(*d);
        }
        named.extend(tag.index.iter().copied());
    }
    walk.missing_ok = true;
    let manifests = walk.repo.revisions.len() as u64;
    walk.reach(named, None, stop)?;
    Ok(RepoMark {
        repo: walk.repo.name.clone(),
        unreachable: Vec::new(),
        subjects: HashMap::new(),
        manifests,
        warnings: std::mem::take(&mut walk.warnings),
        kept_whole: true,
    })
}

/// A manifest the mark cannot read or does not understand: its repository is kept whole.
fn manifest_not_understood(e: &GcError) -> Option<Warning> {
    let (repo, digest, why) = match e {
        GcError::Manifest {
            repo,
            digest,
            source,
        } => (repo, digest, source.to_string()),
        GcError::ManifestRead {
            repo,
            digest,
            source,
        } => (repo, digest, format!("cannot be read: {source}")),
        _ => return None,
    };
    Some(Warning::new(
        paths::blob_data(digest),
        format!(
            "manifest {digest} of repository {repo}: {why}; repository {repo} kept whole (nothing of it deleted)"
        ),
    ))
}

/// Marks every repository of `inventory` in parallel. `None` when `stop` said so first.
pub fn mark_all<'i>(
    inventory: &'i Inventory,
    manifests: &Manifests,
    delete_untagged: bool,
    stop: &(dyn Fn() -> bool + Sync),
    advance: &(dyn Fn() + Sync),
) -> Result<Option<MarkSet<'i>>, GcError> {
    let mut set = MarkSet::new(&inventory.blobs);
    let marks: Result<Vec<Option<RepoMark>>, GcError> = inventory
        .repositories
        .par_iter()
        .map(|repo| {
            if stop() {
                return Ok(None);
            }
            let mut walk = Walk::new(&set, manifests, repo);
            let m = if repo.kept_whole {
                mark_whole(&mut walk, stop)
            } else if delete_untagged {
                mark_tagged(&mut walk, stop)
            } else {
                mark_all_revisions(&mut walk, stop)
            };
            let m = match m {
                Err(e) => match manifest_not_understood(&e) {
                    Some(w) => {
                        let mut walk = Walk::new(&set, manifests, repo);
                        mark_whole(&mut walk, stop).map(|mut m| {
                            m.warnings.insert(0, w);
                            m
                        })
                    }
                    None => Err(e),
                },
                ok => ok,
            };
            advance();
            match m {
                Err(GcError::Interrupted) => Ok(None),
                other => other.map(Some),
            }
        })
        .collect();
    let Some(marks) = marks?.into_iter().collect::<Option<Vec<RepoMark>>>() else {
        return Ok(None);
    };
    for m in marks {
        set.manifests_scanned += m.manifests;
        if m.kept_whole {
            set.kept_whole.insert(m.repo.clone());
        }
        set.warnings
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .extend(m.warnings);
        set.set_subjects(m.repo.clone(), m.subjects);
        set.set_unreachable(m.repo, m.unreachable);
    }
    Ok(Some(set))
}
