//! The inventory: what the scan found in the store, the first stage of a run. Everything
//! later stages decide on is here, as digests and names (paths are derived from them by
//! the layout when a unit is swept), so the planning stage needs no I/O.

use std::path::PathBuf;
use std::time::SystemTime;

use super::report::Warning;
use crate::layout::{Digest, RepoName, TagName};

/// What a link file held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    Ok(Digest),
    /// No link file: for a revision, the manifest was deleted through the API.
    Missing,
    /// Unreadable, empty or malformed.
    Damaged(String),
}

#[derive(Debug, Clone)]
pub struct Revision {
    /// The digest the revision directory is named by.
    pub dir_digest: Digest,
    pub link: LinkState,
    /// The directory holds nothing at all (a manifest deleted through the API).
    pub empty: bool,
}

impl Revision {
    /// The manifests this revision may stand for. A damaged link falls back on the
    /// directory name; a link that disagrees with it keeps both.
    pub fn manifests(&self) -> Vec<Digest> {
        match &self.link {
            LinkState::Ok(d) if *d == self.dir_digest => vec![*d],
            LinkState::Ok(d) => vec![*d, self.dir_digest],
            LinkState::Damaged(_) => vec![self.dir_digest],
            LinkState::Missing => vec![],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tag {
    pub name: TagName,
    pub current: LinkState,
    /// Every digest the tag ever pointed at.
    pub index: Vec<Digest>,
}

#[derive(Debug, Clone)]
pub struct Upload {
    pub dir: PathBuf,
    /// From `startedat`, or the directory's mtime when it is missing or unreadable.
    pub started: SystemTime,
    pub bytes: u64,
}

/// The link directory a leftover temp file lies in: the file goes with its directory
/// when a unit removes that directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TempParent {
    Revision(Digest),
    TagCurrent,
    TagIndex(Digest),
    LayerLink(Digest),
}

#[derive(Debug, Clone)]
pub struct TempFile {
    pub path: PathBuf,
    pub mtime: SystemTime,
    pub parent: TempParent,
}

/// One repository as scanned.
#[derive(Debug, Clone)]
pub struct RepoInventory {
    pub name: RepoName,
    pub revisions: Vec<Revision>,
    pub tags: Vec<Tag>,
    /// `_layers` link directories by the blob they name.
    pub layers: Vec<Digest>,
    pub uploads: Vec<Upload>,
    pub temp_files: Vec<TempFile>,
    pub warnings: Vec<Warning>,
}

impl RepoInventory {
    pub fn new(name: RepoName) -> Self {
        RepoInventory {
            name,
            revisions: Vec::new(),
            tags: Vec::new(),
            layers: Vec::new(),
            uploads: Vec::new(),
            temp_files: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Every manifest a revision of this repository may stand for.
    pub fn revision_manifests(&self) -> impl Iterator<Item = Digest> + '_ {
        self.revisions.iter().flat_map(|r| r.manifests())
    }
}

/// A fan-out directory (`blobs/sha256/<xx>`) and how many entries it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanOut {
    pub prefix: String,
    pub entries: usize,
}

/// Every blob directory in the store: 32 bytes a blob, sorted, so that a lookup is a
/// binary search and a mark is one bit (see [`super::markset::MarkSet`]).
#[derive(Debug, Clone, Default)]
pub struct BlobInventory {
    digests: Vec<Digest>,
    pub fan_outs: Vec<FanOut>,
    pub warnings: Vec<Warning>,
}

impl BlobInventory {
    /// Sorts and deduplicates `digests`.
    pub fn new(mut digests: Vec<Digest>, fan_outs: Vec<FanOut>, warnings: Vec<Warning>) -> Self {
        digests.sort_unstable();
        digests.dedup();
        digests.shrink_to_fit();
        BlobInventory {
            digests,
            fan_outs,
            warnings,
        }
    }

    pub fn digests(&self) -> &[Digest] {
        &self.digests
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The position of `d` among the blobs, if the store holds it.
    pub fn position(&self, d: &Digest) -> Option<usize> {
        self.digests.binary_search(d).ok()
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.position(d).is_some()
    }
}

/// What the scan found: the repositories (sorted by name) and the blobs.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub repositories: Vec<RepoInventory>,
    pub blobs: BlobInventory,
}

impl Inventory {
    /// Every warning of the scan, repositories first.
    pub fn warnings(&self) -> impl Iterator<Item = &Warning> {
        self.repositories
            .iter()
            .flat_map(|r| r.warnings.iter())
            .chain(self.blobs.warnings.iter())
    }
}
