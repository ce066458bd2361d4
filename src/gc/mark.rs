//! Mark: which manifests are live, and every blob they need.
//!
//! Default mode, as the registry's own collector: every revision of every repository is
//! a root. `--delete-untagged`: roots are the manifests tags point at now; a manifest is
//! live if a root reaches it through index children or referrers (`subject`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;

use super::error::GcError;
use super::report::Warning;
use super::scan::{LinkState, RepoScan};
use crate::layout::store::ReadError;
use crate::layout::{Digest, RepoName, Store, paths};
use crate::manifest::{self, MAX_MANIFEST_SIZE};

/// A manifest as the collector knows it.
#[derive(Debug)]
pub enum Loaded {
    /// The manifest's blob is not in the store: nothing can be marked through it (and no
    /// client can pull it).
    Missing,
    Parsed(manifest::Manifest),
    /// Not understood, kept under `--keep-unknown`: every digest it mentions.
    Unknown(Vec<Digest>),
}

impl Loaded {
    fn blobs(&self) -> &[Digest] {
        match self {
            Loaded::Parsed(m) => &m.blobs,
            Loaded::Unknown(all) => all,
            Loaded::Missing => &[],
        }
    }

    /// Manifests this one leads to (index children; for an unknown one, anything it names).
    fn children(&self) -> &[Digest] {
        match self {
            Loaded::Parsed(m) => &m.children,
            Loaded::Unknown(all) => all,
            Loaded::Missing => &[],
        }
    }

    fn subject(&self) -> Option<Digest> {
        match self {
            Loaded::Parsed(m) => m.subject,
            _ => None,
        }
    }
}

/// Reads and parses manifests.
pub struct Manifests {
    /// The blobs root (`None`: the store has no blobs): paths below it are three
    /// components long, where paths from the store's root are eight.
    blobs: Option<Store>,
    keep_unknown: bool,
    /// Go on past a manifest whose blob is missing (keeping all its repository links).
    allow_missing: bool,
}

/// The manifests one repository's marking has loaded: each is read once per repository,
/// and the memory goes with the repository (a store-wide cache of a million-blob store
/// would hold every manifest at once).
type Loaded1 = HashMap<Digest, Arc<Loaded>>;

impl Manifests {
    pub fn new(store: &Store, keep_unknown: bool, allow_missing: bool) -> Result<Self, GcError> {
        let root = paths::blobs_root();
        let blobs = store.sub(&root).map_err(|e| GcError::store(&root, e))?;
        Ok(Manifests {
            blobs,
            keep_unknown,
            allow_missing,
        })
    }

    fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>, ReadError> {
        let Some(blobs) = &self.blobs else {
            return Ok(None);
        };
        blobs.read(&paths::blob_data_in_blobs_root(d), MAX_MANIFEST_SIZE)
    }

    pub fn load(
        &self,
        cache: &mut Loaded1,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Arc<Loaded>, GcError> {
        if let Some(l) = cache.get(d) {
            return Ok(l.clone());
        }
        let loaded = match self.read(d) {
            Ok(None) => Loaded::Missing,
            Ok(Some(bytes)) => match manifest::parse(&bytes, d) {
                Ok(m) => Loaded::Parsed(m),
                Err(source)
                    if self.keep_unknown
                        && !matches!(source, manifest::ManifestError::DigestMismatch { .. }) =>
                {
                    tracing::warn!(repo = %repo, digest = %d, error = %source, "manifest not understood; keeping every blob it names");
                    Loaded::Unknown(manifest::digests_mentioned(&bytes))
                }
                Err(source) => {
                    return Err(GcError::Manifest {
                        repo: repo.clone(),
                        digest: *d,
                        source,
                    });
                }
            },
            Err(source) => {
                return Err(GcError::ManifestRead {
                    repo: repo.clone(),
                    digest: *d,
                    source,
                });
            }
        };
        let loaded = Arc::new(loaded);
        cache.insert(*d, loaded.clone());
        Ok(loaded)
    }
}

/// What marking one repository found.
#[derive(Debug, Default)]
pub struct RepoMark {
    /// Every digest this repository keeps (sorted, no duplicates).
    pub marked: Vec<Digest>,
    /// Revisions no root reaches (`--delete-untagged` only).
    pub unreachable: Vec<Digest>,
    pub manifests: usize,
    pub warnings: Vec<Warning>,
}

/// Marks `roots` and everything they reach: their blobs, their children and, when
/// `referrers` is given, manifests whose subject is reached.
fn mark_from(
    stop: &(dyn Fn() -> bool + Sync),
    manifests: &Manifests,
    cache: &mut Loaded1,
    scan: &RepoScan,
    roots: impl IntoIterator<Item = Digest>,
    referrers: Option<&HashMap<Digest, Vec<Digest>>>,
    out: &mut RepoMark,
) -> Result<HashSet<Digest>, GcError> {
    let mut reached: HashSet<Digest> = HashSet::new();
    let mut stack: Vec<Digest> = roots.into_iter().collect();
    while let Some(d) = stack.pop() {
        if !reached.insert(d) {
            continue;
        }
        // A stop or time limit lands within a few manifests, even in a huge repository.
        if reached.len().is_multiple_of(64) && stop() {
            return Err(GcError::Interrupted);
        }
        out.marked.push(d);
        let loaded = manifests.load(cache, &scan.name, &d)?;
        if let Loaded::Missing = *loaded {
            missing_manifest(manifests, scan, d, &mut stack, out)?;
        }
        out.marked.extend(loaded.blobs().iter().copied());
        stack.extend(loaded.children().iter().copied());
        if let Some(refs) = referrers.and_then(|r| r.get(&d)) {
            stack.extend(refs.iter().copied());
        }
    }
    out.marked.sort_unstable();
    out.marked.dedup();
    Ok(reached)
}

/// A manifest whose blob is missing names blobs nobody can know: the run stops, unless
/// `--allow-missing-manifests`, where it keeps everything the manifest could have named
/// (the registry only accepts a manifest whose blobs its repository links, and whose
/// children are manifests of the same repository): every `_layers` link and every
/// revision of the repository.
fn missing_manifest(
    manifests: &Manifests,
    scan: &RepoScan,
    d: Digest,
    stack: &mut Vec<Digest>,
    out: &mut RepoMark,
) -> Result<(), GcError> {
    if !manifests.allow_missing {
        return Err(missing_error(scan, d));
    }
    out.warnings.push(Warning::new(
        paths::blob_data(&d),
        format!(
            "manifest {d} of repository {} is missing from the store; kept every blob the repository links and every revision",
            scan.name
        ),
    ));
    out.marked.extend(scan.layers.iter().copied());
    stack.extend(scan.revisions.iter().flat_map(|r| r.manifests()));
    Ok(())
}

fn missing_error(scan: &RepoScan, d: Digest) -> GcError {
    GcError::ManifestMissing {
        repo: scan.name.clone(),
        digest: d,
        path: paths::blob_data(&d).display().to_string(),
    }
}

/// Default mode: every revision is a root.
pub fn mark_all_revisions(
    stop: &(dyn Fn() -> bool + Sync),
    manifests: &Manifests,
    scan: &RepoScan,
) -> Result<RepoMark, GcError> {
    let mut out = RepoMark::default();
    let roots: Vec<Digest> = scan.revisions.iter().flat_map(|r| r.manifests()).collect();
    out.manifests = roots.len();
    mark_from(
        stop,
        manifests,
        &mut HashMap::new(),
        scan,
        roots,
        None,
        &mut out,
    )?;
    Ok(out)
}

/// `--delete-untagged`: roots are what tags point at now (a damaged tag keeps its whole
/// history); reachable through index children and referrers.
pub fn mark_tagged(
    stop: &(dyn Fn() -> bool + Sync),
    manifests: &Manifests,
    scan: &RepoScan,
) -> Result<RepoMark, GcError> {
    let mut out = RepoMark::default();
    let present: Vec<Digest> = scan.revisions.iter().flat_map(|r| r.manifests()).collect();
    out.manifests = present.len();
    // Every revision is read, to learn which ones refer to which (subject).
    let mut cache = HashMap::new();
    let mut referrers: HashMap<Digest, Vec<Digest>> = HashMap::new();
    let mut roots = Vec::new();
    for d in &present {
        let loaded = manifests.load(&mut cache, &scan.name, d)?;
        if let Some(subject) = loaded.subject() {
            referrers.entry(subject).or_default().push(*d);
        }
        // An untagged revision whose blob is missing may have been a referrer of what
        // is kept (its subject is unknown): stop, or mark through it as a root.
        if let Loaded::Missing = *loaded {
            if !manifests.allow_missing {
                return Err(missing_error(scan, *d));
            }
            roots.push(*d);
        }
    }
    for tag in &scan.tags {
        match &tag.current {
            LinkState::Ok(d) => roots.push(*d),
            LinkState::Missing | LinkState::Damaged(_) => roots.extend(tag.index.iter().copied()),
        }
    }
    let reached = mark_from(
        stop,
        manifests,
        &mut cache,
        scan,
        roots,
        Some(&referrers),
        &mut out,
    )?;
    let mut unreachable: Vec<Digest> = present
        .into_iter()
        .filter(|d| !reached.contains(d))
        .collect();
    unreachable.sort();
    unreachable.dedup();
    out.unreachable = unreachable;
    Ok(out)
}

/// Marks every repository in parallel; stops early when `stop` says so.
pub fn mark_repositories(
    manifests: &Manifests,
    scans: &[RepoScan],
    delete_untagged: bool,
    stop: &(dyn Fn() -> bool + Sync),
    progress: &(dyn Fn() + Sync),
) -> Result<Option<Vec<RepoMark>>, GcError> {
    let marks: Result<Vec<Option<RepoMark>>, GcError> = scans
        .par_iter()
        .map(|scan| {
            if stop() {
                return Ok(None);
            }
            let m = if delete_untagged {
                mark_tagged(stop, manifests, scan)
            } else {
                mark_all_revisions(stop, manifests, scan)
            };
            progress();
            match m {
                Err(GcError::Interrupted) => Ok(None),
                other => other.map(Some),
            }
        })
        .collect();
    Ok(marks?.into_iter().collect())
}
