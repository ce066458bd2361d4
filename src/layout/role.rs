//! What a node of the store is, told one name at a time: [`Role::child`] gives a child's
//! role from its parent's role and its name, so the filesystem computes an inode's role
//! once, at lookup, without building a path. Roles leave out the names leading to the
//! node (repository, tag, upload id) and keep the digest a name carries: a small `Copy`
//! value. [`super::spec::classify`] tells the same from a whole path, with the names;
//! tests hold the two to agree.
//!
//! A role is told by position and name only, never by file type: a directory named
//! `link` in a revision directory has the role of a revision link.

use std::ffi::OsStr;

use super::digest::{Digest, parse_fan_out};
use super::names::plain_component;
use super::paths::{
    BLOBS, DATA, DOCKER, INDEX, LAYERS, LINK, LinkRole, MANIFESTS, REGISTRY, REPOSITORIES,
    REVISIONS, SHA256, TAG_CURRENT, TAGS, UPLOADS, V2_DIR, is_temp_file,
};

/// Every kind of node the registry's layout has, and `Unknown` for anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The registry's `rootdirectory` (the mount's root).
    StoreRoot,
    /// `docker`
    Docker,
    /// `docker/registry`
    Registry,
    /// `docker/registry/v2`: everything the registry stores is below it.
    V2,
    /// `v2/blobs`
    Blobs,
    /// `v2/blobs/sha256`
    BlobsSha256,
    /// `v2/blobs/sha256/<xx>`: the fan-out directory of digests starting with byte xx.
    BlobFanOut(u8),
    /// `v2/blobs/sha256/<xx>/<hex>`
    BlobDir(Digest),
    /// `v2/blobs/sha256/<xx>/<hex>/data`: a blob's content.
    BlobData(Digest),
    /// `v2/repositories`
    Repositories,
    /// A directory below `repositories/` not starting with `_`: a repository, or a
    /// namespace on the way to one (`team` of `team/app`), or both.
    RepoDir,
    /// `<repo>/_manifests`
    Manifests,
    /// `<repo>/_manifests/revisions`
    Revisions,
    /// `<repo>/_manifests/revisions/sha256`
    RevisionsSha256,
    /// `<repo>/_manifests/revisions/sha256/<hex>`
    Revision(Digest),
    /// `<repo>/_manifests/revisions/sha256/<hex>/link`
    RevisionLink(Digest),
    /// `<repo>/_manifests/tags`
    Tags,
    /// `<repo>/_manifests/tags/<tag>`
    Tag,
    /// `<repo>/_manifests/tags/<tag>/current`
    TagCurrent,
    /// `<repo>/_manifests/tags/<tag>/current/link`
    TagCurrentLink,
    /// `<repo>/_manifests/tags/<tag>/index`
    TagIndex,
    /// `<repo>/_manifests/tags/<tag>/index/sha256`
    TagIndexSha256,
    /// `<repo>/_manifests/tags/<tag>/index/sha256/<hex>`
    TagIndexEntry(Digest),
    /// `<repo>/_manifests/tags/<tag>/index/sha256/<hex>/link`
    TagIndexLink(Digest),
    /// `<repo>/_layers`
    Layers,
    /// `<repo>/_layers/sha256`
    LayersSha256,
    /// `<repo>/_layers/sha256/<hex>`
    LayerDir(Digest),
    /// `<repo>/_layers/sha256/<hex>/link`
    LayerLink(Digest),
    /// `<repo>/_uploads`
    Uploads,
    /// `<repo>/_uploads/<id>`
    Upload,
    /// `<repo>/_uploads/<id>/data`: the bytes of a blob being pushed.
    UploadData,
    /// Anything else below an upload's directory (`startedat`, `hashstates/...`).
    UploadEntry,
    /// `<name>.tmp` in a blob or link directory: registry 3.1+ writes there first.
    TempFile,
    /// Not part of the layout.
    Unknown,
    /// Not part of the layout, but below (or named) `_uploads`: the write gate has
    /// always treated such files as an upload's, wherever they are.
    UnknownUpload,
}

impl Role {
    /// The role of the entry `name` in a directory of this role.
    pub fn child(self, name: &OsStr) -> Role {
        name.to_str().map_or(Role::Unknown, |n| self.child_named(n))
    }

    /// As [`child`](Self::child), for a UTF-8 name.
    pub fn child_named(self, name: &str) -> Role {
        use Role::*;
        if !plain_component(name) {
            return Unknown;
        }
        if self == UnknownUpload {
            return UnknownUpload;
        }
        let hex = |make: fn(Digest) -> Role| Digest::from_hex(name).map_or(Unknown, make);
        match (self, name) {
            (StoreRoot, DOCKER) => Docker,
            (Docker, REGISTRY) => Registry,
            (Registry, V2_DIR) => V2,
            (V2, BLOBS) => Blobs,
            (V2, REPOSITORIES) => Repositories,
            (Blobs, SHA256) => BlobsSha256,
            (BlobsSha256, _) => parse_fan_out(name).map_or(Unknown, BlobFanOut),
            (BlobFanOut(p), _) => match Digest::from_hex(name) {
                Ok(d) if d.fan_out() == p => BlobDir(d),
                _ => Unknown,
            },
            (BlobDir(d), DATA) => BlobData(d),
            (Repositories | RepoDir, _) if !name.starts_with('_') => RepoDir,
            (RepoDir, MANIFESTS) => Manifests,
            (RepoDir, LAYERS) => Layers,
            (RepoDir, UPLOADS) => Uploads,
            (Manifests, REVISIONS) => Revisions,
            (Revisions, SHA256) => RevisionsSha256,
            (RevisionsSha256, _) => hex(Revision),
            (Revision(d), LINK) => RevisionLink(d),
            (Manifests, TAGS) => Tags,
            (Tags, _) => Tag,
            (Tag, TAG_CURRENT) => TagCurrent,
            (TagCurrent, LINK) => TagCurrentLink,
            (Tag, INDEX) => TagIndex,
            (TagIndex, SHA256) => TagIndexSha256,
            (TagIndexSha256, _) => hex(TagIndexEntry),
            (TagIndexEntry(d), LINK) => TagIndexLink(d),
            (Layers, SHA256) => LayersSha256,
            (LayersSha256, _) => hex(LayerDir),
            (LayerDir(d), LINK) => LayerLink(d),
            (Uploads, _) => Upload,
            (Upload, DATA) => UploadData,
            (Upload | UploadEntry | UploadData, _) => UploadEntry,
            (_, _) if self.holds_temp_files() && is_temp_file(name) => TempFile,
            (_, UPLOADS) => UnknownUpload,
            _ => Unknown,
        }
    }

    /// The role of a path relative to the store root, one component at a time.
    pub fn of_path(rel: &str) -> Role {
        if rel.is_empty() {
            return Role::StoreRoot;
        }
        rel.split('/')
            .fold(Role::StoreRoot, |role, name| role.child_named(name))
    }

    /// Directories the registry (3.1+) writes `<file>.<uuid>.tmp` into.
    pub fn holds_temp_files(self) -> bool {
        use Role::*;
        matches!(
            self,
            BlobDir(_) | Revision(_) | TagCurrent | TagIndexEntry(_) | LayerDir(_)
        )
    }

    /// The digest the node's path names, if any.
    pub fn digest(self) -> Option<Digest> {
        use Role::*;
        match self {
            BlobDir(d) | BlobData(d) | Revision(d) | RevisionLink(d) | TagIndexEntry(d)
            | TagIndexLink(d) | LayerDir(d) | LayerLink(d) => Some(d),
            _ => None,
        }
    }

    /// Which link file this is, if it is one.
    pub fn link(self) -> Option<LinkRole> {
        match self {
            Role::RevisionLink(d) => Some(LinkRole::Revision(d)),
            Role::LayerLink(d) => Some(LinkRole::Layer(d)),
            Role::TagIndexLink(d) => Some(LinkRole::TagIndex(d)),
            Role::TagCurrentLink => Some(LinkRole::TagCurrent),
            _ => None,
        }
    }

    /// `_uploads`, an upload's directory or anything in it: nothing the collector
    /// reads, and nothing a pull depends on.
    pub fn is_upload(self) -> bool {
        use Role::*;
        matches!(
            self,
            Uploads | Upload | UploadData | UploadEntry | UnknownUpload
        )
    }

    /// Whether the node is part of the registry's layout (what [`classify`] knows).
    ///
    /// [`classify`]: super::spec::classify
    pub fn is_known(self) -> bool {
        !matches!(self, Role::Unknown | Role::UnknownUpload)
    }
}
