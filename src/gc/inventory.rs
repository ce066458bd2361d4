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
    /// The scan met something in this repository it does not understand (named in
    /// `warnings`): the repository is kept whole, every revision, tag, link, upload and
    /// temp file of it, and every blob those name.
    pub kept_whole: bool,
    /// Part of the repository that holds references (its revisions or `_layers`) could
    /// not be listed: no blob of the store can be proven unreferenced.
    pub references_unknown: bool,
    /// Manifests named by entries of the revisions directory that are no revision (a
    /// link): kept with the repository when the store holds them.
    pub stray_revisions: Vec<Digest>,
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
            kept_whole: false,
            references_unknown: false,
            stray_revisions: Vec::new(),
        }
    }

    /// Notes `path`, which the scan does not understand (`what`): the repository is kept
    /// whole.
    pub fn not_understood(&mut self, path: impl AsRef<std::path::Path>, what: &str) {
        self.kept_whole = true;
        self.warnings.push(Warning::new(
            path,
            format!(
                "{what}; repository {} kept whole (nothing of it deleted)",
                self.name
            ),
        ));
    }

    /// Notes `path`, a part of the repository holding references that cannot be listed:
    /// the repository is kept whole and no blob of the store is deleted.
    pub fn references_unknown(&mut self, path: impl AsRef<std::path::Path>, what: &str) {
        self.kept_whole = true;
        self.references_unknown = true;
        self.warnings.push(Warning::new(
            path,
            format!(
                "{what}; the blobs repository {} names cannot be listed, so no blob is deleted",
                self.name
            ),
        ));
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
    /// Entries of the blob tree named by a digest that are no blob directory (a symbolic
    /// link, a file): never deleted, never followed; a `_layers` link naming one stays.
    pub strays: Vec<Digest>,
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
            strays: Vec::new(),
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
    /// What the scan met in the repository tree that could name any blob (a link out of
    /// the tree, a directory whose repositories cannot be named): while it is there, no
    /// blob is deleted; the rest (revisions, uploads, temp files) is collected.
    pub keep_all_blobs: Vec<Warning>,
    /// What else the scan met in the repository tree: links standing for repositories
    /// (kept whole, see [`RepoInventory::kept_whole`]) and special files.
    pub tree_warnings: Vec<Warning>,
}

impl Inventory {
    /// Every warning of the scan, repositories first.
    pub fn warnings(&self) -> impl Iterator<Item = &Warning> {
        self.keep_all_blobs
            .iter()
            .chain(self.tree_warnings.iter())
            .chain(self.repositories.iter().flat_map(|r| r.warnings.iter()))
            .chain(self.blobs.warnings.iter())
    }

    /// No blob can be proven unreferenced: every blob of the store stays.
    pub fn keeps_all_blobs(&self) -> bool {
        !self.keep_all_blobs.is_empty() || self.repositories.iter().any(|r| r.references_unknown)
    }
}
