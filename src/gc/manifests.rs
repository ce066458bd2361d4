//! The manifests the mark reads: each one parsed into the blobs and manifests it names,
//! or found missing, or (under `--keep-unknown`) kept as every digest it mentions. The
//! walk itself is in [`super::markset`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::error::GcError;
use super::inventory::BlobInventory;
use crate::layout::store::ReadError;
use crate::layout::{BlobDirs, Digest, RepoName, Store, paths};
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
    pub fn blobs(&self) -> &[Digest] {
        match self {
            Loaded::Parsed(m) => &m.blobs,
            Loaded::Unknown(all) => all,
            Loaded::Missing => &[],
        }
    }

    /// Manifests this one leads to (index children; for an unknown one, anything it names).
    pub fn children(&self) -> &[Digest] {
        match self {
            Loaded::Parsed(m) => &m.children,
            Loaded::Unknown(all) => all,
            Loaded::Missing => &[],
        }
    }

    pub fn subject(&self) -> Option<Digest> {
        match self {
            Loaded::Parsed(m) => m.subject,
            _ => None,
        }
    }
}

/// Reads and parses manifests.
pub struct Manifests<'i> {
    /// The blob tree, read through a handle on each fan-out directory.
    blobs: BlobDirs,
    keep_unknown: bool,
    /// Go on past a manifest whose blob is missing (keeping all its repository links).
    pub allow_missing: bool,
    /// The size of each manifest read (its data, read whole), so that the run's sizes of
    /// blobs need not look at those again.
    sizes_read: Option<SizesRead<'i>>,
}

/// The sizes of the manifests read, by their blob's position in the inventory: 4 bytes a
/// blob (4 MiB at a million), where a map by digest would take 40 a manifest read.
pub struct SizesRead<'i> {
    blobs: &'i BlobInventory,
    /// `u32::MAX`: not read (a manifest is at most [`MAX_MANIFEST_SIZE`] bytes).
    sizes: Vec<AtomicU32>,
}

impl<'i> SizesRead<'i> {
    const NOT_READ: u32 = u32::MAX;

    /// The size read of the blob at position `i` of the inventory, if it was read.
    pub fn at(&self, i: usize) -> Option<u64> {
        match self.sizes[i].load(Ordering::Relaxed) {
            Self::NOT_READ => None,
            n => Some(u64::from(n)),
        }
    }

    fn record(&self, d: &Digest, len: usize) {
        if let (Some(i), Ok(n)) = (self.blobs.position(d), u32::try_from(len))
            && n != Self::NOT_READ
        {
            self.sizes[i].store(n, Ordering::Relaxed);
        }
    }
}

/// The manifests one repository's marking has loaded: each is read once per repository,
/// and the memory goes with the repository (a store-wide cache of a million-blob store
/// would hold every manifest at once).
pub type RepoManifests = HashMap<Digest, Arc<Loaded>>;

impl<'i> Manifests<'i> {
    pub fn new(store: &Store, keep_unknown: bool, allow_missing: bool) -> Result<Self, GcError> {
        let blobs = BlobDirs::new(store).map_err(|e| GcError::store(&paths::blobs_root(), e))?;
        Ok(Manifests {
            blobs,
            keep_unknown,
            allow_missing,
            sizes_read: None,
        })
    }

    fn read(&self, d: &Digest) -> Result<Option<Vec<u8>>, ReadError> {
        let read = self.blobs.read_data(d, MAX_MANIFEST_SIZE);
        if let (Ok(Some(bytes)), Some(sizes)) = (&read, &self.sizes_read) {
            sizes.record(d, bytes.len());
        }
        read
    }

    /// Records the size of every manifest read from now on, for blobs of `blobs`.
    pub fn recording_sizes(self, blobs: &BlobInventory) -> Manifests<'_> {
        Manifests {
            sizes_read: Some(SizesRead {
                blobs,
                sizes: (0..blobs.len())
                    .map(|_| AtomicU32::new(SizesRead::NOT_READ))
                    .collect(),
            }),
            ..self
        }
    }

    /// The sizes of the manifests read (see [`Self::recording_sizes`]).
    pub fn sizes_read(&self) -> Option<&SizesRead<'i>> {
        self.sizes_read.as_ref()
    }

    /// As [`Manifests::load`], for a repository kept whole: never fails. A manifest that
    /// cannot be read names nothing more (the repository's links keep its blobs), one not
    /// understood names every digest it mentions; a missing one is still missing.
    pub fn load_any(&self, cache: &mut RepoManifests, d: &Digest) -> Arc<Loaded> {
        if let Some(l) = cache.get(d) {
            return l.clone();
        }
        let loaded = match self.read(d) {
            Ok(Some(bytes)) => match manifest::parse(&bytes, d) {
                Ok(m) => Loaded::Parsed(m),
                Err(_) => Loaded::Unknown(manifest::digests_mentioned(&bytes)),
            },
            Ok(None) => Loaded::Missing,
            Err(_) => Loaded::Unknown(Vec::new()),
        };
        let loaded = Arc::new(loaded);
        cache.insert(*d, loaded.clone());
        loaded
    }

    pub fn load(
        &self,
        cache: &mut RepoManifests,
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
